//! Audio as the speech pipelines take it: the request body decoded ([`decode`]: WAV, FLAC, MP3,
//! Ogg Vorbis), mixed down to mono and resampled to the feature extractor's rate the way the
//! DLC's `ffmpeg_read` has ffmpeg do it ([`resample`]: libswresample's filter), then turned into
//! the model's log-mel features ([`features`]: `WhisperFeatureExtractor`).

pub mod decode;
pub mod features;
pub mod resample;

/// Mono f32 samples in [-1, 1] at `rate` Hz.
#[derive(Debug, Clone, PartialEq)]
pub struct Waveform {
    pub rate: u32,
    pub samples: Vec<f32>,
}

/// What `ffmpeg_read(bytes, rate)` returns for an audio file: decoded, mixed down to one
/// channel and resampled to `rate`.
pub fn read(bytes: &[u8], rate: u32) -> Result<Waveform, decode::AudioError> {
    let decoded = decode::decode(bytes)?;
    let mono = decoded.mono();
    Ok(Waveform {
        rate,
        samples: resample::resample(&mono, decoded.rate, rate),
    })
}
