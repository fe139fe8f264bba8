//! T5 / Flan-T5 (`transformers`' modeling_t5) as explicit tensors: pre-norm layers with T5's
//! scale-only RMS norm, unscaled attention with a learned relative-position bias (computed by
//! the first layer of each stack and shared by the others), a ReLU or gated-GELU feed-forward
//! layer, and with tied embeddings the decoder output scaled by 1/sqrt(d_model) before the
//! vocabulary. Sequences are cached and batched as seq2seq.rs describes.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::config::ModelConfig;
use super::layers::{Linear, RmsNorm};
use super::seq2seq::{EncoderDecoder, Heads, Seq2SeqCache};
use super::weights::WeightStore;
use super::StepInput;
use crate::device::Placement;
use crate::source::ModelFiles;

/// T5's `config.json`, with `transformers`' defaults.
#[derive(Debug, Deserialize)]
struct T5Config {
    d_model: usize,
    num_heads: usize,
    d_kv: usize,
    num_layers: usize,
    num_decoder_layers: Option<usize>,
    #[serde(default = "default_epsilon")]
    layer_norm_epsilon: f64,
    #[serde(default = "default_feed_forward")]
    feed_forward_proj: String,
    #[serde(default = "default_true")]
    tie_word_embeddings: bool,
    #[serde(default = "default_buckets")]
    relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    relative_attention_max_distance: usize,
    decoder_start_token_id: Option<u32>,
    pad_token_id: Option<u32>,
}

fn default_epsilon() -> f64 {
    1e-6
}
fn default_feed_forward() -> String {
    "relu".into()
}
fn default_true() -> bool {
    true
}
fn default_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
}

enum FeedForward {
    /// T5 v1.0: wo(relu(wi(x))).
    Relu { wi: Linear, wo: Linear },
    /// T5 v1.1 / Flan-T5: wo(gelu_tanh(wi_0(x)) * wi_1(x)).
    GatedGelu {
        wi_0: Linear,
        wi_1: Linear,
        wo: Linear,
    },
}

impl FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            FeedForward::Relu { wi, wo } => wo.forward(&wi.forward(x)?.relu()?),
            FeedForward::GatedGelu { wi_0, wi_1, wo } => {
                wo.forward(&(wi_0.forward(x)?.gelu()? * wi_1.forward(x)?)?)
            }
        }
    }
}

struct EncoderLayer {
    attention_norm: RmsNorm,
    attention: Attention,
    ff_norm: RmsNorm,
    ff: FeedForward,
}

struct DecoderLayer {
    attention_norm: RmsNorm,
    attention: Attention,
    cross_norm: RmsNorm,
    cross: Attention,
    ff_norm: RmsNorm,
    ff: FeedForward,
}

/// The relative-position bias of one stack: [buckets, heads] and how positions map to buckets.
struct RelativeBias {
    table: Tensor,
    buckets: usize,
    max_distance: usize,
}

impl RelativeBias {
    /// `_relative_position_bucket` for key position minus query position `relative`.
    fn bucket(&self, relative: i64, bidirectional: bool) -> u32 {
        let mut buckets = self.buckets as i64;
        let mut bucket = 0;
        let distance = if bidirectional {
            buckets /= 2;
            if relative > 0 {
                bucket += buckets;
            }
            relative.abs()
        } else {
            (-relative).max(0)
        };
        let max_exact = buckets / 2;
        bucket += if distance < max_exact {
            distance
        } else {
            // (in f32, as torch computes it)
            let large = (distance as f32 / max_exact as f32).ln()
                / (self.max_distance as f32 / max_exact as f32).ln()
                * (buckets - max_exact) as f32;
            (max_exact + large as i64).min(buckets - 1)
        };
        bucket as u32
    }

    /// The bias of queries at `queries` over keys at 0..keys: [heads, queries, keys].
    fn bias(
        &self,
        queries: std::ops::Range<usize>,
        keys: usize,
        bidirectional: bool,
    ) -> Result<Tensor> {
        let n = queries.len();
        let ids: Vec<u32> = queries
            .flat_map(|i| (0..keys).map(move |j| (i, j)))
            .map(|(i, j)| self.bucket(j as i64 - i as i64, bidirectional))
            .collect();
        let ids = Tensor::from_vec(ids, n * keys, self.table.device())?;
        let heads = self.table.dim(1)?;
        Ok(self
            .table
            .index_select(&ids, 0)?
            .reshape((n, keys, heads))?
            .permute((2, 0, 1))?
            .to_dtype(DType::F32)?
            .contiguous()?)
    }
}

pub struct T5Lm {
    embeddings: Tensor,
    encoder: Vec<EncoderLayer>,
    encoder_bias: RelativeBias,
    encoder_norm: RmsNorm,
    decoder: Vec<DecoderLayer>,
    decoder_bias: RelativeBias,
    decoder_norm: RmsNorm,
    lm_head: Linear,
    /// 1/sqrt(d_model) with tied embeddings, else 1.
    output_scale: f64,
    heads: Heads,
    decoder_start: u32,
    device: Device,
}

impl T5Lm {
    pub fn load(files: &ModelFiles, model: &ModelConfig, placement: &Placement) -> Result<Self> {
        let config: T5Config = model.family()?;
        let (d_model, heads, head_dim) = (config.d_model, config.num_heads, config.d_kv);
        let encoder_layers = config.num_layers;
        let decoder_layers = config.num_decoder_layers.unwrap_or(encoder_layers);
        let eps = config.layer_norm_epsilon as f32;
        let gated = match config.feed_forward_proj.as_str() {
            "relu" => false,
            "gated-gelu" => true,
            other => bail!("feed_forward_proj `{other}` is not supported (relu, gated-gelu)"),
        };
        let tied = config.tie_word_embeddings;

        let store = WeightStore::load(&files.weights, &placement.device)?.in_dtype(placement.dtype);
        let get = |n: &str| store.get(n);
        let linear = |n: &str| Linear::load_no_bias(&store, n);
        let norm =
            |n: &str| -> Result<RmsNorm> { Ok(RmsNorm::new(get(&format!("{n}.weight"))?, eps)) };
        let attention = |p: &str| -> Result<Attention> {
            Ok(Attention {
                q: linear(&format!("{p}.q"))?,
                k: linear(&format!("{p}.k"))?,
                v: linear(&format!("{p}.v"))?,
                o: linear(&format!("{p}.o"))?,
            })
        };
        let ff = |p: &str| -> Result<FeedForward> {
            Ok(if gated {
                FeedForward::GatedGelu {
                    wi_0: linear(&format!("{p}.wi_0"))?,
                    wi_1: linear(&format!("{p}.wi_1"))?,
                    wo: linear(&format!("{p}.wo"))?,
                }
            } else {
                FeedForward::Relu {
                    wi: linear(&format!("{p}.wi"))?,
                    wo: linear(&format!("{p}.wo"))?,
                }
            })
        };
        let bias = |stack: &str| -> Result<RelativeBias> {
            Ok(RelativeBias {
                table: get(&format!(
                    "{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
                ))?,
                buckets: config.relative_attention_num_buckets,
                max_distance: config.relative_attention_max_distance,
            })
        };
        let mut encoder = Vec::with_capacity(encoder_layers);
        for i in 0..encoder_layers {
            let p = format!("encoder.block.{i}.layer");
            encoder.push(EncoderLayer {
                attention_norm: norm(&format!("{p}.0.layer_norm"))?,
                attention: attention(&format!("{p}.0.SelfAttention"))?,
                ff_norm: norm(&format!("{p}.1.layer_norm"))?,
                ff: ff(&format!("{p}.1.DenseReluDense"))?,
            });
        }
        let mut decoder = Vec::with_capacity(decoder_layers);
        for i in 0..decoder_layers {
            let p = format!("decoder.block.{i}.layer");
            decoder.push(DecoderLayer {
                attention_norm: norm(&format!("{p}.0.layer_norm"))?,
                attention: attention(&format!("{p}.0.SelfAttention"))?,
                cross_norm: norm(&format!("{p}.1.layer_norm"))?,
                cross: attention(&format!("{p}.1.EncDecAttention"))?,
                ff_norm: norm(&format!("{p}.2.layer_norm"))?,
                ff: ff(&format!("{p}.2.DenseReluDense"))?,
            });
        }
        let embeddings = ["shared.weight", "encoder.embed_tokens.weight"]
            .iter()
            .find(|n| store.contains(n))
            .map(|n| get(n))
            .context("no shared embedding matrix")??;
        let lm_head = if tied {
            Linear::no_bias(&embeddings)?
        } else {
            linear("lm_head")?
        };
        let decoder_start = config
            .decoder_start_token_id
            .or(config.pad_token_id)
            .unwrap_or(0);
        tracing::info!(
            "text2text network: t5 ({}), {} encoder / {} decoder layers, vocabulary {}",
            config.feed_forward_proj,
            encoder.len(),
            decoder.len(),
            embeddings.dim(0)?
        );
        Ok(T5Lm {
            encoder_bias: bias("encoder")?,
            encoder_norm: norm("encoder.final_layer_norm")?,
            decoder_bias: bias("decoder")?,
            decoder_norm: norm("decoder.final_layer_norm")?,
            embeddings,
            encoder,
            decoder,
            lm_head,
            output_scale: if tied {
                1.0 / (d_model as f64).sqrt()
            } else {
                1.0
            },
            heads: Heads {
                count: heads,
                dim: head_dim,
                dtype: placement.dtype,
            },
            decoder_start,
            device: placement.device.clone(),
        })
    }

    fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::from_slice(ids, ids.len(), &self.device)?;
        Ok(self.embeddings.index_select(&ids, 0)?)
    }

    /// Encodes one sequence's tokens and keeps every decoder layer's keys and values of it.
    fn encode(&self, ids: &[u32]) -> Result<Vec<(Tensor, Tensor)>> {
        let n = ids.len();
        let h = &self.heads;
        let bias = self.encoder_bias.bias(0..n, n, true)?;
        let mut x = self.embed(ids)?;
        for layer in &self.encoder {
            let a = &layer.attention;
            let normed = layer.attention_norm.forward(&x)?;
            let context = h.attend(
                &h.split(&a.q.forward(&normed)?)?,
                &h.split(&a.k.forward(&normed)?)?,
                &h.split(&a.v.forward(&normed)?)?,
                Some(&bias),
            )?;
            x = (x + a.o.forward(&context)?)?;
            x = (&x + layer.ff.forward(&layer.ff_norm.forward(&x)?)?)?;
        }
        let encoded = self.encoder_norm.forward(&x)?;
        h.encoded_keys_values(
            self.decoder.iter().map(|l| (&l.cross.k, &l.cross.v)),
            &encoded,
        )
    }
}

impl EncoderDecoder for T5Lm {
    fn decoder_layers(&self) -> usize {
        self.decoder.len()
    }

    fn decoder_start(&self) -> u32 {
        self.decoder_start
    }

    fn position_limit(&self) -> usize {
        usize::MAX
    }

    fn encode_input(&self, ids: &[u32]) -> Result<Vec<(Tensor, Tensor)>> {
        self.encode(ids)
    }

    fn decode(&self, inputs: &mut [StepInput<Seq2SeqCache>], ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        let h = &self.heads;
        // Each sequence's one query at its own position over its keys so far: [heads, 1, len + 1].
        let biases = inputs
            .iter()
            .map(|i| {
                let at = i.cache.len;
                self.decoder_bias.bias(at..at + 1, at + 1, false)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut x = self.embed(ids)?;
        for (l, layer) in self.decoder.iter().enumerate() {
            let a = &layer.attention;
            let normed = layer.attention_norm.forward(&x)?;
            let (q, k, v) = (
                a.q.forward(&normed)?,
                a.k.forward(&normed)?,
                a.v.forward(&normed)?,
            );
            let context = h.attend_own(inputs, l, (&q, &k, &v), Some(&biases))?;
            x = (x + a.o.forward(&context)?)?;

            let c = &layer.cross;
            let q = c.q.forward(&layer.cross_norm.forward(&x)?)?;
            x = (x + c.o.forward(&h.attend_input(inputs, l, &q)?)?)?;
            x = (&x + layer.ff.forward(&layer.ff_norm.forward(&x)?)?)?;
        }
        for input in inputs.iter_mut() {
            input.cache.len += 1;
        }
        let hidden = (self.decoder_norm.forward(&x)? * self.output_scale)?;
        Ok(self
            .lm_head
            .forward(&hidden)?
            .to_dtype(DType::F32)?
            .to_vec2()?)
    }
}
