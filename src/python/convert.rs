//! JSON values to Python objects and back: what the native pipeline, decoder and encoder take from
//! and give to a user's hooks (the lists, dicts, strings and numbers `transformers` would).

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

/// A JSON value as Python's `json.loads` would give it.
pub fn to_python<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                PyFloat::new(py, n.as_f64().unwrap_or(f64::NAN)).into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_python(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (key, item) in map {
                dict.set_item(key, to_python(py, item)?)?;
            }
            dict.into_any()
        }
    })
}

/// How deep a Python object may nest before it is refused (a cycle, or a hostile input).
const MAX_DEPTH: usize = 128;

/// A Python object as JSON, the way the toolkit's JSON encoder sees it: dicts, lists, tuples,
/// strings, numbers, booleans, `None`; numpy scalars and arrays (anything with `tolist()`).
/// Floats that JSON cannot hold (NaN, infinities) are refused, as the encoder's
/// `allow_nan=False` does.
pub fn from_python(object: &Bound<'_, PyAny>) -> PyResult<Value> {
    from_python_at(object, 0)
}

fn from_python_at(object: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(PyTypeError::new_err(format!(
            "the object nests deeper than {MAX_DEPTH} levels"
        )));
    }
    if object.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = object.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if object.is_instance_of::<PyInt>() {
        if let Ok(i) = object.extract::<i64>() {
            return Ok(Value::from(i));
        }
        if let Ok(u) = object.extract::<u64>() {
            return Ok(Value::from(u));
        }
        let f: f64 = object.extract()?;
        return finite(f);
    }
    if let Ok(f) = object.cast::<PyFloat>() {
        return finite(f.value());
    }
    if let Ok(s) = object.cast::<PyString>() {
        return Ok(Value::String(s.to_str()?.to_string()));
    }
    if let Ok(dict) = object.cast::<PyDict>() {
        let mut map = Map::with_capacity(dict.len());
        for (key, item) in dict.iter() {
            let key = match key.cast::<PyString>() {
                Ok(s) => s.to_str()?.to_string(),
                Err(_) => key.str()?.to_str()?.to_string(),
            };
            map.insert(key, from_python_at(&item, depth + 1)?);
        }
        return Ok(Value::Object(map));
    }
    if let Ok(list) = object.cast::<PyList>() {
        return list
            .iter()
            .map(|item| from_python_at(&item, depth + 1))
            .collect::<PyResult<Vec<_>>>()
            .map(Value::Array);
    }
    if let Ok(tuple) = object.cast::<PyTuple>() {
        return tuple
            .iter()
            .map(|item| from_python_at(&item, depth + 1))
            .collect::<PyResult<Vec<_>>>()
            .map(Value::Array);
    }
    if object.cast::<PyBytes>().is_err() && object.hasattr("tolist")? {
        // numpy arrays and scalars, torch tensors: what `_JSONEncoder.default` does
        return from_python_at(&object.call_method0("tolist")?, depth + 1);
    }
    Err(PyTypeError::new_err(format!(
        "Object of type {} is not JSON serializable",
        object.get_type().name()?
    )))
}

fn finite(f: f64) -> PyResult<Value> {
    Number::from_f64(f).map(Value::Number).ok_or_else(|| {
        pyo3::exceptions::PyValueError::new_err("Out of range float values are not JSON compliant")
    })
}
