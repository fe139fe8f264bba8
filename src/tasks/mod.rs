//! Tasks: one module per pipeline. A task turns a request's `inputs` and `parameters` into
//! tokenized sequences plus a `finish` step that turns the model's rows into the pipeline-shaped
//! JSON the DLC returns. Adding a task is: a module here, a model in `models`, a line in `build`.

pub mod automatic_speech_recognition;
pub mod chat;
pub mod feature_extraction;
pub mod fill_mask;
pub mod image_classification;
pub mod image_feature_extraction;
mod image_input;
pub mod image_to_text;
pub mod object_detection;
mod offset_mapping;
pub mod params;
pub mod pipeline;
pub mod question_answering;
pub mod sentence;
pub mod text_classification;
pub mod text_to_image;
pub mod token_classification;
pub mod tokenize;
pub mod tokenizer_info;
pub mod tokenizer_kwargs;
pub mod zero_shot_classification;
pub mod zero_shot_image_classification;

use std::sync::Arc;

use anyhow::Result;

pub use self::pipeline::{Finish, Loading, Pipeline, Prepared, TaskOptions};
use crate::device::Placement;
use crate::models::config::ModelConfig;
use crate::models::BatchModel;
use crate::source::ModelFiles;
use crate::task::Task;

/// Loads the model for `task` and the pipeline that serves it.
pub fn build(
    task: Task,
    files: &ModelFiles,
    config: &ModelConfig,
    placement: &Placement,
    options: TaskOptions,
) -> Result<(Arc<dyn Pipeline>, Arc<dyn BatchModel>)> {
    fn boxed<P: Pipeline + 'static, M: BatchModel + 'static>(
        (pipeline, model): (P, M),
    ) -> (Arc<dyn Pipeline>, Arc<dyn BatchModel>) {
        (Arc::new(pipeline), Arc::new(model))
    }
    let l = &Loading {
        files,
        config,
        placement,
        options,
    };
    let (pipeline, model) = match task {
        Task::TextClassification => boxed(text_classification::TextClassification::load(l)?),
        Task::TokenClassification => boxed(token_classification::TokenClassification::load(l)?),
        Task::QuestionAnswering => boxed(question_answering::QuestionAnswering::load(l)?),
        Task::FillMask => boxed(fill_mask::FillMask::load(l)?),
        Task::FeatureExtraction => boxed(feature_extraction::FeatureExtraction::load(l)?),
        Task::ZeroShotClassification => {
            boxed(zero_shot_classification::ZeroShotClassification::load(l)?)
        }
        Task::SentenceEmbeddings => boxed(sentence::SentenceEmbeddings::load(l)?),
        Task::SentenceSimilarity => boxed(sentence::SentenceSimilarity::load(l)?),
        Task::SentenceRanking => boxed(sentence::SentenceRanking::load(l)?),
        Task::ImageClassification => {
            let (pipeline, model) = image_classification::ImageClassification::load(l)?;
            let probe = pipeline.probe()?;
            crate::models::check::probe_with(&model, &probe, Some(config.labels().len()))?;
            return Ok((Arc::new(pipeline), Arc::new(model)));
        }
        Task::ImageFeatureExtraction => {
            let (pipeline, model) = image_feature_extraction::ImageFeatureExtraction::load(l)?;
            crate::models::check::probe_with(&model, &pipeline.probe()?, None)?;
            return Ok((Arc::new(pipeline), Arc::new(model)));
        }
        Task::ZeroShotImageClassification => {
            let (pipeline, model) =
                zero_shot_image_classification::ZeroShotImageClassification::load(l)?;
            let probe = pipeline.probe()?;
            crate::models::check::probe_with(model.as_ref(), &probe, None)?;
            return Ok((Arc::new(pipeline), model));
        }
        Task::ObjectDetection => {
            let (pipeline, model) = object_detection::ObjectDetection::load(l)?;
            crate::models::check::probe_with(model.as_ref(), &pipeline.probe()?, None)?;
            return Ok((Arc::new(pipeline), model));
        }
        Task::TextGeneration
        | Task::Text2TextGeneration
        | Task::Summarization
        | Task::Translation
        | Task::AutomaticSpeechRecognition
        | Task::ImageToText
        | Task::TextToImage => {
            anyhow::bail!("{task} is served by the generation engine, not an encoder pipeline")
        }
    };
    // Classifier heads give one score per `id2label` entry; the others have no label count.
    let labels = matches!(
        task,
        Task::TextClassification | Task::TokenClassification | Task::ZeroShotClassification
    )
    .then(|| config.labels().len());
    crate::models::check::probe_encoder(model.as_ref(), labels)?;
    Ok((pipeline, model))
}
