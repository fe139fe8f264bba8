//! Tokenization shared by the encoder tasks: the model's `tokenizer.json` with its built-in
//! padding and truncation turned off (the batcher pads; truncation is per request, as the
//! pipelines' tokenizer kwargs `truncation` / `max_length` ask).

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use serde_json::Value;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::utils::truncation::{
    truncate_encodings, TruncationDirection, TruncationParams, TruncationStrategy,
};
use tokenizers::{Encoding, PostProcessor, Tokenizer};

use super::params::Params;
use crate::error::ServerError;
use crate::models::config::EncoderConfig;
use crate::models::Sequence;
use crate::registry::EncoderFamily;
use crate::source::ModelFiles;

pub struct TextEncoder {
    tokenizer: Tokenizer,
    /// The same tokenizer without its post-processor, to tokenize each text on its own: the
    /// post-processor (special tokens, offset trimming) must run exactly once, on the pair.
    splitter: Tokenizer,
    /// Longest sequence the model's position table allows.
    model_max_tokens: usize,
    /// `truncation: true` without `max_length` truncates to this (tokenizer_config's
    /// `model_max_length`, capped by the model).
    default_max_length: usize,
    auto_truncate: bool,
    type_ids: bool,
    /// The model's forward takes `token_type_ids` at all (DistilBERT and ModernBERT do not).
    forward_takes_type_ids: bool,
    /// `splitter` with special tokens read as plain text (`split_special_tokens`), made when
    /// first asked for.
    literal_splitter: OnceLock<Tokenizer>,
    info: TokenizerInfo,
}

/// Tokenizer arguments beyond truncation (`add_special_tokens`, `split_special_tokens`,
/// `return_token_type_ids`), as `transformers` passes them to a fast tokenizer.
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    pub add_special_tokens: bool,
    pub split_special_tokens: bool,
    /// `return_token_type_ids`: None, the model's own inputs; false, none (zeros); true, the
    /// tokenizer's (a model whose forward takes none refuses them).
    pub token_type_ids: Option<bool>,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            add_special_tokens: true,
            split_special_tokens: false,
            token_type_ids: None,
        }
    }
}

/// What a request asked of truncation.
#[derive(Debug, Clone)]
pub struct Truncation {
    strategy: Option<TruncationStrategy>,
    max_length: Option<usize>,
    /// Overlap of the overflowing windows (`stride` of `return_overflowing_tokens`).
    stride: usize,
}

impl Truncation {
    /// The text2text pipelines' only tokenizer kwarg: `truncation` true (to the tokenizer's
    /// `model_max_length`) or false.
    pub fn to_model_length(enabled: bool) -> Self {
        Truncation {
            strategy: enabled.then_some(TruncationStrategy::LongestFirst),
            max_length: None,
            stride: 0,
        }
    }

    /// Reads `truncation` and `max_length` from `params` with `transformers`' rules: `truncation`
    /// true or a strategy name; `max_length` alone implies `longest_first`.
    pub fn from_params(params: &mut Params) -> Result<Self, ServerError> {
        let truncation = params.take("truncation");
        let max_length = params.take_usize("max_length")?;
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
            stride: 0,
        })
    }

    /// Overlap of overflowing windows (the tokenizer's `stride`).
    pub fn set_stride(&mut self, stride: usize) {
        self.stride = stride;
    }

    pub fn none() -> Self {
        Truncation {
            strategy: None,
            max_length: None,
            stride: 0,
        }
    }

    /// Truncation a pipeline always applies (`max_length` None: the tokenizer's default);
    /// with a `stride`, what is cut off comes back as overlapping windows.
    pub fn with(strategy: TruncationStrategy, max_length: Option<usize>, stride: usize) -> Self {
        Truncation {
            strategy: Some(strategy),
            max_length,
            stride,
        }
    }
}

/// Settings that apply to every task's tokenization.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskOptions {
    pub auto_truncate: bool,
    /// `MAX_INPUT_TOKENS`: the longest input accepted (see [`input_limit`]).
    pub max_input_tokens: Option<usize>,
}

/// Input tokens a model with relative positions only (T5, DeBERTa-v3) takes by default: its
/// network has no length limit, but attention memory grows with the square of the input
/// (12 heads x 4096² f32 scores are 0.8 GB per layer and sequence).
pub const RELATIVE_POSITIONS_MAX_INPUT_TOKENS: usize = 4096;

/// The longest input a request may send: `MAX_INPUT_TOKENS` when set (never above the model's
/// positions), else the model's positions, else [`RELATIVE_POSITIONS_MAX_INPUT_TOKENS`].
pub fn input_limit(model: Option<usize>, configured: Option<usize>) -> usize {
    match (model, configured) {
        (Some(model), Some(configured)) => model.min(configured),
        (None, Some(configured)) => configured,
        (Some(model), None) => model,
        (None, None) => RELATIVE_POSITIONS_MAX_INPUT_TOKENS,
    }
}

impl TextEncoder {
    /// The model's tokenizer, with the limits of its encoder.
    pub fn for_encoder(
        files: &ModelFiles,
        config: &EncoderConfig,
        options: TaskOptions,
    ) -> Result<Self> {
        Self::load(
            &files.tokenizer,
            input_limit(config.max_input_tokens(), options.max_input_tokens),
            options.auto_truncate,
            config.takes_token_type_ids(),
        )
        .map(|encoder| TextEncoder {
            forward_takes_type_ids: !matches!(
                config.family,
                EncoderFamily::DistilBert | EncoderFamily::ModernBert
            ),
            ..encoder
        })
    }

    /// `tokenizer.json`, with the `tokenizer_config.json` / `special_tokens_map.json` beside it.
    pub fn load(
        tokenizer_file: &Path,
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
        let info = TokenizerInfo::load(
            &tokenizer,
            tokenizer_file.parent().unwrap_or(Path::new(".")),
        );
        let default_max_length = info
            .model_max_length
            .unwrap_or(model_max_tokens)
            .min(model_max_tokens);
        let mut splitter = tokenizer.clone();
        splitter.with_post_processor(None::<PostProcessorWrapper>);
        Ok(TextEncoder {
            tokenizer,
            splitter,
            model_max_tokens,
            default_max_length,
            auto_truncate,
            type_ids,
            forward_takes_type_ids: type_ids,
            literal_splitter: OnceLock::new(),
            info,
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
        Ok(self.to_sequence(&self.encode_full(text, pair, truncation, false)?))
    }

    /// [`encode`](Self::encode) with the request's other tokenizer arguments.
    pub fn encode_with(
        &self,
        text: &str,
        pair: Option<&str>,
        truncation: &Truncation,
        options: EncodeOptions,
    ) -> Result<Encoding, ServerError> {
        if options.token_type_ids == Some(true) && !self.forward_takes_type_ids {
            return Err(ServerError::bad_request(
                "parameter `return_token_type_ids` true adds `token_type_ids` to the model's inputs, which this model's forward() does not take",
            ));
        }
        let encoding = self.encode_options(text, pair, truncation, false, options)?;
        if encoding.is_empty() {
            // Without special tokens, an empty text (or `max_length` 0) leaves nothing to run.
            return Err(ServerError::bad_request(
                "The input has no tokens to run the model on (empty, or truncated to nothing)",
            ));
        }
        Ok(encoding)
    }

    /// The model's input for an encoding, with `return_token_type_ids` applied.
    pub fn to_sequence_with(&self, encoding: &Encoding, options: EncodeOptions) -> Sequence {
        let mut sequence = self.to_sequence(encoding);
        if options.token_type_ids == Some(false) {
            sequence.type_ids.iter_mut().for_each(|t| *t = 0);
        }
        sequence
    }

    /// The model's input for an encoding (token types zeroed for models without them).
    pub fn to_sequence(&self, encoding: &Encoding) -> Sequence {
        let type_ids = if self.type_ids {
            encoding.get_type_ids().to_vec()
        } else {
            vec![0; encoding.len()]
        };
        Sequence {
            ids: encoding.get_ids().to_vec(),
            type_ids,
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// `tokenizer.decode(ids, skip_special_tokens)` as `transformers` does it for a fast tokenizer.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, ServerError> {
        self.decode_with(
            ids,
            skip_special_tokens,
            self.info.clean_up_tokenization_spaces,
        )
    }

    /// `decode` with `clean_up_tokenization_spaces` chosen by the caller (the generation
    /// pipelines pass their own, whatever the tokenizer's config says).
    pub fn decode_with(
        &self,
        ids: &[u32],
        skip_special_tokens: bool,
        cleanup: bool,
    ) -> Result<String, ServerError> {
        let text = self
            .tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|e| ServerError::Internal(format!("decoding tokens: {e}")))?;
        Ok(if cleanup {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// Special tokens and decoding settings from the tokenizer's config files.
    pub fn info(&self) -> &TokenizerInfo {
        &self.info
    }

    /// Longest sequence the model's position table allows.
    pub fn model_max_tokens(&self) -> usize {
        self.model_max_tokens
    }

    /// `model_max_length` of the tokenizer config, capped by the model.
    pub fn default_max_length(&self) -> usize {
        self.default_max_length
    }

    /// Like [`encode`](Self::encode), keeping the whole encoding (special-token mask, word ids,
    /// overflowing windows; with `offsets`, character offsets as Python's tokenizers gives them)
    /// for tasks that map tokens back to text.
    pub fn encode_full(
        &self,
        text: &str,
        pair: Option<&str>,
        truncation: &Truncation,
        offsets: bool,
    ) -> Result<Encoding, ServerError> {
        self.encode_options(text, pair, truncation, offsets, EncodeOptions::default())
    }

    fn encode_options(
        &self,
        text: &str,
        pair: Option<&str>,
        truncation: &Truncation,
        offsets: bool,
        options: EncodeOptions,
    ) -> Result<Encoding, ServerError> {
        let splitter = if options.split_special_tokens {
            self.literal_splitter.get_or_init(|| {
                let mut literal = self.splitter.clone();
                literal.set_encode_special_tokens(true);
                literal
            })
        } else {
            &self.splitter
        };
        let tokenize = |t: &str| {
            if offsets {
                splitter.encode_char_offsets(t, false)
            } else {
                splitter.encode_fast(t, false)
            }
            .map_err(|e| ServerError::bad_request(format!("tokenization failed: {e}")))
        };
        let first = tokenize(text)?;
        // What `encode` does for the second text of a pair: type id 1 and sequence id 1 on every
        // token, which the post-processor keeps on the overflowing windows.
        let second = pair
            .map(|p| {
                tokenize(p).map(|mut e| {
                    e.set_type_ids(vec![1; e.len()]);
                    e.set_sequence_id(1);
                    e
                })
            })
            .transpose()?;
        let processor = self.tokenizer.get_post_processor();
        let added_single = processor.map_or(0, |p| p.added_tokens(false));
        let added = match processor {
            Some(p) if options.add_special_tokens => p.added_tokens(second.is_some()),
            _ => 0,
        };
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
                // tokenizers' own check when truncation is set (it counts one text's special
                // tokens, whatever the input), with its message.
                let effective = max_length.wrapping_sub(added_single);
                if effective < truncation.stride {
                    return Err(ServerError::bad_request(format!(
                        "parameter `stride`: tokenizer stride set to {}, which is greater than or equal to its effective max length of {effective} (= {max_length} original max length - {added_single} added special tokens)",
                        truncation.stride
                    )));
                }
                if max_length < added {
                    // As tokenizers: a length below the special tokens' count truncates nothing.
                    (first, second)
                } else {
                    let params = TruncationParams {
                        direction: TruncationDirection::Right,
                        max_length: max_length - added,
                        strategy,
                        stride: truncation.stride,
                    };
                    truncate_encodings(first, second, &params)
                        .map_err(|e| ServerError::bad_request(format!("truncation failed: {e}")))?
                }
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
            .post_process(first, second, options.add_special_tokens)
            .map_err(|e| ServerError::bad_request(format!("tokenization failed: {e}")))?;

        let longest = std::iter::once(&encoding)
            .chain(encoding.get_overflowing())
            .map(Encoding::len)
            .max()
            .unwrap_or(0);
        if longest > self.model_max_tokens {
            // Truncation could not shorten enough (e.g. only_second with a long first text).
            return Err(ServerError::bad_request(format!(
                "The input is {} tokens long after truncation but the model accepts at most {}",
                longest, self.model_max_tokens
            )));
        }
        Ok(encoding)
    }
}

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

/// A Python string slice `text[start:end]` with character indices.
pub fn char_slice(text: &str, start: usize, end: usize) -> &str {
    let byte = |c: usize| text.char_indices().nth(c).map_or(text.len(), |(b, _)| b);
    if start >= end {
        return "";
    }
    &text[byte(start)..byte(end)]
}
