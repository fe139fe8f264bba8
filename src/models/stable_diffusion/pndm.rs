//! diffusers' `PNDMScheduler` as Stable Diffusion 1.x configures it (`skip_prk_steps`: linear
//! multistep steps only), in f32 as diffusers computes its coefficients: the timesteps of
//! `set_timesteps` (`leading`, `trailing` or `linspace` spacing), then `step_plms` — the noise
//! predictions of up to the last four steps combined with the Adams–Bashforth weights (the
//! second step averages the first two predictions and restarts from the first sample) — and
//! `_get_prev_sample`'s update.

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::schedule::SchedulerConfig;

/// The schedule's fixed part: every training timestep's cumulative alpha.
#[derive(Debug, Clone)]
pub struct Pndm {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
}

/// One denoising run's state (`set_timesteps` made it; `step` advances it).
pub struct PndmRun<'a> {
    schedule: &'a Pndm,
    pub timesteps: Vec<usize>,
    steps: usize,
    ets: Vec<Tensor>,
    counter: usize,
    cur_sample: Option<Tensor>,
}

impl Pndm {
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        if !config.skip_prk_steps {
            bail!("PNDMScheduler with Runge-Kutta warm-up steps (skip_prk_steps false) is not supported yet; Stable Diffusion's configs skip them");
        }
        let (alphas_cumprod, final_alpha_cumprod) = config.cumulative_alphas(false)?;
        Ok(Pndm {
            config,
            alphas_cumprod,
            final_alpha_cumprod,
        })
    }

    /// `set_timesteps(steps)`.
    pub fn run(&self, steps: usize) -> Result<PndmRun<'_>> {
        let base = self.config.spaced_timesteps(steps)?;
        // [t0 .. t(n-2), t(n-2), t(n-1)] reversed: the second-to-last timestep twice.
        let mut plms: Vec<usize> = base[..steps - 1].to_vec();
        if steps >= 2 {
            plms.push(base[steps - 2]);
        }
        plms.push(base[steps - 1]);
        plms.reverse();
        Ok(PndmRun {
            schedule: self,
            timesteps: plms,
            steps,
            ets: Vec::new(),
            counter: 0,
            cur_sample: None,
        })
    }
}

impl PndmRun<'_> {
    /// `step_plms(model_output, timestep, sample)`: the previous sample.
    pub fn step(
        &mut self,
        model_output: &Tensor,
        timestep: usize,
        sample: &Tensor,
    ) -> Result<Tensor> {
        let ratio = self.schedule.config.num_train_timesteps / self.steps;
        let (mut timestep, mut prev_timestep) = (timestep as i64, timestep as i64 - ratio as i64);
        if self.counter != 1 {
            if self.ets.len() > 3 {
                self.ets.remove(0);
            }
            self.ets.push(model_output.clone());
        } else {
            prev_timestep = timestep;
            timestep += ratio as i64;
        }
        let e = &self.ets;
        let mut sample = sample.clone();
        let output = match (e.len(), self.counter) {
            (1, 0) => {
                self.cur_sample = Some(sample.clone());
                model_output.clone()
            }
            (1, 1) => {
                if let Some(first) = self.cur_sample.take() {
                    sample = first;
                }
                ((model_output + &e[0])? / 2.0)?
            }
            (2, _) => ((e[1].affine(3.0, 0.0)? - &e[0])? / 2.0)?,
            (3, _) => ((e[2].affine(23.0, 0.0)? - e[1].affine(16.0, 0.0)?)?
                + e[0].affine(5.0, 0.0)?)?
            .affine(1.0 / 12.0, 0.0)?,
            _ => (((e[3].affine(55.0, 0.0)? - e[2].affine(59.0, 0.0)?)?
                + e[1].affine(37.0, 0.0)?)?
                - e[0].affine(9.0, 0.0)?)?
            .affine(1.0 / 24.0, 0.0)?,
        };
        let prev = self.prev_sample(&sample, timestep, prev_timestep, &output)?;
        self.counter += 1;
        Ok(prev)
    }

    /// `_get_prev_sample`.
    fn prev_sample(
        &self,
        sample: &Tensor,
        timestep: i64,
        prev_timestep: i64,
        model_output: &Tensor,
    ) -> Result<Tensor> {
        let s = self.schedule;
        let alpha_of = |t: i64| -> Result<f32> {
            usize::try_from(t)
                .ok()
                .and_then(|t| s.alphas_cumprod.get(t).copied())
                .ok_or_else(|| anyhow::anyhow!("timestep {t} is past the schedule"))
        };
        let alpha_t = alpha_of(timestep)?;
        let alpha_prev = if prev_timestep >= 0 {
            alpha_of(prev_timestep)?
        } else {
            s.final_alpha_cumprod
        };
        let (beta_t, beta_prev) = (1.0 - alpha_t, 1.0 - alpha_prev);
        let model_output = if s.config.prediction_type == "v_prediction" {
            (model_output.affine(alpha_t.sqrt() as f64, 0.0)?
                + sample.affine(beta_t.sqrt() as f64, 0.0)?)?
        } else {
            model_output.clone()
        };
        let sample_coeff = (alpha_prev / alpha_t).sqrt();
        let denom = alpha_t * beta_prev.sqrt() + (alpha_t * beta_t * alpha_prev).sqrt();
        let output_coeff = (alpha_prev - alpha_t) / denom;
        Ok((sample.affine(sample_coeff as f64, 0.0)?
            - model_output.affine(output_coeff as f64, 0.0)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15() -> Pndm {
        Pndm::new(
            serde_json::from_value(serde_json::json!({
                "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1
            }))
            .unwrap(),
        )
        .unwrap()
    }

    /// diffusers 0.32.2: `PNDMScheduler(...SD 1.5...).set_timesteps(n)`.
    #[test]
    fn timesteps_are_diffusers() {
        let pndm = sd15();
        assert_eq!(pndm.run(1).unwrap().timesteps, vec![1]);
        assert_eq!(pndm.run(2).unwrap().timesteps, vec![501, 1, 1]);
        assert_eq!(pndm.run(4).unwrap().timesteps, vec![751, 501, 501, 251, 1]);
        assert!(pndm.run(0).is_err());
        // alphas_cumprod[0] and [999] as torch computes them in f32.
        assert!((pndm.alphas_cumprod[0] - 0.99915).abs() < 1e-6);
        assert!((pndm.alphas_cumprod[999] - 0.004_660_1).abs() < 1e-6);
    }
}
