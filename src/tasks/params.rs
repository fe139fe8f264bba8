//! `parameters` of a request: a JSON object whose keys the task takes one by one; whatever is
//! left is an unknown parameter and a 400 that names what is accepted (the DLC forwards unknown
//! names to the tokenizer, which fails with a Python TypeError).

use serde_json::{Map, Value};

use crate::error::{cut, ServerError};

pub struct Params {
    map: Map<String, Value>,
    task: &'static str,
}

pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Params {
    /// `null` and a missing key behave like `{}`, as in the DLC.
    pub fn new(parameters: Option<Value>, task: &'static str) -> Result<Self, ServerError> {
        let map = match parameters {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map,
            Some(other) => {
                return Err(ServerError::bad_request(format!(
                    "`parameters` must be a JSON object, got {}",
                    json_type(&other)
                )))
            }
        };
        Ok(Params { map, task })
    }

    /// The task whose parameters these are, for error messages.
    pub fn task(&self) -> &'static str {
        self.task
    }

    pub fn contains(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    pub fn take(&mut self, key: &str) -> Option<Value> {
        self.map.shift_remove(key)
    }

    /// An optional non-negative integer; `null` counts as absent.
    pub fn take_usize(&mut self, key: &str) -> Result<Option<usize>, ServerError> {
        match self.take(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64().map(|v| v as usize)),
            Some(other) => Err(self.invalid(key, "a non-negative integer", &other)),
        }
    }

    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>, ServerError> {
        match self.take(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(self.invalid(key, "true or false", &other)),
        }
    }

    pub fn invalid(&self, key: &str, expected: &str, got: &Value) -> ServerError {
        ServerError::bad_request(format!(
            "parameter `{key}` of {} must be {expected}, got {}",
            self.task,
            compact(got)
        ))
    }

    /// Fails on any parameter the task did not take.
    pub fn finish(self, accepted: &[&str]) -> Result<(), ServerError> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(unknown) => Err(ServerError::bad_request(format!(
                "unknown parameter `{}` for {}; accepted parameters: {}",
                cut(unknown, 60),
                self.task,
                accepted.join(", ")
            ))),
        }
    }
}

impl Params {
    /// What the pipelines that drop unknown keyword arguments (question-answering,
    /// feature-extraction, zero-shot-classification) do with the rest: nothing. Logged, so a
    /// misspelt name can be found.
    pub fn ignore_rest(self) {
        if !self.map.is_empty() {
            let names: Vec<String> = self.map.keys().map(|k| cut(k, 60)).collect();
            tracing::info!(
                task = self.task,
                "parameters ignored, as the pipeline ignores them: {}",
                names.join(", ")
            );
        }
    }
}

/// A value as JSON text, cut to 60 characters (error messages never echo a whole input).
pub fn compact(value: &Value) -> String {
    cut(&value.to_string(), 60)
}
