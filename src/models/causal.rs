//! Decoder-only language models for text generation: the Llama family (Llama, SmolLM, Qwen2,
//! Qwen3, Mistral, Phi-3, Gemma) and GPT-2, in explicit candle tensors with a KV cache per sequence.
//!
//! One [`CausalLm::step`] advances any number of sequences at once, each by its own number of new
//! tokens (a whole prompt when it joins, one token per decoding step after that): the dense
//! layers run once over all new tokens of all sequences, and only attention, which reads each
//! sequence's own cache, runs per sequence. That is what lets the scheduler add and drop
//! sequences between steps (continuous batching).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::config::Activation;
use super::layers::{activate, rotary_tables, LayerNorm, Linear, RmsNorm};
use super::weights::WeightStore;
use super::{append_keys_values, StepInput, StepModel};
use crate::device::Placement;
use crate::source::ModelFiles;

/// The attention keys and values a sequence has produced so far, per layer.
#[derive(Clone)]
pub struct SequenceCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Tokens already in the cache (the position of the next one).
    len: usize,
}

enum Norm {
    Rms(RmsNorm),
    Layer(LayerNorm),
}

impl Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Norm::Rms(norm) => norm.forward(x),
            Norm::Layer(norm) => norm.forward(x),
        }
    }
}

enum Mlp {
    /// Llama: down(silu(gate(x)) * up(x)); Gemma: GELU (tanh) instead of SiLU.
    Gated {
        gate: Linear,
        up: Linear,
        down: Linear,
        activation: Activation,
    },
    /// GPT-2: proj(gelu_tanh(fc(x))).
    Plain { fc: Linear, proj: Linear },
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Mlp::Gated {
                gate,
                up,
                down,
                activation,
            } => {
                let gate = activate(&gate.forward(x)?, *activation)?;
                down.forward(&(gate * up.forward(x)?)?)
            }
            Mlp::Plain { fc, proj } => proj.forward(&fc.forward(x)?.gelu()?),
        }
    }
}

struct Layer {
    attention_norm: Norm,
    /// Q, K and V in one product: [q heads | kv heads | kv heads] x head_dim outputs.
    qkv: Linear,
    /// Qwen3's per-head RMSNorm of queries and keys.
    qk_norm: Option<(Tensor, Tensor)>,
    out: Linear,
    mlp_norm: Norm,
    mlp: Mlp,
}

pub struct CausalLm {
    embeddings: Tensor,
    /// Gemma multiplies its input embeddings by sqrt(hidden_size).
    embedding_scale: Option<f64>,
    position_embeddings: Option<Tensor>,
    layers: Vec<Layer>,
    final_norm: Norm,
    lm_head: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// cos and sin of the rotary angles, [max_positions, head_dim / 2].
    rotary: Option<(Tensor, Tensor)>,
    max_positions: usize,
    vocab_size: usize,
    rms_eps: f64,
    device: Device,
    dtype: DType,
}

/// What differs between the GPT-2 and Llama-family networks besides their layers.
struct Parts {
    embeddings: Tensor,
    embedding_scale: Option<f64>,
    position_embeddings: Option<Tensor>,
    final_norm: Norm,
    lm_head: Linear,
    kv_heads: usize,
    rotary: Option<(Tensor, Tensor)>,
}

/// Which of our networks serves a `config.json`, or the error that lists what is supported.
fn family(config: &Value) -> Result<&'static str> {
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    Ok(match model_type {
        "llama" | "mistral" | "qwen2" | "qwen3" | "phi3" | "gemma" => "llama",
        "gpt2" => "gpt2",
        other => bail!(
            "model_type `{other}` is not supported for text generation; supported: llama (SmolLM), mistral, qwen2, qwen3, phi3, gemma, gpt2"
        ),
    })
}

fn usize_field(config: &Value, names: &[&str]) -> Option<usize> {
    names
        .iter()
        .find_map(|n| config.get(*n).and_then(Value::as_u64))
        .map(|v| v as usize)
}

impl CausalLm {
    pub fn load(files: &ModelFiles, config: &Value, placement: &Placement) -> Result<Self> {
        let family = family(config)?;
        let store = WeightStore::load(&files.weights, &placement.device)?.in_dtype(placement.dtype);
        let hidden = usize_field(config, &["hidden_size", "n_embd"]).context("hidden_size")?;
        let heads = usize_field(config, &["num_attention_heads", "n_head"])
            .context("num_attention_heads")?;
        let kv_heads = usize_field(config, &["num_key_value_heads"]).unwrap_or(heads);
        let head_dim = usize_field(config, &["head_dim"]).unwrap_or(hidden / heads);
        let layers_n =
            usize_field(config, &["num_hidden_layers", "n_layer"]).context("num_hidden_layers")?;
        let max_positions = usize_field(config, &["max_position_embeddings", "n_positions"])
            .context("max_position_embeddings")?;
        let eps = config
            .get("rms_norm_eps")
            .or_else(|| config.get("layer_norm_epsilon"))
            .and_then(Value::as_f64)
            .unwrap_or(1e-5);
        let rope_type = config
            .pointer("/rope_scaling/rope_type")
            .or_else(|| config.pointer("/rope_scaling/type"))
            .or_else(|| config.pointer("/rope_parameters/rope_type"))
            .and_then(Value::as_str);
        if rope_type.is_some_and(|t| t != "default") {
            bail!(
                "rope scaling `{}` is not supported yet",
                rope_type.unwrap_or_default()
            );
        }
        let scale = 1.0 / (head_dim as f64).sqrt();
        let mut layers = Vec::with_capacity(layers_n);
        let parts = if family == "gpt2" {
            // GPT2LMHeadModel stores `transformer.*`; a bare GPT2Model has no prefix.
            let prefix = if store.contains("transformer.wte.weight") {
                "transformer."
            } else {
                ""
            };
            let get = |name: &str| store.get(&format!("{prefix}{name}"));
            // Conv1D weights are [in, out]: transposed to a linear layer's [out, in].
            let conv1d = |name: &str, query_scale: Option<f64>| -> Result<Linear> {
                let mut weight = get(&format!("{name}.weight"))?.t()?.contiguous()?;
                let mut bias = get(&format!("{name}.bias"))?;
                if let Some(s) = query_scale {
                    // The 1/sqrt(d) attention scale folded into the query rows of c_attn.
                    let ones = Tensor::ones(2 * hidden, weight.dtype(), weight.device())?;
                    let q = Tensor::full(s as f32, hidden, weight.device())?
                        .to_dtype(weight.dtype())?;
                    let factor = Tensor::cat(&[&q, &ones], 0)?;
                    weight = weight.broadcast_mul(&factor.unsqueeze(1)?)?;
                    bias = (bias * factor)?;
                }
                Linear::new(&weight, &bias)
            };
            let norm = |name: &str| -> Result<Norm> {
                Ok(Norm::Layer(LayerNorm::load_named(
                    &store,
                    &format!("{prefix}{name}"),
                    eps,
                    false,
                )?))
            };
            for i in 0..layers_n {
                let p = format!("h.{i}");
                layers.push(Layer {
                    attention_norm: norm(&format!("{p}.ln_1"))?,
                    qkv: conv1d(&format!("{p}.attn.c_attn"), Some(scale))?,
                    qk_norm: None,
                    out: conv1d(&format!("{p}.attn.c_proj"), None)?,
                    mlp_norm: norm(&format!("{p}.ln_2"))?,
                    mlp: Mlp::Plain {
                        fc: conv1d(&format!("{p}.mlp.c_fc"), None)?,
                        proj: conv1d(&format!("{p}.mlp.c_proj"), None)?,
                    },
                });
            }
            let embeddings = get("wte.weight")?;
            let lm_head = match store.get("lm_head.weight") {
                Ok(w) => Linear::no_bias(&w)?,
                Err(_) => Linear::no_bias(&embeddings)?,
            };
            Parts {
                embeddings,
                embedding_scale: None,
                position_embeddings: Some(get("wpe.weight")?),
                final_norm: norm("ln_f")?,
                lm_head,
                kv_heads: heads,
                rotary: None,
            }
        } else {
            let get = |name: &str| store.get(&format!("model.{name}"));
            let model_type = config.get("model_type").and_then(Value::as_str);
            // Phi-3 fuses q/k/v and gate/up in one matrix each; Gemma scales its RMSNorm by
            // (1 + weight), its embeddings by sqrt(hidden), and gates with GELU.
            let (phi3, gemma) = (model_type == Some("phi3"), model_type == Some("gemma"));
            if config
                .get("partial_rotary_factor")
                .and_then(Value::as_f64)
                .is_some_and(|f| f != 1.0)
            {
                bail!("partial rotary embeddings are not supported yet");
            }
            let with_bias = config
                .get("attention_bias")
                .and_then(Value::as_bool)
                .unwrap_or(model_type == Some("qwen2"));
            let linear = |name: &str| -> Result<(Tensor, Option<Tensor>)> {
                let w = get(&format!("{name}.weight"))?;
                let b = if with_bias {
                    Some(get(&format!("{name}.bias"))?)
                } else {
                    None
                };
                Ok((w, b))
            };
            let rms = |name: &str| -> Result<Norm> {
                let weight = get(&format!("{name}.weight"))?;
                let weight = if gemma { (weight + 1.0)? } else { weight };
                Ok(Norm::Rms(RmsNorm::new(weight, eps as f32)))
            };
            for i in 0..layers_n {
                let p = format!("layers.{i}");
                let (q, k, v) = if phi3 {
                    let qkv = get(&format!("{p}.self_attn.qkv_proj.weight"))?;
                    let (qw, kvw) = (heads * head_dim, kv_heads * head_dim);
                    (
                        (qkv.narrow(0, 0, qw)?, None),
                        (qkv.narrow(0, qw, kvw)?, None),
                        (qkv.narrow(0, qw + kvw, kvw)?, None),
                    )
                } else {
                    let parts = ["q_proj", "k_proj", "v_proj"]
                        .map(|n| linear(&format!("{p}.self_attn.{n}")));
                    let [q, k, v] = parts;
                    (q?, k?, v?)
                };
                // The attention scale folded into the query projection (weights and bias).
                let qw = (q.0 * scale)?;
                let weight = Tensor::cat(&[&qw, &k.0, &v.0], 0)?;
                let bias = match (q.1, k.1, v.1) {
                    (Some(qb), Some(kb), Some(vb)) => Tensor::cat(&[&(qb * scale)?, &kb, &vb], 0)?,
                    _ => Tensor::zeros(weight.dim(0)?, weight.dtype(), weight.device())?,
                };
                let qk_norm = if store.contains(&format!("model.{p}.self_attn.q_norm.weight")) {
                    Some((
                        get(&format!("{p}.self_attn.q_norm.weight"))?,
                        get(&format!("{p}.self_attn.k_norm.weight"))?,
                    ))
                } else {
                    None
                };
                let (gate, up) = if phi3 {
                    let fused = get(&format!("{p}.mlp.gate_up_proj.weight"))?;
                    let half = fused.dim(0)? / 2;
                    (fused.narrow(0, 0, half)?, fused.narrow(0, half, half)?)
                } else {
                    (
                        get(&format!("{p}.mlp.gate_proj.weight"))?,
                        get(&format!("{p}.mlp.up_proj.weight"))?,
                    )
                };
                layers.push(Layer {
                    attention_norm: rms(&format!("{p}.input_layernorm"))?,
                    qkv: Linear::new(&weight, &bias)?,
                    qk_norm,
                    out: Linear::no_bias(&get(&format!("{p}.self_attn.o_proj.weight"))?)?,
                    mlp_norm: rms(&format!("{p}.post_attention_layernorm"))?,
                    mlp: Mlp::Gated {
                        gate: Linear::no_bias(&gate)?,
                        up: Linear::no_bias(&up)?,
                        down: Linear::no_bias(&get(&format!("{p}.mlp.down_proj.weight"))?)?,
                        activation: if gemma {
                            Activation::GeluTanh
                        } else {
                            Activation::Silu
                        },
                    },
                });
            }
            let embeddings = get("embed_tokens.weight")?;
            let tied = config
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let lm_head = match store.get("lm_head.weight") {
                Ok(w) if !tied => Linear::no_bias(&w)?,
                _ => Linear::no_bias(&embeddings)?,
            };
            let theta = config
                .get("rope_theta")
                .or_else(|| config.pointer("/rope_parameters/rope_theta"))
                .and_then(Value::as_f64)
                .unwrap_or(10_000.0);
            Parts {
                embeddings,
                embedding_scale: gemma.then(|| (hidden as f64).sqrt()),
                position_embeddings: None,
                final_norm: rms("norm")?,
                lm_head,
                kv_heads,
                rotary: Some(rotary_tables(
                    theta,
                    head_dim,
                    max_positions,
                    placement.dtype,
                    &placement.device,
                )?),
            }
        };
        let model = CausalLm {
            vocab_size: parts.embeddings.dim(0)?,
            embeddings: parts.embeddings,
            embedding_scale: parts.embedding_scale,
            position_embeddings: parts.position_embeddings,
            layers,
            final_norm: parts.final_norm,
            lm_head: parts.lm_head,
            heads,
            kv_heads: parts.kv_heads,
            head_dim,
            rotary: parts.rotary,
            max_positions,
            rms_eps: eps,
            device: placement.device.clone(),
            dtype: placement.dtype,
        };
        tracing::info!(
            "text generation network: {family}, {} layers, {} heads ({} key/value), vocabulary {}",
            model.layers.len(),
            model.heads,
            model.kv_heads,
            model.vocab_size
        );
        Ok(model)
    }

    /// Positions the model was trained for: a sequence cannot grow past this.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Feeds each sequence its new tokens and returns, per sequence, the f32 logits that follow its
    /// last token. Caches grow by the tokens fed.
    fn forward(&self, inputs: &mut [StepInput<SequenceCache>]) -> Result<Vec<Vec<f32>>> {
        let counts: Vec<usize> = inputs.iter().map(|i| i.tokens.len()).collect();
        if counts.contains(&0) {
            bail!("every sequence in a step needs at least one new token");
        }
        for input in inputs.iter() {
            if input.cache.len + input.tokens.len() > self.max_positions {
                bail!(
                    "the sequence would be {} tokens long, past the model's {} positions",
                    input.cache.len + input.tokens.len(),
                    self.max_positions
                );
            }
        }
        let ids: Vec<u32> = inputs
            .iter()
            .flat_map(|i| i.tokens.iter().copied())
            .collect();
        let total = ids.len();
        let ids = Tensor::from_vec(ids, total, &self.device)?;
        let mut x = self.embeddings.index_select(&ids, 0)?;
        if let Some(scale) = self.embedding_scale {
            x = (x * scale)?;
        }
        if let Some(table) = &self.position_embeddings {
            let positions: Vec<u32> = inputs
                .iter()
                .flat_map(|i| (i.cache.len..i.cache.len + i.tokens.len()).map(|p| p as u32))
                .collect();
            let positions = Tensor::from_vec(positions, total, &self.device)?;
            x = (x + table.index_select(&positions, 0)?)?;
        }
        // A prefill's causal mask is the same in every layer: built once per step.
        let masks = inputs
            .iter()
            .map(|i| match i.tokens.len() {
                1 => Ok(None),
                n => self.causal_mask(n, i.cache.len + n).map(Some),
            })
            .collect::<Result<Vec<_>>>()?;
        for (l, layer) in self.layers.iter().enumerate() {
            let residual = x.clone();
            let qkv = layer.qkv.forward(&layer.attention_norm.forward(&x)?)?;
            let mut context = Vec::with_capacity(inputs.len());
            let mut offset = 0;
            for (input, mask) in inputs.iter_mut().zip(&masks) {
                let n = input.tokens.len();
                let rows = qkv.narrow(0, offset, n)?;
                offset += n;
                context.push(self.attend(layer, l, &rows, mask.as_ref(), input.cache)?);
            }
            let context = Tensor::cat(&context, 0)?;
            x = (layer.out.forward(&context)? + residual)?;
            let residual = x.clone();
            x = (layer.mlp.forward(&layer.mlp_norm.forward(&x)?)? + residual)?;
        }
        for input in inputs.iter_mut() {
            input.cache.len += input.tokens.len();
        }
        // Only each sequence's last position goes through the final norm and the vocabulary.
        let mut last = Vec::with_capacity(counts.len());
        let mut end = 0;
        for n in &counts {
            end += n;
            last.push((end - 1) as u32);
        }
        let last = Tensor::from_vec(last, counts.len(), &self.device)?;
        let hidden = self.final_norm.forward(&x.index_select(&last, 0)?)?;
        let logits = self.lm_head.forward(&hidden)?.to_dtype(DType::F32)?;
        Ok(logits.to_vec2()?)
    }

    /// Causal attention of one sequence's new rows (its [n, q | k | v] projections) over its
    /// cache plus themselves: [n, heads * d].
    fn attend(
        &self,
        layer: &Layer,
        index: usize,
        rows: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut SequenceCache,
    ) -> Result<Tensor> {
        let n = rows.dim(0)?;
        let d = self.head_dim;
        let (q_width, kv_width) = (self.heads * d, self.kv_heads * d);
        let q = rows.narrow(1, 0, q_width)?;
        let k = rows.narrow(1, q_width, kv_width)?;
        let v = rows.narrow(1, q_width + kv_width, kv_width)?;
        // [n, heads * d] → [1, heads, n, d]
        let shape = |t: Tensor, heads: usize| -> Result<Tensor> {
            Ok(t.reshape((n, heads, d))?
                .transpose(0, 1)?
                .unsqueeze(0)?
                .contiguous()?)
        };
        let mut q = shape(q, self.heads)?;
        let mut k = shape(k, self.kv_heads)?;
        let v = shape(v, self.kv_heads)?;
        if let Some((q_norm, k_norm)) = &layer.qk_norm {
            // Qwen3 normalises each head before the rotation. The folded query scale commutes
            // with RMSNorm only up to eps, so it is applied after instead.
            let scale = (d as f64).sqrt();
            q = candle_nn::ops::rms_norm(&(q * scale)?, q_norm, self.rms_eps as f32)?;
            q = (q / scale)?;
            k = candle_nn::ops::rms_norm(&k, k_norm, self.rms_eps as f32)?;
        }
        if let Some((cos, sin)) = &self.rotary {
            let cos = cos.narrow(0, cache.len, n)?;
            let sin = sin.narrow(0, cache.len, n)?;
            q = candle_nn::rotary_emb::rope(&q, &cos, &sin)?;
            k = candle_nn::rotary_emb::rope(&k, &cos, &sin)?;
        }
        let (k, v) = append_keys_values(&mut cache.layers[index], (k, v), 2)?;
        // Grouped-query attention: each key/value head serves heads / kv_heads query heads.
        let group = self.heads / self.kv_heads;
        let q = q.reshape((self.kv_heads, group * n, d))?;
        let k = k.squeeze(0)?;
        let v = v.squeeze(0)?;
        let mut scores = q.matmul(&k.t()?)?; // [kv_heads, group * n, total]
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?
            .to_dtype(self.dtype)?;
        let context = probs.matmul(&v)?; // [kv_heads, group * n, d]
        Ok(context
            .reshape((self.heads, n, d))?
            .transpose(0, 1)?
            .reshape((n, self.heads * d))?)
    }

    /// -inf where new row i (of n, the last n of `total` positions) would see a later position;
    /// its rows repeat for each query head of a key/value group: [1, group * n, total].
    fn causal_mask(&self, n: usize, total: usize) -> Result<Tensor> {
        let group = self.heads / self.kv_heads;
        let past = total - n;
        let row: Vec<f32> = (0..n)
            .flat_map(|i| {
                (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })
            })
            .collect();
        let mask = Tensor::from_vec(row, (1, n, total), &self.device)?;
        Ok(mask.repeat((1, group, 1))?.to_dtype(self.dtype)?)
    }
}

impl StepModel for CausalLm {
    type Cache = SequenceCache;

    fn new_cache(&self) -> SequenceCache {
        SequenceCache {
            layers: (0..self.layers.len()).map(|_| None).collect(),
            len: 0,
        }
    }

    fn step(&self, inputs: &mut [StepInput<SequenceCache>]) -> Result<Vec<Vec<f32>>> {
        self.forward(inputs)
    }
}
