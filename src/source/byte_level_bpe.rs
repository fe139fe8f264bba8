//! A `tokenizer.json` for the slow byte-level BPE tokenizers (`GPT2Tokenizer`,
//! `RobertaTokenizer`, `BartTokenizer`) whose repositories ship only `vocab.json` and
//! `merges.txt` (models saved with a slow tokenizer, `microsoft/trocr-*`): built as
//! `transformers`' `GPT2Converter` / `RobertaConverter` build the fast tokenizer the pipelines
//! then use — byte-level pre-tokenization (`add_prefix_space` from tokenizer_config.json), BPE
//! without word-end marks, the byte-level decoder; RoBERTa's and BART's `<s> … </s>` around the
//! tokens, GPT-2's `bos_token` first only with `add_bos_token`. The special tokens are
//! tokenizer_config.json's `added_tokens_decoder` where it has one, else its (or
//! special_tokens_map.json's) named tokens, RoBERTa's `<mask>` stripping the space before it.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use tokenizers::Tokenizer;

/// The slow tokenizer classes built here, and whether each wraps a text in `<s> … </s>`.
const CLASSES: &[(&str, bool)] = &[
    ("GPT2Tokenizer", false),
    ("RobertaTokenizer", true),
    ("BartTokenizer", true),
];

/// The tokenizer_config.json keys of the named special tokens.
const NAMED: &[&str] = &[
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

fn settings(dir: &Path) -> Option<Map<String, Value>> {
    let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether `dir` holds a slow byte-level BPE tokenizer's files; with `<s> … </s>` or not. The
/// class is tokenizer_config.json's `tokenizer_class`, else (as `AutoTokenizer` falls back) the
/// one of config.json's `model_type`.
pub(super) fn detect(dir: &Path) -> Option<bool> {
    if !dir.join("vocab.json").is_file() || !dir.join("merges.txt").is_file() {
        return None;
    }
    let named = settings(dir).and_then(|s| s.get("tokenizer_class")?.as_str().map(str::to_string));
    let class = match named {
        Some(class) => class,
        None => {
            let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
            let config: Value = serde_json::from_str(&text).ok()?;
            match config.get("model_type")?.as_str()? {
                "gpt2" => "GPT2Tokenizer",
                "roberta" => "RobertaTokenizer",
                "bart" => "BartTokenizer",
                _ => return None,
            }
            .to_string()
        }
    };
    let class = class.trim_end_matches("Fast");
    CLASSES
        .iter()
        .find(|(name, _)| *name == class)
        .map(|&(_, wrapped)| wrapped)
}

/// A special token's text: a string, or `{"content": ...}` as newer files write it.
fn content(value: &Value) -> Option<&str> {
    value
        .as_str()
        .or_else(|| value.get("content").and_then(Value::as_str))
}

/// The fast tokenizer of `dir`'s `vocab.json` and `merges.txt`; `wrapped`: RoBERTa's / BART's
/// `<s> … </s>` (from [`detect`]).
pub(super) fn tokenizer(dir: &Path, wrapped: bool) -> Result<Tokenizer> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .with_context(|| format!("reading {}", dir.join(name).display()))
    };
    let vocab: Map<String, Value> =
        serde_json::from_str(&read("vocab.json")?).context("parsing vocab.json")?;
    let merges: Vec<Value> = read("merges.txt")?
        .lines()
        .filter(|line| !line.starts_with("#version") && !line.trim().is_empty())
        .map(|line| Value::String(line.to_string()))
        .collect();
    let config = settings(dir).unwrap_or_default();
    let special_map: Map<String, Value> = read("special_tokens_map.json")
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let named = |key: &str| {
        config
            .get(key)
            .and_then(content)
            .or_else(|| special_map.get(key).and_then(content))
            .map(str::to_string)
    };
    let id = |token: &str| {
        vocab
            .get(token)
            .and_then(Value::as_u64)
            .with_context(|| format!("vocab.json has no {token}"))
    };
    let added_tokens = match config
        .get("added_tokens_decoder")
        .and_then(Value::as_object)
    {
        Some(decoder) => decoder
            .iter()
            .map(|(id, token)| {
                let mut token = token.clone();
                token["id"] = json!(id.parse::<u64>().context("an added token's id")?);
                Ok(token)
            })
            .collect::<Result<Vec<_>>>()?,
        None => {
            let mut tokens: Vec<Value> = Vec::new();
            for key in NAMED {
                let Some(text) = named(key) else { continue };
                let token_id = id(&text)?;
                if tokens.iter().any(|t| t["id"] == json!(token_id)) {
                    continue;
                }
                tokens.push(
                    json!({"id": token_id, "content": text, "single_word": false,
                    "lstrip": wrapped && *key == "mask_token", "rstrip": false,
                    "normalized": false, "special": true}),
                );
            }
            tokens
        }
    };
    let add_prefix_space = config
        .get("add_prefix_space")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let post_processor = if wrapped {
        let (sep, cls) = (
            named("sep_token").unwrap_or_else(|| "</s>".into()),
            named("cls_token").unwrap_or_else(|| "<s>".into()),
        );
        json!({"type": "RobertaProcessing", "sep": [sep, id(&sep)?], "cls": [cls, id(&cls)?],
               "trim_offsets": true, "add_prefix_space": add_prefix_space})
    } else if config.get("add_bos_token").and_then(Value::as_bool) == Some(true) {
        let bos = named("bos_token").context("add_bos_token without a bos_token")?;
        json!({"type": "TemplateProcessing",
               "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                          {"Sequence": {"id": "A", "type_id": 0}}],
               "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}},
                        {"Sequence": {"id": "B", "type_id": 1}}],
               "special_tokens": {bos.clone(): {"id": bos, "ids": [id(&bos)?], "tokens": [bos]}}})
    } else {
        json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false,
               "use_regex": true})
    };
    let file = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": add_prefix_space,
                          "trim_offsets": true, "use_regex": true},
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    });
    Tokenizer::from_bytes(serde_json::to_vec(&file)?).map_err(|e| {
        anyhow::anyhow!(
            "building the byte-level BPE tokenizer of {}: {e}",
            dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Built from the tiny RoBERTa's vocab.json and merges.txt, the tokenizer encodes and
    /// decodes as the tokenizer.json transformers saved beside them.
    #[test]
    fn roberta_files_give_the_fast_tokenizer() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/roberta-cls");
        assert_eq!(detect(&dir), Some(true));
        let ours = tokenizer(&dir, true).unwrap();
        let theirs = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        for text in [
            "I love this movie!",
            "  two  spaces, and <mask> here",
            "naïve café — 😀 ünïcödé",
            "",
            "ends with </s> inside",
        ] {
            for pair in [None, Some("a second text")] {
                let encode = |t: &Tokenizer| match pair {
                    None => t.encode(text, true).unwrap(),
                    Some(pair) => t.encode((text, pair), true).unwrap(),
                };
                let (a, b) = (encode(&ours), encode(&theirs));
                assert_eq!(a.get_ids(), b.get_ids(), "{text:?} {pair:?}");
                assert_eq!(a.get_offsets(), b.get_offsets(), "{text:?} {pair:?}");
                for skip in [true, false] {
                    assert_eq!(
                        ours.decode(a.get_ids(), skip).unwrap(),
                        theirs.decode(b.get_ids(), skip).unwrap()
                    );
                }
            }
        }
    }
}
