//! WavLM's gated relative position bias (`WavLMAttention` in transformers 4.51.3): the first
//! layer's table (`rel_attn_embed`, one value per head and bucket of key-minus-query distance:
//! exact up to a quarter of the buckets on either side, logarithmic up to `max_bucket_distance`,
//! clamped beyond) serves every layer, each layer gating it per head and query by its own
//! projection of the query's input row: gate = σ(a) (σ(b) c_h - 1) + 2, with a and b the sums of
//! the two halves of `gru_rel_pos_linear`'s 8 outputs over that head's slice of the row, and c_h
//! `gru_rel_pos_const`. The rest of WavLM is Wav2Vec2's network (`wav2vec2`).

use anyhow::{ensure, Result};
use candle_core::DType;

use super::vision::LayerBias;
use super::weights::WeightStore;
use crate::kernels::ScoreBias;

/// The relative positions of a WavLM encoder: the bucketed table and each layer's gate.
pub struct RelativePositions {
    /// [buckets][heads]
    table: Vec<f32>,
    buckets: usize,
    max_distance: usize,
    heads: usize,
    gates: Vec<Gate>,
}

/// One layer's gate: `gru_rel_pos_linear` ([8][head_dim], [8]) and `gru_rel_pos_const` [heads].
struct Gate {
    weight: Vec<f32>,
    bias: Vec<f32>,
    constant: Vec<f32>,
}

impl RelativePositions {
    /// `{prefix}.N.attention.*` of `layers` layers with `heads` heads over `hidden` features.
    pub fn load(
        store: &WeightStore,
        prefix: &str,
        layers: usize,
        heads: usize,
        hidden: usize,
        (buckets, max_distance): (usize, usize),
    ) -> Result<Self> {
        let host = |name: &str| -> Result<Vec<f32>> {
            let t = store.base(name)?.to_dtype(DType::F32)?;
            Ok(t.flatten_all()?.to_vec1::<f32>()?)
        };
        let head_dim = hidden / heads.max(1);
        let table = host(&format!("{prefix}.0.attention.rel_attn_embed.weight"))?;
        ensure!(
            table.len() == buckets * heads,
            "rel_attn_embed holds {} values, not {buckets} buckets x {heads} heads",
            table.len()
        );
        ensure!(
            buckets >= 4 && max_distance > buckets / 4,
            "num_buckets {buckets} and max_bucket_distance {max_distance} leave no logarithmic buckets"
        );
        let gates = (0..layers)
            .map(|i| {
                let p = format!("{prefix}.{i}.attention");
                let gate = Gate {
                    weight: host(&format!("{p}.gru_rel_pos_linear.weight"))?,
                    bias: host(&format!("{p}.gru_rel_pos_linear.bias"))?,
                    constant: host(&format!("{p}.gru_rel_pos_const"))?,
                };
                ensure!(
                    gate.weight.len() == 8 * head_dim
                        && gate.bias.len() == 8
                        && gate.constant.len() == heads,
                    "{p}: gru_rel_pos_linear / gru_rel_pos_const of other shapes than [8, {head_dim}], [8], [1, {heads}, 1, 1]"
                );
                Ok(gate)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RelativePositions {
            table,
            buckets,
            max_distance,
            heads,
            gates,
        })
    }

    /// `_relative_positions_bucket` of a key-minus-query distance, in f32 as torch computes it.
    fn bucket(&self, relative: i64) -> usize {
        let half = self.buckets / 2;
        let base = if relative > 0 { half } else { 0 };
        let distance = relative.unsigned_abs() as usize;
        let max_exact = half / 2;
        if distance < max_exact {
            return base + distance;
        }
        let scale = (self.max_distance as f64 / max_exact as f64).ln() as f32;
        let large = (distance as f32 / max_exact as f32).ln() / scale * (half - max_exact) as f32
            + max_exact as f32;
        base + (large as usize).min(half - 1)
    }

    /// The table read along every key-minus-query distance of a `tokens`-long sequence, once
    /// for all its layers: [heads][2 tokens - 1], from distance -(tokens - 1).
    pub fn for_sequence(&self, tokens: usize) -> SequenceBias<'_> {
        let distances = (2 * tokens).saturating_sub(1);
        let buckets: Vec<usize> = (0..distances)
            .map(|k| self.bucket(k as i64 - (tokens as i64 - 1)))
            .collect();
        let by_distance = (0..self.heads)
            .flat_map(|h| buckets.iter().map(move |&b| (b, h)))
            .map(|(b, h)| self.table[b * self.heads + h])
            .collect();
        SequenceBias {
            positions: self,
            by_distance,
            tokens,
        }
    }
}

/// One sequence's relative position biases before the layers' gates.
pub struct SequenceBias<'a> {
    positions: &'a RelativePositions,
    /// [heads][2 tokens - 1]
    by_distance: Vec<f32>,
    tokens: usize,
}

impl LayerBias for SequenceBias<'_> {
    fn for_layer<'a>(&'a self, layer: usize, input: &[f32]) -> Result<Box<dyn ScoreBias + 'a>> {
        let positions = self.positions;
        let gate = positions
            .gates
            .get(layer)
            .ok_or_else(|| anyhow::anyhow!("no relative position gate for layer {layer}"))?;
        let heads = positions.heads;
        let head_dim = gate.weight.len() / 8;
        let hidden = heads * head_dim;
        let tokens = self.tokens;
        ensure!(
            input.len() == tokens * hidden,
            "{} values for {tokens} rows of {hidden} features",
            input.len()
        );
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        // [heads][tokens]
        let mut gates = vec![0f32; heads * tokens];
        for (t, row) in input.chunks_exact(hidden).enumerate() {
            for (h, slice) in row.chunks_exact(head_dim).enumerate() {
                let mut projected = [0f32; 8];
                let rows = gate.weight.chunks_exact(head_dim).zip(&gate.bias);
                for (p, (w, b)) in projected.iter_mut().zip(rows) {
                    *p = w.iter().zip(slice).map(|(w, x)| w * x).sum::<f32>() + b;
                }
                let a = projected[..4].iter().sum::<f32>();
                let b = projected[4..].iter().sum::<f32>();
                gates[h * tokens + t] = sigmoid(a) * (sigmoid(b) * gate.constant[h] - 1.0) + 2.0;
            }
        }
        Ok(Box::new(GatedBias {
            sequence: self,
            gates,
        }))
    }
}

/// One layer's bias: gate[h][i] x table[bucket(j - i)][h].
struct GatedBias<'a> {
    sequence: &'a SequenceBias<'a>,
    gates: Vec<f32>,
}

impl ScoreBias for GatedBias<'_> {
    fn add(&self, head: usize, first_query: usize, scores: &mut [f32]) {
        let n = self.sequence.tokens;
        let by_distance = &self.sequence.by_distance[head * (2 * n - 1)..][..2 * n - 1];
        for (r, row) in scores.chunks_exact_mut(n).enumerate() {
            let i = first_query + r;
            let gate = self.gates[head * n + i];
            // distances j - i for j = 0..n
            let biases = &by_distance[n - 1 - i..][..n];
            for (s, &bias) in row.iter_mut().zip(biases) {
                *s += gate * bias;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_transformers() {
        // torch: WavLMAttention(..., num_buckets=320, max_distance=800)._relative_positions_bucket
        let positions = RelativePositions {
            table: Vec::new(),
            buckets: 320,
            max_distance: 800,
            heads: 1,
            gates: Vec::new(),
        };
        let cases = [
            (0i64, 0usize),
            (1, 161),
            (-1, 1),
            (79, 239),
            (-79, 79),
            (80, 240),
            (-80, 80),
            (100, 247),
            (-100, 87),
            (150, 261),
            (-799, 159),
            (800, 319),
            (-5000, 159),
        ];
        for (relative, want) in cases {
            assert_eq!(positions.bucket(relative), want, "{relative}");
        }
        // every distance up to 3300 frames (66 s): torch's first distance of each logarithmic
        // bucket 80..159, the negative side 160 lower
        const FIRSTS: [usize; 80] = [
            80, 83, 85, 88, 90, 93, 96, 98, 101, 104, 107, 110, 114, 117, 120, 124, 127, 131, 135,
            139, 143, 147, 151, 156, 160, 165, 170, 175, 180, 185, 190, 196, 201, 207, 213, 220,
            226, 233, 239, 246, 253, 261, 268, 276, 284, 293, 301, 310, 319, 328, 338, 348, 358,
            368, 379, 390, 401, 413, 425, 438, 450, 464, 477, 491, 505, 520, 535, 551, 567, 583,
            600, 618, 636, 655, 674, 693, 714, 734, 756, 778,
        ];
        for distance in 1..=3300usize {
            let want = if distance < 80 {
                distance
            } else {
                79 + FIRSTS.iter().filter(|&&first| first <= distance).count()
            };
            assert_eq!(positions.bucket(distance as i64), 160 + want, "{distance}");
            assert_eq!(positions.bucket(-(distance as i64)), want, "-{distance}");
        }
    }
}
