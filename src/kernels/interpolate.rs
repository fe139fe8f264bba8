//! Resizing of learned tables (position embeddings over a patch grid) as torch's
//! `interpolate(mode="bicubic", align_corners=False)` computes it on the CPU: DINOv2's and
//! YOLOS's position embeddings for images of another size than they were trained on.

/// torch's `upsample_bicubic2d` on the CPU (`align_corners=False`, A = -0.75, taps clamped at
/// the edges), in f32 as it computes, on channels-last rows: `src` [from.0 * from.1][channels]
/// → [to.0 * to.1][channels]. Each output sums its four rows of four-tap column sums, in
/// torch's order.
pub fn bicubic(src: &[f32], from: (usize, usize), to: (usize, usize), channels: usize) -> Vec<f32> {
    let rows = taps(from.0, to.0);
    let cols = taps(from.1, to.1);
    let mut out = vec![0f32; to.0 * to.1 * channels];
    for (y, (row_index, row_weight)) in rows.iter().enumerate() {
        for (x, (col_index, col_weight)) in cols.iter().enumerate() {
            let cell = &mut out[(y * to.1 + x) * channels..][..channels];
            for (c, value) in cell.iter_mut().enumerate() {
                let at =
                    |i: usize, j: usize| src[(row_index[i] * from.1 + col_index[j]) * channels + c];
                // torch's order: t = v0 * w0, then t += vj * wj.
                let row_sum = |i: usize| {
                    (1..4).fold(at(i, 0) * col_weight[0], |t, j| {
                        t + at(i, j) * col_weight[j]
                    })
                };
                *value = (1..4).fold(row_sum(0) * row_weight[0], |sum, i| {
                    sum + row_sum(i) * row_weight[i]
                });
            }
        }
    }
    out
}

/// For each output index along one axis: its four input indices (clamped) and weights, as
/// torch's `HelperInterpCubic::compute_indices_weights` makes them.
fn taps(input: usize, output: usize) -> Vec<([usize; 4], [f32; 4])> {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| {
            let real = scale * (i as f32 + 0.5) - 0.5;
            let index = (real.floor() as i64).min(input as i64 - 1);
            let t = (real - index as f32).clamp(0.0, 1.0);
            let weights = [far(t + 1.0), near(t), near(1.0 - t), far(1.0 - t + 1.0)];
            let indices =
                std::array::from_fn(|j| (index - 1 + j as i64).clamp(0, input as i64 - 1) as usize);
            (indices, weights)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_keeps_a_constant_grid_and_its_size() {
        let grid = vec![0.25f32; 5 * 5 * 2];
        let out = bicubic(&grid, (5, 5), (4, 3), 2);
        assert_eq!(out.len(), 4 * 3 * 2);
        assert!(out.iter().all(|v| (v - 0.25).abs() < 1e-6), "{out:?}");
    }

    /// The same grid is the identity (the weights are exactly 0, 1, 0, 0); other grids give
    /// torch's values (`F.interpolate(x, size, mode="bicubic", align_corners=False)` on a ramp
    /// of 4 to 8, and on `arange(6).view(2, 3) * 0.37 - 1` to 3 x 5).
    #[test]
    fn bicubic_matches_torch() {
        let src: Vec<f32> = (0..6).map(|v| v as f32 * 0.37 - 1.0).collect();
        assert_eq!(bicubic(&src, (2, 3), (2, 3), 1), src);
        let close = |got: Vec<f32>, torch: &[f32]| {
            assert_eq!(got.len(), torch.len());
            for (g, t) in got.iter().zip(torch) {
                assert!((g - t).abs() < 1e-6, "{got:?} against {torch:?}");
            }
        };
        let torch = [
            -0.105_468_75,
            0.191_406_25,
            0.667_968_75,
            1.296_875,
            1.703_125,
            2.332_031_3,
            2.808_593_8,
            3.105_468_8,
        ];
        close(bicubic(&[0.0, 1.0, 2.0, 3.0], (1, 4), (1, 8), 1), &torch);
        let torch = [
            -1.131_875,
            -0.979_434_25,
            -0.726_354_5,
            -0.473_274_74,
            -0.320_834_46, //
            -0.480_520_13,
            -0.328_079_88,
            -0.074_999_99,
            0.178_079_87,
            0.330_520_12, //
            0.170_834_03,
            0.323_273_9,
            0.576_353_97,
            0.829_434_16,
            0.981_874_47,
        ];
        close(bicubic(&src, (2, 3), (3, 5), 1), &torch);
        // Channels stay apart: two interleaved copies give the same values, interleaved.
        let two: Vec<f32> = src.iter().flat_map(|&v| [v, 2.0 * v]).collect();
        let got = bicubic(&two, (2, 3), (3, 5), 2);
        close(got.iter().step_by(2).copied().collect(), &torch);
    }
}
