//! Tasks: one module per pipeline. A task turns a request's `inputs` and `parameters` into
//! tokenized sequences plus a `finish` step that turns the model's rows into the pipeline-shaped
//! JSON the DLC returns. Adding a task is: a module here, a model in `models`, a line in `build`.

pub mod chat;
pub mod feature_extraction;
pub mod fill_mask;
pub mod params;
pub mod question_answering;
pub mod sentence;
pub mod text_classification;
pub mod text_generation;
pub mod token_classification;
pub mod tokenize;
pub mod zero_shot_classification;

use std::sync::Arc;

use anyhow::Result;
use serde_json::Value;

use crate::device::Placement;
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
    /// Whether `text/csv` request bodies are decoded for this task.
    fn accepts_csv(&self) -> bool {
        true
    }
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
    placement: &Placement,
    options: TaskOptions,
) -> Result<(Arc<dyn Pipeline>, Arc<dyn BatchModel>)> {
    fn boxed<P: Pipeline + 'static, M: BatchModel + 'static>(
        (pipeline, model): (P, M),
    ) -> (Arc<dyn Pipeline>, Arc<dyn BatchModel>) {
        (Arc::new(pipeline), Arc::new(model))
    }
    let (f, c, d, o) = (files, config, placement, options);
    Ok(match task {
        Task::TextClassification => {
            boxed(text_classification::TextClassification::load(f, c, d, o)?)
        }
        Task::TokenClassification => {
            boxed(token_classification::TokenClassification::load(f, c, d, o)?)
        }
        Task::QuestionAnswering => boxed(question_answering::QuestionAnswering::load(f, c, d, o)?),
        Task::FillMask => boxed(fill_mask::FillMask::load(f, c, d, o)?),
        Task::FeatureExtraction => boxed(feature_extraction::FeatureExtraction::load(f, c, d, o)?),
        Task::ZeroShotClassification => boxed(
            zero_shot_classification::ZeroShotClassification::load(f, c, d, o)?,
        ),
        Task::SentenceEmbeddings => boxed(sentence::SentenceEmbeddings::load(f, c, d, o)?),
        Task::SentenceSimilarity => boxed(sentence::SentenceSimilarity::load(f, c, d, o)?),
        Task::SentenceRanking => boxed(sentence::SentenceRanking::load(f, c, d, o)?),
        Task::TextGeneration
        | Task::Text2TextGeneration
        | Task::Summarization
        | Task::Translation => {
            anyhow::bail!("{task} is served by the generation engine, not an encoder pipeline")
        }
    })
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
                    other => Err(bad(&format!(
                        "a list holding {}",
                        params::json_type(&other)
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((true, texts))
        }
        other => Err(bad(params::json_type(&other))),
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
