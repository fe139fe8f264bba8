//! Golden parity for the encoder pipelines beyond text-classification: every task on every
//! family (generated tiny models) and on the real models the registry packages carry, against
//! what `transformers` 4.51 (and sentence-transformers, for the sentence tasks) answered. See
//! models/make_fixtures.py; each file is replayed one request at a time, then all at once.

mod common;

use common::{replay_golden, repo_path};

const FAMILIES: [&str; 8] = [
    "bert",
    "distilbert",
    "roberta",
    "xlm-roberta",
    "deberta-v2",
    "modernbert",
    "electra",
    "albert",
];

/// Replays `models/golden/<task>/<family>-<suffix>.json` against `models/tiny/<family>-<model>`
/// for every family, with HF_TASK set (a task inferred from config.json is tested separately).
fn every_family(task: &str, golden_suffix: &str, model_suffix: &str) {
    for family in FAMILIES {
        replay_golden(
            &format!("models/golden/{task}/{family}-{golden_suffix}.json"),
            &repo_path(&format!("models/tiny/{family}-{model_suffix}")),
            &[("HF_TASK", task)],
        );
    }
}

#[test]
fn token_classification_matches_transformers() {
    every_family("token-classification", "ner", "ner");
}

#[test]
fn question_answering_matches_transformers() {
    every_family("question-answering", "qa", "qa");
}

#[test]
fn fill_mask_matches_transformers() {
    every_family("fill-mask", "mlm", "mlm");
}

#[test]
fn feature_extraction_matches_transformers() {
    every_family("feature-extraction", "st", "st");
}

#[test]
fn zero_shot_classification_matches_transformers() {
    every_family("zero-shot-classification", "nli", "nli");
}

#[test]
fn sentence_embeddings_match_sentence_transformers() {
    every_family("sentence-embeddings", "st", "st");
}

#[test]
fn sentence_similarity_matches_sentence_transformers() {
    every_family("sentence-similarity", "st", "st");
}

#[test]
fn sentence_ranking_matches_cross_encoder() {
    every_family("sentence-ranking", "ranker", "ranker");
}

/// DeBERTa-v3 style (relative positions only) takes inputs longer than its position table, as
/// transformers does: 100 to 300 tokens on a model of 64 positions. (Token classification and
/// zero-shot truncate to the tokenizer's 64 by default, as the pipelines do.)
#[test]
fn deberta_v2_runs_past_its_positions_as_transformers() {
    for (task, model) in [
        ("fill-mask", "mlm"),
        ("token-classification", "ner"),
        ("feature-extraction", "st"),
        ("zero-shot-classification", "nli"),
    ] {
        replay_golden(
            &format!("models/golden/{task}/deberta-v2-{model}-long.json"),
            &repo_path(&format!("models/tiny/deberta-v2-{model}")),
            &[("HF_TASK", task)],
        );
    }
}

fn real_model(relative: &str) -> std::path::PathBuf {
    common::fetched_model(relative, "model.safetensors")
}

#[test]
fn real_minilm_features_and_sentence_tasks_match() {
    let minilm = real_model("models/all-MiniLM-L6-v2");
    for task in [
        "feature-extraction",
        "sentence-embeddings",
        "sentence-similarity",
    ] {
        replay_golden(
            &format!("models/golden/{task}/all-MiniLM-L6-v2.json"),
            &minilm,
            &[("HF_TASK", task)],
        );
    }
}

#[test]
fn real_quire_tagger_matches_transformers() {
    // HF_TASK unset: DistilBertForTokenClassification infers token-classification.
    replay_golden(
        "models/golden/token-classification/quire-tagger.json",
        &real_model("models/quire-tagger"),
        &[],
    );
}

/// Every parameter the encoder pipelines accept, one request each (make_encoder_param_fixtures.py):
/// the tokenizer's keyword arguments (`text_pair`, `add_special_tokens`, `return_token_type_ids`,
/// padding, `stride`, `split_special_tokens`, ...), `batch_size` / `num_workers`, token-
/// classification's `offset_mapping`, question-answering's aliases, padding and list of
/// questions, the keys the pipelines drop; a 400 naming the parameter where the pipeline raises.
#[test]
fn encoder_parameters_match_transformers() {
    for (task, model) in [
        ("text-classification", "bert-cls"),
        ("text-classification", "distilbert-cls"),
        ("text-classification", "roberta-cls"),
        ("token-classification", "bert-ner"),
        ("token-classification", "roberta-ner"),
        ("question-answering", "bert-qa"),
        ("question-answering", "roberta-qa"),
        ("fill-mask", "bert-mlm"),
        ("fill-mask", "roberta-mlm"),
        ("feature-extraction", "bert-st"),
        ("feature-extraction", "roberta-st"),
        ("zero-shot-classification", "bert-nli"),
        ("zero-shot-classification", "roberta-nli"),
    ] {
        replay_golden(
            &format!("models/golden/{task}/{model}-params.json"),
            &repo_path(&format!("models/tiny/{model}")),
            &[("HF_TASK", task)],
        );
    }
    replay_golden(
        "models/golden/text-classification/minilm-l6-cls-params.json",
        &real_model("models/minilm-l6-cls"),
        &[],
    );
}
