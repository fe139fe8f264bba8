//! TrOCR's decoder (`TrOCRForCausalLM`, the text half of `microsoft/trocr-*`'s
//! VisionEncoderDecoder, under `decoder.`): BART's post-norm decoder layers (self-attention,
//! cross-attention whose keys and values read the encoder's width, `cross_attention_hidden_size`,
//! a feed-forward block), token embeddings scaled by sqrt(d_model) where `scale_embedding` says
//! so, learned positions (offset by 2, as BART's) or fairseq's sinusoidal ones, an optional
//! norm after the embeddings, and `output_projection` to the vocabulary.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::config::{Activation, ModelConfig};
use super::encoder::DenseForm;
use super::layers::{activate, LayerNorm, Linear};
use super::seq2seq::{self, Heads};
use super::vision_encoder_decoder::{CaptionCache, ImageTextDecoder};
use super::weights::WeightStore;
use super::StepInput;

/// `TrOCRConfig` with `transformers`' defaults.
#[derive(Debug, Clone, Deserialize)]
struct TrocrConfig {
    #[serde(default = "d_model")]
    d_model: usize,
    #[serde(default = "layers")]
    decoder_layers: usize,
    #[serde(default = "heads")]
    decoder_attention_heads: usize,
    #[serde(default = "gelu")]
    activation_function: String,
    #[serde(default = "positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    scale_embedding: bool,
    #[serde(default = "yes")]
    use_learned_position_embeddings: bool,
    #[serde(default = "one")]
    pad_token_id: u32,
}

fn d_model() -> usize {
    1024
}
fn layers() -> usize {
    12
}
fn heads() -> usize {
    16
}
fn gelu() -> String {
    "gelu".into()
}
fn positions() -> usize {
    512
}
fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}

struct Layer {
    /// Queries (scale folded in), keys and values of the text.
    qkv: Linear,
    out: Linear,
    norm: LayerNorm,
    /// The cross-attention's queries (scale folded in) and its keys and values of the image.
    cross_q: Linear,
    cross_k: Linear,
    cross_v: Linear,
    cross_out: Linear,
    cross_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    final_norm: LayerNorm,
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
    layers: Vec<Layer>,
    output_projection: Linear,
    activation: Activation,
    heads: Heads,
    hidden: usize,
    max_positions: usize,
    vocab_size: usize,
    device: Device,
}

impl TrocrDecoder {
    /// `store`: the VisionEncoderDecoder's `decoder.` tensors; `config`: its `decoder` config.
    pub fn load(store: &WeightStore, config: &ModelConfig, device: &Device) -> Result<Self> {
        let c: TrocrConfig = config.family()?;
        super::check::heads(c.d_model, c.decoder_attention_heads)?;
        let head_dim = c.d_model / c.decoder_attention_heads;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let form = DenseForm::choose(store, device);
        let p = |n: &str| format!("model.decoder.{n}");
        let linear = |n: &str| Linear::load(store, &p(n), false);
        let norm = |n: &str| LayerNorm::load_named(store, &p(n), 1e-5, false);
        let scaled_q = |n: &str| -> Result<(Tensor, Tensor)> {
            Ok((
                (store.get(&p(&format!("{n}.q_proj.weight")))? * scale)?,
                (store.get(&p(&format!("{n}.q_proj.bias")))? * scale)?,
            ))
        };
        let pair = |n: &str| -> Result<(Tensor, Tensor)> {
            Ok((
                store.get(&p(&format!("{n}.weight")))?,
                store.get(&p(&format!("{n}.bias")))?,
            ))
        };
        let layers = (0..c.decoder_layers)
            .map(|i| -> Result<Layer> {
                let l = format!("layers.{i}");
                let (qw, qb) = scaled_q(&format!("{l}.encoder_attn"))?;
                let layer = Layer {
                    qkv: Linear::fused_qkv(
                        [
                            scaled_q(&format!("{l}.self_attn"))?,
                            pair(&format!("{l}.self_attn.k_proj"))?,
                            pair(&format!("{l}.self_attn.v_proj"))?,
                        ],
                        1.0,
                    )?,
                    out: linear(&format!("{l}.self_attn.out_proj"))?,
                    norm: norm(&format!("{l}.self_attn_layer_norm"))?,
                    cross_q: Linear::new(&qw, &qb)?,
                    cross_k: linear(&format!("{l}.encoder_attn.k_proj"))?,
                    cross_v: linear(&format!("{l}.encoder_attn.v_proj"))?,
                    cross_out: linear(&format!("{l}.encoder_attn.out_proj"))?,
                    cross_norm: norm(&format!("{l}.encoder_attn_layer_norm"))?,
                    fc1: linear(&format!("{l}.fc1"))?,
                    fc2: linear(&format!("{l}.fc2"))?,
                    final_norm: norm(&format!("{l}.final_layer_norm"))?,
                };
                Ok(layer.dense_in(form))
            })
            .collect::<Result<Vec<_>>>()?;
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
        let embedding_norm = store
            .contains(&p("layernorm_embedding.weight"))
            .then(|| norm("layernorm_embedding"))
            .transpose()?;
        // Tied to the token embeddings where the checkpoint leaves it out.
        let projection = match store.get("output_projection.weight") {
            Ok(weight) => weight,
            Err(_) => embeddings.clone(),
        };
        let output_projection = form.convert(Linear::no_bias(&projection)?);
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
            output_projection,
            activation: Activation::parse(&c.activation_function)?,
            heads: Heads {
                count: c.decoder_attention_heads,
                dim: head_dim,
                dtype: DType::F32,
            },
            hidden: c.d_model,
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

impl Layer {
    /// The layer with its dense layers in `form`.
    fn dense_in(self, form: DenseForm) -> Layer {
        let c = |layer| form.convert(layer);
        Layer {
            qkv: c(self.qkv),
            out: c(self.out),
            cross_q: c(self.cross_q),
            cross_k: c(self.cross_k),
            cross_v: c(self.cross_v),
            cross_out: c(self.cross_out),
            fc1: c(self.fc1),
            fc2: c(self.fc2),
            ..self
        }
    }
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
        self.heads.encoded_keys_values(
            self.layers.iter().map(|l| (&l.cross_k, &l.cross_v)),
            encoded,
        )
    }

    fn decode(&self, inputs: &mut [StepInput<CaptionCache>]) -> Result<Vec<Vec<f32>>> {
        let (ids, positions, spans) = seq2seq::spans(
            inputs.iter().map(|i| (i.cache.inner.len, i.tokens)),
            self.max_positions,
        )?;
        let total = ids.len();
        let embedded = self
            .embeddings
            .index_select(&Tensor::from_slice(&ids, total, &self.device)?, 0)?;
        let embedded = if self.embed_scale != 1.0 {
            (embedded * self.embed_scale)?
        } else {
            embedded
        };
        let mut x = (embedded + self.position_rows(&ids, positions)?)?;
        if let Some(norm) = &self.embedding_norm {
            x = norm.forward(&x)?;
        }
        let (h, hidden) = (&self.heads, self.hidden);
        for (l, layer) in self.layers.iter().enumerate() {
            let qkv = layer.qkv.forward(&x)?;
            let part = |i: usize| qkv.narrow(1, i * hidden, hidden);
            let caches = inputs.iter_mut().map(|i| &mut i.cache.inner);
            let context = h.attend_spans(caches, l, &spans, (&part(0)?, &part(1)?, &part(2)?))?;
            x = layer.norm.forward(&(x + layer.out.forward(&context)?)?)?;

            let q = layer.cross_q.forward(&x)?;
            let caches = inputs.iter().map(|i| &i.cache.inner);
            let context = h.attend_encoded_spans(caches, l, &spans, &q)?;
            x = layer
                .cross_norm
                .forward(&(x + layer.cross_out.forward(&context)?)?)?;

            let inner = activate(&layer.fc1.forward(&x)?, self.activation)?;
            x = layer
                .final_norm
                .forward(&(x + layer.fc2.forward(&inner)?)?)?;
        }
        for (input, span) in inputs.iter_mut().zip(&spans) {
            input.cache.inner.len += span.n;
        }
        let last = seq2seq::last_rows(&spans, &self.device)?;
        let x = x.index_select(&last, 0)?;
        Ok(self
            .output_projection
            .forward(&x)?
            .to_dtype(DType::F32)?
            .to_vec2()?)
    }
}
