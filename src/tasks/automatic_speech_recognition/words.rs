//! Word timestamps (`return_timestamps="word"`) as transformers 4.51.3 makes them: each token's
//! time from the decoder's cross-attention (`_extract_token_timestamps`: the probabilities of the
//! generation config's `alignment_heads`, normalised over the tokens, median filtered along the
//! audio, averaged over the heads, then aligned to the audio positions by dynamic time warping:
//! a token starts where the path first reaches its row), and the tokens grouped into words
//! (`_collate_word_timestamps`: split where a token decodes to whole characters, then at spaces
//! and punctuation, except for languages written without spaces, punctuation merged into its
//! neighbours).

use serde_json::{json, Map, Value};

use crate::error::ServerError;

/// Seconds per audio position of the encoder (`_extract_token_timestamps`' `time_precision`).
pub(super) const SECONDS_PER_POSITION: f64 = 0.02;

/// The timestamps (seconds) of a sequence's tokens from the cross-attention `weights` of its
/// alignment heads (each row-major [rows x positions]: row `i` is the decoder's pass over token
/// `i`), over the first `keep` positions (`num_frames / 2`; all when `None`): `rows + 1` of
/// them, the first token's 0, then each next token's time: where its predecessor's row starts.
pub(super) fn token_timestamps(
    weights: &[Vec<f32>],
    rows: usize,
    keep: Option<usize>,
    median_width: usize,
) -> Result<Vec<f32>, ServerError> {
    if median_width == 0 || median_width % 2 != 1 {
        return Err(ServerError::bad_request(
            "`filter_width` should be an odd number",
        ));
    }
    let positions = weights.first().map_or(0, |w| w.len() / rows.max(1));
    let cols = keep.map_or(positions, |k| k.min(positions));
    let mut mean = vec![0f32; rows * cols];
    for head in weights {
        let mut matrix: Vec<f32> = (0..rows)
            .flat_map(|i| head[i * positions..i * positions + cols].iter().copied())
            .collect();
        normalize_columns(&mut matrix, rows, cols);
        for row in matrix.chunks_exact_mut(cols.max(1)) {
            median_filter(row, median_width);
        }
        for (m, v) in mean.iter_mut().zip(&matrix) {
            *m += v;
        }
    }
    let negated: Vec<f64> = mean
        .iter()
        .map(|&m| -((m / weights.len() as f32) as f64))
        .collect();
    let starts = row_starts(&negated, rows, cols);
    let mut timestamps = vec![0f32; rows + 1];
    for (t, start) in timestamps[1..].iter_mut().zip(starts) {
        *t = (start as f64 * SECONDS_PER_POSITION) as f32;
    }
    Ok(timestamps)
}

/// Each column's values less their mean over the rows, over their (biased) deviation, in f32 as
/// torch computes them (the sums in f64: torch's own are close to exact).
fn normalize_columns(matrix: &mut [f32], rows: usize, cols: usize) {
    for c in 0..cols {
        let column = || (0..rows).map(|r| matrix[r * cols + c] as f64);
        let mean = (column().sum::<f64>() / rows as f64) as f32;
        let variance = column().map(|v| (v - mean as f64).powi(2)).sum::<f64>() / rows as f64;
        let std = variance.sqrt() as f32;
        for r in 0..rows {
            let v = &mut matrix[r * cols + c];
            *v = (*v - mean) / std;
        }
    }
}

/// `_median_filter` on one row: the median of each `width` values around a position, the row
/// reflected at its ends; a row no longer than half the width is left as it is.
fn median_filter(row: &mut [f32], width: usize) {
    let pad = width / 2;
    let n = row.len();
    if n <= pad {
        return;
    }
    let at = |i: isize| -> f32 {
        let i = if i < 0 {
            -i
        } else if i >= n as isize {
            2 * (n as isize - 1) - i
        } else {
            i
        };
        row[i as usize]
    };
    let mut window = vec![0f32; width];
    let filtered: Vec<f32> = (0..n as isize)
        .map(|j| {
            for (k, w) in window.iter_mut().enumerate() {
                *w = at(j - pad as isize + k as isize);
            }
            // torch sorts NaN last
            window.sort_by(|a, b| {
                a.partial_cmp(b)
                    .unwrap_or_else(|| a.is_nan().cmp(&b.is_nan()))
            });
            window[pad]
        })
        .collect();
    row.copy_from_slice(&filtered);
}

/// `_dynamic_time_warping` of a [rows x cols] cost matrix (its cumulative costs in f32, as
/// numpy's), then where the path first reaches each row: that row's column.
fn row_starts(matrix: &[f64], rows: usize, cols: usize) -> Vec<i64> {
    let width = cols + 1;
    let mut cost = vec![f32::INFINITY; (rows + 1) * width];
    let mut trace = vec![-1i8; (rows + 1) * width];
    cost[0] = 0.0;
    for j in 1..=cols {
        for i in 1..=rows {
            let c0 = cost[(i - 1) * width + j - 1];
            let c1 = cost[(i - 1) * width + j];
            let c2 = cost[i * width + j - 1];
            let (c, t) = if c0 < c1 && c0 < c2 {
                (c0, 0)
            } else if c1 < c0 && c1 < c2 {
                (c1, 1)
            } else {
                (c2, 2)
            };
            cost[i * width + j] = (matrix[(i - 1) * cols + j - 1] + c as f64) as f32;
            trace[i * width + j] = t;
        }
    }
    trace[..width].fill(2);
    for i in 0..=rows {
        trace[i * width] = 1;
    }
    let (mut i, mut j) = (rows, cols);
    let mut path = Vec::with_capacity(rows + cols);
    while i > 0 || j > 0 {
        path.push((i as i64 - 1, j as i64 - 1));
        match trace[i * width + j] {
            0 => {
                i -= 1;
                j -= 1;
            }
            1 => i -= 1,
            _ => j -= 1,
        }
    }
    path.reverse();
    let mut starts = Vec::with_capacity(rows);
    let mut previous = None;
    for (text, time) in path {
        if previous != Some(text) {
            starts.push(time);
        }
        previous = Some(text);
    }
    starts.resize(rows, *starts.last().unwrap_or(&0));
    starts
}

/// Languages written without spaces: their words are split where tokens decode to whole
/// characters.
const WITHOUT_SPACES: [&str; 6] = ["chinese", "japanese", "thai", "lao", "myanmar", "cantonese"];
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
const PREPENDED: &str = "\"'“¡¿([{-";
const APPENDED: &str = "\"'.。,，!！?？:：”)]}、";

/// One word: its text and its tokens' indices.
struct Word {
    text: String,
    indices: Vec<usize>,
}

/// `_collate_word_timestamps`: the words of `tokens` (`language`'s way, English when unknown)
/// with the start of their first token and the end of their last (`times`: each token's).
pub(super) fn collate_words(
    tokens: &[u32],
    times: &[(f64, Option<f64>)],
    language: Option<&'static str>,
    show_language: bool,
    eos: u32,
    decode: &dyn Fn(&[u32]) -> Result<String, ServerError>,
) -> Result<Vec<Value>, ServerError> {
    let language_name = language.unwrap_or("english");
    let mut words = if WITHOUT_SPACES.contains(&language_name) {
        split_on_unicode(tokens, decode)?
    } else {
        split_on_spaces(tokens, eos, decode)?
    };
    merge_punctuations(&mut words);
    Ok(words
        .into_iter()
        .map(|word| {
            let (first, last) = (word.indices[0], word.indices[word.indices.len() - 1]);
            let mut out = Map::new();
            out.insert("text".into(), Value::String(word.text));
            let (start, end) = (
                times.get(first).map(|t| t.0),
                times.get(last).and_then(|t| t.1),
            );
            out.insert("timestamp".into(), json!([start, end]));
            if show_language {
                out.insert("language".into(), json!(language));
            }
            Value::Object(out)
        })
        .collect())
}

/// `_split_tokens_on_unicode`: a word ends where its tokens decode to whole characters (or to a
/// replacement character the whole text has there too).
fn split_on_unicode(
    tokens: &[u32],
    decode: &dyn Fn(&[u32]) -> Result<String, ServerError>,
) -> Result<Vec<Word>, ServerError> {
    const REPLACEMENT: char = '\u{fffd}';
    let full: Vec<char> = decode(tokens)?.chars().collect();
    let mut words = Vec::new();
    let (mut current, mut indices) = (Vec::new(), Vec::new());
    let mut offset = 0;
    for (index, &token) in tokens.iter().enumerate() {
        current.push(token);
        indices.push(index);
        let decoded = decode(&current)?;
        let whole = match decoded.chars().position(|c| c == REPLACEMENT) {
            None => true,
            Some(at) => full.get(offset + at) == Some(&REPLACEMENT),
        };
        if whole {
            offset += decoded.chars().count();
            words.push(Word {
                text: decoded,
                indices: std::mem::take(&mut indices),
            });
            current.clear();
        }
    }
    Ok(words)
}

/// `_split_tokens_on_spaces`: the pieces of [`split_on_unicode`] joined into words, a new one
/// at each piece that starts with a space, is punctuation or a special token.
fn split_on_spaces(
    tokens: &[u32],
    eos: u32,
    decode: &dyn Fn(&[u32]) -> Result<String, ServerError>,
) -> Result<Vec<Word>, ServerError> {
    let mut words: Vec<Word> = Vec::new();
    for piece in split_on_unicode(tokens, decode)? {
        let special = tokens[piece.indices[0]] >= eos;
        let with_space = piece.text.starts_with(' ');
        // (Python's `in` on strings: a substring of the punctuation counts, "" included)
        let punctuation = PUNCTUATION.contains(python_strip(&piece.text));
        match words.last_mut() {
            Some(last) if !(special || with_space || punctuation) => {
                last.text.push_str(&piece.text);
                last.indices.extend(piece.indices);
            }
            _ => words.push(piece),
        }
    }
    Ok(words)
}

/// `_merge_punctuations`: opening punctuation after a space joins the next word, closing
/// punctuation the word before (unless that ends with a space); words left empty go.
fn merge_punctuations(words: &mut Vec<Word>) {
    let take = |word: &mut Word| Word {
        text: std::mem::take(&mut word.text),
        indices: std::mem::take(&mut word.indices),
    };
    if words.len() >= 2 {
        let mut j = words.len() - 1;
        for i in (0..words.len() - 1).rev() {
            if words[i].text.starts_with(' ') && PREPENDED.contains(python_strip(&words[i].text)) {
                let before = take(&mut words[i]);
                let after = &mut words[j];
                after.text.insert_str(0, &before.text);
                after.indices.splice(0..0, before.indices);
            } else {
                j = i;
            }
        }
    }
    let mut i = 0;
    for j in 1..words.len() {
        if !words[i].text.ends_with(' ') && APPENDED.contains(words[j].text.as_str()) {
            let after = take(&mut words[j]);
            words[i].text.push_str(&after.text);
            words[i].indices.extend(after.indices);
        } else {
            i = j;
        }
    }
    words.retain(|word| !word.text.is_empty() && !word.indices.is_empty());
}

/// Python's `str.strip()`: whitespace as `str.isspace` has it (the separators U+001C..U+001F
/// too).
fn python_strip(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_warping_follows_the_cheapest_path() {
        // 2 tokens over 4 positions: token 0 cheapest at positions 0-1, token 1 at 2-3
        let matrix = [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0];
        assert_eq!(row_starts(&matrix, 2, 4), vec![0, 2]);
        let matrix = [-1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0];
        assert_eq!(row_starts(&matrix, 2, 4), vec![0, 1]);
        // ties go to the step along the audio (numpy's `else`): token 1 starts at position 1
        let matrix = [-1.0, -1.0, 0.0, 0.0, 0.0, 0.0, -1.0, -1.0];
        assert_eq!(row_starts(&matrix, 2, 4), vec![0, 1]);
    }

    #[test]
    fn median_filter_reflects_at_the_ends() {
        let mut row = [5.0, 1.0, 3.0, 9.0, 7.0];
        // width 3: windows (1 5 1) (5 1 3) (1 3 9) (3 9 7) (9 7 9)
        median_filter(&mut row, 3);
        assert_eq!(row, [1.0, 3.0, 3.0, 7.0, 9.0]);
        let mut short = [2.0, 1.0];
        median_filter(&mut short, 7);
        assert_eq!(short, [2.0, 1.0]);
    }

    fn words_of(pieces: &[&str]) -> Vec<String> {
        let tokens: Vec<u32> = (0..pieces.len() as u32).collect();
        let decode = |ids: &[u32]| -> Result<String, ServerError> {
            Ok(ids.iter().map(|&i| pieces[i as usize]).collect())
        };
        let mut words = split_on_spaces(&tokens, 1000, &decode).unwrap();
        merge_punctuations(&mut words);
        words.into_iter().map(|w| w.text).collect()
    }

    #[test]
    fn words_split_at_spaces_and_keep_their_punctuation() {
        assert_eq!(
            words_of(&[" Hel", "lo", ",", " (", "wor", "ld", ")", " again", "."]),
            [" Hello,", " (world)", " again."]
        );
    }
}
