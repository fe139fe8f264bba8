//! Causal attention of a sequence's new rows over its keys and values in a paged cache
//! (`models::kv_blocks`): positions are read block by block through the sequence's block table,
//! in place. Grouped-query attention: query head h reads key/value head h / (heads / kv_heads).

/// Work (multiply-adds) above which the heads run in parallel.
const PARALLEL_MIN_MACS: usize = 1 << 18;

/// The shapes of one call.
#[derive(Debug, Clone, Copy)]
pub struct PagedShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Positions per block.
    pub block: usize,
}

/// `q`: the n new rows' queries, [n, heads * head_dim], scaled and rotated; `keys[b]` and
/// `values[b]`: block b of the table, [block, kv_heads * head_dim]; `past`: cached positions
/// before the new rows (whose keys and values are already written). Row t attends to positions
/// 0..=past + t. Returns the context, [n, heads * head_dim].
///
/// Panics unless the blocks cover past + n positions.
pub fn paged_attention(
    q: &[f32],
    keys: &[&[f32]],
    values: &[&[f32]],
    past: usize,
    shape: PagedShape,
) -> Vec<f32> {
    let PagedShape {
        heads,
        kv_heads,
        head_dim: d,
        block,
    } = shape;
    let width = heads * d;
    let kv_width = kv_heads * d;
    let n = q.len() / width;
    assert_eq!(q.len(), n * width, "query rows");
    assert!(keys.len() * block >= past + n && values.len() == keys.len());
    assert!(keys
        .iter()
        .chain(values)
        .all(|b| b.len() == block * kv_width));
    let group = heads / kv_heads;
    // Per query row: the scores block by block (a lane-wise dot product each: a plain sum is
    // one dependency chain of head_dim additions), their softmax, then the values weighted.
    let head = |h: usize| -> Vec<f32> {
        let g = h / group;
        let mut context = vec![0f32; n * d];
        let mut scores = Vec::with_capacity(past + n);
        for t in 0..n {
            let qh = &q[t * width + h * d..t * width + (h + 1) * d];
            let total = past + t + 1;
            scores.clear();
            for (b, kb) in keys.iter().enumerate().take(total.div_ceil(block)) {
                let rows = block.min(total - b * block);
                scores.extend((0..rows).map(|r| super::dot(qh, &kb[r * kv_width + g * d..][..d])));
            }
            super::softmax_in_place(&mut scores);
            let out = &mut context[t * d..(t + 1) * d];
            for (vb, weights) in values.iter().zip(scores.chunks(block)) {
                for (r, &p) in weights.iter().enumerate() {
                    let v = &vb[r * kv_width + g * d..][..d];
                    for (o, &x) in out.iter_mut().zip(v) {
                        *o += p * x;
                    }
                }
            }
        }
        context
    };
    let work = heads * n * (past + n) * d;
    let per_head: Vec<Vec<f32>> = if work >= PARALLEL_MIN_MACS {
        let parts: Vec<std::sync::OnceLock<Vec<f32>>> =
            (0..heads).map(|_| std::sync::OnceLock::new()).collect();
        super::decode_parallel_for(heads, |h| {
            let _ = parts[h].set(head(h));
        });
        parts
            .into_iter()
            .map(|p| p.into_inner().expect("every head ran"))
            .collect()
    } else {
        (0..heads).map(head).collect()
    };
    let mut context = vec![0f32; n * width];
    for (h, part) in per_head.iter().enumerate() {
        for t in 0..n {
            context[t * width + h * d..t * width + (h + 1) * d]
                .copy_from_slice(&part[t * d..(t + 1) * d]);
        }
    }
    context
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same attention over contiguous keys and values, written plainly.
    fn reference(q: &[f32], k: &[f32], v: &[f32], past: usize, s: PagedShape) -> Vec<f32> {
        let (width, kvw, d) = (s.heads * s.head_dim, s.kv_heads * s.head_dim, s.head_dim);
        let n = q.len() / width;
        let mut out = vec![0f32; n * width];
        for h in 0..s.heads {
            let g = h / (s.heads / s.kv_heads);
            for t in 0..n {
                let scores: Vec<f32> = (0..=past + t)
                    .map(|j| {
                        (0..d)
                            .map(|i| q[t * width + h * d + i] * k[j * kvw + g * d + i])
                            .sum()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = scores.iter().map(|x| (x - max).exp()).collect();
                let z: f32 = e.iter().sum();
                for i in 0..d {
                    out[t * width + h * d + i] = e
                        .iter()
                        .enumerate()
                        .map(|(j, p)| p * v[j * kvw + g * d + i])
                        .sum::<f32>()
                        / z;
                }
            }
        }
        out
    }

    #[test]
    fn paged_matches_contiguous_attention() {
        let shape = PagedShape {
            heads: 6,
            kv_heads: 2,
            head_dim: 8,
            block: 4,
        };
        let kvw = shape.kv_heads * shape.head_dim;
        for &(past, n) in &[(0usize, 1usize), (0, 7), (5, 1), (9, 3), (12, 4)] {
            let total = past + n;
            let blocks = total.div_ceil(shape.block);
            let k: Vec<f32> = (0..blocks * shape.block * kvw)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
                .collect();
            let v: Vec<f32> = (0..blocks * shape.block * kvw)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0)
                .collect();
            let q: Vec<f32> = (0..n * shape.heads * shape.head_dim)
                .map(|i| ((i * 3 % 17) as f32 - 8.0) / 9.0)
                .collect();
            let span = shape.block * kvw;
            let kb: Vec<&[f32]> = k.chunks(span).collect();
            let vb: Vec<&[f32]> = v.chunks(span).collect();
            let got = paged_attention(&q, &kb, &vb, past, shape);
            let want = reference(&q, &k, &v, past, shape);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "past {past} n {n}: {a} vs {b}");
            }
        }
    }
}
