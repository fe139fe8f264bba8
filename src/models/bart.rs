//! BART and Marian (MarianMT), the post-LN encoder–decoders of `transformers`' `modeling_bart`
//! and `modeling_marian`, as explicit tensors. They differ in their positions (BART: learned,
//! offset by 2; Marian: sinusoidal), BART's layer norm after the embeddings, Marian's embedding
//! scale (sqrt(d_model)) and their activation (GELU / SiLU).
//!
//! Sequences are cached and batched as seq2seq.rs describes.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::config::{Activation, ModelConfig};
use super::layers::{activate, LayerNorm, Linear};
use super::seq2seq::{EncoderDecoder, Heads, Seq2SeqCache};
use super::weights::WeightStore;
use super::StepInput;
use crate::device::Placement;
use crate::source::ModelFiles;

struct Attention {
    /// The 1/sqrt(head_dim) query scale folded in.
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
}

struct EncoderLayer {
    attention: Attention,
    attention_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    final_norm: LayerNorm,
}

struct DecoderLayer {
    attention: Attention,
    attention_norm: LayerNorm,
    cross: Attention,
    cross_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    final_norm: LayerNorm,
}

pub struct BartLm {
    encoder_embeddings: Tensor,
    decoder_embeddings: Tensor,
    embed_scale: f64,
    /// Position tables already offset (BART's learned positions start at row 2).
    encoder_positions: Tensor,
    decoder_positions: Tensor,
    encoder_embedding_norm: Option<LayerNorm>,
    decoder_embedding_norm: Option<LayerNorm>,
    encoder: Vec<EncoderLayer>,
    decoder: Vec<DecoderLayer>,
    lm_head: Linear,
    final_logits_bias: Option<Tensor>,
    activation: Activation,
    heads: Heads,
    max_positions: usize,
    decoder_start: u32,
    device: Device,
}

/// A BART / Marian checkpoint's tensors under their `transformers` names.
struct BartWeights<'a> {
    store: &'a WeightStore,
    /// `model.` in `*ForConditionalGeneration` / `MarianMTModel` checkpoints.
    prefix: &'static str,
    /// The 1/sqrt(head_dim) attention scale, folded into the query projections.
    scale: f64,
}

impl BartWeights<'_> {
    fn get(&self, name: &str) -> Result<Tensor> {
        self.store.get(&format!("{}{name}", self.prefix))
    }

    fn norm(&self, name: &str) -> Result<LayerNorm> {
        LayerNorm::load_named(self.store, &format!("{}{name}", self.prefix), 1e-5, false)
    }

    fn linear(&self, name: &str) -> Result<Linear> {
        Linear::load(self.store, &format!("{}{name}", self.prefix), false)
    }

    fn attention(&self, p: &str) -> Result<Attention> {
        let q_weight = (self.get(&format!("{p}.q_proj.weight"))? * self.scale)?;
        let q_bias = (self.get(&format!("{p}.q_proj.bias"))? * self.scale)?;
        Ok(Attention {
            q: Linear::new(&q_weight, &q_bias)?,
            k: self.linear(&format!("{p}.k_proj"))?,
            v: self.linear(&format!("{p}.v_proj"))?,
            out: self.linear(&format!("{p}.out_proj"))?,
        })
    }

    fn encoder_layer(&self, i: usize) -> Result<EncoderLayer> {
        let p = format!("encoder.layers.{i}");
        Ok(EncoderLayer {
            attention: self.attention(&format!("{p}.self_attn"))?,
            attention_norm: self.norm(&format!("{p}.self_attn_layer_norm"))?,
            fc1: self.linear(&format!("{p}.fc1"))?,
            fc2: self.linear(&format!("{p}.fc2"))?,
            final_norm: self.norm(&format!("{p}.final_layer_norm"))?,
        })
    }

    fn decoder_layer(&self, i: usize) -> Result<DecoderLayer> {
        let p = format!("decoder.layers.{i}");
        Ok(DecoderLayer {
            attention: self.attention(&format!("{p}.self_attn"))?,
            attention_norm: self.norm(&format!("{p}.self_attn_layer_norm"))?,
            cross: self.attention(&format!("{p}.encoder_attn"))?,
            cross_norm: self.norm(&format!("{p}.encoder_attn_layer_norm"))?,
            fc1: self.linear(&format!("{p}.fc1"))?,
            fc2: self.linear(&format!("{p}.fc2"))?,
            final_norm: self.norm(&format!("{p}.final_layer_norm"))?,
        })
    }
}

/// BART's and Marian's `config.json`, with `transformers`' defaults.
#[derive(Debug, Deserialize)]
struct BartConfig {
    d_model: usize,
    encoder_attention_heads: usize,
    decoder_attention_heads: usize,
    encoder_layers: usize,
    decoder_layers: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_activation")]
    activation_function: String,
    #[serde(default)]
    scale_embedding: bool,
    decoder_start_token_id: Option<u32>,
}

fn default_activation() -> String {
    "gelu".into()
}

impl BartLm {
    pub fn load(files: &ModelFiles, model: &ModelConfig, placement: &Placement) -> Result<Self> {
        let config: BartConfig = model.family()?;
        let marian = model.model_type == "marian";
        let d_model = config.d_model;
        let heads = config.encoder_attention_heads;
        if config.decoder_attention_heads != heads {
            bail!("encoder and decoder with different head counts are not supported");
        }
        let head_dim = d_model / heads;
        let max_positions = config.max_position_embeddings;
        let activation = Activation::parse(&config.activation_function)?;
        let embed_scale = if config.scale_embedding {
            (d_model as f64).sqrt()
        } else {
            1.0
        };

        let store = WeightStore::load(&files.weights, &placement.device)?.in_dtype(placement.dtype);
        // BartForConditionalGeneration / MarianMTModel keep the network under `model.`.
        let prefix = if store.contains("model.encoder.layers.0.fc1.weight") {
            "model."
        } else {
            ""
        };
        let w = BartWeights {
            store: &store,
            prefix,
            scale: 1.0 / (head_dim as f64).sqrt(),
        };
        let name = |n: &str| format!("{prefix}{n}");
        if store.contains(&name("encoder.layer_norm.weight")) {
            bail!("pre-LN encoder–decoders (mBART and the like) are not supported yet");
        }
        let get = |n: &str| w.get(n);
        let norm = |n: &str| w.norm(n);
        let encoder = (0..config.encoder_layers)
            .map(|i| w.encoder_layer(i))
            .collect::<Result<Vec<_>>>()?;
        let decoder = (0..config.decoder_layers)
            .map(|i| w.decoder_layer(i))
            .collect::<Result<Vec<_>>>()?;
        // Tied embeddings are saved under one of their names.
        let first = |names: &[&str]| -> Result<Tensor> {
            names
                .iter()
                .find(|n| store.contains(&name(n)))
                .map(|n| get(n))
                .unwrap_or_else(|| bail!("no embedding matrix among {names:?}"))
        };
        let shared = first(&["shared.weight", "encoder.embed_tokens.weight"])?;
        let decoder_embeddings = if store.contains(&name("decoder.embed_tokens.weight")) {
            get("decoder.embed_tokens.weight")?
        } else {
            shared.clone()
        };
        let lm_head = match store.get("lm_head.weight") {
            Ok(w) => Linear::no_bias(&w)?,
            Err(_) => Linear::no_bias(&decoder_embeddings)?,
        };
        let final_logits_bias = match store.get("final_logits_bias") {
            Ok(b) => Some(b.flatten_all()?.to_dtype(DType::F32)?),
            Err(_) => None,
        };
        let (encoder_positions, decoder_positions) = if marian {
            let table = sinusoidal_positions(max_positions, d_model, &placement.device)?
                .to_dtype(placement.dtype)?;
            (table.clone(), table)
        } else {
            // BartLearnedPositionalEmbedding: position p is row p + 2.
            let rows = |n: &str| -> Result<Tensor> {
                let t = get(n)?;
                let len = t.dim(0)?;
                Ok(t.narrow(0, 2, len - 2)?)
            };
            (
                rows("encoder.embed_positions.weight")?,
                rows("decoder.embed_positions.weight")?,
            )
        };
        let optional_norm = |n: &str| -> Result<Option<LayerNorm>> {
            if store.contains(&name(&format!("{n}.weight"))) {
                Ok(Some(norm(n)?))
            } else {
                Ok(None)
            }
        };
        let decoder_start = config
            .decoder_start_token_id
            .context("config.json has no `decoder_start_token_id`")?;
        tracing::info!(
            "text2text network: {}, {} encoder / {} decoder layers, vocabulary {}",
            model.model_type,
            encoder.len(),
            decoder.len(),
            shared.dim(0)?
        );
        Ok(BartLm {
            encoder_embedding_norm: optional_norm("encoder.layernorm_embedding")?,
            decoder_embedding_norm: optional_norm("decoder.layernorm_embedding")?,
            encoder_embeddings: shared,
            decoder_embeddings,
            embed_scale,
            encoder_positions,
            decoder_positions,
            encoder,
            decoder,
            lm_head,
            final_logits_bias,
            activation,
            heads: Heads {
                count: heads,
                dim: head_dim,
                dtype: placement.dtype,
            },
            max_positions,
            decoder_start,
            device: placement.device.clone(),
        })
    }

    /// Positions either side may fill (the encoder input, the decoder's tokens).
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Embeddings of `ids` at positions `start..`, scaled, plus positions, normalised.
    fn embed(
        &self,
        table: &Tensor,
        positions: &Tensor,
        norm: Option<&LayerNorm>,
        ids: &[u32],
        starts: &[usize],
    ) -> Result<Tensor> {
        let n = ids.len();
        let x = table.index_select(&Tensor::from_slice(ids, n, &self.device)?, 0)?;
        let x = if self.embed_scale != 1.0 {
            (x * self.embed_scale)?
        } else {
            x
        };
        let rows: Vec<u32> = starts.iter().map(|&p| p as u32).collect();
        let x = (x + positions.index_select(&Tensor::from_vec(rows, n, &self.device)?, 0)?)?;
        match norm {
            Some(norm) => norm.forward(&x),
            None => Ok(x),
        }
    }

    /// Encodes one sequence's tokens and keeps every decoder layer's keys and values of it.
    fn encode(&self, ids: &[u32]) -> Result<Vec<(Tensor, Tensor)>> {
        if ids.len() > self.max_positions {
            bail!(
                "the input is {} tokens long, past the model's {} positions",
                ids.len(),
                self.max_positions
            );
        }
        let positions: Vec<usize> = (0..ids.len()).collect();
        let mut x = self.embed(
            &self.encoder_embeddings,
            &self.encoder_positions,
            self.encoder_embedding_norm.as_ref(),
            ids,
            &positions,
        )?;
        for layer in &self.encoder {
            let a = &layer.attention;
            let h = &self.heads;
            let context = h.attend(
                &h.split(&a.q.forward(&x)?)?,
                &h.split(&a.k.forward(&x)?)?,
                &h.split(&a.v.forward(&x)?)?,
                None,
            )?;
            x = layer
                .attention_norm
                .forward(&(x + a.out.forward(&context)?)?)?;
            let hidden = activate(&layer.fc1.forward(&x)?, self.activation)?;
            x = layer
                .final_norm
                .forward(&(x + layer.fc2.forward(&hidden)?)?)?;
        }
        self.heads
            .encoded_keys_values(self.decoder.iter().map(|l| (&l.cross.k, &l.cross.v)), &x)
    }
}

impl EncoderDecoder for BartLm {
    fn decoder_layers(&self) -> usize {
        self.decoder.len()
    }

    fn decoder_start(&self) -> u32 {
        self.decoder_start
    }

    fn position_limit(&self) -> usize {
        self.max_positions
    }

    fn encode_input(&self, ids: &[u32]) -> Result<Vec<(Tensor, Tensor)>> {
        self.encode(ids)
    }

    fn decode(&self, inputs: &mut [StepInput<Seq2SeqCache>], ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        let starts: Vec<usize> = inputs.iter().map(|i| i.cache.len).collect();
        let mut x = self.embed(
            &self.decoder_embeddings,
            &self.decoder_positions,
            self.decoder_embedding_norm.as_ref(),
            ids,
            &starts,
        )?;
        for (l, layer) in self.decoder.iter().enumerate() {
            let a = &layer.attention;
            let (q, k, v) = (a.q.forward(&x)?, a.k.forward(&x)?, a.v.forward(&x)?);
            let h = &self.heads;
            let context = h.attend_own(inputs, l, (&q, &k, &v), None)?;
            x = layer
                .attention_norm
                .forward(&(x + a.out.forward(&context)?)?)?;

            let c = &layer.cross;
            let context = h.attend_input(inputs, l, &c.q.forward(&x)?)?;
            x = layer.cross_norm.forward(&(x + c.out.forward(&context)?)?)?;

            let hidden = activate(&layer.fc1.forward(&x)?, self.activation)?;
            x = layer
                .final_norm
                .forward(&(x + layer.fc2.forward(&hidden)?)?)?;
        }
        for input in inputs.iter_mut() {
            input.cache.len += 1;
        }
        let mut logits = self.lm_head.forward(&x)?.to_dtype(DType::F32)?;
        if let Some(bias) = &self.final_logits_bias {
            logits = logits.broadcast_add(bias)?;
        }
        Ok(logits.to_vec2()?)
    }
}

/// Marian's sinusoidal positions: for position p and j < dim / 2, sin(p / 10000^(2j / dim)) in
/// column j and cos of the same angle in column dim / 2 + j.
fn sinusoidal_positions(positions: usize, dim: usize, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    let mut table = vec![0f32; positions * dim];
    for p in 0..positions {
        for j in 0..half {
            let angle = p as f64 / 10000f64.powf((2 * j) as f64 / dim as f64);
            table[p * dim + j] = angle.sin() as f32;
            table[p * dim + half + j] = angle.cos() as f32;
        }
    }
    Ok(Tensor::from_vec(table, (positions, dim), device)?)
}
