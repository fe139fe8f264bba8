//! The CPU decode path over the paged key/value cache (`models::kv_blocks`): each sequence's new
//! keys and values are written into its blocks in place, and attention reads them through the
//! block table (`kernels::paged`): no cache copy per step. Queries and keys are normalised (Qwen3),
//! scaled and rotated on host rows here, all sequences of a step in one pass per layer.

use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use super::parts::{DecoderConfig, Layer, Parts};
use super::{CausalLm, SequenceCache};
use crate::device::Placement;
use crate::kernels::paged::{paged_attention, PagedShape};
use crate::models::kv_blocks::{self, BlockAllocator, CpuBlocks, KvPool, PagedCache, BLOCK_TOKENS};
use crate::models::StepInput;

pub(super) struct PagedState {
    pool: Arc<Mutex<KvPool>>,
    /// cos and sin of the rotary angles, [max_positions, head_dim / 2] (None: GPT-2).
    rotary: Option<(Vec<f32>, Vec<f32>)>,
}

impl PagedState {
    /// Paged caches for f32 on the CPU (unless the generic kernels are forced); None elsewhere.
    pub(super) fn new(
        parts: &Parts,
        layers: usize,
        config: &DecoderConfig,
        placement: &Placement,
    ) -> Result<Option<Self>> {
        if !matches!(placement.device, Device::Cpu)
            || placement.dtype != DType::F32
            || crate::kernels::generic_kernels_forced()
        {
            return Ok(None);
        }
        let rotary = match &parts.rotary {
            Some((cos, sin)) => Some((
                cos.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
                sin.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
            )),
            None => None,
        };
        let kv_width = parts.kv_heads * config.head_dim();
        Ok(Some(PagedState {
            pool: Arc::new(Mutex::new(KvPool {
                alloc: BlockAllocator::default(),
                store: CpuBlocks::new(layers, kv_width),
            })),
            rotary,
        }))
    }

    pub(super) fn new_cache(&self) -> PagedCache {
        PagedCache::new(self.pool.clone())
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, KvPool> {
        kv_blocks::lock(&self.pool)
    }
}

/// Every sequence's table grows by its new tokens (copying a shared last block first), and the
/// store by the blocks that takes.
pub(super) fn grow_tables(
    inputs: &mut [StepInput<SequenceCache>],
    pool: &mut KvPool,
) -> Result<()> {
    let KvPool { alloc, store } = pool;
    for input in inputs.iter_mut() {
        let n = input.tokens.len();
        let Some(cache) = input.cache.paged.as_mut() else {
            bail!("a tensor cache was handed to a paged model");
        };
        if cache.table().len() != input.cache.len {
            bail!("the sequence's cache is out of step with its block table");
        }
        let copy = cache.table_mut().grow(n, alloc);
        store.ensure(alloc.capacity());
        if let Some(copy) = copy {
            store.copy(copy);
        }
    }
    Ok(())
}

/// Per-head RMSNorm of `rows` (Qwen3's query and key norms), in place.
fn rms_heads(rows: &mut [f32], weight: &[f32], eps: f32) {
    for head in rows.chunks_exact_mut(weight.len()) {
        let mean = head.iter().map(|x| x * x).sum::<f32>() / weight.len() as f32;
        let inv = 1.0 / (mean + eps).sqrt();
        for (x, w) in head.iter_mut().zip(weight) {
            *x = *x * inv * w;
        }
    }
}

/// Rotates each head of a row at position `pos`: pairs (i, i + d/2) as `transformers` does, or
/// neighbours (2i, 2i + 1) for GGUF's row order.
fn rotate(row: &mut [f32], d: usize, pos: usize, (cos, sin): (&[f32], &[f32]), interleaved: bool) {
    let half = d / 2;
    let (cos, sin) = (
        &cos[pos * half..(pos + 1) * half],
        &sin[pos * half..(pos + 1) * half],
    );
    for head in row.chunks_exact_mut(d) {
        for i in 0..half {
            let (a, b) = if interleaved {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + half)
            };
            let (x, y) = (head[a], head[b]);
            head[a] = x * cos[i] - y * sin[i];
            head[b] = y * cos[i] + x * sin[i];
        }
    }
}

impl CausalLm {
    /// Attention of layer `index` for every sequence of the step: `qkv`, [tokens, q | k | v],
    /// in the order of `inputs`. Returns the context, [tokens, heads * head_dim].
    pub(super) fn attend_paged(
        &self,
        state: &PagedState,
        layer: &Layer,
        index: usize,
        qkv: &Tensor,
        inputs: &[StepInput<SequenceCache>],
        pool: &mut KvPool,
    ) -> Result<Tensor> {
        let d = self.head_dim;
        let (q_width, kv_width) = (self.heads * d, self.kv_heads * d);
        let row_width = q_width + 2 * kv_width;
        let mut rows = qkv.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let norms = match &layer.qk_norm {
            Some((q, k)) => Some((q.to_vec1::<f32>()?, k.to_vec1::<f32>()?)),
            None => None,
        };
        let eps = self.rms_eps as f32;
        // Queries and keys normalised, scaled and rotated; keys and values written to the blocks.
        let mut offset = 0;
        for input in inputs {
            let past = input.cache.len;
            let table = input.cache.paged.as_ref().expect("paged caches").table();
            for t in 0..input.tokens.len() {
                let row = &mut rows[(offset + t) * row_width..(offset + t + 1) * row_width];
                let (q, kv) = row.split_at_mut(q_width);
                let (k, v) = kv.split_at_mut(kv_width);
                if let Some((q_norm, k_norm)) = &norms {
                    // The folded query scale is undone around the norm (see `attend`).
                    let folded = (d as f32).sqrt();
                    if layer.query_scale.is_none() {
                        q.iter_mut().for_each(|x| *x *= folded);
                    }
                    rms_heads(q, q_norm, eps);
                    let after = layer.query_scale.map_or(1.0 / folded, |s| s as f32);
                    q.iter_mut().for_each(|x| *x *= after);
                    rms_heads(k, k_norm, eps);
                } else if let Some(scale) = layer.query_scale {
                    q.iter_mut().for_each(|x| *x *= scale as f32);
                }
                if let Some((cos, sin)) = &state.rotary {
                    let tables = (cos.as_slice(), sin.as_slice());
                    rotate(q, d, past + t, tables, self.interleaved_rotary);
                    rotate(k, d, past + t, tables, self.interleaved_rotary);
                }
                pool.store.write(table.slot(past + t), index, k, v);
            }
            offset += input.tokens.len();
        }
        let store = &pool.store;
        let shape = PagedShape {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: d,
            block: BLOCK_TOKENS,
        };
        let mut starts = Vec::with_capacity(inputs.len());
        let mut start = 0;
        for input in inputs {
            starts.push(start);
            start += input.tokens.len();
        }
        let attend = |(input, &start): (&StepInput<SequenceCache>, &usize)| -> Vec<f32> {
            let n = input.tokens.len();
            let table = input.cache.paged.as_ref().expect("paged caches").table();
            let keys: Vec<&[f32]> = table
                .blocks()
                .iter()
                .map(|&b| store.part(b, index, false))
                .collect();
            let values: Vec<&[f32]> = table
                .blocks()
                .iter()
                .map(|&b| store.part(b, index, true))
                .collect();
            let q: Vec<f32> = (start..start + n)
                .flat_map(|r| rows[r * row_width..r * row_width + q_width].iter().copied())
                .collect();
            paged_attention(&q, &keys, &values, input.cache.len, shape)
        };
        // The sequences across the decode pool (`kernels::decode_parallel_for`).
        let parts: Vec<std::sync::OnceLock<Vec<f32>>> =
            inputs.iter().map(|_| std::sync::OnceLock::new()).collect();
        crate::kernels::decode_parallel_for(inputs.len(), |i| {
            let _ = parts[i].set(attend((&inputs[i], &starts[i])));
        });
        let contexts: Vec<Vec<f32>> = parts
            .into_iter()
            .map(|p| p.into_inner().expect("every sequence ran"))
            .collect();
        let context: Vec<f32> = contexts.concat();
        let tokens = context.len() / q_width;
        Ok(Tensor::from_vec(context, (tokens, q_width), &self.device)?.to_dtype(self.dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotations_pair_halves_or_neighbours() {
        // One head of 4: angle a for pair 0, b for pair 1.
        let (a, b) = (0.3f32, 1.1f32);
        let cos = [1.0, 1.0, a.cos(), b.cos()];
        let sin = [0.0, 0.0, a.sin(), b.sin()];
        let mut halves = [1.0, 2.0, 3.0, 4.0];
        rotate(&mut halves, 4, 1, (&cos, &sin), false);
        // Pairs (0, 2) and (1, 3).
        assert!((halves[0] - (a.cos() - 3.0 * a.sin())).abs() < 1e-6);
        assert!((halves[2] - (3.0 * a.cos() + a.sin())).abs() < 1e-6);
        assert!((halves[1] - (2.0 * b.cos() - 4.0 * b.sin())).abs() < 1e-6);
        let mut neighbours = [1.0, 3.0, 2.0, 4.0];
        rotate(&mut neighbours, 4, 1, (&cos, &sin), true);
        // The same rotation, rows in llama.cpp's order.
        assert_eq!(
            [neighbours[0], neighbours[2], neighbours[1], neighbours[3]],
            halves
        );
    }
}
