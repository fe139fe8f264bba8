//! A request's inputs as the model sees them: the prompts (strings, chats rendered with the
//! model's template, the task's or the request's prefix) tokenized, and what `prefix` and
//! `stop_sequence` change in the request's lengths and end tokens.

use serde_json::Value;

use super::params::{Length, ValidParameters};
use super::pipeline::{Flavor, Prompt, TextGeneration};
use crate::error::ServerError;
use crate::tasks::chat::is_chat;
use crate::tasks::params::json_type;
use crate::tasks::tokenize::Truncation;

impl TextGeneration {
    /// What `prefix` and `stop_sequence` change, as the pipelines apply them: a prefix's tokens
    /// lengthen `max_length` (when `max_new_tokens` is not set) and a given `min_length`; a stop
    /// sequence's tokens become the end-of-sequence tokens (text2text: its first token only).
    pub(super) fn apply_prompt_parameters(
        &self,
        mut params: ValidParameters,
    ) -> Result<ValidParameters, ServerError> {
        let encode = |text: &str, special: bool| -> Result<Vec<u32>, ServerError> {
            Ok(self
                .tokens
                .tokenizer()
                .encode(text, special)
                .map_err(|e| ServerError::bad_request(format!("could not tokenize: {e}")))?
                .get_ids()
                .to_vec())
        };
        if let Some(prefix) = params.prefix.as_deref().filter(|p| !p.is_empty()) {
            let added = encode(prefix, params.add_special_tokens.unwrap_or(false))?.len();
            if !params.max_new_tokens_given {
                params.length = match params.length {
                    Length::Total(total) | Length::DefaultNew(total) => {
                        Length::Total(total + added)
                    }
                    new => new,
                };
            }
            if params.min_length_given && params.min_new_tokens.is_none() {
                params.min_length += added;
            }
        }
        if let Some(stop) = &params.stop_sequence {
            let mut ids = encode(stop, false)?;
            if matches!(self.flavor, Flavor::Text2Text { .. }) {
                ids.truncate(1);
            }
            params.sampling.eos_token_ids = ids;
        }
        Ok(params)
    }

    /// `inputs`: a string, a chat (text-generation's only), or a non-empty list of either;
    /// `(is_list, inputs)`.
    pub(super) fn inputs(&self, inputs: Value) -> Result<(bool, Vec<Value>), ServerError> {
        let causal = matches!(self.flavor, Flavor::Causal);
        // Chats are text-generation's (the encoder–decoder pipelines take text only).
        let chat = |v: &Value| causal && is_chat(v);
        match inputs {
            Value::String(_) => Ok((false, vec![inputs])),
            messages if chat(&messages) => Ok((false, vec![messages])),
            Value::Array(items)
                if !items.is_empty() && items.iter().all(|i| i.is_string() || chat(i)) =>
            {
                Ok((true, items))
            }
            other => {
                let forms = if causal {
                    "a string, a chat ([{\"role\", \"content\"}, ...]) or a non-empty list of either"
                } else {
                    "a string or a non-empty list of strings"
                };
                Err(ServerError::bad_request(format!(
                    "{} takes `inputs` as {forms}, got {}",
                    self.task,
                    json_type(&other)
                )))
            }
        }
    }

    /// One input as the model sees it: the text (after the task's prefix, or a chat rendered
    /// with the model's template), its token ids and the decoded prompt's length.
    pub(super) fn prompt(
        &self,
        input: Value,
        params: &ValidParameters,
    ) -> Result<Prompt, ServerError> {
        let causal = matches!(self.flavor, Flavor::Causal);
        // A chat's rendered template already holds its special tokens; `prefix` goes before a
        // text prompt only, and is not part of the answer's text.
        let mut prefixed = None;
        let (text, messages) = match input {
            Value::String(text) => match &self.flavor {
                Flavor::Text2Text { prefix, .. } => (format!("{prefix}{text}"), None),
                Flavor::Causal => {
                    prefixed = params.prefix.as_ref().map(|p| format!("{p}{text}"));
                    (text, None)
                }
            },
            messages => {
                let chat = self.chat.as_ref().ok_or_else(|| {
                    ServerError::bad_request(
                        "this model has no chat template: send the prompt as a string",
                    )
                })?;
                (chat.render(&messages)?, Some(messages))
            }
        };
        let ids = match &self.flavor {
            // (an encoder–decoder's input: a 400 past the model's positions, unless truncated)
            Flavor::Text2Text { .. } => {
                self.tokens
                    .encode(&text, None, &Truncation::to_model_length(params.truncation))?
                    .ids
            }
            Flavor::Causal => self
                .tokens
                .tokenizer()
                .encode(
                    prefixed.as_deref().unwrap_or(&text),
                    messages.is_none() && params.add_special_tokens.unwrap_or(true),
                )
                .map_err(|e| {
                    ServerError::bad_request(format!("could not tokenize the prompt: {e}"))
                })?
                .get_ids()
                .to_vec(),
        };
        if ids.len() > self.tokens.model_max_tokens() {
            return Err(ServerError::bad_request(format!(
                "The prompt is {} tokens long but at most {} are accepted (the model's positions, or MAX_INPUT_TOKENS)",
                ids.len(),
                self.tokens.model_max_tokens()
            )));
        }
        // The pipeline cuts the new text after the decoded prompt's length in characters.
        let cleanup = params.clean_up_tokenization_spaces.unwrap_or(causal);
        let decoded_chars = self.decode(&ids, cleanup)?.chars().count();
        Ok(Prompt {
            text,
            ids,
            decoded_chars,
            messages,
            cleanup,
        })
    }
}
