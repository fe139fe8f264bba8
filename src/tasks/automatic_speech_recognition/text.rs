//! The transcription as the pipeline's `_decode_asr` makes it from the token ids of each
//! `generate` call (one call per chunk with `chunk_length_s`): special tokens out (a language
//! token tags the chunk, and without timestamps a change of language starts a new one),
//! timestamp tokens closing and opening chunks (shifted by the chunks' strides, and the ones in
//! a stride skipped), the token runs of overlapping chunks merged where they agree
//! (`_find_longest_common_sequence`), each chunk's tokens decoded on their own, the texts
//! joined; with `return_timestamps` and/or `return_language`, the chunks too. With word
//! timestamps each token carries its time, the merges keep tokens whose times agree, and the
//! answer's chunks are the words (`words`).

use std::collections::{HashMap, HashSet};

use serde_json::{json, Map, Value};

use super::words::collate_words;
use crate::error::ServerError;

/// What `_decode_asr` needs to know of the tokenizer.
pub(super) struct TokenKinds {
    /// `all_special_ids`.
    pub special: HashSet<u32>,
    /// Special tokens that name a language (`<|en|>`): the language's name (`english`).
    pub languages: HashMap<u32, &'static str>,
    /// `<|notimestamps|>` + 1.
    pub timestamp_begin: u32,
    /// Seconds per timestamp step: `chunk_length / max_source_positions` (0.02).
    pub time_precision: f64,
    /// `eos_token_id`: a word starts at a token from it on (special).
    pub eos: u32,
}

/// A token's start and end (seconds; the end unknown for a call's last token).
pub(super) type TokenTime = (f64, Option<f64>);

/// One `generate` call's token ids, and its chunk's stride in seconds
/// `(chunk length, left, right)` when the audio was chunked.
pub(super) struct CallTokens {
    pub tokens: Vec<u32>,
    /// With word timestamps, each token's time (seconds from the call's audio start).
    pub times: Vec<f32>,
    pub stride: Option<(f64, f64, f64)>,
}

struct Chunk {
    language: Option<&'static str>,
    start: Option<f64>,
    end: Option<f64>,
    text: String,
    /// With word timestamps: the chunk's words.
    words: Vec<Value>,
}

/// What the caller asked to see beside the text.
#[derive(Clone, Copy)]
pub(super) struct Show {
    pub timestamps: bool,
    /// Word timestamps: the chunks are the words (`timestamps` is true too).
    pub words: bool,
    pub language: bool,
}

/// `_decode_asr`: `{"text"}`, plus `"chunks"` when timestamps or languages are asked for.
pub(super) fn decode_asr(
    calls: &[CallTokens],
    kinds: &TokenKinds,
    show: Show,
    decode: impl Fn(&[u32]) -> Result<String, ServerError>,
) -> Result<Value, ServerError> {
    let timestamp_begin = kinds.timestamp_begin;
    let precision = kinds.time_precision;
    let mut last_language: Option<&'static str> = None;
    let new_chunk = |language: Option<&'static str>| Chunk {
        language,
        start: None,
        end: None,
        text: String::new(),
        words: Vec::new(),
    };
    // A chunk's text (and words) from its runs of tokens, merged.
    let resolve = |chunk: &mut Chunk,
                   previous: &[Vec<u32>],
                   previous_times: &[Vec<TokenTime>],
                   language: Option<&'static str>|
     -> Result<(), ServerError> {
        let (tokens, times) = longest_common_sequence(previous, previous_times);
        chunk.text = decode(&tokens)?;
        if show.words {
            chunk.words =
                collate_words(&tokens, &times, language, show.language, kinds.eos, &decode)?;
        }
        Ok(())
    };
    let mut chunks = Vec::new();
    let mut chunk = new_chunk(None);
    let mut time_offset = 0.0f64;
    let mut previous: Vec<Vec<u32>> = Vec::new();
    let mut previous_times: Vec<Vec<TokenTime>> = Vec::new();
    let mut skip = false;
    for call in calls {
        let tokens = &call.tokens;
        if let Some((_, stride_left, _)) = call.stride {
            time_offset -= stride_left;
        }
        let (first_timestamp, last_timestamp) = stride_timestamps(call, kinds);
        let mut current: Vec<u32> = Vec::new();
        let mut current_times: Vec<TokenTime> = Vec::new();
        for (i, &token) in tokens.iter().enumerate() {
            if kinds.special.contains(&token) {
                if let Some(&language) = kinds.languages.get(&token) {
                    if last_language.is_some_and(|l| l != language) && !show.timestamps {
                        previous.push(std::mem::take(&mut current));
                        resolve(&mut chunk, &previous, &[], last_language)?;
                        chunks.push(std::mem::replace(&mut chunk, new_chunk(last_language)));
                        previous.clear();
                    }
                    chunk.language = Some(language);
                    last_language = Some(language);
                }
            } else if token >= timestamp_begin {
                let time =
                    python_round2((token - timestamp_begin) as f64 * precision + time_offset);
                if last_timestamp.is_some_and(|last| token >= last) {
                    // inside the right stride: the next chunk says it again
                    skip = true;
                } else if skip || (!previous.is_empty() && (token as f64) < first_timestamp) {
                    skip = false;
                } else if chunk.start.is_none() {
                    chunk.start = Some(time);
                } else if chunk.start != Some(time) {
                    chunk.end = Some(time);
                    previous.push(std::mem::take(&mut current));
                    if show.words {
                        previous_times.push(std::mem::take(&mut current_times));
                    }
                    resolve(&mut chunk, &previous, &previous_times, last_language)?;
                    chunks.push(std::mem::replace(&mut chunk, new_chunk(last_language)));
                    previous.clear();
                    previous_times.clear();
                }
            } else {
                current.push(token);
                if show.words {
                    let at = |i: usize| {
                        call.times
                            .get(i)
                            .map(|&t| python_round2(t as f64 + time_offset))
                    };
                    current_times.push((at(i).unwrap_or(0.0), at(i + 1)));
                }
            }
        }
        if let Some((chunk_len, _, stride_right)) = call.stride {
            time_offset += chunk_len - stride_right;
        }
        if !current.is_empty() {
            previous.push(current);
            if show.words {
                previous_times.push(current_times);
            }
        } else if previous.iter().all(Vec::is_empty) {
            chunk = new_chunk(last_language);
            previous.clear();
            previous_times.clear();
        }
    }
    if !previous.is_empty() {
        resolve(&mut chunk, &previous, &previous_times, last_language)?;
        chunks.push(chunk);
    }
    Ok(answer(chunks, show))
}

/// Where a chunk's strides hold timestamps: those before the first (a value in timestamp
/// tokens, fractional) repeat the previous chunk's; from the last (the earliest of the closing
/// run of timestamps inside the right stride) on, the next chunk says them again.
fn stride_timestamps(call: &CallTokens, kinds: &TokenKinds) -> (f64, Option<u32>) {
    let (timestamp_begin, precision) = (kinds.timestamp_begin, kinds.time_precision);
    let mut first_timestamp = timestamp_begin as f64;
    let mut last_timestamp = None;
    if let Some((chunk_len, stride_left, stride_right)) = call.stride {
        let right_stride_start = chunk_len - stride_right;
        if stride_left != 0.0 {
            first_timestamp = stride_left / precision + timestamp_begin as f64;
        }
        if stride_right != 0.0 {
            for &token in call.tokens.iter().rev() {
                if token >= timestamp_begin {
                    if last_timestamp.is_some()
                        && (token - timestamp_begin) as f64 * precision < right_stride_start
                    {
                        break;
                    }
                    last_timestamp = Some(token);
                }
            }
        }
    }
    (first_timestamp, last_timestamp)
}

/// The pipeline's answer: the chunks' texts joined, and the chunks (or words) as asked.
fn answer(chunks: Vec<Chunk>, show: Show) -> Value {
    let text: String = chunks.iter().map(|c| c.text.as_str()).collect();
    if !show.timestamps && !show.language {
        return json!({ "text": text });
    }
    if show.words {
        let words = chunks.into_iter().flat_map(|c| c.words).collect();
        return json!({ "text": text, "chunks": Value::Array(words) });
    }
    let chunks: Vec<Value> = chunks
        .into_iter()
        .map(|c| {
            let mut out = Map::new();
            if show.language {
                out.insert("language".into(), json!(c.language));
            }
            if show.timestamps {
                out.insert("timestamp".into(), json!([c.start, c.end]));
            }
            out.insert("text".into(), Value::String(c.text));
            Value::Object(out)
        })
        .collect();
    json!({ "text": text, "chunks": chunks })
}

/// Python's `round(x, 2)`: the decimal nearest the exact binary value, ties to even (Rust's
/// formatting rounds the same way).
fn python_round2(x: f64) -> f64 {
    format!("{x:.2}").parse().unwrap_or(x)
}

/// `_find_longest_common_sequence`: each next run of tokens is slid along the merged one; where
/// the most tokens agree (more than one, per overlap length, longer overlaps winning near-ties),
/// the two are joined at the middle of the overlap. With the tokens' `times` (one run each, or
/// none), tokens agree only where the left one's time is not after the right one's, and the
/// times are joined as the tokens are.
pub(super) fn longest_common_sequence(
    sequences: &[Vec<u32>],
    times: &[Vec<TokenTime>],
) -> (Vec<u32>, Vec<TokenTime>) {
    let Some((first, rest)) = sequences.split_first() else {
        return (Vec::new(), Vec::new());
    };
    let timed = !times.is_empty();
    let no_times = Vec::new();
    let times_of = |k: usize| -> &[TokenTime] { times.get(k).unwrap_or(&no_times) };
    let mut left: &[u32] = first;
    let mut left_times = times_of(0);
    let mut total = Vec::new();
    let mut total_times = Vec::new();
    for (k, right) in rest.iter().enumerate() {
        let right_times = times_of(k + 1);
        let (left_len, right_len) = (left.len(), right.len());
        let mut best = 0.0f64;
        let mut indices = (left_len, left_len, 0, 0);
        for i in 1..left_len + right_len {
            let eps = i as f64 / 10000.0;
            let left_start = left_len.saturating_sub(i);
            let left_stop = left_len.min(left_len + right_len - i);
            let right_start = i.saturating_sub(left_len);
            let right_stop = right_len.min(i);
            let matches = (0..left_stop - left_start)
                .filter(|&m| {
                    let (l, r) = (left_start + m, right_start + m);
                    left[l] == right[r]
                        && (!timed || time_not_after(left_times.get(l), right_times.get(r)))
                })
                .count();
            let matching = matches as f64 / i as f64 + eps;
            if matches > 1 && matching > best {
                best = matching;
                indices = (left_start, left_stop, right_start, right_stop);
            }
        }
        let (left_start, left_stop, right_start, right_stop) = indices;
        let (left_mid, right_mid) = ((left_stop + left_start) / 2, (right_stop + right_start) / 2);
        total.extend_from_slice(&left[..left_mid]);
        left = &right[right_mid..];
        if timed {
            total_times.extend_from_slice(&left_times[..left_mid.min(left_times.len())]);
            left_times = &right_times[right_mid.min(right_times.len())..];
        }
    }
    total.extend_from_slice(left);
    total_times.extend_from_slice(left_times);
    (total, total_times)
}

/// Python's `left <= right` on two (start, end) tuples; where it would compare an unknown end
/// with a time (a TypeError there), no.
fn time_not_after(left: Option<&TokenTime>, right: Option<&TokenTime>) -> bool {
    let (Some(&(left_start, left_end)), Some(&(right_start, right_end))) = (left, right) else {
        return false;
    };
    if left_start != right_start {
        return left_start < right_start;
    }
    match (left_end, right_end) {
        (Some(l), Some(r)) => l <= r,
        (None, None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_runs_join_where_they_agree() {
        // [1 2 3 4 5] then [4 5 6 7]: the overlap 4 5 agrees; joined at its middle
        let merged = longest_common_sequence(&[vec![1, 2, 3, 4, 5], vec![4, 5, 6, 7]], &[]).0;
        assert_eq!(merged, vec![1, 2, 3, 4, 5, 6, 7]);
        // no two tokens agree anywhere: simply concatenated
        let merged = longest_common_sequence(&[vec![1, 2], vec![3, 4]], &[]).0;
        assert_eq!(merged, vec![1, 2, 3, 4]);
        assert_eq!(longest_common_sequence(&[vec![9]], &[]).0, vec![9]);
        // with times, tokens agree only where the left one is not later: the overlap's first
        // pair disagrees in time, so only one agrees (too few) and the runs are concatenated
        let t = |s: f64| (s, Some(s + 0.1));
        let (merged, times) = longest_common_sequence(
            &[vec![1, 4, 5], vec![4, 5, 6]],
            &[vec![t(0.0), t(2.0), t(1.0)], vec![t(1.0), t(1.5), t(2.0)]],
        );
        assert_eq!(merged, vec![1, 4, 5, 4, 5, 6]);
        assert_eq!(times.len(), 6);
    }

    #[test]
    fn rounds_as_python_does() {
        assert_eq!(python_round2(0.62), 0.62);
        assert_eq!(python_round2(16.24 - 1.6666875), 14.57);
        // 2.675 is 2.67499999... in binary: Python's round gives 2.67
        assert_eq!(python_round2(2.675), 2.67);
        assert_eq!(python_round2(0.125), 0.12);
    }
}
