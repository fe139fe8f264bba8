//! BLIP's captioner (`BlipForConditionalGeneration`, e.g. Salesforce/blip-image-captioning-base
//! and -large): the vision transformer of `vision::blip` and a BERT-style text decoder
//! (`text_decoder.bert.*`: post-norm layers with self-attention, cross-attention to every image
//! position, a feed-forward block; `text_decoder.cls.predictions`: BERT's LM head).
//!
//! `generate` as BLIP runs it: the decoder starts from `bos_token_id` (`[DEC]`), followed by a
//! prompt's tokens where one is given (tokenized with special tokens: `[DEC]` takes the place of
//! `[CLS]` and the closing `[SEP]` is dropped), and stops at `sep_token_id`. Sequences are
//! cached and stepped as the VisionEncoderDecoder's are (seq2seq.rs).

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::config::{Activation, ModelConfig};
use super::cross_decoder::{encoded_keys_values, PostNormLayer};
use super::encoder::DenseForm;
use super::layers::{activate, LayerNorm, Linear};
use super::seq2seq::{self, Heads, SourceCache};
use super::vision::blip::{BlipTowers, BlipVision};
use super::vision::{read_tower, vision_store};
use super::weights::WeightStore;
use super::{StepInput, StepModel};
use crate::device::Placement;
use crate::source::ModelFiles;

/// `BlipTextConfig`'s defaults (transformers 4.51), under what `text_config` sets.
fn text_defaults() -> serde_json::Value {
    serde_json::json!({
        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 8,
        "hidden_act": "gelu", "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
        "bos_token_id": 30522, "sep_token_id": 102,
    })
}

#[derive(Debug, Clone, Deserialize)]
struct TextConfig {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    hidden_act: String,
    layer_norm_eps: f64,
    max_position_embeddings: usize,
    bos_token_id: u32,
    sep_token_id: u32,
}

pub struct BlipCaptioner {
    vision: BlipVision,
    word_embeddings: Tensor,
    positions: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<PostNormLayer>,
    /// `cls.predictions.transform`: dense, activation, norm; then the vocabulary's logits.
    transform: Linear,
    transform_norm: LayerNorm,
    lm_head: Linear,
    activation: Activation,
    heads: Heads,
    bos: u32,
    sep: u32,
    vocab_size: usize,
    device: Device,
}

impl BlipCaptioner {
    pub fn load(files: &ModelFiles, model: &ModelConfig, placement: &Placement) -> Result<Self> {
        let towers: BlipTowers = model.family()?;
        let text: TextConfig =
            read_tower(towers.text_config.as_ref(), text_defaults(), "text_config")?;
        crate::models::check::heads(text.hidden_size, text.num_attention_heads)?;
        let store = vision_store(files, placement)?;
        let vision = BlipVision::load(&towers, &store).context("the vision model")?;
        let decoder = store.sub("text_decoder.");
        let form = DenseForm::choose(&decoder, &placement.device);
        let head_dim = text.hidden_size / text.num_attention_heads;
        let layers = (0..text.num_hidden_layers)
            .map(|i| load_layer(&decoder, &text, head_dim, i).map(|l| l.dense_in(form)))
            .collect::<Result<Vec<_>>>()?;
        let word_embeddings = decoder.get("bert.embeddings.word_embeddings.weight")?;
        let positions = decoder.get("bert.embeddings.position_embeddings.weight")?;
        super::check::rows(
            &positions,
            "position_embeddings.weight",
            "max_position_embeddings",
            text.max_position_embeddings,
        )?;
        // The decoder's weight is tied to the word embeddings where the file leaves it out.
        let lm_weight = if decoder.contains("cls.predictions.decoder.weight") {
            decoder.get("cls.predictions.decoder.weight")?
        } else {
            word_embeddings.clone()
        };
        let lm_head = form.convert(Linear::new(
            &lm_weight,
            &decoder.get("cls.predictions.bias")?,
        )?);
        let eps = text.layer_norm_eps;
        let norm = |name: &str| LayerNorm::load_named(&decoder, name, eps, false);
        let vocab_size = word_embeddings.dim(0)?;
        tracing::info!(
            "image-to-text network: BLIP, a vision transformer of width {}, a text decoder of {} layers, vocabulary {vocab_size}; decoder dense layers in {}",
            vision.hidden_size(),
            layers.len(),
            DenseForm::describe(Some(&lm_head), DType::F32),
        );
        Ok(BlipCaptioner {
            vision,
            embedding_norm: norm("bert.embeddings.LayerNorm")?,
            word_embeddings,
            positions,
            layers,
            transform: Linear::load(&decoder, "cls.predictions.transform.dense", false)?,
            transform_norm: norm("cls.predictions.transform.LayerNorm")?,
            lm_head,
            activation: Activation::parse(&text.hidden_act)?,
            heads: Heads {
                count: text.num_attention_heads,
                dim: head_dim,
                dtype: DType::F32,
            },
            bos: text.bos_token_id,
            sep: text.sep_token_id,
            vocab_size,
            device: placement.device.clone(),
        })
    }

    /// The token the decoder starts from (`[DEC]`).
    pub fn bos(&self) -> u32 {
        self.bos
    }

    /// Where `generate` stops (BLIP passes `sep_token_id` as its end token).
    pub fn sep(&self) -> u32 {
        self.sep
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Positions a caption may fill (its start and prompt tokens included).
    pub fn max_positions(&self) -> usize {
        self.positions.dim(0).unwrap_or(0)
    }

    /// Encodes images [b, 3, H, W]: each one's cross-attention keys and values, per layer.
    fn encode(&self, pixels: &Tensor) -> Result<Vec<Vec<(Tensor, Tensor)>>> {
        let hidden = self.vision.forward(pixels)?;
        let (batch, positions, width) = hidden.dims3()?;
        let x = hidden.reshape((batch * positions, width))?;
        (0..batch)
            .map(|b| {
                let encoded = x.narrow(0, b * positions, positions)?;
                encoded_keys_values(&self.layers, &self.heads, &encoded)
            })
            .collect()
    }

    /// One decoder pass over every sequence's new tokens; the logits after each one's last.
    fn decode(&self, inputs: &mut [StepInput<SourceCache>]) -> Result<Vec<Vec<f32>>> {
        let (ids, positions, spans) = seq2seq::spans(
            inputs.iter().map(|i| (i.cache.inner.len, i.tokens)),
            self.max_positions(),
        )?;
        let total = ids.len();
        let ids = Tensor::from_vec(ids, total, &self.device)?;
        let positions = Tensor::from_vec(positions, total, &self.device)?;
        let mut x = self.embedding_norm.forward(
            &(self.word_embeddings.index_select(&ids, 0)?
                + self.positions.index_select(&positions, 0)?)?,
        )?;
        for (l, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x, inputs, l, &spans, &self.heads, self.activation)?;
        }
        for (input, span) in inputs.iter_mut().zip(&spans) {
            input.cache.inner.len += span.n;
        }
        let last = seq2seq::last_rows(&spans, &self.device)?;
        let x = activate(
            &self.transform.forward(&x.index_select(&last, 0)?)?,
            self.activation,
        )?;
        let x = self.transform_norm.forward(&x)?;
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?.to_vec2()?)
    }
}

impl StepModel for BlipCaptioner {
    type Cache = SourceCache;

    fn new_cache(&self) -> SourceCache {
        SourceCache::default()
    }

    fn cache_with_source(&self, source: &Tensor) -> SourceCache {
        SourceCache::with_source(source)
    }

    /// The new sequences' images encoded, then a decoder pass over every sequence.
    fn step(&self, inputs: &mut [StepInput<SourceCache>]) -> Result<Vec<Vec<f32>>> {
        seq2seq::start_sequences(inputs, self.layers.len(), |pixels| {
            seq2seq::encode_in_passes(pixels, &self.device, |batch| self.encode(batch))
        })?;
        self.decode(inputs)
    }
}

/// Layer `i` of the text decoder (`bert.encoder.layer.{i}`), from the decoder's own store.
fn load_layer(
    store: &WeightStore,
    text: &TextConfig,
    head_dim: usize,
    i: usize,
) -> Result<PostNormLayer> {
    let p = format!("bert.encoder.layer.{i}");
    let pair = |name: &str| -> Result<(Tensor, Tensor)> {
        Ok((
            store.get(&format!("{p}.{name}.weight"))?,
            store.get(&format!("{p}.{name}.bias"))?,
        ))
    };
    let linear = |name: &str| Linear::load(store, &format!("{p}.{name}"), false);
    let norm = |name: &str| {
        LayerNorm::load_named(store, &format!("{p}.{name}"), text.layer_norm_eps, false)
    };
    let scale = 1.0 / (head_dim as f64).sqrt();
    let (qw, qb) = pair("crossattention.self.query")?;
    Ok(PostNormLayer {
        qkv: Linear::fused_qkv(
            [
                pair("attention.self.query")?,
                pair("attention.self.key")?,
                pair("attention.self.value")?,
            ],
            scale,
        )?,
        out: linear("attention.output.dense")?,
        norm: norm("attention.output.LayerNorm")?,
        cross_q: Linear::new(&(qw * scale)?, &(qb * scale)?)?,
        cross_k: linear("crossattention.self.key")?,
        cross_v: linear("crossattention.self.value")?,
        cross_out: linear("crossattention.output.dense")?,
        cross_norm: norm("crossattention.output.LayerNorm")?,
        fc1: linear("intermediate.dense")?,
        fc2: linear("output.dense")?,
        final_norm: norm("output.LayerNorm")?,
    })
}
