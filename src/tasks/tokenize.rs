//! Tokenization shared by the encoder tasks: the model's `tokenizer.json` with its built-in
//! padding and truncation turned off (the batcher pads; truncation is per request, as the
//! pipelines' tokenizer kwargs `truncation` / `max_length` ask).

use std::path::Path;

use anyhow::{anyhow, Result};
use serde_json::Value;
use tokenizers::utils::truncation::{
    truncate_encodings, TruncationDirection, TruncationParams, TruncationStrategy,
};
use tokenizers::{PostProcessor, Tokenizer};

use super::params::Params;
use crate::error::ServerError;
use crate::models::Sequence;

/// Tokenizer kwargs the pipelines forward (`truncation`, `max_length`, `padding`).
pub const TOKENIZER_PARAMETERS: &[&str] = &["truncation", "max_length", "padding"];

pub struct TextEncoder {
    tokenizer: Tokenizer,
    /// Longest sequence the model's position table allows.
    model_max_tokens: usize,
    /// `truncation: true` without `max_length` truncates to this (tokenizer_config's
    /// `model_max_length`, capped by the model).
    default_max_length: usize,
    auto_truncate: bool,
    type_ids: bool,
}

/// What a request asked of truncation.
#[derive(Debug, Clone)]
pub struct Truncation {
    strategy: Option<TruncationStrategy>,
    max_length: Option<usize>,
}

impl Truncation {
    /// Reads the tokenizer kwargs from `params` with `transformers`' rules: `truncation` true or a
    /// strategy name; `max_length` alone implies `longest_first`; `padding` is accepted and has no
    /// effect on results (the batcher pads and masks).
    pub fn from_params(params: &mut Params) -> Result<Self, ServerError> {
        let truncation = params.take("truncation");
        let max_length = params.take_usize("max_length")?;
        if let Some(padding) = params.take("padding") {
            let valid = matches!(&padding, Value::Bool(_) | Value::Null)
                || matches!(
                    padding.as_str(),
                    Some("longest" | "max_length" | "do_not_pad")
                );
            if !valid {
                return Err(params.invalid(
                    "padding",
                    "true, false, \"longest\", \"max_length\" or \"do_not_pad\"",
                    &padding,
                ));
            }
        }
        let strategy = match truncation {
            None | Some(Value::Null) => max_length.map(|_| TruncationStrategy::LongestFirst),
            Some(Value::Bool(true)) => Some(TruncationStrategy::LongestFirst),
            Some(Value::Bool(false)) => None,
            Some(Value::String(s)) => match s.as_str() {
                "longest_first" => Some(TruncationStrategy::LongestFirst),
                "only_first" => Some(TruncationStrategy::OnlyFirst),
                "only_second" => Some(TruncationStrategy::OnlySecond),
                "do_not_truncate" => None,
                _ => {
                    return Err(params.invalid(
                        "truncation",
                        "a boolean or a truncation strategy",
                        &Value::String(s),
                    ))
                }
            },
            Some(other) => {
                return Err(params.invalid(
                    "truncation",
                    "a boolean or a truncation strategy",
                    &other,
                ))
            }
        };
        Ok(Truncation {
            strategy,
            max_length,
        })
    }

    pub fn none() -> Self {
        Truncation {
            strategy: None,
            max_length: None,
        }
    }
}

impl TextEncoder {
    pub fn load(
        tokenizer_file: &Path,
        tokenizer_config: Option<&Path>,
        model_max_tokens: usize,
        auto_truncate: bool,
        type_ids: bool,
    ) -> Result<Self> {
        let mut tokenizer = Tokenizer::from_file(tokenizer_file)
            .map_err(|e| anyhow!("loading {}: {e}", tokenizer_file.display()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow!("{e}"))?;
        let configured = tokenizer_config
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|c| c.get("model_max_length").and_then(Value::as_f64))
            .filter(|&l| l > 0.0 && l < 1e9)
            .map(|l| l as usize);
        let default_max_length = configured.unwrap_or(model_max_tokens).min(model_max_tokens);
        Ok(TextEncoder {
            tokenizer,
            model_max_tokens,
            default_max_length,
            auto_truncate,
            type_ids,
        })
    }

    /// Tokenizes a text (and optional pair) with special tokens, truncating as asked. Inputs the
    /// model cannot take are a 400 that says how to fix them.
    pub fn encode(
        &self,
        text: &str,
        pair: Option<&str>,
        truncation: &Truncation,
    ) -> Result<Sequence, ServerError> {
        let tokenize = |t: &str| {
            self.tokenizer
                .encode_fast(t, false)
                .map_err(|e| ServerError::bad_request(format!("tokenization failed: {e}")))
        };
        let first = tokenize(text)?;
        let second = pair.map(tokenize).transpose()?;
        let added = self
            .tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(second.is_some()));
        let total = first.len() + second.as_ref().map_or(0, |s| s.len()) + added;

        let strategy = truncation.strategy.or(if self.auto_truncate {
            Some(TruncationStrategy::LongestFirst)
        } else {
            None
        });
        let (first, second) = match strategy {
            Some(strategy) => {
                let max_length = truncation
                    .max_length
                    .unwrap_or(self.default_max_length)
                    .min(self.model_max_tokens);
                if max_length < added {
                    return Err(ServerError::bad_request(format!(
                        "max_length {max_length} leaves no room for the {added} special tokens"
                    )));
                }
                let params = TruncationParams {
                    direction: TruncationDirection::Right,
                    max_length: max_length - added,
                    strategy,
                    stride: 0,
                };
                truncate_encodings(first, second, &params)
                    .map_err(|e| ServerError::bad_request(format!("truncation failed: {e}")))?
            }
            None => {
                if total > self.model_max_tokens {
                    return Err(ServerError::bad_request(format!(
                        "The input is {total} tokens long but the model accepts at most {}; send \"parameters\": {{\"truncation\": true}} to truncate it",
                        self.model_max_tokens
                    )));
                }
                (first, second)
            }
        };
        let encoding = self
            .tokenizer
            .post_process(first, second, true)
            .map_err(|e| ServerError::bad_request(format!("tokenization failed: {e}")))?;
        if encoding.len() > self.model_max_tokens {
            // Truncation could not shorten enough (e.g. only_second with a long first text).
            return Err(ServerError::bad_request(format!(
                "The input is {} tokens long after truncation but the model accepts at most {}",
                encoding.len(),
                self.model_max_tokens
            )));
        }
        let type_ids = if self.type_ids {
            encoding.get_type_ids().to_vec()
        } else {
            vec![0; encoding.len()]
        };
        Ok(Sequence {
            ids: encoding.get_ids().to_vec(),
            type_ids,
        })
    }
}
