//! Greedy text generation against the `transformers` text-generation pipeline (transformers
//! 4.51, as the DLC runs it) on one tiny model per architecture (models/make_generation_fixtures.py).
//! Each golden is replayed one request at a time and then all at once, so that prompts join and
//! leave the running batch while others decode (continuous batching must not change a token).

mod common;

use common::{golden_records, replay_golden, repo_path, smollm2};

fn replay(family: &str) {
    replay_golden(
        &format!("models/golden/text-generation/{family}-lm.json"),
        &repo_path(&format!("models/tiny/{family}-lm")),
        &[("HF_TASK", "text-generation")],
    );
}

#[test]
fn gpt2_generates_as_transformers() {
    replay("gpt2");
}

#[test]
fn llama_generates_as_transformers() {
    replay("llama");
}

#[test]
fn mistral_generates_as_transformers() {
    replay("mistral");
}

#[test]
fn qwen2_generates_as_transformers() {
    replay("qwen2");
}

#[test]
fn qwen3_generates_as_transformers() {
    replay("qwen3");
}

/// The real SmolLM2-135M-Instruct, served from its Q4_1 GGUF (run in its blocks; the task and
/// the config come from the GGUF metadata): with f32 activations (`SERVER_QUANTIZED_ACTIVATIONS`),
/// text and chat prompts answer as transformers does on the same dequantized weights, "What is
/// the capital of France?" with Paris. (The default int8 activations round as llama.cpp does, and
/// like llama.cpp's, their greedy chat answer here starts "L'Étoile, la": tests/parity_gguf_quants.rs
/// measures how often their choices agree with transformers'.)
#[test]
fn smollm2_gguf_generates_as_transformers() {
    let dir = smollm2();
    let exact = [("SERVER_QUANTIZED_ACTIVATIONS", "f32")];
    replay_golden(
        "models/golden/text-generation/smollm2-135m-instruct.json",
        &dir,
        &exact,
    );
    let server = common::Server::start(&dir, &exact);
    let answer = server
        .invoke_json(r#"{"inputs": [{"role": "user", "content": "What is the capital of France?"}], "parameters": {"max_new_tokens": 12, "return_full_text": false}}"#)
        .json();
    let text = answer[0]["generated_text"].as_str().unwrap();
    assert!(text.contains("Paris"), "{text}");
}

/// Next-token logits of the GGUF, run in its quantized blocks on f32 activations, against
/// transformers' (its own GGUF loader, weights dequantized): the same top-10 tokens in the same
/// order, logits within 1e-3.
#[test]
fn smollm2_next_token_logits_match_transformers() {
    use sagemaker_hf_server::device::Placement;
    use sagemaker_hf_server::models::config::ModelConfig;
    use sagemaker_hf_server::models::decoders::CausalLm;
    use sagemaker_hf_server::models::{StepInput, StepModel};
    use sagemaker_hf_server::registry::DecoderFamily;
    let files = sagemaker_hf_server::source::from_dir(&smollm2()).unwrap();
    let config = ModelConfig::from_json(files.config_json().unwrap()).unwrap();
    let exact = Placement {
        block_activations: sagemaker_hf_server::models::quantized::BlockActivations::F32,
        ..Placement::cpu()
    };
    let model = CausalLm::load(&files, &config, DecoderFamily::Llama, &exact).unwrap();
    for record in &golden_records("models/golden/text-generation/smollm2-next-token.json") {
        let ids: Vec<u32> = serde_json::from_value(record["input_ids"].clone()).unwrap();
        let mut cache = model.new_cache();
        let logits = model
            .step(&mut [StepInput {
                tokens: &ids,
                cache: &mut cache,
            }])
            .unwrap()
            .remove(0);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let want_ids: Vec<usize> = serde_json::from_value(record["top_ids"].clone()).unwrap();
        let want_logits: Vec<f32> = serde_json::from_value(record["top_logits"].clone()).unwrap();
        assert_eq!(&order[..10], &want_ids[..], "{}", record["prompt"]);
        for (id, want) in want_ids.iter().zip(want_logits) {
            assert!(
                (logits[*id] - want).abs() < 1e-3,
                "{}: token {id}: {} vs {want}",
                record["prompt"],
                logits[*id]
            );
        }
    }
}

#[test]
fn phi3_generates_as_transformers() {
    replay("phi3");
}

#[test]
fn gemma_generates_as_transformers() {
    replay("gemma");
}

/// An encoder–decoder task golden on a tiny model (`HF_TASK` = the golden's folder).
fn replay_seq2seq(task: &str, model: &str) {
    replay_golden(
        &format!("models/golden/{task}/{model}.json"),
        &repo_path(&format!("models/tiny/{model}")),
        &[("HF_TASK", task)],
    );
}

#[test]
fn t5_text2text_generates_as_transformers() {
    replay_seq2seq("text2text-generation", "t5-lm");
}

/// The task's `task_specific_params`: prefix, lengths and n-gram blocking from the model config.
#[test]
fn t5_summarizes_and_translates_as_transformers() {
    replay_seq2seq("summarization", "t5-tasks");
    replay_seq2seq("translation_en_to_de", "t5-tasks");
}

/// BART as bart-large-cnn generates (4 beams, length penalty 2, `<s>` forced first and `</s>`
/// last, n-gram blocking, a random `final_logits_bias`), for summarization and text2text.
#[test]
fn bart_summarizes_as_transformers() {
    replay_seq2seq("summarization", "bart-lm");
    replay_seq2seq("text2text-generation", "bart-lm");
}

/// Marian as opus-mt generates (sinusoidal positions, scaled embeddings, SiLU, its pad token
/// banned, `</s>` forced last).
#[test]
fn marian_translates_as_transformers() {
    replay_seq2seq("translation", "marian-lm");
}

/// Flan-T5 / T5 v1.1: gated-GELU feed-forward, untied output layer.
#[test]
fn flan_t5_generates_as_transformers() {
    replay_seq2seq("text2text-generation", "flan-t5-lm");
}

/// A Marian folder as opus-mt ships it (SentencePiece `source.spm` / `target.spm` and a
/// `vocab.json`, no tokenizer.json): the tokenizer the server builds gives MarianTokenizer's ids,
/// and translations are the pipeline's.
#[test]
fn marian_sentencepiece_tokenizer_matches_transformers() {
    let dir = repo_path("models/tiny/marian-spm");
    assert!(!dir.join("tokenizer.json").exists());
    let file = sagemaker_hf_server::source::tokenizer_file(&dir).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(&file).unwrap();
    for record in &golden_records("models/golden/translation/marian-spm-tokens.json") {
        let text = record["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(record["input_ids"].clone()).unwrap();
        let got = tokenizer.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(got, want, "{text:?}");
    }
    replay_seq2seq("translation", "marian-spm");
}

/// Every generation parameter the pipelines take from JSON, one request each (make_generation_
/// fixtures.py params): token ids (`return_tensors`), `prefix`, `add_special_tokens`,
/// `stop_sequence`, clean-up, the optional processors, and the 400s for what only a Python
/// object can fill (or this server does not run, marked as deviations in the golden).
#[test]
fn generation_parameters_match_transformers() {
    for family in ["gpt2", "llama"] {
        replay_golden(
            &format!("models/golden/text-generation/{family}-lm-params.json"),
            &repo_path(&format!("models/tiny/{family}-lm")),
            &[("HF_TASK", "text-generation")],
        );
    }
    for (task, model) in [
        ("text2text-generation", "t5-lm"),
        ("summarization", "t5-tasks"),
        ("translation_en_to_de", "t5-tasks"),
    ] {
        replay_golden(
            &format!("models/golden/{task}/{model}-params.json"),
            &repo_path(&format!("models/tiny/{model}")),
            &[("HF_TASK", task)],
        );
    }
}
