//! The image-to-text network: an image encoder's last hidden state (projected by
//! `enc_to_dec_proj` where the checkpoint has one), read by a decoder with cross-attention
//! ([`ImageTextDecoder`]): a VisionEncoderDecoder's (`vision_encoder_decoder::load`: a ViT,
//! DINOv2 or DeiT encoder with GPT-2's or TrOCR's decoder) or BLIP's (`blip::load`: its vision
//! transformer and text decoder).
//!
//! On the generation scheduler a sequence's cache holds its pixels until its first step, which
//! encodes them (every new sequence of the step: one image per encoder pass on the CPU, all at
//! once elsewhere) and feeds the decoder its start tokens; later steps feed one token. The
//! decoder runs all sequences' rows at once; attention is per sequence.

use anyhow::Result;
use candle_core::{Device, Tensor};

use super::cross_decoder::ImageTextDecoder;
use super::layers::Linear;
use super::seq2seq::{self, SourceCache};
use super::vision::ImageNetwork;
use super::{StepInput, StepModel};

pub struct Captioner {
    pub(super) encoder: Box<dyn ImageNetwork>,
    pub(super) enc_to_dec: Option<Linear>,
    pub(super) decoder: Box<dyn ImageTextDecoder>,
    /// The token `generate` starts the decoder from.
    pub(super) decoder_start: u32,
    /// As the pipeline's messages name it (`vision-encoder-decoder`, `blip`).
    pub(super) model_type: &'static str,
    pub(super) device: Device,
}

impl Captioner {
    pub fn model_type(&self) -> &'static str {
        self.model_type
    }

    /// The decoder's first tokens: its start token, then a prompt's tokens where the model takes
    /// one (`prompt`: tokenized with special tokens). `None` for a prompt the model refuses.
    pub fn start_tokens(&self, prompt: Option<&[u32]>) -> Option<Vec<u32>> {
        self.decoder.start_tokens(self.decoder_start, prompt)
    }

    /// The token `generate` stops at whatever the generation config says (BLIP's
    /// `sep_token_id`); `None`: the generation config's.
    pub fn end_token(&self) -> Option<u32> {
        self.decoder.end_token()
    }

    pub fn vocab_size(&self) -> usize {
        self.decoder.vocab_size()
    }

    /// Positions a caption may fill (its start and prompt tokens included).
    pub fn max_positions(&self) -> usize {
        self.decoder.max_positions()
    }

    /// One processed image (f32 [channels, height, width]) as the encoder's input.
    pub fn pixels_tensor(&self, values: Vec<f32>, shape: (usize, usize, usize)) -> Result<Tensor> {
        Ok(Tensor::from_vec(values, shape, &self.device)?)
    }

    /// Encodes images [b, 3, H, W]: each one's cross-attention keys and values, per layer.
    fn encode(&self, pixels: &Tensor) -> Result<Vec<Vec<(Tensor, Tensor)>>> {
        let hidden = self.encoder.hidden_states(pixels)?;
        let (batch, positions, width) = hidden.dims3()?;
        let mut x = hidden.reshape((batch * positions, width))?;
        if let Some(projection) = &self.enc_to_dec {
            x = projection.forward(&x)?;
        }
        (0..batch)
            .map(|b| {
                self.decoder
                    .encoded_keys_values(&x.narrow(0, b * positions, positions)?)
            })
            .collect()
    }
}

impl StepModel for Captioner {
    type Cache = SourceCache;

    fn new_cache(&self) -> SourceCache {
        SourceCache::default()
    }

    fn cache_with_source(&self, source: &Tensor) -> SourceCache {
        SourceCache::with_source(source)
    }

    fn step(&self, inputs: &mut [StepInput<SourceCache>]) -> Result<Vec<Vec<f32>>> {
        seq2seq::start_sequences(inputs, self.decoder.layers(), |pixels| {
            seq2seq::encode_in_passes(pixels, &self.device, |batch| self.encode(batch))
        })?;
        self.decoder.decode(inputs)
    }
}
