//! TrOCR's decoder (`TrOCRForCausalLM`, the text half of `microsoft/trocr-*`'s
//! VisionEncoderDecoder, under `decoder.`): BART's post-norm decoder layers (self-attention,
//! cross-attention whose keys and values read the encoder's width, `cross_attention_hidden_size`,
//! a feed-forward block), token embeddings scaled by sqrt(d_model) where `scale_embedding` says
//! so, learned positions (offset by 2, as BART's) or fairseq's sinusoidal ones, an optional
//! norm after the embeddings, and `output_projection` to the vocabulary.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::config::{Activation, ModelConfig};
use super::cross_decoder::{decode_pass, encoded_keys_values, forward_layers};
use super::cross_decoder::{ImageTextDecoder, PostNormLayer};
use super::encoder::DenseForm;
use super::layers::{LayerNorm, Linear};
use super::seq2seq::{Heads, SourceCache};
use super::vision::read_tower;
use super::weights::WeightStore;
use super::StepInput;

/// `TrOCRConfig`'s defaults (transformers 4.51), under what the decoder's config sets.
fn defaults() -> serde_json::Value {
    serde_json::json!({
        "d_model": 1024, "decoder_layers": 12, "decoder_attention_heads": 16,
        "activation_function": "gelu", "max_position_embeddings": 512, "scale_embedding": false,
        "use_learned_position_embeddings": true, "layernorm_embedding": true,
        "pad_token_id": 1, "tie_word_embeddings": true,
    })
}

#[derive(Debug, Clone, Deserialize)]
struct TrocrConfig {
    d_model: usize,
    decoder_layers: usize,
    decoder_attention_heads: usize,
    activation_function: String,
    max_position_embeddings: usize,
    scale_embedding: bool,
    use_learned_position_embeddings: bool,
    layernorm_embedding: bool,
    pad_token_id: u32,
    /// `from_pretrained` ties `output_projection` to the token embeddings (whatever the file
    /// holds under its own name) unless this is false.
    tie_word_embeddings: bool,
}

/// How a token's position is embedded.
enum Positions {
    /// `embed_positions.weight` from its row 2 on.
    Learned(Tensor),
    /// fairseq's table: position p (from 0) at row `pad + 1 + p`; a padding token takes the
    /// zero row `pad`, as `create_position_ids_from_input_ids` gives it.
    Sinusoidal { table: Tensor, pad: u32 },
}

pub struct TrocrDecoder {
    embeddings: Tensor,
    embed_scale: f64,
    positions: Positions,
    embedding_norm: Option<LayerNorm>,
    layers: Vec<PostNormLayer>,
    output_projection: Linear,
    activation: Activation,
    heads: Heads,
    max_positions: usize,
    vocab_size: usize,
    device: Device,
}

impl TrocrDecoder {
    /// `store`: the VisionEncoderDecoder's `decoder.` tensors; `config`: its `decoder` config.
    pub fn load(store: &WeightStore, config: &ModelConfig, device: &Device) -> Result<Self> {
        let c: TrocrConfig = read_tower(Some(config.raw()), defaults(), "the decoder's config")?;
        super::check::heads(c.d_model, c.decoder_attention_heads)?;
        let head_dim = c.d_model / c.decoder_attention_heads;
        let form = DenseForm::choose(store, device);
        let layers = (0..c.decoder_layers)
            .map(|i| load_layer(store, head_dim, i).map(|l| l.dense_in(form)))
            .collect::<Result<Vec<_>>>()?;
        let p = |n: &str| format!("model.decoder.{n}");
        let embeddings = store.get(&p("embed_tokens.weight"))?;
        let max_positions = c.max_position_embeddings;
        let positions = if c.use_learned_position_embeddings {
            let table = store.get(&p("embed_positions.weight"))?;
            super::check::rows(
                &table,
                "embed_positions.weight",
                "max_position_embeddings + 2",
                max_positions + 2,
            )?;
            Positions::Learned(table.narrow(0, 2, max_positions)?)
        } else {
            let pad = c.pad_token_id;
            let rows = pad as usize + 1 + max_positions;
            Positions::Sinusoidal {
                table: sinusoidal_table(rows, c.d_model, pad as usize, device)?,
                pad,
            }
        };
        let embedding_norm = c
            .layernorm_embedding
            .then(|| LayerNorm::load_named(store, &p("layernorm_embedding"), 1e-5, false))
            .transpose()?;
        let projection = if c.tie_word_embeddings {
            embeddings.clone()
        } else {
            store
                .get("output_projection.weight")
                .context("tie_word_embeddings is false: output_projection.weight is needed")?
        };
        Ok(TrocrDecoder {
            embed_scale: if c.scale_embedding {
                (c.d_model as f64).sqrt()
            } else {
                1.0
            },
            vocab_size: embeddings.dim(0)?,
            embeddings,
            positions,
            embedding_norm,
            layers,
            output_projection: form.convert(Linear::no_bias(&projection)?),
            activation: Activation::parse(&c.activation_function)?,
            heads: Heads {
                count: c.decoder_attention_heads,
                dim: head_dim,
                dtype: DType::F32,
            },
            max_positions,
            device: device.clone(),
        })
    }

    /// The position embeddings of a pass's tokens (`ids`, at `positions`).
    fn position_rows(&self, ids: &[u32], positions: Vec<u32>) -> Result<Tensor> {
        let n = ids.len();
        Ok(match &self.positions {
            Positions::Learned(table) => {
                table.index_select(&Tensor::from_vec(positions, n, &self.device)?, 0)?
            }
            Positions::Sinusoidal { table, pad } => {
                let rows: Vec<u32> = ids
                    .iter()
                    .zip(positions)
                    .map(|(&id, p)| if id == *pad { *pad } else { pad + 1 + p })
                    .collect();
                table.index_select(&Tensor::from_vec(rows, n, &self.device)?, 0)?
            }
        })
    }
}

/// Layer `i` (`model.decoder.layers.{i}`), its query projections pre-scaled.
fn load_layer(store: &WeightStore, head_dim: usize, i: usize) -> Result<PostNormLayer> {
    let p = |n: &str| format!("model.decoder.layers.{i}.{n}");
    let scale = 1.0 / (head_dim as f64).sqrt();
    let linear = |n: &str| Linear::load(store, &p(n), false);
    let norm = |n: &str| LayerNorm::load_named(store, &p(n), 1e-5, false);
    let pair = |n: &str, factor: f64| -> Result<(Tensor, Tensor)> {
        Ok((
            (store.get(&p(&format!("{n}.weight")))? * factor)?,
            (store.get(&p(&format!("{n}.bias")))? * factor)?,
        ))
    };
    let (qw, qb) = pair("encoder_attn.q_proj", scale)?;
    Ok(PostNormLayer {
        qkv: Linear::fused_qkv(
            [
                pair("self_attn.q_proj", 1.0)?,
                pair("self_attn.k_proj", 1.0)?,
                pair("self_attn.v_proj", 1.0)?,
            ],
            scale,
        )?,
        out: linear("self_attn.out_proj")?,
        norm: norm("self_attn_layer_norm")?,
        cross_q: Linear::new(&qw, &qb)?,
        cross_k: linear("encoder_attn.k_proj")?,
        cross_v: linear("encoder_attn.v_proj")?,
        cross_out: linear("encoder_attn.out_proj")?,
        cross_norm: norm("encoder_attn_layer_norm")?,
        fc1: linear("fc1")?,
        fc2: linear("fc2")?,
        final_norm: norm("final_layer_norm")?,
    })
}

/// fairseq's sinusoidal table as `TrOCRSinusoidalPositionalEmbedding.get_embedding` computes it
/// (in f32): row p holds sin(p f_i) for i < dim / 2, then cos(p f_i), with f_i =
/// exp(-i ln(10000) / (dim / 2 - 1)); an odd width ends in a zero column; row `pad` is zero.
fn sinusoidal_table(rows: usize, dim: usize, pad: usize, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    let step = (10000f64.ln() / (half.max(2) - 1) as f64) as f32;
    let frequencies: Vec<f32> = (0..half).map(|i| (i as f32 * -step).exp()).collect();
    let mut table = vec![0f32; rows * dim];
    for p in (0..rows).filter(|&p| p != pad) {
        let row = &mut table[p * dim..(p + 1) * dim];
        for (i, f) in frequencies.iter().enumerate() {
            let angle = p as f32 * f;
            row[i] = angle.sin();
            row[half + i] = angle.cos();
        }
    }
    Ok(Tensor::from_vec(table, (rows, dim), device)?)
}

impl ImageTextDecoder for TrocrDecoder {
    fn layers(&self) -> usize {
        self.layers.len()
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn max_positions(&self) -> usize {
        self.max_positions
    }

    fn encoded_keys_values(&self, encoded: &Tensor) -> Result<Vec<(Tensor, Tensor)>> {
        encoded_keys_values(&self.layers, &self.heads, encoded)
    }

    fn decode(&self, inputs: &mut [StepInput<SourceCache>]) -> Result<Vec<Vec<f32>>> {
        let embed = |ids: &[u32], positions: Vec<u32>| -> Result<Tensor> {
            let rows = Tensor::from_slice(ids, ids.len(), &self.device)?;
            let mut x = self.embeddings.index_select(&rows, 0)?;
            if self.embed_scale != 1.0 {
                x = (x * self.embed_scale)?;
            }
            let x = (x + self.position_rows(ids, positions)?)?;
            match &self.embedding_norm {
                Some(norm) => norm.forward(&x),
                None => Ok(x),
            }
        };
        let layers = |x, inputs: &mut [StepInput<SourceCache>], spans: &[_]| {
            forward_layers(&self.layers, x, inputs, spans, &self.heads, self.activation)
        };
        let head = |x: Tensor| self.output_projection.forward(&x);
        decode_pass(
            inputs,
            self.max_positions,
            &self.device,
            embed,
            layers,
            head,
        )
    }
}
