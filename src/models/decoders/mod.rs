//! Decoder-only language models for text generation: the Llama family (Llama, SmolLM, Qwen2,
//! Qwen3, Mistral, Phi-3, Gemma) and GPT-2, in explicit candle tensors with a KV cache per sequence.
//!
//! One [`CausalLm::step`] advances any number of sequences at once, each by its own number of new
//! tokens (a whole prompt when it joins, one token per decoding step after that): the dense
//! layers run once over all new tokens of all sequences, and only attention, which reads each
//! sequence's own cache, runs per sequence. That is what lets the scheduler add and drop
//! sequences between steps (continuous batching).

mod gpt2;
mod llama;
mod paged;
mod parts;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

pub use self::parts::DecoderConfig;
use self::parts::{Layer, Norm};
use super::check;
use super::config::ModelConfig;
use super::kv_blocks::PagedCache;
use super::layers::Linear;
use super::quantized::Embedding;
use super::weights::WeightStore;
use super::{append_keys_values, StepInput, StepModel};
use crate::device::Placement;
use crate::registry::DecoderFamily;
use crate::source::ModelFiles;
pub(crate) use gpt2::{conv1d, scale_rows};

/// The attention keys and values a sequence has produced so far: in the model's paged pool on
/// the CPU (`kv_blocks`; a clone shares the blocks), else as tensors per layer.
#[derive(Clone)]
pub struct SequenceCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    paged: Option<PagedCache>,
    /// Tokens already in the cache (the position of the next one).
    len: usize,
}

pub struct CausalLm {
    embeddings: Embedding,
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
    /// Rotary pairs are neighbouring dimensions (GGUF's query and key rows), not the two halves.
    interleaved_rotary: bool,
    /// The paged key/value cache of every sequence (CPU, f32), with host copies of the rotary
    /// tables; None: caches of tensors (GPUs, 16-bit dtypes).
    paged: Option<paged::PagedState>,
    max_positions: usize,
    vocab_size: usize,
    rms_eps: f64,
    device: Device,
    dtype: DType,
}

impl CausalLm {
    pub fn load(
        files: &ModelFiles,
        model: &ModelConfig,
        family: DecoderFamily,
        placement: &Placement,
    ) -> Result<Self> {
        let config: DecoderConfig = model.family()?;
        let store = WeightStore::load(&files.weights, &placement.device)?
            .in_dtype(placement.dtype)
            .with_quantize(placement.quantize)
            .with_block_activations(placement.block_activations);
        if let Some(rope_type) = config.rope_type().filter(|t| *t != "default") {
            bail!("rope scaling `{rope_type}` is not supported yet");
        }
        config.check_heads()?;
        let (parts, layers) = match family {
            DecoderFamily::Gpt2 => gpt2::load(&config, &store)?,
            _ => llama::load(&config, family, &store, placement)?,
        };
        check::width_of(
            parts.embeddings.dims()?.1,
            match family {
                DecoderFamily::Gpt2 => "wte.weight",
                _ => "embed_tokens.weight",
            },
            "hidden_size",
            config.hidden_size,
        )?;
        let paged = paged::PagedState::new(&parts, layers.len(), &config, placement)?;
        let model = CausalLm {
            paged,
            vocab_size: parts.embeddings.dims()?.0,
            interleaved_rotary: store.interleaved_rotary(),
            embeddings: parts.embeddings,
            embedding_scale: parts.embedding_scale,
            position_embeddings: parts.position_embeddings,
            layers,
            final_norm: parts.final_norm,
            lm_head: parts.lm_head,
            heads: config.num_attention_heads,
            kv_heads: parts.kv_heads,
            head_dim: config.head_dim(),
            rotary: parts.rotary,
            max_positions: config.max_position_embeddings,
            rms_eps: config.eps(),
            device: placement.device.clone(),
            dtype: placement.dtype,
        };
        tracing::info!(
            "text generation network: {family:?}, {} layers, {} heads ({} key/value), vocabulary {}{}",
            model.layers.len(),
            model.heads,
            model.kv_heads,
            model.vocab_size,
            model
                .lm_head
                .block_kernel()
                .map(|k| format!("; quantized blocks on {k}"))
                .unwrap_or_default()
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
        let x = self.hidden(inputs)?;
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

    /// The last layer's output at every new position of every sequence, in order.
    fn hidden(&self, inputs: &mut [StepInput<SequenceCache>]) -> Result<Tensor> {
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
        let mut x = self.embeddings.lookup(&ids, self.dtype)?;
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
        // The paged pool is held for the step; every table grows by its new tokens first.
        let mut pool = self.paged.as_ref().map(|p| p.lock());
        if let Some(pool) = pool.as_deref_mut() {
            paged::grow_tables(inputs, pool)?;
        }
        // A prefill's causal mask is the same in every layer: built once per step.
        let masks = inputs
            .iter()
            .map(|i| match i.tokens.len() {
                n if n == 1 || pool.is_some() => Ok(None),
                n => self.causal_mask(n, i.cache.len + n).map(Some),
            })
            .collect::<Result<Vec<_>>>()?;
        for (l, layer) in self.layers.iter().enumerate() {
            let residual = x.clone();
            let qkv = layer.qkv.forward(&layer.attention_norm.forward(&x)?)?;
            let context = match (pool.as_deref_mut(), &self.paged) {
                (Some(pool), Some(state)) => {
                    self.attend_paged(state, layer, l, &qkv, inputs, pool)?
                }
                _ => {
                    let mut context = Vec::with_capacity(inputs.len());
                    let mut offset = 0;
                    for (input, mask) in inputs.iter_mut().zip(&masks) {
                        let n = input.tokens.len();
                        let rows = qkv.narrow(0, offset, n)?;
                        offset += n;
                        context.push(self.attend(layer, l, &rows, mask.as_ref(), input.cache)?);
                    }
                    Tensor::cat(&context, 0)?
                }
            };
            x = (layer.out.forward(&context)? + residual)?;
            let residual = x.clone();
            x = (layer.mlp.forward(&layer.mlp_norm.forward(&x)?)? + residual)?;
        }
        for input in inputs.iter_mut() {
            input.cache.len += input.tokens.len();
        }
        Ok(x)
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
            // Qwen3 normalises each head before the rotation. The query scale commutes with
            // RMSNorm only up to eps, so it is applied after (undone first where folded).
            q = match layer.query_scale {
                Some(scale) => {
                    (candle_nn::ops::rms_norm(&q, q_norm, self.rms_eps as f32)? * scale)?
                }
                None => {
                    let scale = (d as f64).sqrt();
                    let q = candle_nn::ops::rms_norm(&(q * scale)?, q_norm, self.rms_eps as f32)?;
                    (q / scale)?
                }
            };
            k = candle_nn::ops::rms_norm(&k, k_norm, self.rms_eps as f32)?;
        } else if let Some(scale) = layer.query_scale {
            q = (q * scale)?;
        }
        if let Some((cos, sin)) = &self.rotary {
            let cos = cos.narrow(0, cache.len, n)?;
            let sin = sin.narrow(0, cache.len, n)?;
            let rotate = if self.interleaved_rotary {
                candle_nn::rotary_emb::rope_i
            } else {
                candle_nn::rotary_emb::rope
            };
            q = rotate(&q, &cos, &sin)?;
            k = rotate(&k, &cos, &sin)?;
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
        match &self.paged {
            Some(state) => SequenceCache {
                layers: Vec::new(),
                paged: Some(state.new_cache()),
                len: 0,
            },
            None => SequenceCache {
                layers: (0..self.layers.len()).map(|_| None).collect(),
                paged: None,
                len: 0,
            },
        }
    }

    fn step(&self, inputs: &mut [StepInput<SequenceCache>]) -> Result<Vec<Vec<f32>>> {
        self.forward(inputs)
    }

    /// One pass over the prompt on a cache of its own; the vocabulary's logits are made a few
    /// rows at a time (a row spans the vocabulary) and only each next token's log-probability kept.
    fn prompt_logprobs(&self, prompt: &[u32]) -> Result<Vec<f32>> {
        const ROWS: usize = 32;
        let mut cache = self.new_cache();
        let x = self.hidden(&mut [StepInput {
            tokens: prompt,
            cache: &mut cache,
        }])?;
        let scored = prompt.len().saturating_sub(1);
        let mut logprobs = Vec::with_capacity(scored);
        for start in (0..scored).step_by(ROWS) {
            let n = ROWS.min(scored - start);
            let hidden = self.final_norm.forward(&x.narrow(0, start, n)?)?;
            let rows = self.lm_head.forward(&hidden)?.to_dtype(DType::F32)?;
            for (i, row) in rows.to_vec2::<f32>()?.iter().enumerate() {
                let next = prompt[start + i + 1] as usize;
                let row = crate::kernels::log_softmax(row);
                logprobs.push(row.get(next).copied().unwrap_or(f32::NEG_INFINITY));
            }
        }
        Ok(logprobs)
    }
}
