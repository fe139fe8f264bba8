//! GPT-2 (`GPT2LMHeadModel`): learned positions, LayerNorm, Conv1D projections, GELU (tanh).

use anyhow::Result;
use candle_core::Tensor;

use super::parts::{DecoderConfig, Layer, Mlp, Norm, Parts};
use crate::models::check;
use crate::models::layers::{LayerNorm, Linear};
use crate::models::quantized::Embedding;
use crate::models::weights::WeightStore;

pub(super) fn load(config: &DecoderConfig, store: &WeightStore) -> Result<(Parts, Vec<Layer>)> {
    let hidden = config.hidden_size;
    let eps = config.eps();
    let scale = 1.0 / (config.head_dim() as f64).sqrt();
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
            let q = Tensor::full(s as f32, hidden, weight.device())?.to_dtype(weight.dtype())?;
            let factor = Tensor::cat(&[&q, &ones], 0)?;
            weight = weight.broadcast_mul(&factor.unsqueeze(1)?)?;
            bias = (bias * factor)?;
        }
        Linear::new(&weight, &bias)
    };
    let norm = |name: &str| -> Result<Norm> {
        Ok(Norm::Layer(LayerNorm::load_named(
            store,
            &format!("{prefix}{name}"),
            eps,
            false,
        )?))
    };
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for i in 0..config.num_hidden_layers {
        let p = format!("h.{i}");
        layers.push(Layer {
            attention_norm: norm(&format!("{p}.ln_1"))?,
            qkv: conv1d(&format!("{p}.attn.c_attn"), Some(scale))?,
            query_scale: None,
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
    let positions = get("wpe.weight")?;
    check::rows(
        &positions,
        "wpe.weight",
        "n_positions",
        config.max_position_embeddings,
    )?;
    let parts = Parts {
        embeddings: Embedding::Dense(embeddings),
        embedding_scale: None,
        position_embeddings: Some(positions),
        final_norm: norm("ln_f")?,
        lm_head,
        kv_heads: config.num_attention_heads,
        rotary: None,
    };
    Ok((parts, layers))
}
