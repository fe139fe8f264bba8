//! The windows of Whisper's `generate` (transformers 4.51.3): the encoder reads 30 s windows
//! (`2 x max_source_positions` feature frames) starting at a seek position; with timestamps,
//! after each window the seek moves to the last complete segment's end (`_retrieve_segment`)
//! and the rest is decoded again, from the same decoder prompt, until the audio is used up
//! (without the timestamp rules too, whenever the tokens hold a pair of timestamps).
//! This holds for one window of audio too (its features padded to 30 s): so an answer with
//! timestamps can hold several passes over the window, each with timestamps from its own seek.

/// One `generate` call's log-mel features: [mels, frames], row-major.
pub(super) struct Features {
    pub values: Vec<f32>,
    pub mels: usize,
    pub frames: usize,
}

impl Features {
    /// `_get_input_segment`: the frames from `seek` (at most `window` of them), padded with
    /// zeros to `window`.
    pub(super) fn window(&self, seek: usize, window: usize) -> Vec<f32> {
        let taken = self.frames.saturating_sub(seek).min(window);
        let mut out = vec![0f32; self.mels * window];
        for (m, row) in out.chunks_exact_mut(window).enumerate() {
            let from = m * self.frames + seek;
            row[..taken].copy_from_slice(&self.values[from..from + taken]);
        }
        out
    }
}

/// Feature frames per encoder position (the two convolutions' strides).
pub(super) const INPUT_STRIDE: usize = 2;

/// `_retrieve_segment` on one window's generated tokens (without the decoder prompt and the end
/// token): how many of them the segments keep, and how many frames the seek moves on.
/// Segments end at timestamp pairs; after the last pair, text not closed by a timestamp is
/// dropped and decoded again from the next seek, unless the tokens end on a single timestamp
/// (the speech ran to the window's end). Without pairs, everything is kept and the whole
/// window consumed.
pub(super) fn retrieve_segment(
    tokens: &[u32],
    window_frames: usize,
    timestamp_begin: u32,
) -> (usize, usize) {
    let is_timestamp = |t: &u32| *t >= timestamp_begin;
    let n = tokens.len();
    let single_timestamp_ending =
        n >= 2 && !is_timestamp(&tokens[n - 2]) && is_timestamp(&tokens[n - 1]);
    // indices of the second timestamp of each consecutive pair
    let last_pair = (1..n)
        .rev()
        .find(|&i| is_timestamp(&tokens[i - 1]) && is_timestamp(&tokens[i]));
    match last_pair {
        None => (n, window_frames),
        Some(_) if single_timestamp_ending => (n, window_frames),
        Some(second) => {
            let end = (tokens[second - 1] - timestamp_begin) as usize;
            // a zero move would decode the same window forever (the timestamp rules forbid it)
            let offset = (end * INPUT_STRIDE).max(1).min(window_frames);
            (second + 1, offset)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // text tokens < 10, timestamps from 10 (10 + k: k x 0.02 s)
    const TB: u32 = 10;

    #[test]
    fn segments_and_seeks_as_transformers() {
        // <|0.00|> a b <|1.00|><|1.00|> c <|2.00|>: ends on a single timestamp: all kept,
        // the whole window consumed
        let tokens = [10, 1, 2, 60, 60, 3, 110];
        assert_eq!(retrieve_segment(&tokens, 3000, TB), (7, 3000));
        // ... <|1.00|><|1.20|> c d (cut off): kept up to the pair; seek to 1.00 s (100 frames)
        let tokens = [10, 1, 2, 60, 70, 3, 4];
        assert_eq!(retrieve_segment(&tokens, 3000, TB), (5, 100));
        // ending on a pair: the same
        let tokens = [10, 1, 60, 60];
        assert_eq!(retrieve_segment(&tokens, 3000, TB), (4, 100));
        // no pair: one segment, the window consumed
        assert_eq!(retrieve_segment(&[10, 1, 2], 2500, TB), (3, 2500));
        assert_eq!(retrieve_segment(&[], 3000, TB), (0, 3000));
    }

    #[test]
    fn windows_are_zero_padded() {
        let features = Features {
            values: (0..10).map(|v| v as f32).collect(),
            mels: 2,
            frames: 5,
        };
        assert_eq!(features.window(3, 4), vec![3., 4., 0., 0., 8., 9., 0., 0.]);
        assert_eq!(features.window(0, 4), vec![0., 1., 2., 3., 5., 6., 7., 8.]);
    }
}
