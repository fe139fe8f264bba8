//! The tokenizer keyword arguments a pipeline forwards to `tokenizer(...)` (text-classification's
//! extra parameters, fill-mask's `tokenizer_kwargs`, feature-extraction's `tokenize_kwargs`), read
//! with `transformers` 4.51's rules for a fast tokenizer and one input; and the base class's
//! `batch_size` / `num_workers`, which every pipeline takes.

use serde_json::Value;

use super::params::{compact, Params};
use super::tokenize::{EncodeOptions, TextEncoder, Truncation};
use crate::error::ServerError;

/// Every name [`TokenizerKwargs::take`] reads.
pub const TOKENIZER_KWARGS: &[&str] = &[
    "text_pair",
    "truncation",
    "max_length",
    "stride",
    "padding",
    "pad_to_multiple_of",
    "padding_side",
    "add_special_tokens",
    "return_token_type_ids",
    "return_attention_mask",
    "split_special_tokens",
    "is_split_into_words",
    "verbose",
    "return_overflowing_tokens",
    "return_length",
    "return_special_tokens_mask",
    "return_offsets_mapping",
    "return_tensors",
    "text_target",
];

/// The base class's parameters (`Pipeline.__call__`): they shape the DataLoader of list inputs.
pub const LOADER_PARAMETERS: &[&str] = &["batch_size", "num_workers"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PadTo {
    None,
    Longest,
    MaxLength,
}

pub struct TokenizerKwargs {
    pub truncation: Truncation,
    pub options: EncodeOptions,
    /// `text_pair`: the second text of every input.
    pub text_pair: Option<String>,
    pad_to: PadTo,
    max_length: Option<usize>,
    pad_to_multiple_of: Option<usize>,
    padding_side: Option<String>,
    attention_mask: bool,
}

/// Python's truth value of a JSON value (`if value:`).
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|v| v != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

impl TokenizerKwargs {
    /// Reads the tokenizer kwargs out of `params` (the other keys stay).
    pub fn take(params: &mut Params) -> Result<Self, ServerError> {
        refuse_outputs(params)?;
        let text_pair = match params.take("text_pair") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                return Err(params.invalid(
                    "text_pair",
                    "a string (TextInputSequence must be str)",
                    &other,
                ))
            }
        };
        let pad_to = take_padding(params)?;
        let max_length = peek_usize(params, "max_length")?;
        let mut truncation = Truncation::from_params(params)?;
        let stride = params.take_usize("stride")?;
        truncation.set_stride(stride.unwrap_or(0));
        let pad_to_multiple_of = params.take_usize("pad_to_multiple_of")?;
        let padding_side = match params.take("padding_side") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                return Err(params.invalid("padding_side", "\"left\" or \"right\"", &other))
            }
        };
        let options = EncodeOptions {
            add_special_tokens: params.take_bool("add_special_tokens")?.unwrap_or(true),
            split_special_tokens: params.take_bool("split_special_tokens")?.unwrap_or(false),
            token_type_ids: params.take_bool("return_token_type_ids")?,
        };
        let attention_mask = params.take_bool("return_attention_mask")?.unwrap_or(true);
        let _ = params.take("verbose");
        Ok(TokenizerKwargs {
            truncation,
            options,
            text_pair,
            pad_to,
            max_length,
            pad_to_multiple_of,
            padding_side,
            attention_mask,
        })
    }

    /// Only `padding`, checked (question-answering: pads are never part of an answer).
    pub fn take_padding(params: &mut Params) -> Result<(), ServerError> {
        take_padding(params).map(|_| ())
    }

    /// The kwargs of a request that sends none.
    pub fn none() -> Self {
        TokenizerKwargs {
            truncation: Truncation::none(),
            options: EncodeOptions::default(),
            text_pair: None,
            pad_to: PadTo::None,
            max_length: None,
            pad_to_multiple_of: None,
            padding_side: None,
            attention_mask: true,
        }
    }

    /// How many pad tokens the tokenizer adds to a sequence of `len` tokens (one input is
    /// padded only by `padding: "max_length"` or `pad_to_multiple_of`).
    pub fn pads(&self, len: usize, encoder: &TextEncoder) -> usize {
        let target = match self.pad_to {
            PadTo::None => return 0,
            PadTo::Longest => Some(len),
            // Without `max_length`, the tokenizer's `model_max_length` (none: no padding).
            PadTo::MaxLength => self.max_length.or(encoder.info().model_max_length),
        };
        let Some(mut target) = target else { return 0 };
        if let Some(multiple) = self.pad_to_multiple_of.filter(|&m| m > 0) {
            target = target.div_ceil(multiple) * multiple;
        }
        target.saturating_sub(len)
    }

    /// Pads on the right under the attention mask change no result; padding on the left or
    /// without the mask does, and is not served (the batcher pads on the right, masked).
    pub fn check_padding(&self, len: usize, encoder: &TextEncoder) -> Result<(), ServerError> {
        if self.pads(len, encoder) == 0 {
            return Ok(());
        }
        if let Some(side) = self.padding_side.as_deref().filter(|s| *s != "right") {
            if side != "left" {
                return Err(ServerError::bad_request(format!(
                    "parameter `padding_side`: Unrecognized padding side: {}",
                    compact(&Value::String(side.to_string()))
                )));
            }
            return Err(ServerError::bad_request(
                "`padding_side` \"left\" with padding that adds pad tokens is not served: this server pads on the right, under the attention mask (send padding false, or padding_side \"right\")",
            ));
        }
        if !self.attention_mask {
            return Err(ServerError::bad_request(
                "`return_attention_mask` false with padding that adds pad tokens is not served: the model would attend to the pads (send padding false)",
            ));
        }
        Ok(())
    }
}

/// `padding`: true / "longest", "max_length", false / "do_not_pad" (else the tokenizer's
/// ValueError).
fn take_padding(params: &mut Params) -> Result<PadTo, ServerError> {
    Ok(match params.take("padding") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => PadTo::None,
        Some(Value::Bool(true)) => PadTo::Longest,
        Some(Value::String(s)) if s == "longest" => PadTo::Longest,
        Some(Value::String(s)) if s == "max_length" => PadTo::MaxLength,
        Some(Value::String(s)) if s == "do_not_pad" => PadTo::None,
        Some(other) => {
            return Err(params.invalid(
                "padding",
                "true, false, \"longest\", \"max_length\" or \"do_not_pad\"",
                &other,
            ))
        }
    })
}

/// `max_length` without taking it ([`Truncation::from_params`] reads it too).
fn peek_usize(params: &Params, key: &str) -> Result<Option<usize>, ServerError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64().map(|v| v as usize)),
        Some(other) => Err(params.invalid(key, "a non-negative integer", other)),
    }
}

/// Tokenizer outputs the pipeline would pass on to the model, which refuses them; and the
/// arguments the pipeline sets itself.
fn refuse_outputs(params: &mut Params) -> Result<(), ServerError> {
    if params.contains("return_tensors") {
        return Err(ServerError::bad_request(
            "parameter `return_tensors` is set by the pipeline itself (the tokenizer got multiple values for keyword argument 'return_tensors')",
        ));
    }
    for (key, input) in [
        ("return_overflowing_tokens", "overflow_to_sample_mapping"),
        ("return_length", "length"),
        ("return_special_tokens_mask", "special_tokens_mask"),
        ("return_offsets_mapping", "offset_mapping"),
    ] {
        if params.take(key).as_ref().is_some_and(truthy) {
            return Err(ServerError::bad_request(format!(
                "parameter `{key}` adds `{input}` to the model's inputs, which the model's forward() does not take"
            )));
        }
    }
    if params.take("text_target").is_some_and(|v| !v.is_null()) {
        return Err(ServerError::bad_request(
            "parameter `text_target` adds labels to the model's inputs (a training loss), which this pipeline cannot use",
        ));
    }
    if params
        .take("is_split_into_words")
        .as_ref()
        .is_some_and(truthy)
    {
        return Err(ServerError::bad_request(
            "parameter `is_split_into_words` true needs pre-split words (PreTokenizedEncodeInput), but the input is a string",
        ));
    }
    Ok(())
}

/// `batch_size` and `num_workers`, checked as the DataLoader checks them when the input is a
/// list (a single input runs without one); they change no result here (the batcher decides).
pub struct Loader {
    batch_size: Option<Value>,
    num_workers: Option<Value>,
}

impl Loader {
    pub fn take(params: &mut Params) -> Self {
        Loader {
            batch_size: params.take("batch_size").filter(|v| !v.is_null()),
            num_workers: params.take("num_workers").filter(|v| !v.is_null()),
        }
    }

    /// The DataLoader's batch size (1 when not sent or not a positive integer).
    pub fn batch_size(&self) -> usize {
        self.batch_size
            .as_ref()
            .and_then(Value::as_u64)
            .map_or(1, |b| b.max(1) as usize)
    }

    pub fn check(&self, is_list: bool) -> Result<(), ServerError> {
        if !is_list {
            return Ok(());
        }
        if let Some(value) = &self.batch_size {
            if value.as_u64().is_none_or(|v| v == 0) {
                return Err(ServerError::bad_request(format!(
                    "parameter `batch_size`: batch_size should be a positive integer value, but got batch_size={}",
                    compact(value)
                )));
            }
        }
        if let Some(value) = &self.num_workers {
            if value.as_u64().is_none() {
                return Err(ServerError::bad_request(format!(
                    "parameter `num_workers` must be a non-negative integer (num_workers option should be non-negative; use num_workers=0 to disable multiprocessing), got {}",
                    compact(value)
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_truth_values() {
        for v in [json!(1), json!("x"), json!([0]), json!(true), json!(0.5)] {
            assert!(truthy(&v), "{v}");
        }
        for v in [
            json!(0),
            json!(""),
            json!([]),
            json!(false),
            json!(null),
            json!({}),
        ] {
            assert!(!truthy(&v), "{v}");
        }
    }

    #[test]
    fn refused_outputs_name_the_parameter() {
        for (params, name) in [
            (json!({"return_tensors": "pt"}), "return_tensors"),
            (json!({"return_length": true}), "return_length"),
            (json!({"text_target": "x"}), "text_target"),
            (json!({"is_split_into_words": true}), "is_split_into_words"),
            (json!({"text_pair": ["a"]}), "text_pair"),
            (json!({"padding": "bogus"}), "padding"),
        ] {
            let mut p = Params::new(Some(params), "test").unwrap();
            let e = TokenizerKwargs::take(&mut p).err().unwrap().to_string();
            assert!(e.contains(name), "{e}");
        }
        let mut p =
            Params::new(Some(json!({"return_length": false, "verbose": true})), "t").unwrap();
        assert!(TokenizerKwargs::take(&mut p).is_ok());
        p.finish(&[]).unwrap();
    }

    #[test]
    fn loader_parameters_only_checked_for_lists() {
        let loader = |v: Value| Loader::take(&mut Params::new(Some(v), "t").unwrap());
        loader(json!({"batch_size": 0})).check(false).unwrap();
        loader(json!({"batch_size": 2, "num_workers": 0}))
            .check(true)
            .unwrap();
        let e = loader(json!({"batch_size": 0})).check(true).err().unwrap();
        assert!(e.to_string().contains("batch_size"));
        let e = loader(json!({"num_workers": -1}))
            .check(true)
            .err()
            .unwrap();
        assert!(e.to_string().contains("num_workers"));
    }
}
