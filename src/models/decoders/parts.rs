//! The parts every decoder-only network is built of: its typed `config.json`, norms, MLPs, the
//! layer record the batched step runs, and rotary tables. `gpt2` and `llama` fill them from
//! their checkpoints' weight names.

use anyhow::Result;
use candle_core::{DType, Tensor};
use serde::Deserialize;

use crate::models::config::Activation;
use crate::models::host::on_host_f32;
use crate::models::layers::{activate, LayerNorm, Linear, RmsNorm};
use crate::models::quantized::{Embedding, QLinear};
use crate::models::weights::WeightStore;

pub(super) enum Norm {
    Rms(RmsNorm),
    Layer(LayerNorm),
}

impl Norm {
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Norm::Rms(norm) => norm.forward(x),
            Norm::Layer(norm) => norm.forward(x),
        }
    }
}

pub(super) enum Mlp {
    /// Llama: down(silu(gate(x)) * up(x)); Gemma: GELU (tanh) instead of SiLU.
    Gated {
        gate: Linear,
        up: Linear,
        down: Linear,
        activation: Activation,
    },
    /// GPT-2: proj(gelu_tanh(fc(x))).
    Plain { fc: Linear, proj: Linear },
    /// The gated MLP with gate and up in one product ([gate | up] outputs, `width` each): GGUF
    /// blocks of one type stack, and one call reads both.
    GatedStacked {
        gate_up: Linear,
        width: usize,
        down: Linear,
        activation: Activation,
    },
}

impl Mlp {
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
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
            Mlp::GatedStacked {
                gate_up,
                width,
                down,
                activation,
            } => {
                let both = gate_up.forward(x)?;
                if let Some(gated) = gated_on_host(&both, *width, *activation)? {
                    return down.forward(&gated);
                }
                let gate = activate(&both.narrow(1, 0, *width)?, *activation)?;
                down.forward(&(gate * both.narrow(1, *width, *width)?)?)
            }
        }
    }
}

/// act(gate) * up from the stacked product's rows ([gate | up], `width` each) in one pass over
/// host memory, where the tensor is a contiguous f32 one on the CPU (else `None`): the two
/// narrows, the activation and the product were three candle ops, each with a tensor of its own,
/// at every layer of every decoding step.
fn gated_on_host(both: &Tensor, width: usize, activation: Activation) -> Result<Option<Tensor>> {
    if !both.device().is_cpu() || both.dtype() != DType::F32 || !both.is_contiguous() {
        return Ok(None);
    }
    let (rows, stacked) = both.dims2()?;
    anyhow::ensure!(
        stacked == 2 * width,
        "the stacked gate and up products' width"
    );
    let gated = on_host_f32(both, "the gated MLP", |values| {
        let mut gated = Vec::with_capacity(rows * width);
        for row in values.chunks_exact(stacked) {
            gated.extend_from_slice(&row[..width]);
        }
        crate::kernels::activate(&mut gated, activation);
        for (out, row) in gated
            .chunks_exact_mut(width)
            .zip(values.chunks_exact(stacked))
        {
            out.iter_mut()
                .zip(&row[width..])
                .for_each(|(g, &u)| *g *= u);
        }
        gated
    })?;
    Ok(Some(Tensor::from_vec(gated, (rows, width), both.device())?))
}

pub(super) struct Layer {
    pub(super) attention_norm: Norm,
    /// Q, K and V in one product: [q heads | kv heads | kv heads] x head_dim outputs.
    pub(super) qkv: Linear,
    /// The 1/sqrt(d) attention scale, when it is not folded into `qkv`'s query rows (weights kept
    /// in quantized blocks): applied to the queries.
    pub(super) query_scale: Option<f64>,
    /// Qwen3's per-head RMSNorm of queries and keys.
    pub(super) qk_norm: Option<(Tensor, Tensor)>,
    pub(super) out: Linear,
    pub(super) mlp_norm: Norm,
    pub(super) mlp: Mlp,
}

/// A decoder-only model's `config.json` (GPT-2's own names are aliases).
#[derive(Debug, Clone, Deserialize)]
pub struct DecoderConfig {
    #[serde(alias = "n_embd")]
    pub hidden_size: usize,
    #[serde(alias = "n_head")]
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(alias = "n_layer")]
    pub num_hidden_layers: usize,
    #[serde(alias = "n_positions")]
    pub max_position_embeddings: usize,
    /// GPT-2's `layer_norm_epsilon` is an alias.
    #[serde(alias = "layer_norm_epsilon")]
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<RopeSettings>,
    /// The newer spelling of `rope_scaling` + `rope_theta`.
    rope_parameters: Option<RopeSettings>,
    pub partial_rotary_factor: Option<f64>,
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

#[derive(Debug, Clone, Deserialize)]
struct RopeSettings {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    rope_theta: Option<f64>,
}

impl DecoderConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Without an explicit `head_dim`, the heads must split the hidden size evenly.
    pub fn check_heads(&self) -> Result<()> {
        match self.head_dim {
            Some(_) => Ok(()),
            None => crate::models::check::heads(self.hidden_size, self.num_attention_heads),
        }
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn eps(&self) -> f64 {
        self.rms_norm_eps.unwrap_or(1e-5)
    }

    pub fn rope_theta(&self) -> f64 {
        self.rope_theta
            .or_else(|| self.rope_parameters.as_ref()?.rope_theta)
            .unwrap_or(10_000.0)
    }

    pub(super) fn rope_type(&self) -> Option<&str> {
        let scaling = self.rope_scaling.as_ref();
        scaling
            .and_then(|s| s.rope_type.as_deref())
            .or_else(|| scaling.and_then(|s| s.kind.as_deref()))
            .or_else(|| self.rope_parameters.as_ref()?.rope_type.as_deref())
    }
}

/// What differs between the GPT-2 and Llama-family networks besides their layers.
pub(super) struct Parts {
    pub(super) embeddings: Embedding,
    pub(super) embedding_scale: Option<f64>,
    pub(super) position_embeddings: Option<Tensor>,
    pub(super) final_norm: Norm,
    pub(super) lm_head: Linear,
    pub(super) kv_heads: usize,
    pub(super) rotary: Option<(Tensor, Tensor)>,
}

/// The bias-free dense layer of weight `name` ([out, in]): quantized blocks as the file keeps
/// them, else quantized at load when `SERVER_QUANTIZE` asks, else dense.
pub(super) fn linear(store: &WeightStore, name: &str) -> Result<Linear> {
    match store.quantized(name) {
        Some(q) => Ok(Linear::Quantized(QLinear::new(
            q,
            store.block_activations(),
        )?)),
        None => linear_from(store, &store.get(name)?),
    }
}

/// A dense [out, in] weight as a bias-free layer (quantized when `SERVER_QUANTIZE` asks).
pub(super) fn linear_from(store: &WeightStore, weight: &Tensor) -> Result<Linear> {
    match store.quantize() {
        Some(quantize) => Ok(Linear::Quantized(QLinear::quantize(
            weight,
            quantize,
            store.block_activations(),
        )?)),
        None => Linear::no_bias(weight),
    }
}

/// An embedding table: quantized rows as the file keeps them, or dense.
pub(super) fn embedding(store: &WeightStore, name: &str) -> Result<Embedding> {
    match store.quantized(name) {
        Some(q) => Ok(Embedding::Quantized(q)),
        None => Ok(Embedding::Dense(store.get(name)?)),
    }
}
