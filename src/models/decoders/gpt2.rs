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
    let layer = |name: &str, query_scale: Option<f64>| -> Result<Linear> {
        let parts = conv1d(store, &format!("{prefix}{name}"))?;
        let (weight, bias) = match query_scale {
            // The 1/sqrt(d) attention scale folded into the query rows of c_attn.
            Some(s) => scale_rows(parts, hidden, s)?,
            None => parts,
        };
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
            qkv: layer(&format!("{p}.attn.c_attn"), Some(scale))?,
            query_scale: None,
            qk_norm: None,
            out: layer(&format!("{p}.attn.c_proj"), None)?,
            mlp_norm: norm(&format!("{p}.ln_2"))?,
            mlp: Mlp::Plain {
                fc: layer(&format!("{p}.mlp.c_fc"), None)?,
                proj: layer(&format!("{p}.mlp.c_proj"), None)?,
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

/// A Conv1D layer's weight and bias: the weight stored [in, out], transposed to a linear
/// layer's [out, in].
pub(crate) fn conv1d(store: &WeightStore, name: &str) -> Result<(Tensor, Tensor)> {
    Ok((
        store.get(&format!("{name}.weight"))?.t()?.contiguous()?,
        store.get(&format!("{name}.bias"))?,
    ))
}

/// A layer's weight [out, in] and bias with their first `rows` outputs scaled by `scale` (the
/// attention's query scale folded into the query rows).
pub(crate) fn scale_rows(
    (weight, bias): (Tensor, Tensor),
    rows: usize,
    scale: f64,
) -> Result<(Tensor, Tensor)> {
    let (out, device) = (weight.dim(0)?, weight.device().clone());
    let factor: Vec<f32> = (0..out)
        .map(|i| if i < rows { scale as f32 } else { 1.0 })
        .collect();
    let factor = Tensor::from_vec(factor, out, &device)?.to_dtype(weight.dtype())?;
    Ok((
        weight.broadcast_mul(&factor.unsqueeze(1)?)?,
        bias.broadcast_mul(&factor)?,
    ))
}
