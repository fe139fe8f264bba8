//! `image-classification`, as `transformers` 4.51's `ImageClassificationPipeline` answers behind
//! the DLC: the top `top_k` (default 5) labels with their scores, `function_to_apply` softmax,
//! sigmoid or none (by default from `problem_type` and the label count); one list per image.

use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::image_input::parse_images;
use super::params::Params;
use super::pipeline::{list_or_single, vectors, Loading, Pipeline, Prepared};
use super::text_classification::{apply, default_function, ScoreFunction};
use crate::error::ServerError;
use crate::image::decode::decode_rgb;
use crate::image::processor::ImageProcessor;
use crate::image::resample::Rgb8;
use crate::models::vision::{load_classifier, ImageClassifier};
use crate::models::Sequence;
use crate::source::ModelFiles;
use crate::task::Task;

const TASK: &str = "image-classification";
const ACCEPTED: &[&str] = &["top_k", "function_to_apply", "timeout"];

pub struct ImageClassification {
    processor: Arc<ImageProcessor>,
    labels: Arc<Vec<String>>,
    default_function: ScoreFunction,
}

/// The image processor of a model folder (`preprocessor_config.json`).
pub fn load_processor(files: &ModelFiles) -> Result<ImageProcessor> {
    let path = files
        .optional(crate::source::PREPROCESSOR_CONFIG)
        .context("the model has no preprocessor_config.json (its image processor's settings)")?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let json =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    ImageProcessor::from_json(json)
}

impl ImageClassification {
    pub fn load(load: &Loading) -> Result<(Self, ImageClassifier)> {
        let processor = load_processor(load.files)?;
        tracing::info!("image processor: {}", processor.class);
        let model = load_classifier(load.files, load.config, load.placement)?;
        let labels = load.config.labels();
        Ok((
            ImageClassification {
                processor: Arc::new(processor),
                default_function: default_function(load.config, labels.len()),
                labels: Arc::new(labels),
            },
            model,
        ))
    }

    /// Processed images for the load-time check: two sizes and shapes.
    pub fn probe(&self) -> Result<Vec<Sequence>, ServerError> {
        probe_images(&self.processor)
    }

    fn run(
        &self,
        images: Vec<Rgb8>,
        as_list: bool,
        top_k: Option<i64>,
        function: ScoreFunction,
    ) -> Result<Prepared, ServerError> {
        let sequences = image_sequences(&self.processor, &images)?;
        let labels = self.labels.clone();
        Ok(Prepared {
            sequences,
            finish: Box::new(move |outputs| {
                let results = vectors(outputs)?
                    .iter()
                    .map(|logits| classify(logits, &labels, function, top_k))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(list_or_single(results, as_list))
            }),
        })
    }
}

/// Each image processed into a sequence of its own.
pub fn image_sequences(
    processor: &ImageProcessor,
    images: &[Rgb8],
) -> Result<Vec<Sequence>, ServerError> {
    images
        .iter()
        .map(|image| Ok(Sequence::image(processor.process(image)?)))
        .collect()
}

/// Two small processed images (grey and coloured, portrait and landscape).
pub fn probe_images(processor: &ImageProcessor) -> Result<Vec<Sequence>, ServerError> {
    let images: Vec<Rgb8> = [(40, 30), (23, 51)]
        .into_iter()
        .map(|(width, height)| Rgb8 {
            width,
            height,
            data: (0..width * height * 3)
                .map(|i| (i * 7 % 256) as u8)
                .collect(),
        })
        .collect();
    image_sequences(processor, &images)
}

/// One image per CPU forward pass: an image is already a few hundred rows for every dense
/// layer, so batching images adds no arithmetic efficiency on the CPU, only activations that
/// leave the caches and memory that grows with the batch (ViT-Base int8 on 2 cores at 16
/// clients: 6.3 images/s at 203 MiB one by one, 4.7-5.5 at 370-410 MiB in passes of up to 41).
/// With one image per pass each model worker takes one request at a time, and the others wait
/// in the shared queue, first come first served. The budget is the cost of the processor's
/// largest probe image, so that a zero-shot request's label texts share a pass of their own.
pub fn image_pass_tokens(processor: &ImageProcessor) -> Option<usize> {
    let probe = probe_images(processor).ok()?;
    probe.iter().map(Sequence::cost).max()
}

impl Pipeline for ImageClassification {
    fn task(&self) -> Task {
        Task::ImageClassification
    }

    fn prepare(&self, inputs: Value, parameters: Option<Value>) -> Result<Prepared, ServerError> {
        let mut params = Params::new(parameters, TASK)?;
        let top_k = match params.take("top_k") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(b as i64),
            Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64(),
            Some(other) => return Err(params.invalid("top_k", "an integer", &other)),
        };
        let function = ScoreFunction::take(&mut params, self.default_function)?;
        // Only used to fetch image URLs, which this server does not do.
        params.take("timeout");
        params.finish(ACCEPTED)?;
        let (as_list, images) = parse_images(inputs, TASK)?;
        self.run(images, as_list, top_k, function)
    }

    fn prepare_image(&self, body: &[u8]) -> Result<Prepared, ServerError> {
        let image = decode_rgb(body)?;
        self.run(vec![image], false, None, self.default_function)
    }

    fn accepts_csv(&self) -> bool {
        false
    }
    fn cpu_pass_tokens(&self) -> Option<usize> {
        image_pass_tokens(&self.processor)
    }
}

/// `postprocess`: scores in f32, sorted (stable) high to low, `[:top_k]` with top_k capped at
/// the label count (default 5).
fn classify(
    logits: &[f32],
    labels: &[String],
    function: ScoreFunction,
    top_k: Option<i64>,
) -> Result<Value, ServerError> {
    let scores = apply(function, logits);
    if scores.iter().any(|s| !s.is_finite()) {
        return Err(ServerError::bad_request(
            "Out of range float values are not JSON compliant",
        ));
    }
    let mut ranked: Vec<(usize, f32)> = scores.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let len = ranked.len() as i64;
    let k = top_k.unwrap_or(5).min(len);
    let end = if k < 0 { (len + k).max(0) } else { k };
    ranked.truncate(end as usize);
    Ok(Value::Array(
        ranked
            .into_iter()
            .map(|(i, s)| {
                let label = labels
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("LABEL_{i}"));
                json!({"label": label, "score": s as f64})
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_pass_holds_one_image_of_the_processor_size() {
        let processor = |side: usize| {
            ImageProcessor::from_json(json!({
                "image_processor_type": "ViTImageProcessor",
                "do_resize": true, "size": {"height": side, "width": side},
                "do_rescale": true, "rescale_factor": 1.0 / 255.0,
                "do_normalize": true, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            }))
            .unwrap()
        };
        // 3 x 224 x 224 values / 768 = 196 (ViT-Base/16's patches); 384: 576.
        assert_eq!(image_pass_tokens(&processor(224)), Some(196));
        assert_eq!(image_pass_tokens(&processor(384)), Some(576));
    }

    #[test]
    fn top_k_is_capped_and_negative_drops_from_the_end() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let names = |v: Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x["label"].as_str().unwrap().to_string())
                .collect()
        };
        let logits = [0.1, 2.0, 1.0];
        assert_eq!(
            names(classify(&logits, &labels, ScoreFunction::Softmax, None).unwrap()),
            ["b", "c", "a"]
        );
        assert_eq!(
            names(classify(&logits, &labels, ScoreFunction::None, Some(-1)).unwrap()),
            ["b", "c"]
        );
        assert_eq!(
            names(classify(&logits, &labels, ScoreFunction::None, Some(0)).unwrap()).len(),
            0
        );
    }
}
