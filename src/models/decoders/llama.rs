//! The Llama family: Llama and SmolLM, Mistral, Qwen2 (biased Q/K/V), Qwen3 (per-head Q/K
//! RMSNorm), Phi-3 (fused QKV and gate/up matrices), Gemma ((1 + weight) RMSNorm, embeddings
//! scaled by sqrt(hidden), GELU gates). RMSNorm, rotary positions, gated MLP, grouped KV heads.

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::parts::{embedding, linear, linear_from, DecoderConfig, Layer, Mlp, Norm, Parts};
use crate::device::Placement;
use crate::models::config::Activation;
use crate::models::layers::{rotary_tables, Linear, RmsNorm};
use crate::models::quantized::{stack_rows, Embedding, QLinear};
use crate::models::weights::WeightStore;
use crate::registry::DecoderFamily;

pub(super) fn load(
    config: &DecoderConfig,
    family: DecoderFamily,
    store: &WeightStore,
    placement: &Placement,
) -> Result<(Parts, Vec<Layer>)> {
    let get = |name: &str| store.get(&format!("model.{name}"));
    let gemma = family == DecoderFamily::Gemma;
    if config.partial_rotary_factor.is_some_and(|f| f != 1.0) {
        bail!("partial rotary embeddings are not supported yet");
    }
    let eps = config.eps();
    let rms = |name: &str| -> Result<Norm> {
        let weight = get(&format!("{name}.weight"))?;
        let weight = if gemma { (weight + 1.0)? } else { weight };
        Ok(Norm::Rms(RmsNorm::new(weight, eps as f32)))
    };
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for i in 0..config.num_hidden_layers {
        let p = format!("layers.{i}");
        let activation = if gemma {
            Activation::GeluTanh
        } else {
            Activation::Silu
        };
        let down = linear(store, &format!("model.{p}.mlp.down_proj.weight"))?;
        let stacked = match (
            store.quantized(&format!("model.{p}.mlp.gate_proj.weight")),
            store.quantized(&format!("model.{p}.mlp.up_proj.weight")),
        ) {
            (Some(gate), Some(up)) => stack_rows(&[gate, up])?,
            _ => None,
        };
        let mlp = if let Some(gate_up) = stacked {
            Mlp::GatedStacked {
                width: gate_up.shape().dims2()?.0 / 2,
                gate_up: Linear::Quantized(QLinear::new(gate_up, store.block_activations())?),
                down,
                activation,
            }
        } else if family == DecoderFamily::Phi3 {
            let fused = get(&format!("{p}.mlp.gate_up_proj.weight"))?;
            Mlp::Gated {
                gate: linear_from(store, &half_of_fused(&fused, 0)?)?,
                up: linear_from(store, &half_of_fused(&fused, 1)?)?,
                down,
                activation,
            }
        } else {
            Mlp::Gated {
                gate: linear(store, &format!("model.{p}.mlp.gate_proj.weight"))?,
                up: linear(store, &format!("model.{p}.mlp.up_proj.weight"))?,
                down,
                activation,
            }
        };
        let qk_norm = if store.contains(&format!("model.{p}.self_attn.q_norm.weight")) {
            Some((
                get(&format!("{p}.self_attn.q_norm.weight"))?,
                get(&format!("{p}.self_attn.k_norm.weight"))?,
            ))
        } else {
            None
        };
        let (qkv, query_scale) = attention_qkv(config, family, store, &p)?;
        layers.push(Layer {
            attention_norm: rms(&format!("{p}.input_layernorm"))?,
            qkv,
            query_scale,
            qk_norm,
            out: linear(store, &format!("model.{p}.self_attn.o_proj.weight"))?,
            mlp_norm: rms(&format!("{p}.post_attention_layernorm"))?,
            mlp,
        });
    }
    let embeddings = embedding(store, "model.embed_tokens.weight")?;
    let lm_head = if store.contains("lm_head.weight") && !config.tie_word_embeddings {
        linear(store, "lm_head.weight")?
    } else {
        match &embeddings {
            Embedding::Quantized(q) => {
                Linear::Quantized(QLinear::new(q.clone(), store.block_activations())?)
            }
            Embedding::Dense(w) => linear_from(store, w)?,
        }
    };
    let head_dim = config.head_dim();
    let parts = Parts {
        embeddings,
        embedding_scale: gemma.then(|| (config.hidden_size as f64).sqrt()),
        position_embeddings: None,
        final_norm: rms("norm")?,
        lm_head,
        kv_heads: config.kv_heads(),
        rotary: Some(rotary_tables(
            config.rope_theta(),
            head_dim,
            config.max_position_embeddings,
            placement.dtype,
            &placement.device,
        )?),
    };
    Ok((parts, layers))
}

/// Phi-3's `gate_up_proj`: the gate's rows, then the up projection's.
fn half_of_fused(fused: &Tensor, half: usize) -> Result<Tensor> {
    let rows = fused.dim(0)? / 2;
    Ok(fused.narrow(0, half * rows, rows)?)
}

/// Q, K and V of layer `p` as one projection ([q heads | kv heads | kv heads] x head_dim rows),
/// the 1/sqrt(d) attention scale folded into the query's weights and bias; or, for weights kept
/// in quantized blocks, returned to be applied to the queries.
fn attention_qkv(
    config: &DecoderConfig,
    family: DecoderFamily,
    store: &WeightStore,
    p: &str,
) -> Result<(Linear, Option<f64>)> {
    let get = |name: &str| store.get(&format!("model.{p}.self_attn.{name}"));
    let quantized: Option<Vec<_>> = ["q_proj", "k_proj", "v_proj"]
        .iter()
        .map(|n| store.quantized(&format!("model.{p}.self_attn.{n}.weight")))
        .collect();
    if let Some(parts) = quantized {
        let scale = 1.0 / (config.head_dim() as f64).sqrt();
        let qkv = match stack_rows(&parts)? {
            Some(stacked) => QLinear::new(stacked, store.block_activations())?,
            None => QLinear::Stack(
                parts
                    .into_iter()
                    .map(|q| QLinear::new(q, store.block_activations()))
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        return Ok((Linear::Quantized(qkv), Some(scale)));
    }
    let (heads, kv_heads, head_dim) = (
        config.num_attention_heads,
        config.kv_heads(),
        config.head_dim(),
    );
    let scale = 1.0 / (head_dim as f64).sqrt();
    let with_bias = config
        .attention_bias
        .unwrap_or(family == DecoderFamily::Qwen2);
    let (q, k, v) = if family == DecoderFamily::Phi3 {
        let qkv = get("qkv_proj.weight")?;
        let (qw, kvw) = (heads * head_dim, kv_heads * head_dim);
        (
            (qkv.narrow(0, 0, qw)?, None),
            (qkv.narrow(0, qw, kvw)?, None),
            (qkv.narrow(0, qw + kvw, kvw)?, None),
        )
    } else {
        let linear = |name: &str| -> Result<(Tensor, Option<Tensor>)> {
            let bias = if with_bias {
                Some(get(&format!("{name}.bias"))?)
            } else {
                None
            };
            Ok((get(&format!("{name}.weight"))?, bias))
        };
        (linear("q_proj")?, linear("k_proj")?, linear("v_proj")?)
    };
    let weight = Tensor::cat(&[&(q.0 * scale)?, &k.0, &v.0], 0)?;
    let bias = match (q.1, k.1, v.1) {
        (Some(qb), Some(kb), Some(vb)) => Tensor::cat(&[&(qb * scale)?, &kb, &vb], 0)?,
        _ => return Ok((linear_from(store, &weight)?, None)),
    };
    Ok((Linear::new(&weight, &bias)?, None))
}
