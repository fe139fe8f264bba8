//! The transcription as the pipeline's `_decode_asr` makes it from the token ids of each
//! `generate` call (one call per chunk with `chunk_length_s`): special tokens out (a language
//! token tags the chunk, and without timestamps a change of language starts a new one),
//! timestamp tokens closing and opening chunks (shifted by the chunks' strides, and the ones in
//! a stride skipped), the token runs of overlapping chunks merged where they agree
//! (`_find_longest_common_sequence`), each chunk's tokens decoded on their own, the texts
//! joined; with `return_timestamps` and/or `return_language`, the chunks too.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Map, Value};

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
}

/// One `generate` call's token ids, and its chunk's stride in seconds
/// `(chunk length, left, right)` when the audio was chunked.
pub(super) struct CallTokens {
    pub tokens: Vec<u32>,
    pub stride: Option<(f64, f64, f64)>,
}

struct Chunk {
    language: Option<&'static str>,
    start: Option<f64>,
    end: Option<f64>,
    text: String,
}

/// What the caller asked to see beside the text.
#[derive(Clone, Copy)]
pub(super) struct Show {
    pub timestamps: bool,
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
    };
    let mut chunks = Vec::new();
    let mut chunk = new_chunk(None);
    let mut time_offset = 0.0f64;
    let mut previous: Vec<Vec<u32>> = Vec::new();
    let mut skip = false;
    for call in calls {
        let tokens = &call.tokens;
        let mut last_timestamp: Option<u32> = None;
        let mut first_timestamp = timestamp_begin as f64;
        if let Some((chunk_len, stride_left, stride_right)) = call.stride {
            time_offset -= stride_left;
            let right_stride_start = chunk_len - stride_right;
            if stride_left != 0.0 {
                first_timestamp = stride_left / precision + timestamp_begin as f64;
            }
            if stride_right != 0.0 {
                // The earliest of the closing run of timestamps inside the right stride.
                for &token in tokens.iter().rev() {
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
        let mut current: Vec<u32> = Vec::new();
        for &token in tokens {
            if kinds.special.contains(&token) {
                if let Some(&language) = kinds.languages.get(&token) {
                    if last_language.is_some_and(|l| l != language) && !show.timestamps {
                        previous.push(std::mem::take(&mut current));
                        chunk.text = decode(&longest_common_sequence(&previous))?;
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
                    chunk.text = decode(&longest_common_sequence(&previous))?;
                    chunks.push(std::mem::replace(&mut chunk, new_chunk(last_language)));
                    previous.clear();
                }
            } else {
                current.push(token);
            }
        }
        if let Some((chunk_len, _, stride_right)) = call.stride {
            time_offset += chunk_len - stride_right;
        }
        if !current.is_empty() {
            previous.push(current);
        } else if previous.iter().all(Vec::is_empty) {
            chunk = new_chunk(last_language);
            previous.clear();
        }
    }
    if !previous.is_empty() {
        chunk.text = decode(&longest_common_sequence(&previous))?;
        chunks.push(chunk);
    }
    let text: String = chunks.iter().map(|c| c.text.as_str()).collect();
    if !show.timestamps && !show.language {
        return Ok(json!({ "text": text }));
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
    Ok(json!({ "text": text, "chunks": chunks }))
}

/// Python's `round(x, 2)`: the decimal nearest the exact binary value, ties to even (Rust's
/// formatting rounds the same way).
fn python_round2(x: f64) -> f64 {
    format!("{x:.2}").parse().unwrap_or(x)
}

/// `_find_longest_common_sequence` (without token timestamps): each next run of tokens is
/// slid along the merged one; where the most tokens agree (more than one, per overlap length,
/// longer overlaps winning near-ties), the two are joined at the middle of the overlap.
pub(super) fn longest_common_sequence(sequences: &[Vec<u32>]) -> Vec<u32> {
    let Some((first, rest)) = sequences.split_first() else {
        return Vec::new();
    };
    let mut left: &[u32] = first;
    let mut total = Vec::new();
    for right in rest {
        let (left_len, right_len) = (left.len(), right.len());
        let mut best = 0.0f64;
        let mut indices = (left_len, left_len, 0, 0);
        for i in 1..left_len + right_len {
            let eps = i as f64 / 10000.0;
            let left_start = left_len.saturating_sub(i);
            let left_stop = left_len.min(left_len + right_len - i);
            let right_start = i.saturating_sub(left_len);
            let right_stop = right_len.min(i);
            let matches = left[left_start..left_stop]
                .iter()
                .zip(&right[right_start..right_stop])
                .filter(|(a, b)| a == b)
                .count();
            let matching = matches as f64 / i as f64 + eps;
            if matches > 1 && matching > best {
                best = matching;
                indices = (left_start, left_stop, right_start, right_stop);
            }
        }
        let (left_start, left_stop, right_start, right_stop) = indices;
        total.extend_from_slice(&left[..(left_stop + left_start) / 2]);
        left = &right[(right_stop + right_start) / 2..];
    }
    total.extend_from_slice(left);
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_runs_join_where_they_agree() {
        // [1 2 3 4 5] then [4 5 6 7]: the overlap 4 5 agrees; joined at its middle
        let merged = longest_common_sequence(&[vec![1, 2, 3, 4, 5], vec![4, 5, 6, 7]]);
        assert_eq!(merged, vec![1, 2, 3, 4, 5, 6, 7]);
        // no two tokens agree anywhere: simply concatenated
        let merged = longest_common_sequence(&[vec![1, 2], vec![3, 4]]);
        assert_eq!(merged, vec![1, 2, 3, 4]);
        assert_eq!(longest_common_sequence(&[vec![9]]), vec![9]);
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
