//! A `tokenizer.json` for the slow `CLIPTokenizer` files that Stable Diffusion repositories ship
//! in `tokenizer/` (`vocab.json`, `merges.txt`, no fast tokenizer): built as `transformers`'
//! `CLIPConverter` builds `CLIPTokenizerFast` from them — NFC, whitespace runs to one space,
//! lowercase; CLIP's split pattern, byte-level pre-tokenization; BPE with `</w>` word ends;
//! `<|startoftext|>` … `<|endoftext|>` around the tokens.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use tokenizers::Tokenizer;

/// CLIP's start and end tokens.
const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

/// Whether `dir` holds a slow CLIP tokenizer's files.
pub(super) fn is_clip(dir: &Path) -> bool {
    dir.join("vocab.json").is_file()
        && dir.join("merges.txt").is_file()
        && std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .is_ok_and(|t| t.contains("\"CLIPTokenizer"))
}

/// A slow BPE tokenizer's files in `dir` (CLIP's, GPT-2's, ...): `vocab.json` parsed and
/// `merges.txt` as text (each class reads its lines its own way).
pub(super) fn bpe_files(dir: &Path) -> Result<(Map<String, Value>, String)> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .with_context(|| format!("reading {}", dir.join(name).display()))
    };
    let vocab = serde_json::from_str(&read("vocab.json")?).context("parsing vocab.json")?;
    Ok((vocab, read("merges.txt")?))
}

/// `token`'s id in vocab.json.
pub(super) fn vocab_id(vocab: &Map<String, Value>, token: &str) -> Result<u64> {
    vocab
        .get(token)
        .and_then(Value::as_u64)
        .with_context(|| format!("vocab.json has no {token}"))
}

/// The fast tokenizer of `dir`'s `vocab.json` and `merges.txt`.
pub(super) fn clip_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let (vocab, merges) = bpe_files(dir)?;
    let merges: Vec<Value> = merges
        .lines()
        .filter(|line| !line.starts_with("#version") && !line.trim().is_empty())
        .map(|line| Value::String(line.to_string()))
        .collect();
    let id = |token: &str| vocab_id(&vocab, token);
    let (bos, eos) = (id(BOS)?, id(EOS)?);
    let special = |content: &str, id: u64| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": true, "special": true})
    };
    let file = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(BOS, bos), special(EOS, eos)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split",
             "pattern": {"Regex": "'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
             "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
             "use_regex": true}]},
        "post_processor": {"type": "RobertaProcessing", "sep": [EOS, eos], "cls": [BOS, bos],
                           "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": EOS,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "</w>",
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    });
    Tokenizer::from_bytes(serde_json::to_vec(&file)?)
        .map_err(|e| anyhow::anyhow!("building the CLIP tokenizer of {}: {e}", dir.display()))
}
