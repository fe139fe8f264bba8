//! What the Python tokenizer object knows beyond `tokenizer.json` (special tokens, clean-up,
//! `model_max_length`), and its token-string helpers.

use std::path::Path;

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::error::ServerError;

/// What the Python tokenizer object knows beyond `tokenizer.json`: its special tokens
/// (`tokenizer_config.json`, `special_tokens_map.json`), whether `decode` cleans up spaces, and
/// what `convert_tokens_to_string` and `convert_ids_to_tokens` give.
pub struct TokenizerInfo {
    pub unk_id: Option<u32>,
    pub mask: Option<(String, u32)>,
    pub cls_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub clean_up_tokenization_spaces: bool,
    /// `model_max_length` of `tokenizer_config.json` (absent or Python's "very large" sentinel: None).
    pub model_max_length: Option<usize>,
    /// The model has a `continuing_subword_prefix` (WordPiece's `##`): subwords are told apart by
    /// their length, not by the text around them.
    pub has_subword_prefix: bool,
}

impl TokenizerInfo {
    pub fn load(tokenizer: &Tokenizer, dir: &Path) -> Self {
        let read = |name: &str| -> Value {
            std::fs::read_to_string(dir.join(name))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(Value::Null)
        };
        let config = read("tokenizer_config.json");
        let map = read("special_tokens_map.json");
        let model = serde_json::to_value(tokenizer.get_model()).unwrap_or(Value::Null);
        // A special token is a string or an AddedToken object with `content`.
        let token_text = |v: &Value| -> Option<String> {
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
                _ => None,
            }
        };
        let special = |key: &str, fallbacks: &[&str]| -> Option<(String, u32)> {
            let named = config
                .get(key)
                .and_then(token_text)
                .or_else(|| map.get(key).and_then(token_text));
            match named {
                Some(t) => tokenizer.token_to_id(&t).map(|id| (t, id)),
                None => fallbacks
                    .iter()
                    .find_map(|t| tokenizer.token_to_id(t).map(|id| (t.to_string(), id))),
            }
        };
        let unk_from_model = model
            .get("unk_token")
            .and_then(Value::as_str)
            .and_then(|t| tokenizer.token_to_id(t))
            .or_else(|| {
                model
                    .get("unk_id")
                    .and_then(Value::as_u64)
                    .map(|i| i as u32)
            });
        TokenizerInfo {
            unk_id: special("unk_token", &[])
                .map(|(_, id)| id)
                .or(unk_from_model),
            mask: special("mask_token", &["[MASK]", "<mask>"]),
            cls_id: special("cls_token", &["[CLS]", "<s>"]).map(|(_, id)| id),
            pad_id: special("pad_token", &["[PAD]", "<pad>"]).map(|(_, id)| id),
            model_max_length: config
                .get("model_max_length")
                .and_then(Value::as_f64)
                .filter(|&l| l > 0.0 && l < 1e9)
                .map(|l| l as usize),
            clean_up_tokenization_spaces: config
                .get("clean_up_tokenization_spaces")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            has_subword_prefix: model
                .get("continuing_subword_prefix")
                .and_then(Value::as_str)
                .is_some_and(|p| !p.is_empty()),
        }
    }
}

/// `convert_tokens_to_string`: the tokenizer's decoder over token strings.
pub fn tokens_to_string(tokenizer: &Tokenizer, tokens: Vec<String>) -> Result<String, ServerError> {
    match tokenizer.get_decoder() {
        Some(decoder) => {
            use tokenizers::Decoder;
            decoder
                .decode(tokens)
                .map_err(|e| ServerError::Internal(format!("decoding tokens: {e}")))
        }
        None => Ok(tokens.join(" ")),
    }
}

/// `PreTrainedTokenizerBase.clean_up_tokenization`.
pub fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}
