//! The device-generic path (candle tensor ops: what a GPU runs) against the same goldens, on CPU:
//! `SAGEMAKER_HF_GENERIC_KERNELS=1` keeps every layer off the fused CPU kernels. One golden per
//! task, spread over the families that run on our encoder.

mod common;

use common::{replay_golden, repo_path};

const GENERIC: (&str, &str) = ("SAGEMAKER_HF_GENERIC_KERNELS", "1");

fn replay(task: &str, golden: &str, model: &str) {
    replay_golden(
        &format!("models/golden/{task}/{golden}.json"),
        &repo_path(&format!("models/tiny/{model}")),
        &[("HF_TASK", task), GENERIC],
    );
}

#[test]
fn classification_tasks_on_the_generic_path() {
    replay("text-classification", "bert-cls", "bert-cls");
    replay("text-classification", "roberta-cls", "roberta-cls");
    replay(
        "zero-shot-classification",
        "distilbert-nli",
        "distilbert-nli",
    );
    replay("sentence-ranking", "electra-ranker", "electra-ranker");
}

#[test]
fn token_tasks_on_the_generic_path() {
    replay("token-classification", "xlm-roberta-ner", "xlm-roberta-ner");
    replay("question-answering", "electra-qa", "electra-qa");
    replay("fill-mask", "roberta-mlm", "roberta-mlm");
    replay("feature-extraction", "distilbert-st", "distilbert-st");
    replay("sentence-embeddings", "bert-st", "bert-st");
}
