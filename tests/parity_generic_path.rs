//! The device-generic path (candle tensor ops: what a GPU runs) against the same goldens, on CPU:
//! `SAGEMAKER_HF_GENERIC_KERNELS=1` keeps every layer off the fused CPU kernels. One golden per
//! task, spread over the families that run on our encoder.

mod common;

use common::{replay_golden, replay_golden_within, repo_path, Server};

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

/// Half precision (`SERVER_DTYPE`, the GPU default) on the real MiniLM models, through the same
/// candle path a GPU runs: scores and embeddings within 1e-2 of the f32 pipelines.
#[test]
fn float16_on_real_models_is_within_a_hundredth() {
    let half = ("SERVER_DTYPE", "float16");
    replay_golden_within(
        "models/golden/text-classification/minilm-l6-cls.json",
        &common::minilm_cls(),
        &[("HF_TASK", "text-classification"), half],
        1e-2,
    );
    for task in ["feature-extraction", "sentence-similarity"] {
        replay_golden_within(
            &format!("models/golden/{task}/all-MiniLM-L6-v2.json"),
            &repo_path("models/all-MiniLM-L6-v2"),
            &[("HF_TASK", task), half],
            1e-2,
        );
    }
}

/// `/ping` names the precision in use; candle's DeBERTa-v2 runs in f32 only, so asking it for
/// bfloat16 falls back to f32 (and says so) instead of failing every request.
#[test]
fn dtype_is_reported_and_f32_only_networks_fall_back() {
    let server = Server::start(
        &common::minilm_cls(),
        &[("HF_TASK", "text-classification"), ("SERVER_DTYPE", "bf16")],
    );
    let ping = server.request("GET", "/ping", &[], b"");
    assert_eq!(ping.header("x-dtype"), Some("bf16"));
    drop(server);
    let server = Server::start(
        &repo_path("models/tiny/deberta-v2-nli"),
        &[
            ("HF_TASK", "zero-shot-classification"),
            ("SERVER_DTYPE", "bf16"),
        ],
    );
    let ping = server.request("GET", "/ping", &[], b"");
    assert_eq!(ping.header("x-dtype"), Some("f32"));
    replay_golden(
        "models/golden/zero-shot-classification/deberta-v2-nli.json",
        &repo_path("models/tiny/deberta-v2-nli"),
        &[
            ("HF_TASK", "zero-shot-classification"),
            ("SERVER_DTYPE", "bf16"),
        ],
    );
}

/// bfloat16 on the CPU: with AVX512-BF16 the fused path rounds the dense layers' weights and
/// inputs to bf16 (f32 sums, everything else f32); scores and normalised embeddings of the real
/// models stay within 1e-2 of the f32 pipelines, raw token hidden states (values up to ~10)
/// within 5e-2. (Without the instructions the encoder runs in f32, with a warning.)
#[test]
fn bfloat16_on_the_cpu_is_within_a_hundredth() {
    let bf16 = ("SERVER_DTYPE", "bfloat16");
    // The bf16 kernels even where they are slower than the f32 ones (kernels::bf16_pays).
    let kernels = ("SAGEMAKER_HF_BF16_KERNELS", "1");
    replay_golden_within(
        "models/golden/text-classification/minilm-l6-cls.json",
        &common::minilm_cls(),
        &[("HF_TASK", "text-classification"), bf16, kernels],
        1e-2,
    );
    for (task, tolerance) in [
        ("feature-extraction", 5e-2),
        ("sentence-similarity", 1e-2),
        ("sentence-embeddings", 1e-2),
    ] {
        replay_golden_within(
            &format!("models/golden/{task}/all-MiniLM-L6-v2.json"),
            &repo_path("models/all-MiniLM-L6-v2"),
            &[("HF_TASK", task), bf16, kernels],
            tolerance,
        );
    }
    replay_golden_within(
        "models/golden/token-classification/quire-tagger.json",
        &repo_path("models/quire-tagger"),
        &[("HF_TASK", "token-classification"), bf16, kernels],
        1e-2,
    );
}
