//! Properties of the parameter parsers (tasks' `Params`, the tokenizer kwargs, generation's
//! take → validate with any model defaults) and of the tokenizer-facing helpers, on a real
//! tokenizer and a real chat template.

use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;
use sagemaker_hf_server::error::cut;
use sagemaker_hf_server::generation::params::{Defaults, GenerationParameters, PipelineKind};
use sagemaker_hf_server::tasks::chat::{is_chat, ChatTemplate};
use sagemaker_hf_server::tasks::params::Params;
use sagemaker_hf_server::tasks::tokenize::{
    char_slice, clean_up_tokenization, tokens_to_string, TextEncoder, Truncation,
};
use serde_json::Value;
use tokenizers::utils::truncation::TruncationStrategy;

use super::strategies::{chat, json_value, key, known_keys, parameter_value, parameters, text};
use super::{client_error, config};
use crate::common::repo_path;

/// A model's `generation_config.json` values: the generation keys with plausible or odd values.
fn generation_config() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::collection::vec((key(), parameter_value()), 0..8)
            .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        1 => json_value(),
    ]
}

/// The tiny BERT's tokenizer (WordPiece, 64 positions, `[CLS] a [SEP] b [SEP]` pairs).
fn bert_tokenizer() -> &'static TextEncoder {
    static ENCODER: OnceLock<TextEncoder> = OnceLock::new();
    ENCODER.get_or_init(|| {
        TextEncoder::load(
            &repo_path("models/tiny/bert-cls/tokenizer.json"),
            64,
            false,
            true,
        )
        .unwrap()
    })
}

/// SmolLM2's chat template and (byte-level BPE) tokenizer.
fn smollm2() -> PathBuf {
    repo_path("models/smollm2-tokenizer")
}

fn chat_template() -> &'static ChatTemplate {
    static TEMPLATE: OnceLock<ChatTemplate> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = smollm2();
        let config: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap(),
        )
        .unwrap();
        ChatTemplate::load(&dir, &config).unwrap().unwrap()
    })
}

fn smollm2_tokenizer() -> &'static TextEncoder {
    static ENCODER: OnceLock<TextEncoder> = OnceLock::new();
    ENCODER.get_or_init(|| {
        TextEncoder::load(&smollm2().join("tokenizer.json"), 2048, false, false).unwrap()
    })
}

proptest! {
    #![proptest_config(config(768))]

    /// Generation parameters: taken, typed and validated against any model defaults, for both
    /// pipeline families and a top-level `stream`: a valid request or a 400.
    #[test]
    fn generation_parameters_validate_or_are_a_400(
        parameters in parameters(),
        defaults in generation_config(),
        task_params in prop::option::of(generation_config()),
        stream in prop::option::of(prop_oneof![any::<bool>().prop_map(Value::Bool), json_value()]),
        causal in any::<bool>(),
        as_list in any::<bool>(),
    ) {
        // (no generation_config.json in that folder: the defaults come from `defaults`)
        let defaults = Defaults::read(&repo_path("tests"), &defaults, task_params.as_ref());
        let (kind, task) = if causal {
            (PipelineKind::Causal, "text-generation")
        } else {
            (PipelineKind::Text2Text, "text2text-generation")
        };
        let outcome = Params::new(Some(parameters), task)
            .and_then(|p| GenerationParameters::take(p, kind, stream))
            .and_then(|p| p.validate(&defaults, as_list));
        match outcome {
            Ok(valid) => {
                prop_assert!(valid.num_return_sequences >= 1);
                prop_assert!(valid.sampling.num_beams >= 1);
                prop_assert!((0.0..=1.0).contains(&valid.sampling.top_p));
            }
            Err(e) => client_error(&e)?,
        }
    }

    /// The encoder tasks' parameter reading: typed values or a 400, and unknown names a 400.
    #[test]
    fn task_parameters_are_typed_or_a_400(parameters in parameters()) {
        let outcome = Params::new(Some(parameters), "text-classification").and_then(|mut p| {
            let truncation = Truncation::from_params(&mut p)?;
            for k in known_keys() {
                p.take_usize(k).ok();
                p.take_bool(k).ok();
            }
            p.finish(&["top_k"])?;
            Ok(truncation)
        });
        if let Err(e) = outcome {
            client_error(&e)?;
        }
    }

    /// Tokenizing any text or pair with any truncation request: the sequence fits the model,
    /// or a 400 says why.
    #[test]
    fn encoding_fits_the_model_or_is_a_400(
        first in text(),
        pair in prop::option::of(text()),
        parameters in parameters(),
        offsets in any::<bool>(),
    ) {
        let encoder = bert_tokenizer();
        let outcome = Params::new(Some(parameters), "text-classification")
            .and_then(|mut p| Truncation::from_params(&mut p))
            .and_then(|t| encoder.encode_full(&first, pair.as_deref(), &t, offsets));
        match outcome {
            Ok(encoding) => {
                prop_assert!(encoding.len() <= encoder.model_max_tokens());
                let sequence = encoder.to_sequence(&encoding);
                prop_assert_eq!(sequence.ids.len(), sequence.type_ids.len());
            }
            Err(e) => client_error(&e)?,
        }
    }

    /// Overlapping windows (question-answering's `doc_stride`, token-classification's
    /// `stride`) with any strategy, length and stride: windows that fit, or a 400.
    #[test]
    fn windows_with_any_stride_fit_or_are_a_400(
        first in text(),
        pair in prop::option::of(text()),
        strategy in prop::sample::select(vec![
            TruncationStrategy::LongestFirst,
            TruncationStrategy::OnlyFirst,
            TruncationStrategy::OnlySecond,
        ]),
        max_length in prop::option::of(0usize..80),
        stride in 0usize..80,
    ) {
        let encoder = bert_tokenizer();
        let truncation = Truncation::with(strategy, max_length, stride);
        match encoder.encode_full(&first, pair.as_deref(), &truncation, true) {
            Ok(encoding) => {
                for window in std::iter::once(&encoding).chain(encoding.get_overflowing()) {
                    prop_assert!(window.len() <= encoder.model_max_tokens());
                }
            }
            Err(e) => client_error(&e)?,
        }
    }

    /// Decoding any ids (past the vocabulary too) and any token strings gives text or an error.
    #[test]
    fn decoding_any_ids_or_tokens_gives_text(
        ids in prop::collection::vec(prop_oneof![0u32..200, any::<u32>()], 0..40),
        tokens in prop::collection::vec(text(), 0..8),
        skip in any::<bool>(),
        cleanup in any::<bool>(),
    ) {
        for encoder in [bert_tokenizer(), smollm2_tokenizer()] {
            let _ = encoder.decode_with(&ids, skip, cleanup);
            let _ = tokens_to_string(encoder.tokenizer(), tokens.clone());
        }
    }

    /// Python's `text[start:end]` on characters; `cut` keeps a prefix within its bound.
    #[test]
    fn text_helpers_slice_on_characters(s in text(), start in 0usize..80, end in 0usize..80, max in 0usize..80) {
        let want: String = s.chars().skip(start).take(end.saturating_sub(start)).collect();
        prop_assert_eq!(char_slice(&s, start, end), want.as_str());
        let short = cut(&s, max);
        if s.len() > max {
            prop_assert!(short.chars().count() <= max.max(3), "{}", short);
            prop_assert!(s.starts_with(short.strip_suffix("...").unwrap()));
        } else {
            prop_assert_eq!(&short, &s);
        }
        let _ = clean_up_tokenization(&s);
    }

    /// Any chat renders with the model's template or is a 400 (the template's own
    /// `raise_exception`, a wrong type, or fuel run out).
    #[test]
    fn chats_render_or_are_a_400(messages in prop_oneof![4 => chat(), 1 => json_value()]) {
        if !is_chat(&messages) {
            return Ok(());
        }
        match chat_template().render(&messages) {
            Ok(prompt) => prop_assert!(prompt.ends_with("<|im_start|>assistant\n"), "{}", prompt),
            Err(e) => client_error(&e)?,
        }
    }
}
