//! A `tokenizer.json` for the slow byte-level BPE tokenizers (`GPT2Tokenizer`,
//! `RobertaTokenizer`, `BartTokenizer` and their kin) whose repositories ship only `vocab.json`
//! and `merges.txt` (models saved with a slow tokenizer, `microsoft/trocr-*`): built as
//! `transformers`' `GPT2Converter` / `RobertaConverter` build the fast tokenizer the pipelines
//! then use — byte-level pre-tokenization (`add_prefix_space` from tokenizer_config.json), BPE
//! without word-end marks (merges.txt read as the slow tokenizer reads it: its first and last
//! lines dropped), the byte-level decoder; RoBERTa's and BART's `<s> … </s>` around the tokens
//! (`trim_offsets` from tokenizer_config.json), GPT-2's `bos_token` first only with
//! `add_bos_token`. The added tokens are tokenizer_config.json's `added_tokens_decoder` where it
//! has one (files saved by transformers 4.34 and later); else, as the slow tokenizer gathers
//! them, added_tokens.json's, the named special tokens (tokenizer_config.json's, else
//! special_tokens_map.json's, else the class's defaults) and `additional_special_tokens`, a token
//! outside the vocabulary taking the next free id, RoBERTa's `<mask>` stripping the space
//! before it.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use tokenizers::Tokenizer;

/// The slow tokenizer classes built here (transformers' `SLOW_TO_FAST_CONVERTERS` entries of
/// `GPT2Converter` and `RobertaConverter`), and whether each wraps a text in `<s> … </s>`.
const CLASSES: &[(&str, bool)] = &[
    ("GPT2Tokenizer", false),
    ("CodeGenTokenizer", false),
    ("RobertaTokenizer", true),
    ("BartTokenizer", true),
    ("LongformerTokenizer", true),
    ("LEDTokenizer", true),
    ("MvpTokenizer", true),
];

/// The class defaults of the named special tokens (`RobertaTokenizer.__init__`'s, and
/// `GPT2Tokenizer.__init__`'s `<|endoftext|>`).
fn class_default(key: &str, wrapped: bool) -> Option<&'static str> {
    Some(match (key, wrapped) {
        ("bos_token" | "cls_token", true) => "<s>",
        ("eos_token" | "sep_token", true) => "</s>",
        ("unk_token", true) => "<unk>",
        ("pad_token", true) => "<pad>",
        ("mask_token", true) => "<mask>",
        ("bos_token" | "eos_token" | "unk_token", false) => "<|endoftext|>",
        _ => return None,
    })
}

/// added_tokens.json (`{token: id}`), if the folder has one.
fn added_file(dir: &Path) -> Result<Map<String, Value>> {
    match std::fs::read_to_string(dir.join("added_tokens.json")) {
        Ok(text) => serde_json::from_str(&text).context("parsing added_tokens.json"),
        Err(_) => Ok(Map::new()),
    }
}

/// The added tokens of a folder without `added_tokens_decoder`, as the slow tokenizer gathers
/// them: added_tokens.json's, then the named special tokens and `additional_special_tokens`; a
/// token in neither the vocabulary nor added_tokens.json takes the next free id.
fn gathered_tokens(
    vocab: &Map<String, Value>,
    added: &Map<String, Value>,
    wrapped: bool,
    named: &dyn Fn(&str) -> Option<String>,
    additional: &[String],
) -> Result<Vec<Value>> {
    let mut specials: Vec<(String, bool)> = NAMED
        .iter()
        .filter_map(|key| {
            let text = named(key).or_else(|| class_default(key, wrapped).map(str::to_string))?;
            Some((text, wrapped && *key == "mask_token"))
        })
        .collect();
    specials.extend(additional.iter().map(|t| (t.clone(), false)));
    let mut next = (vocab.len() + added.len()) as u64;
    let mut tokens: Vec<Value> = Vec::new();
    let mut push = |text: &str, id: u64, special: bool, lstrip: bool| {
        if !tokens.iter().any(|t| t["content"] == text) {
            tokens.push(json!({"id": id, "content": text, "single_word": false,
                "lstrip": lstrip, "rstrip": false, "normalized": !special, "special": special}));
        }
    };
    for (text, id) in added {
        let id = id
            .as_u64()
            .context("added_tokens.json maps tokens to ids")?;
        let lstrip = specials.iter().any(|(s, l)| s == text && *l);
        push(text, id, specials.iter().any(|(s, _)| s == text), lstrip);
    }
    for (text, lstrip) in &specials {
        let id = match vocab.get(text).or_else(|| added.get(text)) {
            Some(id) => id.as_u64().context("an id in vocab.json")?,
            None => {
                next += 1;
                next - 1
            }
        };
        push(text, id, true, *lstrip);
    }
    Ok(tokens)
}

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
/// class is tokenizer_config.json's `tokenizer_class`, else (as `AutoTokenizer` falls back)
/// config.json's `tokenizer_class`, else its `model_type`'s.
pub(super) fn detect(dir: &Path) -> Option<bool> {
    if !dir.join("vocab.json").is_file() || !dir.join("merges.txt").is_file() {
        return None;
    }
    let class_in = |config: &Map<String, Value>| {
        config
            .get("tokenizer_class")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let model_config: Map<String, Value> = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let named = settings(dir)
        .and_then(|s| class_in(&s))
        .or_else(|| class_in(&model_config));
    let class = match named {
        Some(class) => class,
        None => match model_config.get("model_type")?.as_str()? {
            "gpt2" => "GPT2Tokenizer",
            "roberta" => "RobertaTokenizer",
            "bart" => "BartTokenizer",
            _ => return None,
        }
        .to_string(),
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
    let (vocab, text) = super::clip_bpe::bpe_files(dir)?;
    // The slow tokenizer's `read().split("\n")[1:-1]`: a header line, then a merge a line.
    let lines: Vec<&str> = text.split('\n').collect();
    let merges: Vec<Value> = lines
        .get(1..lines.len().saturating_sub(1))
        .unwrap_or(&[])
        .iter()
        .filter(|line| line.split_whitespace().count() == 2)
        .map(|line| Value::String(line.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect();
    let config = settings(dir).unwrap_or_default();
    let special_map: Map<String, Value> =
        std::fs::read_to_string(dir.join("special_tokens_map.json"))
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
    let id = |token: &str| super::clip_bpe::vocab_id(&vocab, token);
    let additional: Vec<String> = config
        .get("additional_special_tokens")
        .or_else(|| special_map.get("additional_special_tokens"))
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(content)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
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
        None => gathered_tokens(&vocab, &added_file(dir)?, wrapped, &named, &additional)?,
    };
    // An added token's id (it may lie past the vocabulary), else the vocabulary's.
    let id_of = |token: &str| -> Result<u64> {
        match added_tokens.iter().find(|t| t["content"] == token) {
            Some(t) => t["id"].as_u64().context("an added token's id"),
            None => id(token),
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
        let trim_offsets = config
            .get("trim_offsets")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        json!({"type": "RobertaProcessing", "sep": [sep, id_of(&sep)?],
               "cls": [cls, id_of(&cls)?], "trim_offsets": trim_offsets,
               "add_prefix_space": add_prefix_space})
    } else if config.get("add_bos_token").and_then(Value::as_bool) == Some(true) {
        let bos = named("bos_token").unwrap_or_else(|| "<|endoftext|>".into());
        json!({"type": "TemplateProcessing",
               "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                          {"Sequence": {"id": "A", "type_id": 0}}],
               "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}},
                        {"Sequence": {"id": "B", "type_id": 1}}],
               "special_tokens": {bos.clone(): {"id": bos, "ids": [id_of(&bos)?], "tokens": [bos]}}})
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

    fn roberta_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/roberta-cls")
    }

    /// `ours` encodes (ids and offsets, with and without a pair) and decodes as the tiny
    /// RoBERTa's tokenizer.json, which transformers saved.
    fn assert_same_as_saved(ours: &Tokenizer) {
        let theirs = Tokenizer::from_file(roberta_dir().join("tokenizer.json")).unwrap();
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
                let (a, b) = (encode(ours), encode(&theirs));
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

    /// Built from the tiny RoBERTa's vocab.json, merges.txt and tokenizer_config.json (with its
    /// `added_tokens_decoder`).
    #[test]
    fn roberta_files_give_the_fast_tokenizer() {
        let dir = roberta_dir();
        assert_eq!(detect(&dir), Some(true));
        assert_same_as_saved(&tokenizer(&dir, true).unwrap());
    }

    /// As a tokenizer saved before transformers 4.34 (tokenizer_config.json without
    /// `added_tokens_decoder` and without the special tokens, no special_tokens_map.json): the
    /// class's defaults give the same tokenizer.
    #[test]
    fn old_roberta_files_give_the_fast_tokenizer() {
        let dir = std::env::temp_dir().join(format!("old-roberta-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["vocab.json", "merges.txt"] {
            std::fs::copy(roberta_dir().join(name), dir.join(name)).unwrap();
        }
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"tokenizer_class": "RobertaTokenizer", "model_max_length": 64}"#,
        )
        .unwrap();
        assert_eq!(detect(&dir), Some(true));
        let ours = tokenizer(&dir, true).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_same_as_saved(&ours);
    }
}
