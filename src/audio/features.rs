//! `WhisperFeatureExtractor` as the ASR pipeline calls it: the waveform padded with zeros (or
//! cut) to `n_samples` (30 s), a centred STFT (periodic Hann window of `n_fft`, reflect padding,
//! `hop_length`), power spectra through the Slaney-normalised mel filter bank, log10 over a
//! floor of 1e-10, the last frame dropped, everything below the maximum minus 8 raised to it,
//! then (x + 4) / 4. Computed in f64 as numpy does, rounded to f32 at the end.

use std::sync::Arc;

use anyhow::{bail, Result};
use realfft::{RealFftPlanner, RealToComplex};
use serde::Deserialize;

/// `preprocessor_config.json` of a Whisper model, with the extractor's defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct FeatureConfig {
    #[serde(default = "default_mels")]
    pub feature_size: usize,
    #[serde(default = "default_rate")]
    pub sampling_rate: u32,
    #[serde(default = "default_hop")]
    pub hop_length: usize,
    #[serde(default = "default_n_fft")]
    pub n_fft: usize,
    #[serde(default = "default_chunk")]
    pub chunk_length: usize,
    #[serde(default)]
    pub padding_value: f32,
    #[serde(default)]
    pub dither: f32,
}

fn default_mels() -> usize {
    80
}
fn default_rate() -> u32 {
    16000
}
fn default_hop() -> usize {
    160
}
fn default_n_fft() -> usize {
    400
}
fn default_chunk() -> usize {
    30
}

impl FeatureConfig {
    /// Samples in one window of the model (`n_samples`: 30 s).
    pub fn n_samples(&self) -> usize {
        self.chunk_length * self.sampling_rate as usize
    }

    /// Feature frames of one window (`nb_max_frames`: 3000).
    pub fn frames(&self) -> usize {
        self.n_samples() / self.hop_length
    }
}

pub struct FeatureExtractor {
    config: FeatureConfig,
    /// Per mel filter: its first frequency bin and its non-zero weights from there.
    filters: Vec<(usize, Vec<f64>)>,
    window: Vec<f64>,
    fft: Arc<dyn RealToComplex<f64>>,
}

impl FeatureExtractor {
    pub fn new(config: FeatureConfig) -> Result<Self> {
        if config.n_fft < 2 || config.hop_length == 0 || config.feature_size == 0 {
            bail!("preprocessor_config.json: n_fft, hop_length and feature_size must be positive");
        }
        if config.dither != 0.0 {
            tracing::warn!("preprocessor_config.json sets dither {}: features are computed without it (transformers adds random noise)", config.dither);
        }
        let n = config.n_fft;
        let window = (0..n)
            .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos())
            .collect();
        let filters = mel_filters(config.feature_size, n / 2 + 1, config.sampling_rate)
            .into_iter()
            .map(|row| {
                let first = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w != 0.0).map_or(first, |l| l + 1);
                (first, row[first..last].to_vec())
            })
            .collect();
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(n);
        Ok(FeatureExtractor {
            config,
            filters,
            window,
            fft,
        })
    }

    pub fn config(&self) -> &FeatureConfig {
        &self.config
    }

    /// The log-mel features of one window of audio at the extractor's rate (padded or cut to
    /// `n_samples`, the pipeline's call): [mels, frames()], row-major.
    pub fn extract(&self, samples: &[f32]) -> Vec<f32> {
        let n_samples = self.config.n_samples();
        self.extract_padded(&samples[..samples.len().min(n_samples)], n_samples)
    }

    /// The features of audio longer than a window as the pipeline computes them for Whisper's
    /// long-form decoding (`truncation=False, padding="longest"`): every sample, normalised
    /// over the whole; [mels, long_frames(samples)]. A shorter input is padded to a window.
    pub fn extract_long(&self, samples: &[f32]) -> Vec<f32> {
        self.extract_padded(samples, samples.len().max(self.config.n_samples()))
    }

    /// Frames of `extract_long` for `samples` samples.
    pub fn long_frames(&self, samples: usize) -> usize {
        samples.max(self.config.n_samples()) / self.config.hop_length
    }

    /// The features of `samples` padded to `n_samples` (at least as many).
    fn extract_padded(&self, samples: &[f32], n_samples: usize) -> Vec<f32> {
        let c = &self.config;
        let mut wave: Vec<f64> = samples.iter().map(|&s| s as f64).collect();
        let audio_len = wave.len();
        wave.resize(n_samples, c.padding_value as f64);
        let half = c.n_fft / 2;
        // Reflect padding (numpy's "reflect": the edge sample itself not repeated).
        let mut padded = Vec::with_capacity(n_samples + 2 * half);
        padded.extend((1..=half).rev().map(|k| wave[k.min(n_samples - 1)]));
        padded.extend_from_slice(&wave);
        padded.extend((0..half).map(|k| wave[n_samples - 2 - k.min(n_samples - 2)]));
        // A centred STFT has 1 + n / hop frames; the last is dropped.
        let frames = n_samples / c.hop_length;
        let bins = c.n_fft / 2 + 1;
        let mels = c.feature_size;
        let mut log_spec = vec![0f64; mels * frames];
        let mut buffer = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut power = vec![0f64; bins];
        // Frames that see only zero padding (past the audio and its window) have no power.
        let silent_from = if c.padding_value == 0.0 {
            (audio_len + half).div_ceil(c.hop_length)
        } else {
            usize::MAX
        };
        for t in 0..frames {
            if t >= silent_from && t * c.hop_length >= audio_len + half {
                power.iter_mut().for_each(|p| *p = 0.0);
            } else {
                let start = t * c.hop_length;
                for (i, b) in buffer.iter_mut().enumerate() {
                    // numpy multiplies the float32 frame by the window into float32.
                    *b = ((padded[start + i] as f32) as f64 * self.window[i]) as f32 as f64;
                }
                self.fft
                    .process(&mut buffer, &mut spectrum)
                    .expect("buffers of the planned length");
                for (p, z) in power.iter_mut().zip(&spectrum) {
                    // stored as complex64, then |z|^2 in f64
                    let (re, im) = (z.re as f32 as f64, z.im as f32 as f64);
                    *p = re * re + im * im;
                }
            }
            for (m, (first, weights)) in self.filters.iter().enumerate() {
                let energy: f64 = weights
                    .iter()
                    .zip(&power[*first..])
                    .map(|(w, p)| w * p)
                    .sum();
                log_spec[m * frames + t] = energy.max(1e-10).log10();
            }
        }
        let max = log_spec.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let floor = max - 8.0;
        log_spec
            .iter()
            .map(|&v| ((v.max(floor) + 4.0) / 4.0) as f32)
            .collect()
    }
}

/// `mel_filter_bank(bins, mels, 0, 8000, rate, norm="slaney", mel_scale="slaney")`, one row
/// per mel filter (transformers' matrix transposed).
fn mel_filters(mels: usize, bins: usize, rate: u32) -> Vec<Vec<f64>> {
    let (mel_min, mel_max) = (hertz_to_mel(0.0), hertz_to_mel(8000.0));
    let filter_freqs: Vec<f64> = linspace(mel_min, mel_max, mels + 2)
        .into_iter()
        .map(mel_to_hertz)
        .collect();
    let fft_freqs = linspace(0.0, (rate / 2) as f64, bins);
    (0..mels)
        .map(|m| {
            let enorm = 2.0 / (filter_freqs[m + 2] - filter_freqs[m]);
            fft_freqs
                .iter()
                .map(|&f| {
                    let down = -(filter_freqs[m] - f) / (filter_freqs[m + 1] - filter_freqs[m]);
                    let up =
                        (filter_freqs[m + 2] - f) / (filter_freqs[m + 2] - filter_freqs[m + 1]);
                    0f64.max(down.min(up)) * enorm
                })
                .collect()
        })
        .collect()
}

/// numpy's `linspace(start, stop, n)`.
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut values: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
    values[n - 1] = stop;
    values
}

const MIN_LOG_HERTZ: f64 = 1000.0;
const MIN_LOG_MEL: f64 = 15.0;

fn hertz_to_mel(freq: f64) -> f64 {
    let logstep = 27.0 / 6.4f64.ln();
    if freq >= MIN_LOG_HERTZ {
        MIN_LOG_MEL + (freq / MIN_LOG_HERTZ).ln() * logstep
    } else {
        3.0 * freq / 200.0
    }
}

fn mel_to_hertz(mels: f64) -> f64 {
    let logstep = 6.4f64.ln() / 27.0;
    if mels >= MIN_LOG_MEL {
        MIN_LOG_HERTZ * (logstep * (mels - MIN_LOG_MEL)).exp()
    } else {
        200.0 * mels / 3.0
    }
}
