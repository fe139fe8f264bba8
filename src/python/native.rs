//! The module `sagemaker_hf_server` that user scripts (and the handler glue) import: the native
//! pipeline as a Python object, and the server's request decoder and response encoder.
//!
//! ```python
//! from sagemaker_hf_server import pipeline
//! def model_fn(model_dir):
//!     return pipeline("text-classification", model=model_dir)
//! ```

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};
use serde_json::{Map, Value};

use super::convert::{from_python, to_python};
use crate::config::ServeArgs;
use crate::http::codec::{self, RequestFormat, ResponseFormat};
use crate::service::{InferenceService, Reply};

/// What the module needs from the server: its settings (to load another model folder) and the
/// async runtime the native pipelines' batchers answer on.
pub struct Server {
    pub args: ServeArgs,
    pub runtime: tokio::runtime::Handle,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// Native services by model folder, so `pipeline()` for the folder being served shares its
/// batcher instead of loading the weights twice.
static SERVICES: Mutex<Vec<(PathBuf, Weak<InferenceService>)>> = Mutex::new(Vec::new());

thread_local! {
    /// The model folder whose `model_fn` runs on this thread: `pipeline()`'s default `model`.
    static BUILDING: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

pub fn set_server(server: Server) {
    let _ = SERVER.set(server);
}

/// Makes a served model's pipeline available to `pipeline()` for its folder.
pub fn register(service: &Arc<InferenceService>) {
    let dir = canonical(&service.model_dir);
    if let Ok(mut services) = SERVICES.lock() {
        services.retain(|(_, s)| s.strong_count() > 0);
        services.push((dir, Arc::downgrade(service)));
    }
}

fn canonical(dir: &Path) -> PathBuf {
    dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())
}

/// A native pipeline: `pipeline(inputs, **parameters)` answers as the transformers pipeline of the
/// task would, through the server's batcher; the GIL is released while it waits.
#[pyclass(frozen, name = "Pipeline", module = "sagemaker_hf_server")]
pub struct NativePipeline {
    /// The served model's own service (weak: the service owns its handlers, which hold this),
    /// or one `pipeline()` loaded for another folder or task.
    served: Weak<InferenceService>,
    owned: Option<Arc<InferenceService>>,
}

impl NativePipeline {
    pub fn served(service: &Arc<InferenceService>) -> NativePipeline {
        NativePipeline {
            served: Arc::downgrade(service),
            owned: None,
        }
    }

    fn service(&self) -> PyResult<Arc<InferenceService>> {
        self.owned
            .clone()
            .or_else(|| self.served.upgrade())
            .ok_or_else(|| PyRuntimeError::new_err("the model of this pipeline was unloaded"))
    }
}

#[pymethods]
impl NativePipeline {
    #[pyo3(signature = (inputs, **parameters))]
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyAny>,
        parameters: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut body = Map::new();
        body.insert("inputs".into(), from_python(inputs)?);
        if let Some(parameters) = parameters {
            body.insert("parameters".into(), from_python(parameters.as_any())?);
        }
        let service = self.service()?;
        let runtime = runtime()?;
        let reply = py.detach(|| runtime.block_on(service.reply(Value::Object(body), 0)));
        match reply {
            Ok(Reply::Json(value)) => to_python(py, &value),
            Ok(Reply::Events(_)) => Err(PyValueError::new_err(
                "\"stream\": true cannot be used through the Python pipeline object",
            )),
            // The diffusers pipeline answers a PIL image: one, opened from our PNG (the PNG's
            // bytes where Pillow is not installed).
            Ok(Reply::Image(picture)) => {
                let png = picture
                    .encode(image::ImageFormat::Png)
                    .map_err(|e| PyValueError::new_err(e.to_string()))?;
                let bytes = pyo3::types::PyBytes::new(py, &png);
                match py.import("PIL.Image") {
                    Ok(pil) => {
                        let stream = py.import("io")?.getattr("BytesIO")?.call1((bytes,))?;
                        pil.getattr("open")?.call1((stream,))
                    }
                    Err(_) => Ok(bytes.into_any()),
                }
            }
            Err(error) => Err(PyValueError::new_err(error.to_string())),
        }
    }

    /// The task the pipeline serves (transformers' `pipeline.task`).
    #[getter]
    fn task(&self) -> PyResult<&'static str> {
        Ok(self.service()?.task_name())
    }

    #[getter]
    fn model_dir(&self) -> PyResult<String> {
        Ok(self.service()?.model_dir.display().to_string())
    }

    fn __repr__(&self) -> PyResult<String> {
        let service = self.service()?;
        Ok(format!(
            "<sagemaker_hf_server.Pipeline task={} model={}>",
            service.task_name(),
            service.model_dir.display()
        ))
    }
}

fn runtime() -> PyResult<tokio::runtime::Handle> {
    SERVER
        .get()
        .map(|s| s.runtime.clone())
        .ok_or_else(|| PyRuntimeError::new_err("sagemaker_hf_server runs inside the server only"))
}

/// `pipeline(task=None, model=None, device=None)`: the native pipeline for a model folder
/// (default: the one whose `model_fn` is running) and task (default: `HF_TASK`, else inferred
/// from its `config.json`). For the folder being served with its own task, the served pipeline.
#[pyfunction]
#[pyo3(signature = (task=None, model=None, device=None))]
fn pipeline(
    py: Python<'_>,
    task: Option<String>,
    model: Option<PathBuf>,
    device: Option<&Bound<'_, PyAny>>,
) -> PyResult<NativePipeline> {
    let _ = device; // the server places the model (SERVER_DEVICE), as it does without a script
    let server = SERVER.get().ok_or_else(|| {
        PyRuntimeError::new_err("sagemaker_hf_server runs inside the server only")
    })?;
    let dir = match model.or_else(|| BUILDING.with(|b| b.borrow().clone())) {
        Some(dir) => dir,
        None => {
            return Err(PyTypeError::new_err(
                "pipeline() needs model=<model folder> outside model_fn",
            ))
        }
    };
    let wanted = task
        .as_deref()
        .map(crate::task::Task::from_hf_task)
        .transpose();
    let wanted = wanted.map_err(|e| PyValueError::new_err(format!("{e:#}")))?;
    let key = canonical(&dir);
    let served = SERVICES.lock().ok().and_then(|services| {
        services
            .iter()
            .filter(|(d, _)| *d == key)
            .filter_map(|(_, s)| s.upgrade())
            .find(|s| s.task.is_some() && wanted.is_none_or(|t| Some(t) == s.task))
    });
    if let Some(service) = served {
        return Ok(NativePipeline::served(&service));
    }
    let mut args = server.args.clone();
    args.task = task.or(args.task);
    let service = py
        .detach(|| {
            let _runtime = server.runtime.enter(); // the batcher's tasks
            crate::source::from_dir(&dir)
                .and_then(|files| InferenceService::load_files(&args, files))
        })
        .map_err(|e| PyValueError::new_err(format!("loading {}: {e:#}", dir.display())))?;
    Ok(NativePipeline {
        served: Weak::new(),
        owned: Some(Arc::new(service)),
    })
}

/// The server's request decoder, as the DLC's default `input_fn`: JSON and CSV bodies.
#[pyfunction]
fn decode<'py>(
    py: Python<'py>,
    input_data: &Bound<'py, PyAny>,
    content_type: Option<&str>,
) -> PyResult<Bound<'py, PyAny>> {
    let format = match content_type {
        Some("application/json") => RequestFormat::Json,
        Some("text/csv") => RequestFormat::Csv,
        other => return Err(unsupported(other.unwrap_or("None"))),
    };
    let value = if let Ok(text) = input_data.cast::<PyString>() {
        codec::decode(format, text.to_str()?.as_bytes())
    } else if let Ok(bytes) = input_data.cast::<PyBytes>() {
        codec::decode(format, bytes.as_bytes())
    } else {
        return Err(PyTypeError::new_err("input_data must be str or bytes"));
    };
    let value = value.map_err(|e| PyValueError::new_err(e.to_string()))?;
    to_python(py, &value)
}

/// The server's response encoder, as the DLC's default `output_fn`: JSON and CSV.
#[pyfunction]
fn encode(prediction: &Bound<'_, PyAny>, accept: &str) -> PyResult<String> {
    let format = match accept {
        "application/json" => ResponseFormat::Json,
        "text/csv" => ResponseFormat::Csv,
        other => return Err(unsupported(other)),
    };
    let value = from_python(prediction)?;
    let bytes = codec::encode(format, &value).map_err(|e| PyValueError::new_err(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// The toolkit's `UnsupportedFormatError` message.
fn unsupported(content_type: &str) -> PyErr {
    PyValueError::new_err(
        crate::error::ServerError::UnsupportedContentType(content_type.to_string()).to_string(),
    )
}

/// Marks the model folder whose `model_fn` runs on this thread (None: it finished).
#[pyfunction]
fn _building(model_dir: Option<PathBuf>) {
    BUILDING.with(|b| *b.borrow_mut() = model_dir);
}

#[pymodule]
pub fn sagemaker_hf_server(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<NativePipeline>()?;
    module.add_function(wrap_pyfunction!(pipeline, module)?)?;
    module.add_function(wrap_pyfunction!(decode, module)?)?;
    module.add_function(wrap_pyfunction!(encode, module)?)?;
    module.add_function(wrap_pyfunction!(_building, module)?)?;
    Ok(())
}
