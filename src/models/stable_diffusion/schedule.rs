//! What diffusers' schedulers share: `scheduler_config.json`, the betas' cumulative alphas (in
//! f32, as torch computes them) and `set_timesteps`' spacing of the inference timesteps.

use anyhow::{bail, Result};
use serde::Deserialize;

/// `scheduler/scheduler_config.json`, with diffusers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    #[serde(default = "train_timesteps")]
    pub num_train_timesteps: usize,
    #[serde(default = "beta_start")]
    pub beta_start: f64,
    #[serde(default = "beta_end")]
    pub beta_end: f64,
    #[serde(default = "linear")]
    pub beta_schedule: String,
    #[serde(default)]
    pub skip_prk_steps: bool,
    /// diffusers' default differs by scheduler (PNDM false, DDIM true).
    pub set_alpha_to_one: Option<bool>,
    /// DDIM: clamp the predicted sample to ±`clip_sample_range` (diffusers' default true).
    pub clip_sample: Option<bool>,
    #[serde(default = "one")]
    pub clip_sample_range: f64,
    #[serde(default)]
    pub thresholding: bool,
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    #[serde(default = "epsilon")]
    pub prediction_type: String,
    #[serde(default = "leading")]
    pub timestep_spacing: String,
    #[serde(default)]
    pub steps_offset: usize,
    pub trained_betas: Option<Vec<f32>>,
}

fn train_timesteps() -> usize {
    1000
}
fn beta_start() -> f64 {
    0.0001
}
fn beta_end() -> f64 {
    0.02
}
fn linear() -> String {
    "linear".into()
}
fn epsilon() -> String {
    "epsilon".into()
}
fn leading() -> String {
    "leading".into()
}

fn one() -> f64 {
    1.0
}

impl SchedulerConfig {
    /// What a scheduler starts from: the prediction type checked, every training timestep's
    /// cumulative alpha and the one after the last step (`final_alpha_cumprod`: 1 with
    /// `set_alpha_to_one`, whose default `alpha_to_one` is the scheduler's).
    pub fn cumulative_alphas(&self, alpha_to_one: bool) -> Result<(Vec<f32>, f32)> {
        if !matches!(self.prediction_type.as_str(), "epsilon" | "v_prediction") {
            bail!(
                "prediction_type `{}` must be epsilon or v_prediction",
                self.prediction_type
            );
        }
        let alphas = self.alphas_cumprod()?;
        let last = if self.set_alpha_to_one.unwrap_or(alpha_to_one) {
            1.0
        } else {
            alphas[0]
        };
        Ok((alphas, last))
    }

    /// Every training timestep's cumulative alpha (`alphas_cumprod`), in f32 as torch makes it.
    fn alphas_cumprod(&self) -> Result<Vec<f32>> {
        if self.rescale_betas_zero_snr || self.thresholding {
            bail!("rescale_betas_zero_snr and thresholding are not supported yet");
        }
        let n = self.num_train_timesteps;
        // torch.linspace in f32 (its values as it computes them: start + i * step).
        let linspace = |a: f64, b: f64| -> Vec<f32> {
            let step = (b - a) / (n.max(2) - 1) as f64;
            (0..n).map(|i| (a + step * i as f64) as f32).collect()
        };
        let betas: Vec<f32> = match (&self.trained_betas, self.beta_schedule.as_str()) {
            (Some(betas), _) => betas.clone(),
            (None, "linear") => linspace(self.beta_start, self.beta_end),
            (None, "scaled_linear") => linspace(self.beta_start.sqrt(), self.beta_end.sqrt())
                .into_iter()
                .map(|b| b * b)
                .collect(),
            (None, other) => bail!("beta_schedule `{other}` is not supported yet"),
        };
        if betas.len() != n {
            bail!("{} trained betas for {n} training timesteps", betas.len());
        }
        let mut product = 1f32;
        Ok(betas
            .iter()
            .map(|beta| {
                product *= 1.0 - beta;
                product
            })
            .collect())
    }

    /// `set_timesteps(steps)`' timesteps before any reordering, ascending.
    pub fn spaced_timesteps(&self, steps: usize) -> Result<Vec<usize>> {
        let n = self.num_train_timesteps;
        if steps == 0 || steps > n {
            bail!("num_inference_steps must be from 1 to {n}, got {steps}");
        }
        let base: Vec<usize> = match self.timestep_spacing.as_str() {
            "linspace" => (0..steps)
                .map(|i| {
                    let step = (n - 1) as f64 / (steps.max(2) - 1) as f64;
                    (i as f64 * step).round_ties_even() as usize
                })
                .collect(),
            "leading" => (0..steps)
                .map(|i| i * (n / steps) + self.steps_offset)
                .collect(),
            "trailing" => {
                let ratio = n as f64 / steps as f64;
                let mut t: Vec<usize> = (0..steps)
                    .map(|i| (n as f64 - i as f64 * ratio).round_ties_even() as usize - 1)
                    .collect();
                t.reverse();
                t
            }
            other => bail!("timestep_spacing `{other}` is not supported"),
        };
        if base.iter().any(|&t| t >= n) {
            bail!("a timestep past the {n} training steps (steps_offset too large)");
        }
        Ok(base)
    }
}
