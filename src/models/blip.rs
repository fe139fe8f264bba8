//! BLIP's captioner (`BlipForConditionalGeneration`, e.g. Salesforce/blip-image-captioning-base
//! and -large): the vision transformer of `vision::blip` and a BERT-style text decoder
//! (`text_decoder.bert.*`: post-norm layers with self-attention, cross-attention to every image
//! position, a feed-forward block; `text_decoder.cls.predictions`: BERT's LM head).
//!
//! `generate` as BLIP runs it: the decoder starts from `bos_token_id` (`[DEC]`), followed by a
//! prompt's tokens where one is given (tokenized with special tokens: `[DEC]` takes the place of
//! `[CLS]` and the closing `[SEP]` is dropped), and stops at `sep_token_id`. The two networks
//! run as a [`Captioner`].

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::captioner::Captioner;
use super::config::{Activation, ModelConfig};
use super::cross_decoder::{decode_pass, encoded_keys_values, forward_layers};
use super::cross_decoder::{ImageTextDecoder, PostNormLayer};
use super::encoder::DenseForm;
use super::layers::{activate, LayerNorm, Linear};
use super::seq2seq::{Heads, SourceCache};
use super::vision::blip::{BlipTowers, BlipVision};
use super::vision::{read_tower, vision_store};
use super::weights::WeightStore;
use super::StepInput;
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

/// BLIP's text decoder (`text_decoder.`).
struct BlipTextDecoder {
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

/// A BLIP `config.json`'s captioner: its vision model and text decoder.
pub fn load(files: &ModelFiles, model: &ModelConfig, placement: &Placement) -> Result<Captioner> {
    let towers: BlipTowers = model.family()?;
    let store = vision_store(files, placement)?;
    let vision = BlipVision::load(&towers, &store).context("the vision model")?;
    let width = vision.hidden_size();
    let decoder = BlipTextDecoder::load(&towers, &store.sub("text_decoder."), &placement.device)?;
    tracing::info!(
        "image-to-text network: BLIP, a vision transformer of width {width}, a text decoder of {} layers, vocabulary {}",
        decoder.layers.len(),
        decoder.vocab_size,
    );
    Ok(Captioner {
        encoder: Box::new(vision),
        enc_to_dec: None,
        decoder_start: decoder.bos,
        decoder: Box::new(decoder),
        model_type: "blip",
        device: placement.device.clone(),
    })
}

impl BlipTextDecoder {
    fn load(towers: &BlipTowers, decoder: &WeightStore, device: &Device) -> Result<Self> {
        let text: TextConfig =
            read_tower(towers.text_config.as_ref(), text_defaults(), "text_config")?;
        crate::models::check::heads(text.hidden_size, text.num_attention_heads)?;
        let form = DenseForm::choose(decoder, device);
        let head_dim = text.hidden_size / text.num_attention_heads;
        let layers = (0..text.num_hidden_layers)
            .map(|i| load_layer(decoder, &text, head_dim, i).map(|l| l.dense_in(form)))
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
        let norm = |name: &str| LayerNorm::load_named(decoder, name, eps, false);
        let vocab_size = word_embeddings.dim(0)?;
        tracing::info!(
            "BLIP text decoder dense layers in {}",
            DenseForm::describe(Some(&lm_head), DType::F32),
        );
        Ok(BlipTextDecoder {
            embedding_norm: norm("bert.embeddings.LayerNorm")?,
            word_embeddings,
            positions,
            layers,
            transform: Linear::load(decoder, "cls.predictions.transform.dense", false)?,
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
            device: device.clone(),
        })
    }
}

impl ImageTextDecoder for BlipTextDecoder {
    fn layers(&self) -> usize {
        self.layers.len()
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn max_positions(&self) -> usize {
        self.positions.dim(0).unwrap_or(0)
    }

    fn encoded_keys_values(&self, encoded: &Tensor) -> Result<Vec<(Tensor, Tensor)>> {
        encoded_keys_values(&self.layers, &self.heads, encoded)
    }

    /// `[DEC]`, then a prompt's tokens between its `[CLS]` and `[SEP]`.
    fn start_tokens(&self, start: u32, prompt: Option<&[u32]>) -> Option<Vec<u32>> {
        let ids = prompt.unwrap_or(&[]);
        let inner = ids.get(1..ids.len().saturating_sub(1)).unwrap_or(&[]);
        Some(
            std::iter::once(start)
                .chain(inner.iter().copied())
                .collect(),
        )
    }

    fn end_token(&self) -> Option<u32> {
        Some(self.sep)
    }

    fn decode(&self, inputs: &mut [StepInput<SourceCache>]) -> Result<Vec<Vec<f32>>> {
        let embed = |ids: &[u32], positions: Vec<u32>| -> Result<Tensor> {
            let n = ids.len();
            let ids = Tensor::from_slice(ids, n, &self.device)?;
            let positions = Tensor::from_vec(positions, n, &self.device)?;
            self.embedding_norm.forward(
                &(self.word_embeddings.index_select(&ids, 0)?
                    + self.positions.index_select(&positions, 0)?)?,
            )
        };
        let layers = |x, inputs: &mut [StepInput<SourceCache>], spans: &[_]| {
            forward_layers(&self.layers, x, inputs, spans, &self.heads, self.activation)
        };
        let head = |x: Tensor| -> Result<Tensor> {
            let x = activate(&self.transform.forward(&x)?, self.activation)?;
            self.lm_head.forward(&self.transform_norm.forward(&x)?)
        };
        let limit = ImageTextDecoder::max_positions(self);
        decode_pass(inputs, limit, &self.device, embed, layers, head)
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
