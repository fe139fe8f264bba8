//! The windows of Whisper's `generate` (transformers 4.51.3): the encoder reads 30 s windows
//! (`2 x max_source_positions` feature frames) starting at a seek position; with timestamps,
//! after each window the seek moves to the last complete segment's end (`_retrieve_segment`)
//! and the rest is decoded again, from the same decoder prompt, until the audio is used up
//! (without the timestamp rules too, whenever the tokens hold a pair of timestamps).
//! This holds for one window of audio too (its features padded to 30 s): so an answer with
//! timestamps can hold several passes over the window, each with timestamps from its own seek.

use std::ops::Range;

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

/// `_retrieve_segment`'s slices of a window's kept tokens (`kept`: as `retrieve_segment` keeps
/// them): a segment ends where a timestamp pair starts, and the last one after the last pair
/// (holding both of its timestamps unless the tokens end on a single one); without pairs, one
/// (empty when nothing was kept: a window that wrote only its end token still has a segment, and
/// the next window is conditioned on `<|startofprev|>` alone).
pub(super) fn segment_slices(kept: &[u32], timestamp_begin: u32) -> Vec<Range<usize>> {
    let is_timestamp = |t: &u32| *t >= timestamp_begin;
    let mut cuts: Vec<usize> = (1..kept.len())
        .filter(|&i| is_timestamp(&kept[i - 1]) && is_timestamp(&kept[i]))
        .collect();
    // (the last pair's second timestamp stays in the last segment)
    cuts.retain(|&cut| cut + 1 < kept.len());
    let mut slices = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for cut in cuts {
        slices.push(start..cut);
        start = cut;
    }
    if start < kept.len() || slices.is_empty() {
        slices.push(start..kept.len());
    }
    slices
}

/// The segments decoded so far, each with its tokens' times (word timestamps; else empty),
/// and the decoder prompts `condition_on_prev_tokens` builds from them.
#[derive(Default)]
pub(super) struct History {
    segments: Vec<(Vec<u32>, Vec<f32>)>,
}

impl History {
    /// A window's kept tokens (and their times, when timed), as its segments.
    pub(super) fn push_window(&mut self, kept: &[u32], times: &[f32], timestamp_begin: u32) {
        for slice in segment_slices(kept, timestamp_begin) {
            let timed = times.get(slice.clone()).map(<[f32]>::to_vec);
            self.segments
                .push((kept[slice].to_vec(), timed.unwrap_or_default()));
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// `_prepare_decoder_input_ids` conditioned on the previous tokens: every segment that ends
    /// on two timestamps loses the second (for good: the answer leaves it out too), then
    /// `prev_sot` (if any) and the last `cut_off` tokens of all segments lead the prompt.
    pub(super) fn conditioned_prompt(
        &mut self,
        prompt: &[u32],
        prev_sot: Option<u32>,
        cut_off: usize,
        timestamp_begin: u32,
    ) -> Vec<u32> {
        for (tokens, times) in &mut self.segments {
            let n = tokens.len();
            if n > 2 && tokens[n - 2] >= timestamp_begin {
                tokens.pop();
                times.truncate(n - 1);
            }
        }
        let previous: Vec<u32> = self
            .segments
            .iter()
            .flat_map(|(t, _)| t.iter().copied())
            .collect();
        let recent = &previous[previous.len().saturating_sub(cut_off)..];
        prev_sot
            .into_iter()
            .chain(recent.iter().copied())
            .chain(prompt.iter().copied())
            .collect()
    }

    /// All segments' tokens and times, in order.
    pub(super) fn into_tokens(self) -> (Vec<u32>, Vec<f32>) {
        let mut out = (Vec::new(), Vec::new());
        for (tokens, times) in self.segments {
            out.0.extend(tokens);
            out.1.extend(times);
        }
        out
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
    fn segments_slice_as_transformers() {
        // pairs at 3-4 and 6-7, the tokens end on the second pair: the last segment holds both
        let kept = [10, 1, 2, 60, 60, 3, 110, 110];
        assert_eq!(segment_slices(&kept, TB), vec![0..4, 4..8]);
        // ending on a single timestamp: the last segment runs from the last pair to the end
        let kept = [10, 1, 60, 60, 3, 110];
        assert_eq!(segment_slices(&kept, TB), vec![0..3, 3..6]);
        // no pair: one segment
        assert_eq!(segment_slices(&[10, 1, 2], TB), vec![0..3]);
        assert_eq!(segment_slices(&[], TB), vec![0..0]);
    }

    #[test]
    fn conditioned_prompts_drop_a_closing_pairs_second_timestamp() {
        let mut history = History::default();
        history.push_window(&[10, 1, 2, 60, 60, 3, 110, 110], &[], TB);
        assert!(!history.is_empty());
        // prev_sot 9, the last 5 tokens, then the prompt
        let prompt = history.conditioned_prompt(&[7, 8], Some(9), 5, TB);
        assert_eq!(prompt, vec![9, 2, 60, 60, 3, 110, 7, 8]);
        // stripped for good, once
        let prompt = history.conditioned_prompt(&[7], None, 100, TB);
        assert_eq!(prompt, vec![10, 1, 2, 60, 60, 3, 110, 7]);
        assert_eq!(history.into_tokens().0, vec![10, 1, 2, 60, 60, 3, 110]);
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
