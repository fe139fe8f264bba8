//! Sentence-transformers pooling (`1_Pooling/config.json`): token vectors → one sentence vector,
//! optionally L2-normalised (a `Normalize` module in `modules.json`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    Cls,
    Mean,
    Max,
    MeanSqrtLen,
    LastToken,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pooling {
    /// Concatenated in this order, as sentence-transformers' `Pooling` does.
    pub modes: Vec<PoolingMode>,
    pub normalize: bool,
}

impl Pooling {
    /// Reads `1_Pooling/config.json` (mean pooling when the folder has none, as
    /// sentence-transformers does for a plain transformers checkpoint).
    pub fn from_dir(pooling_dir: Option<&Path>, normalize: bool) -> Result<Self> {
        let Some(file) = pooling_dir.map(|d| d.join("config.json")) else {
            return Ok(Pooling {
                modes: vec![PoolingMode::Mean],
                normalize,
            });
        };
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let config: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        Self::from_json(&config, normalize)
    }

    pub fn from_json(config: &Value, normalize: bool) -> Result<Self> {
        let on = |key: &str| config.get(key).and_then(Value::as_bool).unwrap_or(false);
        if on("pooling_mode_weightedmean_tokens") {
            bail!("pooling mode `weightedmean` is not supported; supported: cls, mean, max, mean_sqrt_len, lasttoken");
        }
        let modes: Vec<PoolingMode> = [
            ("pooling_mode_cls_token", PoolingMode::Cls),
            ("pooling_mode_max_tokens", PoolingMode::Max),
            ("pooling_mode_mean_tokens", PoolingMode::Mean),
            (
                "pooling_mode_mean_sqrt_len_tokens",
                PoolingMode::MeanSqrtLen,
            ),
            ("pooling_mode_lasttoken", PoolingMode::LastToken),
        ]
        .into_iter()
        .filter(|(key, _)| on(key))
        .map(|(_, mode)| mode)
        .collect();
        if modes.is_empty() {
            bail!("the pooling config enables no pooling mode");
        }
        Ok(Pooling { modes, normalize })
    }

    /// `tokens`: `len` rows of `width` (padding already excluded) → the sentence vector.
    pub fn pool(&self, tokens: &[f32], width: usize) -> Vec<f32> {
        let len = tokens.len() / width;
        let mut out = Vec::with_capacity(width * self.modes.len());
        for mode in &self.modes {
            match mode {
                PoolingMode::Cls => out.extend_from_slice(&tokens[..width]),
                PoolingMode::LastToken => out.extend_from_slice(&tokens[(len - 1) * width..]),
                PoolingMode::Mean | PoolingMode::MeanSqrtLen => {
                    let mut sum = vec![0f32; width];
                    for row in tokens.chunks_exact(width) {
                        for (s, v) in sum.iter_mut().zip(row) {
                            *s += v;
                        }
                    }
                    // sentence-transformers clamps the token count at 1e-9.
                    let divisor = if *mode == PoolingMode::Mean {
                        (len as f32).max(1e-9)
                    } else {
                        (len as f32).sqrt()
                    };
                    out.extend(sum.into_iter().map(|s| s / divisor));
                }
                PoolingMode::Max => {
                    let mut max = vec![f32::NEG_INFINITY; width];
                    for row in tokens.chunks_exact(width) {
                        for (m, v) in max.iter_mut().zip(row) {
                            *m = m.max(*v);
                        }
                    }
                    out.extend(max);
                }
            }
        }
        if self.normalize {
            normalize(&mut out);
        }
        out
    }
}

/// L2 normalisation as `torch.nn.functional.normalize` (norm clamped at 1e-12).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn modes_concatenate_in_sentence_transformers_order() {
        let p = Pooling::from_json(
            &json!({"pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": true, "pooling_mode_cls_token": true}),
            false,
        )
        .unwrap();
        assert_eq!(
            p.modes,
            [PoolingMode::Cls, PoolingMode::Max, PoolingMode::Mean]
        );
        let v = p.pool(&[1.0, 5.0, 3.0, 2.0], 2);
        assert_eq!(v, [1.0, 5.0, 3.0, 5.0, 2.0, 3.5]);
    }

    #[test]
    fn mean_and_normalize() {
        let p = Pooling::from_json(&json!({"pooling_mode_mean_tokens": true}), true).unwrap();
        let v = p.pool(&[3.0, 0.0, 3.0, 8.0], 2);
        assert!(
            (v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6,
            "{v:?}"
        );
        assert!(Pooling::from_json(&json!({}), false).is_err());
    }
}
