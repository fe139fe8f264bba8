//! `object-detection` (DETR, YOLOS), as `transformers` 4.51's `ObjectDetectionPipeline` answers behind the
//! DLC: per query, softmax over the labels and "no object", the best real label's score; those
//! above `threshold` (default 0.5, strictly above), in query order, as
//! `{"score", "label", "box": {"xmin", "ymin", "xmax", "ymax"}}` with the box in the original
//! image's pixels, truncated to ints as `box.int()` does (`post_process_object_detection`).

use std::sync::Arc;

use anyhow::Result;
use serde_json::{json, Value};

use super::image_classification::{
    image_pass_tokens, image_sequences, load_processor, probe_images,
};
use super::image_input::parse_images;
use super::params::Params;
use super::pipeline::{list_or_single, score, Loading, Pipeline, Prepared};
use crate::error::ServerError;
use crate::image::decode::decode_rgb;
use crate::image::processor::ImageProcessor;
use crate::image::resample::Rgb8;
use crate::models::vision::{detr::Detr, yolos::Yolos};
use crate::models::{BatchModel, Output, Sequence};
use crate::task::Task;

const TASK: &str = "object-detection";
const DEFAULT_THRESHOLD: f64 = 0.5;

pub struct ObjectDetection {
    processor: Arc<ImageProcessor>,
    labels: Arc<Vec<String>>,
}

impl ObjectDetection {
    pub fn load(load: &Loading) -> Result<(Self, Arc<dyn BatchModel>)> {
        let processor = load_processor(load.files)?;
        let model: Arc<dyn BatchModel> = match load.config.model_type.as_str() {
            "yolos" => Arc::new(Yolos::load(load.files, load.config, load.placement)?),
            _ => Arc::new(Detr::load(load.files, load.config, load.placement)?),
        };
        Ok((
            ObjectDetection {
                processor: Arc::new(processor),
                labels: Arc::new(load.config.labels()),
            },
            model,
        ))
    }

    /// Processed images for the load-time check.
    pub fn probe(&self) -> Result<Vec<Sequence>, ServerError> {
        probe_images(&self.processor)
    }

    fn run(
        &self,
        images: Vec<Rgb8>,
        as_list: bool,
        threshold: f64,
    ) -> Result<Prepared, ServerError> {
        let sequences = image_sequences(&self.processor, &images)?;
        let sizes: Vec<(usize, usize)> = images.iter().map(|i| (i.width, i.height)).collect();
        let labels = self.labels.clone();
        Ok(Prepared {
            sequences,
            finish: Box::new(move |outputs| {
                let results = outputs
                    .into_iter()
                    .zip(&sizes)
                    .map(|(output, &size)| detections(output, &labels, size, threshold))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(list_or_single(results, as_list))
            }),
        })
    }
}

/// One image's detections from its rows (per query: the logits of every label and "no object",
/// then the box as centre x, centre y, width, height in [0, 1]).
fn detections(
    output: Output,
    labels: &[String],
    (width, height): (usize, usize),
    threshold: f64,
) -> Result<Value, ServerError> {
    let classes = labels.len() + 1;
    let (values, row) = output.into_rows_any()?;
    if row != classes + 4 {
        return Err(ServerError::Internal(format!(
            "the detector answered rows of {row} values for {} labels",
            labels.len()
        )));
    }
    let threshold = threshold as f32;
    let (w, h) = (width as f32, height as f32);
    let mut found = Vec::new();
    for query in values.chunks_exact(row) {
        let probs = crate::kernels::softmax(&query[..classes]);
        // `prob[..., :-1].max(-1)`: the first best real label.
        let (label, best) =
            probs[..classes - 1]
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |acc, (i, &p)| {
                        if p > acc.1 {
                            (i, p)
                        } else {
                            acc
                        }
                    },
                );
        // `s > threshold`: NaN scores are dropped too.
        if best.partial_cmp(&threshold) != Some(std::cmp::Ordering::Greater) {
            continue;
        }
        let [cx, cy, bw, bh] = [
            query[classes],
            query[classes + 1],
            query[classes + 2],
            query[classes + 3],
        ];
        let corner = |v: f32, scale: f32| (v * scale) as i32;
        found.push(json!({
            "score": score(best),
            "label": labels[label],
            "box": {
                "xmin": corner(cx - 0.5 * bw, w),
                "ymin": corner(cy - 0.5 * bh, h),
                "xmax": corner(cx + 0.5 * bw, w),
                "ymax": corner(cy + 0.5 * bh, h),
            },
        }));
    }
    Ok(Value::Array(found))
}

impl Pipeline for ObjectDetection {
    fn task(&self) -> Task {
        Task::ObjectDetection
    }

    fn prepare(&self, inputs: Value, parameters: Option<Value>) -> Result<Prepared, ServerError> {
        let mut params = Params::new(parameters, TASK)?;
        let threshold = match params.take("threshold") {
            None => DEFAULT_THRESHOLD,
            Some(Value::Bool(b)) => b as u8 as f64,
            Some(Value::Number(n)) if n.as_f64().is_some() => {
                n.as_f64().unwrap_or(DEFAULT_THRESHOLD)
            }
            Some(other) => return Err(params.invalid("threshold", "a number", &other)),
        };
        // Only used to fetch image URLs, which this server does not do.
        params.take("timeout");
        params.finish(&["threshold", "timeout"])?;
        let (as_list, images) = parse_images(inputs, TASK)?;
        self.run(images, as_list, threshold)
    }

    fn prepare_image(&self, body: &[u8]) -> Result<Prepared, ServerError> {
        self.run(vec![decode_rgb(body)?], false, DEFAULT_THRESHOLD)
    }

    fn accepts_csv(&self) -> bool {
        false
    }
    fn cpu_pass_tokens(&self) -> Option<usize> {
        image_pass_tokens(&self.processor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detections_keep_query_order_and_truncate_boxes() {
        let labels: Vec<String> = vec!["cat".into(), "dog".into()];
        // Query 0: dog, box centred at (0.5, 0.5), 0.5 x 0.25. Query 1: mostly "no object".
        // Query 2: cat, box past the left edge (a negative xmin, truncated towards zero).
        let values = vec![
            0.0, 3.0, 0.0, 0.5, 0.5, 0.5, 0.25, //
            0.0, 0.0, 5.0, 0.5, 0.5, 0.1, 0.1, //
            4.0, 0.0, 0.0, 0.05, 0.5, 0.2, 0.2,
        ];
        let output = Output::Rows { values, width: 7 };
        let got = detections(output, &labels, (101, 40), 0.5).unwrap();
        let got = got.as_array().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0]["label"], "dog");
        assert_eq!(
            got[0]["box"],
            json!({"xmin": 25, "ymin": 15, "xmax": 75, "ymax": 25})
        );
        assert_eq!(got[1]["label"], "cat");
        assert_eq!(got[1]["box"]["xmin"], -5);
        assert_eq!(got[1]["box"]["xmax"], 15);
    }
}
