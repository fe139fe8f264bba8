//! Whisper's first decoder tokens as `WhisperGenerationMixin._retrieve_init_tokens` builds
//! them from `generation_config.json` and a request's language and task.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::params::DecodeOptions;
use crate::error::ServerError;

/// `TO_LANGUAGE_CODE` of transformers' Whisper tokenizer: language names (and aliases), in its
/// order, with their codes.
pub const LANGUAGE_CODES: &[(&str, &str)] = &[
    ("english", "en"),
    ("chinese", "zh"),
    ("german", "de"),
    ("spanish", "es"),
    ("russian", "ru"),
    ("korean", "ko"),
    ("french", "fr"),
    ("japanese", "ja"),
    ("portuguese", "pt"),
    ("turkish", "tr"),
    ("polish", "pl"),
    ("catalan", "ca"),
    ("dutch", "nl"),
    ("arabic", "ar"),
    ("swedish", "sv"),
    ("italian", "it"),
    ("indonesian", "id"),
    ("hindi", "hi"),
    ("finnish", "fi"),
    ("vietnamese", "vi"),
    ("hebrew", "he"),
    ("ukrainian", "uk"),
    ("greek", "el"),
    ("malay", "ms"),
    ("czech", "cs"),
    ("romanian", "ro"),
    ("danish", "da"),
    ("hungarian", "hu"),
    ("tamil", "ta"),
    ("norwegian", "no"),
    ("thai", "th"),
    ("urdu", "ur"),
    ("croatian", "hr"),
    ("bulgarian", "bg"),
    ("lithuanian", "lt"),
    ("latin", "la"),
    ("maori", "mi"),
    ("malayalam", "ml"),
    ("welsh", "cy"),
    ("slovak", "sk"),
    ("telugu", "te"),
    ("persian", "fa"),
    ("latvian", "lv"),
    ("bengali", "bn"),
    ("serbian", "sr"),
    ("azerbaijani", "az"),
    ("slovenian", "sl"),
    ("kannada", "kn"),
    ("estonian", "et"),
    ("macedonian", "mk"),
    ("breton", "br"),
    ("basque", "eu"),
    ("icelandic", "is"),
    ("armenian", "hy"),
    ("nepali", "ne"),
    ("mongolian", "mn"),
    ("bosnian", "bs"),
    ("kazakh", "kk"),
    ("albanian", "sq"),
    ("swahili", "sw"),
    ("galician", "gl"),
    ("marathi", "mr"),
    ("punjabi", "pa"),
    ("sinhala", "si"),
    ("khmer", "km"),
    ("shona", "sn"),
    ("yoruba", "yo"),
    ("somali", "so"),
    ("afrikaans", "af"),
    ("occitan", "oc"),
    ("georgian", "ka"),
    ("belarusian", "be"),
    ("tajik", "tg"),
    ("sindhi", "sd"),
    ("gujarati", "gu"),
    ("amharic", "am"),
    ("yiddish", "yi"),
    ("lao", "lo"),
    ("uzbek", "uz"),
    ("faroese", "fo"),
    ("haitian creole", "ht"),
    ("pashto", "ps"),
    ("turkmen", "tk"),
    ("nynorsk", "nn"),
    ("maltese", "mt"),
    ("sanskrit", "sa"),
    ("luxembourgish", "lb"),
    ("myanmar", "my"),
    ("tibetan", "bo"),
    ("tagalog", "tl"),
    ("malagasy", "mg"),
    ("assamese", "as"),
    ("tatar", "tt"),
    ("hawaiian", "haw"),
    ("lingala", "ln"),
    ("hausa", "ha"),
    ("bashkir", "ba"),
    ("javanese", "jw"),
    ("sundanese", "su"),
    ("cantonese", "yue"),
    ("burmese", "my"),
    ("valencian", "ca"),
    ("flemish", "nl"),
    ("haitian", "ht"),
    ("letzeburgesch", "lb"),
    ("pushto", "ps"),
    ("panjabi", "pa"),
    ("moldavian", "ro"),
    ("moldovan", "ro"),
    ("sinhalese", "si"),
    ("castilian", "es"),
    ("mandarin", "zh"),
];

/// The language a Whisper language code names (`LANGUAGES[code]`: the first name with that
/// code in `TO_LANGUAGE_CODE`'s order, aliases coming after).
pub(super) fn language_name(code: &str) -> Option<&'static str> {
    LANGUAGE_CODES
        .iter()
        .find(|(_, c)| *c == code)
        .map(|(name, _)| *name)
}

/// The task names `generate` takes (`TASK_IDS`).
const TASKS: [&str; 2] = ["translate", "transcribe"];

/// The fields of `generation_config.json` that Whisper's `generate` reads.
#[derive(Debug, Default, Deserialize)]
pub(super) struct WhisperGenerationConfig {
    pub decoder_start_token_id: Option<u32>,
    pub eos_token_id: Option<Value>,
    pub lang_to_id: Option<BTreeMap<String, u32>>,
    pub task_to_id: Option<BTreeMap<String, u32>>,
    pub is_multilingual: Option<bool>,
    pub no_timestamps_token_id: Option<u32>,
    #[serde(default)]
    pub suppress_tokens: Vec<u32>,
    #[serde(default)]
    pub begin_suppress_tokens: Vec<u32>,
    /// [[position, token or null], ...]
    pub forced_decoder_ids: Option<Vec<(usize, Option<u32>)>>,
    pub max_length: Option<usize>,
    pub max_initial_timestamp_index: Option<u32>,
    /// `generate`'s default when the call passes none (the openai/whisper configs say false).
    pub return_timestamps: Option<bool>,
    /// Word timestamps' [layer, head] pairs of cross-attention that follow the audio.
    pub alignment_heads: Option<Vec<(usize, usize)>>,
    /// Sampling's top-k and top-p (`GenerationConfig`'s defaults: 50 and 1.0).
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    /// `<|startofprev|>`, which leads a prompt of previous tokens (else `suppress_tokens`'
    /// last but one, as `generate` guesses it).
    pub prev_sot_token_id: Option<u32>,
    /// `generate`'s default for `condition_on_prev_tokens`.
    pub condition_on_prev_tokens: Option<bool>,
}

/// The prompt rules of one model: its generation config and start token.
pub(super) struct Prompts {
    pub generation: WhisperGenerationConfig,
    pub decoder_start: u32,
}

impl Prompts {
    /// The token that leads the previous tokens of a conditioned prompt, as
    /// `_prepare_decoder_input_ids` finds it.
    pub(super) fn prev_sot(&self) -> Option<u32> {
        let g = &self.generation;
        g.prev_sot_token_id.or(match g.suppress_tokens.as_slice() {
            [.., last_but_one, _] => Some(*last_but_one),
            _ => None,
        })
    }

    /// `_retrieve_init_tokens` up to the language: the start token, then the forced decoder
    /// ids of the generation config unless a language or task is given (None: to detect).
    pub(super) fn init_tokens(
        &self,
        options: &DecodeOptions,
    ) -> Result<Vec<Option<u32>>, ServerError> {
        let g = &self.generation;
        if g.is_multilingual == Some(false)
            && (options.language.is_some() || options.task.is_some())
        {
            return Err(ServerError::bad_request(
                "Cannot specify `task` or `language` for an English-only model. If the model is intended to be multilingual, pass `is_multilingual=True` to generate, or update the generation config.",
            ));
        }
        let mut init = vec![Some(self.decoder_start)];
        if options.language.is_none() && options.task.is_none() {
            if let Some(forced) = &g.forced_decoder_ids {
                for (i, (position, token)) in forced.iter().enumerate() {
                    if *position != i + 1 {
                        break;
                    }
                    init.push(*token);
                }
            }
        }
        if let Some(language) = &options.language {
            let id = self.language_id(language)?;
            if init.len() > 1 {
                init[1] = Some(id);
            } else {
                init.push(Some(id));
            }
        }
        Ok(init)
    }

    /// The rest of `_retrieve_init_tokens`: the task, then `<|notimestamps|>` unless
    /// `generate` predicts timestamps.
    pub(super) fn finish_init_tokens(
        &self,
        mut init: Vec<Option<u32>>,
        options: &DecodeOptions,
        timestamps: bool,
    ) -> Result<Vec<u32>, ServerError> {
        let g = &self.generation;
        if let Some(task) = &options.task {
            if !TASKS.contains(&task.as_str()) {
                return Err(ServerError::bad_request(format!(
                    "The `{task}`task is not supported. The task should be one of `{TASKS:?}`"
                )));
            }
            let id = g.task_to_id.as_ref().and_then(|m| m.get(task)).copied().ok_or_else(|| {
                ServerError::bad_request("The generation config is outdated and is thus not compatible with the `task` argument to `generate`. Either set the task using the `forced_decoder_ids` in the model config, or update the generation config as per the instructions https://github.com/huggingface/transformers/issues/25084#issuecomment-1664398224")
            })?;
            init.push(Some(id));
        } else if options.language.is_some() {
            if let Some(tasks) = &g.task_to_id {
                if !init
                    .iter()
                    .flatten()
                    .any(|t| tasks.values().any(|v| v == t))
                {
                    if let Some(&transcribe) = tasks.get("transcribe") {
                        init.push(Some(transcribe));
                    }
                }
            }
        }
        match g.no_timestamps_token_id {
            Some(no_timestamps) => {
                let ends_with_it = init.last() == Some(&Some(no_timestamps));
                if timestamps && ends_with_it {
                    init.pop();
                } else if !timestamps && !ends_with_it {
                    init.push(Some(no_timestamps));
                }
            }
            None if timestamps => {
                return Err(ServerError::bad_request("You are trying to return timestamps, but the generation config is not properly set. Make sure to initialize the generation config with the correct attributes that are needed such as `no_timestamps_token_id`. For more details on how to generate the approtiate config, refer to https://github.com/huggingface/transformers/issues/21878#issuecomment-1451902363"));
            }
            None => {}
        }
        Ok(init.into_iter().flatten().collect())
    }

    /// `language_to_id`: a language token, name or code, as `generate` takes it.
    fn language_id(&self, language: &str) -> Result<u32, ServerError> {
        let Some(lang_to_id) = &self.generation.lang_to_id else {
            return Err(ServerError::bad_request("The generation config is outdated and is thus not compatible with the `language` argument to `generate`. Either set the language using the `forced_decoder_ids` in the model config, or update the generation config as per the instructions https://github.com/huggingface/transformers/issues/25084#issuecomment-1664398224"));
        };
        let language = language.to_lowercase();
        let token = if lang_to_id.contains_key(&language) {
            language.clone()
        } else if let Some((_, code)) = LANGUAGE_CODES.iter().find(|(name, _)| *name == language) {
            format!("<|{code}|>")
        } else if LANGUAGE_CODES.iter().any(|(_, code)| *code == language) {
            format!("<|{language}|>")
        } else {
            let choices: Vec<&str> = if language.chars().count() == 2 {
                LANGUAGE_CODES.iter().map(|(_, code)| *code).collect()
            } else {
                LANGUAGE_CODES.iter().map(|(name, _)| *name).collect()
            };
            return Err(ServerError::bad_request(format!(
                "Unsupported language: {language}. Language should be one of: {}.",
                python_list(&choices)
            )));
        };
        lang_to_id.get(&token).copied().ok_or_else(|| {
            ServerError::bad_request(format!(
                "{token} is not supported by this specific model as it is not in the `generation_config.lang_to_id`."
            ))
        })
    }
}

/// A Python list's repr of strings.
fn python_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("'{s}'")).collect();
    format!("[{}]", quoted.join(", "))
}
