//! Tasks: one module per pipeline. A task turns a request's `inputs` and `parameters` into
//! tokenized sequences plus a `finish` step that turns the model's rows into the pipeline-shaped
//! JSON the DLC returns. Adding a task is: a module here, a model in `models`, a line in `build`.

pub mod params;
pub mod text_classification;
pub mod tokenize;

use std::sync::Arc;

use anyhow::Result;
use candle_core::Device;
use serde_json::Value;

use crate::error::ServerError;
use crate::models::{BatchModel, Sequence};
use crate::source::ModelFiles;
use crate::task::Task;

pub type Finish = Box<dyn FnOnce(Vec<Vec<f32>>) -> Result<Value, ServerError> + Send>;

/// A request after pre-processing: what to compute, and how to shape the result.
pub struct Prepared {
    pub sequences: Vec<Sequence>,
    pub finish: Finish,
}

pub trait Pipeline: Send + Sync {
    fn task(&self) -> Task;
    /// `inputs` as the DLC passes them (`data.pop("inputs", data)`), `parameters` as sent.
    fn prepare(&self, inputs: Value, parameters: Option<Value>) -> Result<Prepared, ServerError>;
}

/// Settings that apply to every task.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskOptions {
    pub auto_truncate: bool,
}

/// Loads the model for `task` and the pipeline that serves it.
pub fn build(
    task: Task,
    files: &ModelFiles,
    config: &Value,
    device: &Device,
    options: TaskOptions,
) -> Result<(Arc<dyn Pipeline>, Arc<dyn BatchModel>)> {
    match task {
        Task::TextClassification => {
            let (pipeline, model) =
                text_classification::TextClassification::load(files, config, device, options)?;
            Ok((Arc::new(pipeline), Arc::new(model)))
        }
    }
}
