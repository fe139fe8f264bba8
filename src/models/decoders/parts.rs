//! The parts every decoder-only network is built of: its typed `config.json`, norms, MLPs, the
//! layer record the batched step runs, and rotary tables. `gpt2` and `llama` fill them from
//! their checkpoints' weight names.

use anyhow::Result;
use candle_core::Tensor;
use serde::Deserialize;

use crate::models::config::Activation;
use crate::models::layers::{activate, LayerNorm, Linear, RmsNorm};

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
        }
    }
}

pub(super) struct Layer {
    pub(super) attention_norm: Norm,
    /// Q, K and V in one product: [q heads | kv heads | kv heads] x head_dim outputs.
    pub(super) qkv: Linear,
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
    pub(super) embeddings: Tensor,
    pub(super) embedding_scale: Option<f64>,
    pub(super) position_embeddings: Option<Tensor>,
    pub(super) final_norm: Norm,
    pub(super) lm_head: Linear,
    pub(super) kv_heads: usize,
    pub(super) rotary: Option<(Tensor, Tensor)>,
}
