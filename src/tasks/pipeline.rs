//! What every encoder pipeline is: a [`Pipeline`] that prepares a request into sequences and a
//! [`Finish`] step, and the helpers the pipelines share for inputs and outputs.

use anyhow::Result as LoadResult;
use serde_json::Value;

use super::params::json_type;
pub use super::tokenize::TaskOptions;
use super::tokenize::TextEncoder;
use crate::device::Placement;
use crate::error::ServerError;
use crate::models::config::ModelConfig;
use crate::models::encoder_model::{EncoderModel, HeadKind};
use crate::models::{Output, Sequence};
use crate::source::ModelFiles;
use crate::task::Task;

/// Turns the model's outputs (one per sequence, in order) into the pipeline's JSON.
pub type Finish = Box<dyn FnOnce(Vec<Output>) -> Result<Value, ServerError> + Send>;

/// A request after pre-processing: what to compute, and how to shape the result.
pub struct Prepared {
    pub sequences: Vec<Sequence>,
    pub finish: Finish,
}

pub trait Pipeline: Send + Sync {
    fn task(&self) -> Task;
    /// `inputs` as the DLC passes them (`data.pop("inputs", data)`), `parameters` as sent.
    fn prepare(&self, inputs: Value, parameters: Option<Value>) -> Result<Prepared, ServerError>;
    /// A raw `image/*` body: the DLC's `{"inputs": <PIL image>}`, without parameters. Only the
    /// image tasks take one.
    fn prepare_image(&self, _body: &[u8]) -> Result<Prepared, ServerError> {
        Err(ServerError::bad_request(format!(
            "{} takes a JSON body (application/json) or CSV; an image body is for the image tasks",
            self.task()
        )))
    }
    /// Whether `text/csv` request bodies are decoded for this task.
    fn accepts_csv(&self) -> bool {
        true
    }
    /// The token budget of a CPU forward pass where the server's default (`MAX_BATCH_TOKENS`)
    /// does not suit the task; `None` keeps the default.
    fn cpu_pass_tokens(&self) -> Option<usize> {
        None
    }
}

/// What a pipeline loads from: the model's files and config, where it runs, the options.
pub struct Loading<'a> {
    pub files: &'a ModelFiles,
    pub config: &'a ModelConfig,
    pub placement: &'a Placement,
    pub options: TaskOptions,
}

impl Loading<'_> {
    /// The encoder with `head`, and its tokenizer set up for its positions.
    pub fn encoder(&self, head: HeadKind) -> LoadResult<(EncoderModel, TextEncoder)> {
        let model = EncoderModel::load(self.files, self.config, self.placement, head)?;
        let encoder = TextEncoder::for_encoder(self.files, model.config(), self.options)?;
        Ok((model, encoder))
    }
}

/// The vectors of a sequence-level head, one per sequence.
pub fn vectors(outputs: Vec<Output>) -> Result<Vec<Vec<f32>>, ServerError> {
    outputs.into_iter().map(Output::into_vector).collect()
}

/// Each sequence's per-position rows of `width` values, flat.
pub fn rows(outputs: Vec<Output>, width: usize) -> Result<Vec<Vec<f32>>, ServerError> {
    outputs.into_iter().map(|o| o.into_rows(width)).collect()
}

/// `inputs` of the pipelines that take one text or a list of texts: `(is_list, texts)`.
pub fn parse_texts(inputs: Value, task: &str) -> Result<(bool, Vec<String>), ServerError> {
    let bad = |what: &str| {
        ServerError::bad_request(format!(
            "{task} takes `inputs` as a string or a list of strings, got {what}"
        ))
    };
    match inputs {
        Value::String(text) => Ok((false, vec![text])),
        Value::Array(items) => {
            let texts = items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(bad(&format!("a list holding {}", json_type(&other)))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((true, texts))
        }
        other => Err(bad(json_type(&other))),
    }
}

/// The pipelines' outer shape: the list of per-input results, or the one result alone.
pub fn list_or_single(mut results: Vec<Value>, as_list: bool) -> Value {
    if as_list {
        Value::Array(results)
    } else {
        results.pop().unwrap_or(Value::Null)
    }
}

/// A float32 result as Python prints it after `.tolist()` / `.item()`.
pub fn score(value: f32) -> Value {
    Value::from(value as f64)
}
