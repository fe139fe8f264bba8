//! llama.cpp GGUF files of Llama-family models: tensors kept in their quantized blocks
//! (`models::quantized` multiplies them) and renamed to `transformers`' names, so that the same
//! network as for a safetensors checkpoint serves them, with continuous batching;
//! and a `config.json` equivalent read from the file's metadata for folders that have none.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{self, Content};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use serde_json::{json, Value};

fn read(path: &Path) -> Result<(Content, std::fs::File)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let content = Content::read(&mut file)
        .map_err(|e| anyhow::anyhow!("reading GGUF {}: {e}", path.display()))?;
    let arch = metadata_str(&content, "general.architecture")?;
    if arch != "llama" {
        bail!("GGUF architecture `{arch}` is not supported; supported: llama (Llama, SmolLM, Mistral-style)");
    }
    Ok((content, file))
}

fn metadata<'a>(content: &'a Content, key: &str) -> Result<&'a gguf_file::Value> {
    content
        .metadata
        .get(key)
        .with_context(|| format!("GGUF metadata `{key}` is missing"))
}

fn metadata_str(content: &Content, key: &str) -> Result<String> {
    Ok(metadata(content, key)?.to_string()?.clone())
}

fn metadata_usize(content: &Content, key: &str) -> Result<usize> {
    let value = metadata(content, key)?;
    Ok(value
        .to_u32()
        .map(|v| v as usize)
        .or_else(|_| value.to_u64().map(|v| v as usize))?)
}

/// What `config.json` would say, from `llama.*` metadata.
pub fn config(path: &Path) -> Result<Value> {
    let (content, _) = read(path)?;
    let heads = metadata_usize(&content, "llama.attention.head_count")?;
    let hidden = metadata_usize(&content, "llama.embedding_length")?;
    let vocab = content
        .tensor_infos
        .get("token_embd.weight")
        .context("GGUF tensor token_embd.weight is missing")?
        .shape
        .dims()[0];
    let f = |key: &str, default: f64| {
        content
            .metadata
            .get(key)
            .and_then(|v| v.to_f32().ok())
            .map_or(default, f64::from)
    };
    let token = |key: &str| metadata_usize(&content, key).ok();
    Ok(json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": metadata_usize(&content, "llama.feed_forward_length")?,
        "num_hidden_layers": metadata_usize(&content, "llama.block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": metadata_usize(&content, "llama.attention.head_count_kv").unwrap_or(heads),
        "max_position_embeddings": metadata_usize(&content, "llama.context_length")?,
        "rms_norm_eps": f("llama.attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": f("llama.rope.freq_base", 10_000.0),
        "vocab_size": vocab,
        "tie_word_embeddings": !content.tensor_infos.contains_key("output.weight"),
        "bos_token_id": token("tokenizer.ggml.bos_token_id"),
        "eos_token_id": token("tokenizer.ggml.eos_token_id"),
    }))
}

/// A GGUF file's tensors under their `transformers` names: the matrices (quantized types)
/// kept in their blocks, the rest (norm weights, f32/f16 matrices) as f32 tensors.
///
/// llama.cpp's converter permutes the query and key rows of each head so that rotary pairs are
/// adjacent; they are kept so, and the network rotates interleaved pairs for GGUF models
/// (`WeightStore::interleaved_rotary`): the attention scores are the same.
pub struct GgufTensors {
    pub dense: HashMap<String, Tensor>,
    pub quantized: HashMap<String, Arc<QTensor>>,
}

pub fn load_tensors(path: &Path, device: &Device) -> Result<GgufTensors> {
    let (content, mut file) = read(path)?;
    let mut tensors = GgufTensors {
        dense: HashMap::new(),
        quantized: HashMap::new(),
    };
    for name in content.tensor_infos.keys() {
        let Some(hf_name) = hf_name(name) else {
            continue; // e.g. rope_freqs: recomputed from the config
        };
        let tensor = content
            .tensor(&mut file, name, device)
            .with_context(|| format!("reading GGUF tensor {name}"))?;
        if matches!(
            tensor.dtype(),
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
        ) {
            let tensor = tensor
                .dequantize(device)
                .with_context(|| format!("reading GGUF tensor {name}"))?;
            tensors.dense.insert(hf_name, tensor);
        } else {
            tensors.quantized.insert(hf_name, Arc::new(tensor));
        }
    }
    Ok(tensors)
}

/// llama.cpp's tensor names → `transformers`' LlamaForCausalLM names.
fn hf_name(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(fixed) = fixed {
        return Some(fixed.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_transformers() {
        assert_eq!(
            hf_name("blk.3.attn_q.weight").as_deref(),
            Some("model.layers.3.self_attn.q_proj.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }
}
