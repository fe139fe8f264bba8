//! The transcription's text as the pipeline's `_decode_asr` makes it from one window's tokens
//! (no chunking strides): special tokens out (a language token tags, and without timestamps a
//! change of language starts, a chunk), timestamp tokens closing and opening chunks, each
//! chunk's tokens decoded on their own, the texts joined; with `return_timestamps`, the chunks
//! with their `(start, end)` in seconds.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::error::ServerError;

/// What `_decode_asr` needs to know of the tokenizer.
pub(super) struct TokenKinds {
    /// `all_special_ids`.
    pub special: HashSet<u32>,
    /// Special tokens that name a language (`<|en|>`): their code.
    pub languages: std::collections::HashMap<u32, String>,
    /// `<|notimestamps|>` + 1.
    pub timestamp_begin: u32,
    /// Seconds per timestamp step: `chunk_length / max_source_positions` (0.02).
    pub time_precision: f64,
}

struct Chunk {
    start: Option<f64>,
    end: Option<f64>,
    text: String,
}

/// `(text, chunks)`: chunks only with timestamps.
pub(super) fn decode_asr(
    tokens: &[u32],
    kinds: &TokenKinds,
    return_timestamps: bool,
    decode: impl Fn(&[u32]) -> Result<String, ServerError>,
) -> Result<Value, ServerError> {
    let new_chunk = || Chunk {
        start: None,
        end: None,
        text: String::new(),
    };
    let mut chunks = Vec::new();
    let mut chunk = new_chunk();
    let mut last_language: Option<&str> = None;
    let mut current: Vec<u32> = Vec::new();
    for &token in tokens {
        if kinds.special.contains(&token) {
            if let Some(language) = kinds.languages.get(&token).map(String::as_str) {
                if last_language.is_some_and(|l| l != language) && !return_timestamps {
                    chunk.text = decode(&current)?;
                    chunks.push(std::mem::replace(&mut chunk, new_chunk()));
                    current.clear();
                }
                last_language = Some(language);
            }
        } else if token >= kinds.timestamp_begin {
            let steps = (token - kinds.timestamp_begin) as f64;
            // Python's round(t, 2) of steps x precision
            let time = (steps * kinds.time_precision * 100.0).round() / 100.0;
            match chunk.start {
                None => chunk.start = Some(time),
                Some(start) if start == time => {}
                Some(_) => {
                    chunk.end = Some(time);
                    chunk.text = decode(&current)?;
                    chunks.push(std::mem::replace(&mut chunk, new_chunk()));
                    current.clear();
                }
            }
        } else {
            current.push(token);
        }
    }
    if !current.is_empty() {
        chunk.text = decode(&current)?;
        chunks.push(chunk);
    }
    let text: String = chunks.iter().map(|c| c.text.as_str()).collect();
    if !return_timestamps {
        return Ok(json!({ "text": text }));
    }
    let chunks: Vec<Value> = chunks
        .into_iter()
        .map(|c| json!({ "timestamp": [c.start, c.end], "text": c.text }))
        .collect();
    Ok(json!({ "text": text, "chunks": chunks }))
}
