//! `image-feature-extraction` (ViT, DINOv2, DeiT, ResNet, ConvNeXt base models), as
//! `transformers` 4.51's pipeline answers behind the DLC: the last hidden state
//! `[[[f, ...] x tokens]]` (batch of one, as `.tolist()` writes it; a convolutional network's
//! `[[[[f, ...] x width] x height] x channels]`), or with `"pool": true` the pooler output
//! `[[f, ...]]` (ResNet's `[[[[f]] x channels]]`); a list of them for a list of images.

use std::sync::Arc;

use anyhow::Result;
use serde_json::Value;

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
use crate::models::vision::{load_features, ImageFeatures, PooledMaps};
use crate::models::{Output, Sequence};
use crate::task::Task;

const TASK: &str = "image-feature-extraction";

pub struct ImageFeatureExtraction {
    processor: Arc<ImageProcessor>,
    has_pooler: bool,
    /// A convolutional network's pooler shape: its outputs are maps.
    maps: Option<PooledMaps>,
}

impl ImageFeatureExtraction {
    pub fn load(load: &Loading) -> Result<(Self, ImageFeatures)> {
        let processor = load_processor(load.files)?;
        let model = load_features(load.files, load.config, load.placement)?;
        Ok((
            ImageFeatureExtraction {
                processor: Arc::new(processor),
                has_pooler: model.has_pooler(),
                maps: model.feature_maps(),
            },
            model,
        ))
    }

    pub fn probe(&self) -> Result<Vec<Sequence>, ServerError> {
        probe_images(&self.processor)
    }

    fn run(&self, images: Vec<Rgb8>, as_list: bool, pool: bool) -> Result<Prepared, ServerError> {
        if pool && !self.has_pooler {
            return Err(ServerError::bad_request(
                "No pooled output was returned. Make sure the model has a `pooler` layer when using the `pool` option.",
            ));
        }
        let sequences = image_sequences(&self.processor, &images)?;
        let (has_pooler, maps) = (self.has_pooler, self.maps);
        Ok(Prepared {
            sequences,
            finish: Box::new(move |outputs| {
                let results = outputs
                    .into_iter()
                    .map(|output| features(output, has_pooler, maps, pool))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(list_or_single(results, as_list))
            }),
        })
    }
}

/// One image's answer: `[hidden rows]` or `[pooled]`, inside the batch-of-one list. A
/// convolutional network's rows are its maps' rows, channel after channel, then its pooled
/// values, one per channel.
fn features(
    output: Output,
    has_pooler: bool,
    maps: Option<PooledMaps>,
    pool: bool,
) -> Result<Value, ServerError> {
    let (mut values, width) = output.into_rows_any()?;
    let list = |values: &[f32]| Value::Array(values.iter().map(|&v| score(v)).collect());
    let Some(maps) = maps else {
        let mut rows: Vec<Value> = values.chunks_exact(width.max(1)).map(list).collect();
        let pooled = if has_pooler { rows.pop() } else { None };
        return Ok(Value::Array(vec![if pool {
            pooled.unwrap_or(Value::Null)
        } else {
            Value::Array(rows)
        }]));
    };
    let pooled = values.split_off(values.len().saturating_sub(maps.channels));
    let answer = match (pool, maps.grid) {
        (true, true) => Value::Array(
            pooled
                .iter()
                .map(|&v| Value::Array(vec![Value::Array(vec![score(v)])]))
                .collect(),
        ),
        (true, false) => list(&pooled),
        (false, _) => {
            let plane = values.len() / maps.channels.max(1);
            Value::Array(
                values
                    .chunks_exact(plane.max(1))
                    .map(|map| Value::Array(map.chunks_exact(width.max(1)).map(list).collect()))
                    .collect(),
            )
        }
    };
    Ok(Value::Array(vec![answer]))
}

impl Pipeline for ImageFeatureExtraction {
    fn task(&self) -> Task {
        Task::ImageFeatureExtraction
    }

    fn prepare(&self, inputs: Value, parameters: Option<Value>) -> Result<Prepared, ServerError> {
        let mut params = Params::new(parameters, TASK)?;
        let pool = match params.take("pool") {
            None | Some(Value::Null) => false,
            // The pipeline tests truthiness.
            Some(Value::Bool(b)) => b,
            Some(Value::Number(n)) => n.as_f64() != Some(0.0),
            Some(Value::String(s)) => !s.is_empty(),
            Some(other) => return Err(params.invalid("pool", "true or false", &other)),
        };
        // `return_tensors`: the DLC encodes the tensor as the same nested list.
        params.take("return_tensors");
        params.take("timeout");
        match params.take("image_processor_kwargs") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) if map.is_empty() => {}
            Some(other) => {
                return Err(params.invalid(
                    "image_processor_kwargs",
                    "absent or {} (not supported yet)",
                    &other,
                ))
            }
        }
        params.ignore_rest();
        let (as_list, images) = parse_images(inputs, TASK)?;
        self.run(images, as_list, pool)
    }

    fn prepare_image(&self, body: &[u8]) -> Result<Prepared, ServerError> {
        self.run(vec![decode_rgb(body)?], false, false)
    }

    fn accepts_csv(&self) -> bool {
        false
    }
    fn cpu_pass_tokens(&self) -> Option<usize> {
        image_pass_tokens(&self.processor)
    }
}
