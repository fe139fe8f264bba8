//! The image-to-text networks behind one type for the task and the generation scheduler: a
//! VisionEncoderDecoder (`vision_encoder_decoder.rs`) or BLIP (`blip.rs`), by `model_type`.

use anyhow::Result;
use candle_core::Tensor;

use super::blip::BlipCaptioner;
use super::config::ModelConfig;
use super::seq2seq::SourceCache;
use super::vision_encoder_decoder::VisionEncoderDecoder;
use super::{StepInput, StepModel};
use crate::device::Placement;
use crate::source::ModelFiles;

pub enum Captioner {
    VisionEncoderDecoder(Box<VisionEncoderDecoder>),
    Blip(Box<BlipCaptioner>),
}

impl Captioner {
    pub fn load(files: &ModelFiles, model: &ModelConfig, placement: &Placement) -> Result<Self> {
        Ok(match model.model_type.as_str() {
            "blip" => Captioner::Blip(Box::new(BlipCaptioner::load(files, model, placement)?)),
            _ => Captioner::VisionEncoderDecoder(Box::new(VisionEncoderDecoder::load(
                files, model, placement,
            )?)),
        })
    }

    /// The `model_type` as the pipeline's messages name it.
    pub fn model_type(&self) -> &'static str {
        match self {
            Captioner::VisionEncoderDecoder(_) => "vision-encoder-decoder",
            Captioner::Blip(_) => "blip",
        }
    }

    /// The decoder's first tokens: its start token, then a prompt's tokens where the model
    /// takes one (`prompt`: tokenized with special tokens; BLIP's `generate` puts its start
    /// token in place of the first and drops the last). `None` for a prompt the model refuses.
    pub fn start_tokens(&self, prompt: Option<&[u32]>) -> Option<Vec<u32>> {
        match (self, prompt) {
            (Captioner::VisionEncoderDecoder(m), None) => Some(vec![m.decoder_start()]),
            (Captioner::VisionEncoderDecoder(_), Some(_)) => None,
            (Captioner::Blip(m), None) => Some(vec![m.bos()]),
            (Captioner::Blip(m), Some(ids)) => {
                let inner = ids.get(1..ids.len().saturating_sub(1)).unwrap_or(&[]);
                Some(
                    std::iter::once(m.bos())
                        .chain(inner.iter().copied())
                        .collect(),
                )
            }
        }
    }

    /// The token `generate` stops at when the request names none (BLIP passes its
    /// `sep_token_id`); `None`: the generation config's.
    pub fn end_token(&self) -> Option<u32> {
        match self {
            Captioner::VisionEncoderDecoder(_) => None,
            Captioner::Blip(m) => Some(m.sep()),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Captioner::VisionEncoderDecoder(m) => m.vocab_size(),
            Captioner::Blip(m) => m.vocab_size(),
        }
    }

    /// Positions a caption may fill (its start and prompt tokens included).
    pub fn max_positions(&self) -> usize {
        match self {
            Captioner::VisionEncoderDecoder(m) => m.max_positions(),
            Captioner::Blip(m) => m.max_positions(),
        }
    }

    /// One processed image (f32 [channels, height, width]) as the encoder's input.
    pub fn pixels_tensor(&self, values: Vec<f32>, shape: (usize, usize, usize)) -> Result<Tensor> {
        let device = match self {
            Captioner::VisionEncoderDecoder(m) => m.device(),
            Captioner::Blip(m) => m.device(),
        };
        Ok(Tensor::from_vec(values, shape, device)?)
    }
}

impl StepModel for Captioner {
    type Cache = SourceCache;

    fn new_cache(&self) -> SourceCache {
        SourceCache::default()
    }

    fn cache_with_source(&self, source: &Tensor) -> SourceCache {
        match self {
            Captioner::VisionEncoderDecoder(m) => m.cache_with_source(source),
            Captioner::Blip(m) => m.cache_with_source(source),
        }
    }

    fn step(&self, inputs: &mut [StepInput<SourceCache>]) -> Result<Vec<Vec<f32>>> {
        match self {
            Captioner::VisionEncoderDecoder(m) => m.step(inputs),
            Captioner::Blip(m) => m.step(inputs),
        }
    }
}
