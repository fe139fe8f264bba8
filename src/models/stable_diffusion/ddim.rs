//! diffusers' `DDIMScheduler` (Stable Diffusion 2.x's, and many fine-tunes'): `set_timesteps`
//! descending, and `step` — the predicted original sample from the noise (or v) prediction,
//! clipped as configured, then the deterministic update, plus `eta` x the step's standard
//! deviation of fresh noise (our generator's) when `eta` > 0. Coefficients in f32, as diffusers.

use anyhow::Result;
use candle_core::Tensor;

use super::schedule::SchedulerConfig;

#[derive(Debug, Clone)]
pub struct Ddim {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
}

impl Ddim {
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        // (DDIM's set_alpha_to_one defaults to true)
        let (alphas_cumprod, final_alpha_cumprod) = config.cumulative_alphas(true)?;
        Ok(Ddim {
            config,
            alphas_cumprod,
            final_alpha_cumprod,
        })
    }

    /// `set_timesteps(steps)`: the spaced timesteps, last first.
    pub fn timesteps(&self, steps: usize) -> Result<Vec<usize>> {
        let mut t = self.config.spaced_timesteps(steps)?;
        t.reverse();
        Ok(t)
    }

    /// `step(model_output, timestep, sample, eta)`; `noise` draws the standard normal noise of
    /// `eta` > 0.
    pub fn step(
        &self,
        model_output: &Tensor,
        timestep: usize,
        sample: &Tensor,
        steps: usize,
        eta: f64,
        noise: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let prev = timestep as i64 - (self.config.num_train_timesteps / steps) as i64;
        let alpha_t = self.alphas_cumprod[timestep];
        let alpha_prev = usize::try_from(prev)
            .ok()
            .and_then(|p| self.alphas_cumprod.get(p).copied())
            .unwrap_or(self.final_alpha_cumprod);
        let beta_t = 1.0 - alpha_t;
        let (original, epsilon) = if self.config.prediction_type == "v_prediction" {
            (
                (sample.affine(alpha_t.sqrt() as f64, 0.0)?
                    - model_output.affine(beta_t.sqrt() as f64, 0.0)?)?,
                (model_output.affine(alpha_t.sqrt() as f64, 0.0)?
                    + sample.affine(beta_t.sqrt() as f64, 0.0)?)?,
            )
        } else {
            (
                (sample - model_output.affine(beta_t.sqrt() as f64, 0.0)?)?
                    .affine(1.0 / alpha_t.sqrt() as f64, 0.0)?,
                model_output.clone(),
            )
        };
        let original = if self.config.clip_sample.unwrap_or(true) {
            let r = self.config.clip_sample_range as f32;
            original.clamp(-r, r)?
        } else {
            original
        };
        // `_get_variance`, then sigma_t = eta * sqrt(variance).
        let beta_prev = 1.0 - alpha_prev;
        let variance = (beta_prev / beta_t) * (1.0 - alpha_t / alpha_prev);
        let std_dev = eta as f32 * variance.sqrt();
        let direction =
            epsilon.affine((1.0 - alpha_prev - std_dev * std_dev).sqrt() as f64, 0.0)?;
        let prev_sample = (original.affine(alpha_prev.sqrt() as f64, 0.0)? + direction)?;
        if eta > 0.0 {
            return Ok((prev_sample + noise(model_output)?.affine(std_dev as f64, 0.0)?)?);
        }
        Ok(prev_sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// diffusers 0.32.2: `DDIMScheduler(...SD 2.x...).set_timesteps(n).timesteps`.
    #[test]
    fn timesteps_are_diffusers() {
        let config: SchedulerConfig = serde_json::from_value(serde_json::json!({
            "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "clip_sample": false, "set_alpha_to_one": false, "steps_offset": 1
        }))
        .unwrap();
        let ddim = Ddim::new(config).unwrap();
        assert_eq!(ddim.timesteps(4).unwrap(), vec![751, 501, 251, 1]);
        assert_eq!(ddim.timesteps(1).unwrap(), vec![1]);
    }
}
