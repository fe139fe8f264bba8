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

pub use super::tokenizer_info::{clean_up_tokenization, tokens_to_string, TokenizerInfo};

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
            pixels: None,
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
                    let second_len = second.as_ref().map(Encoding::len);
                    if let Some(kept) = window_too_short(first.len(), second_len, &params) {
                        return Err(ServerError::bad_request(format!(
                            "truncation leaves {kept} tokens per window, not more than the windows' overlap (stride {}): send a shorter first text (the question), a larger max_length / max_seq_len or a smaller stride / doc_stride",
                            params.stride
                        )));
                    }
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

/// The length `truncate_encodings` would cut a text to when that is not more than the stride:
/// `Encoding::truncate` asserts `stride < max_len` (a panic, where Python's tokenizers raise).
/// The lengths it computes, for texts of `first` and `second` tokens.
fn window_too_short(first: usize, second: Option<usize>, p: &TruncationParams) -> Option<usize> {
    let total = first + second.unwrap_or(0);
    if p.max_length == 0 || total <= p.max_length {
        return None;
    }
    // (`truncate` returns early, before its assert, for 0 and for lengths it need not cut)
    let cut = |len: usize, to: usize| (to > 0 && to < len && p.stride >= to).then_some(to);
    let to_remove = total - p.max_length;
    let kept = |len: usize| len.checked_sub(to_remove).filter(|&k| k > 0);
    match (p.strategy, second) {
        (TruncationStrategy::LongestFirst, Some(second)) => {
            // (tokenizers' split: the shorter text whole if the longer one can take the rest,
            // else half each)
            let short = first.min(second);
            let mut to_short = short;
            let mut to_long = if short > p.max_length {
                short
            } else {
                short.max(p.max_length - short)
            };
            if to_short + to_long > p.max_length {
                to_short = p.max_length / 2;
                to_long = to_short + p.max_length % 2;
            }
            let (to_first, to_second) = if first > second {
                (to_long, to_short)
            } else {
                (to_short, to_long)
            };
            cut(first, to_first).or_else(|| cut(second, to_second))
        }
        (TruncationStrategy::LongestFirst, None) => cut(first, p.max_length),
        (TruncationStrategy::OnlyFirst, _) => kept(first).and_then(|k| cut(first, k)),
        (TruncationStrategy::OnlySecond, Some(second)) => kept(second).and_then(|k| cut(second, k)),
        (TruncationStrategy::OnlySecond, None) => None,
    }
}

/// A Python string slice `text[start:end]` with character indices.
pub fn char_slice(text: &str, start: usize, end: usize) -> &str {
    let byte = |c: usize| text.char_indices().nth(c).map_or(text.len(), |(b, _)| b);
    if start >= end {
        return "";
    }
    &text[byte(start)..byte(end)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(strategy: TruncationStrategy, max_length: usize, stride: usize) -> TruncationParams {
        TruncationParams {
            direction: TruncationDirection::Right,
            max_length,
            strategy,
            stride,
        }
    }

    #[test]
    fn windows_no_longer_than_the_stride_are_found_before_tokenizers_asserts() {
        use TruncationStrategy::*;
        // Found by tests/properties.rs: question-answering on a 64-position model, a 29-token
        // question and a long context: the context's windows are 32 tokens, doc_stride 32.
        assert_eq!(
            window_too_short(29, Some(40), &params(OnlySecond, 61, 32)),
            Some(32)
        );
        assert_eq!(
            window_too_short(28, Some(40), &params(OnlySecond, 61, 32)),
            None
        );
        // Nothing to cut, or everything (tokenizers returns before its assert).
        assert_eq!(
            window_too_short(10, Some(10), &params(OnlySecond, 61, 60)),
            None
        );
        assert_eq!(
            window_too_short(61, Some(40), &params(OnlySecond, 61, 0)),
            None
        );
        assert_eq!(
            window_too_short(100, None, &params(LongestFirst, 10, 10)),
            Some(10)
        );
        assert_eq!(
            window_too_short(100, None, &params(LongestFirst, 10, 9)),
            None
        );
        assert_eq!(
            window_too_short(30, Some(100), &params(OnlyFirst, 120, 20)),
            Some(20)
        );
        assert_eq!(
            window_too_short(30, Some(100), &params(OnlyFirst, 120, 19)),
            None
        );
        // Longest first: the short text whole (5 tokens, under the stride, but not cut), the
        // long one cut to the rest; or both cut to half when neither fits.
        assert_eq!(
            window_too_short(5, Some(100), &params(LongestFirst, 20, 10)),
            None
        );
        assert_eq!(
            window_too_short(5, Some(100), &params(LongestFirst, 20, 15)),
            Some(15)
        );
        assert_eq!(
            window_too_short(100, Some(90), &params(LongestFirst, 20, 10)),
            Some(10)
        );
        assert_eq!(
            window_too_short(100, Some(90), &params(LongestFirst, 20, 9)),
            None
        );
    }
}
