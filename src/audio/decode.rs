//! Audio files decoded with symphonia (WAV, FLAC, MP3, Ogg Vorbis: what ffmpeg decodes for the
//! DLC's audio types), bounded in length, and mixed down to mono as ffmpeg's `-ac 1` does.

use std::io::{Cursor, ErrorKind};

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_MP3, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// Audio longer than this (at its own rate) is refused: it bounds a request's memory (an hour
/// of silence compresses to little) and its time.
pub const MAX_SECONDS: u64 = 600;

/// Decoded samples (all channels) a request may hold: 128 MiB of f32, whatever the rate and
/// channel count (10 minutes of 48 kHz stereo fit).
pub const MAX_SAMPLES: usize = 1 << 25;

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("the request body is empty: send an audio file (WAV, FLAC, MP3 or Ogg Vorbis)")]
    Empty,
    #[error("the body is not an audio file this server decodes (WAV, FLAC, MP3, Ogg Vorbis): {0}")]
    Unsupported(String),
    #[error("the audio file is damaged or truncated: {0}")]
    Damaged(String),
    #[error("the audio is longer than {MAX_SECONDS} seconds (or {MAX_SAMPLES} samples)")]
    TooLong,
    #[error("the audio file holds no samples")]
    NoSamples,
}

/// Interleaved f32 samples of a file, at its own rate and channel count.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub rate: u32,
    pub channels: usize,
    pub samples: Vec<f32>,
    mp3: bool,
    /// Frames of encoder and decoder delay at the start (MP3's LAME header).
    delay: u32,
}

impl Decoded {
    /// One channel as ffmpeg's `-ac 1` makes it: stereo is (L + R) / sqrt(2) (swresample's
    /// matrix, not normalised: measured against ffmpeg within 5e-8); other layouts (ours) the
    /// channels' mean.
    pub fn mono(&self) -> Vec<f32> {
        if self.channels == 1 {
            return self.samples.clone();
        }
        let scale = if self.channels == 2 {
            std::f32::consts::FRAC_1_SQRT_2
        } else {
            1.0 / self.channels as f32
        };
        self.samples
            .chunks_exact(self.channels)
            .map(|frame| frame.iter().sum::<f32>() * scale)
            .collect()
    }
}

/// The samples ffmpeg decodes from the file on its standard input (as `ffmpeg_read` runs it):
/// gapless (encoder delay and padding trimmed), except that an MP3's end padding stays (read
/// from a pipe, ffmpeg trims only its start).
pub fn decode(bytes: &[u8]) -> Result<Decoded, AudioError> {
    let decoded = decode_with(bytes, true)?;
    if !decoded.mp3 {
        return Ok(decoded);
    }
    let mut whole = decode_with(bytes, false)?;
    let skip = (whole.delay as usize * whole.channels).min(whole.samples.len());
    whole.samples.drain(..skip);
    if whole.samples.is_empty() {
        return Err(AudioError::NoSamples);
    }
    Ok(whole)
}

fn decode_with(bytes: &[u8], gapless: bool) -> Result<Decoded, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    let source = MediaSourceStream::new(Box::new(Cursor::new(bytes.to_vec())), Default::default());
    // Gapless: MP3 encoder delay and padding trimmed, as ffmpeg trims them.
    let format_options = FormatOptions {
        enable_gapless: gapless,
        ..Default::default()
    };
    let probed = symphonia::default::get_probe()
        .format(
            &Hint::new(),
            source,
            &format_options,
            &MetadataOptions::default(),
        )
        .map_err(|e| AudioError::Unsupported(e.to_string()))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| AudioError::Unsupported("no audio track".into()))?;
    let track_id = track.id;
    let mp3 = track.codec_params.codec == CODEC_TYPE_MP3;
    let delay = track.codec_params.delay.unwrap_or(0);
    let mut rate = track.codec_params.sample_rate.unwrap_or(0);
    let mut channels = track.codec_params.channels.map_or(0, |c| c.count());
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| AudioError::Unsupported(e.to_string()))?;
    let mut samples: Vec<f32> = Vec::new();
    let mut buffer: Option<SampleBuffer<f32>> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(packet) => packet,
            Err(SymphoniaError::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) => return Err(AudioError::Damaged(e.to_string())),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(decoded) => decoded,
            // A damaged frame is skipped, as ffmpeg skips it.
            Err(SymphoniaError::DecodeError(e)) => {
                tracing::debug!("an audio frame could not be decoded: {e}");
                continue;
            }
            Err(e) => return Err(AudioError::Damaged(e.to_string())),
        };
        let spec = *decoded.spec();
        rate = spec.rate;
        channels = spec.channels.count();
        if channels == 0 || rate == 0 {
            return Err(AudioError::Damaged("no channels or no sample rate".into()));
        }
        let needed = decoded.capacity() as u64;
        let buf = match &mut buffer {
            Some(buf) if buf.capacity() as u64 >= needed * channels as u64 => buf,
            _ => buffer.insert(SampleBuffer::<f32>::new(needed, spec)),
        };
        buf.copy_interleaved_ref(decoded);
        samples.extend_from_slice(buf.samples());
        if samples.len() as u64 > MAX_SECONDS * rate as u64 * channels as u64
            || samples.len() > MAX_SAMPLES
        {
            return Err(AudioError::TooLong);
        }
    }
    if samples.is_empty() || channels == 0 || rate == 0 {
        return Err(AudioError::NoSamples);
    }
    Ok(Decoded {
        rate,
        channels,
        samples,
        mp3,
        delay,
    })
}
