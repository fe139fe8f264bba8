//! GPU tests: the golden files replayed on a CUDA device. Built only with `--features cuda`,
//! and each test does nothing unless `SAGEMAKER_HF_GPU_TESTS=1` (CI has no GPU):
//!
//!     SAGEMAKER_HF_GPU_TESTS=1 cargo test --release --features cuda --test gpu
//!
//! On a GPU machine without Rust, carry the test executable (`cargo test --features cuda --test
//! gpu --no-run` prints it) with the server binary and point `SAGEMAKER_HF_SERVER_BIN` and
//! `SAGEMAKER_HF_REPO_DIR` at them (benches/gpu_run.sh does this when the kit has `gpu-tests`).
#![cfg(feature = "cuda")]

mod common;

use common::{replay_golden, replay_golden_within, repo_path, Server};

fn enabled() -> bool {
    std::env::var("SAGEMAKER_HF_GPU_TESTS").is_ok_and(|v| v == "1")
}

/// Every golden whose model is present: (task, golden file, model directory).
fn goldens() -> Vec<(String, String, std::path::PathBuf)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(repo_path("models/golden"))
        .unwrap()
        .flatten()
    {
        for file in std::fs::read_dir(task.path()).unwrap().flatten() {
            let path = file.path();
            let golden: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let model = repo_path(&format!("models/{}", golden["model"].as_str().unwrap()));
            let replayable = golden["records"][0].get("request").is_some();
            if replayable && model.is_dir() {
                let relative = path.strip_prefix(repo_path("")).unwrap();
                found.push((
                    task.file_name().to_string_lossy().to_string(),
                    relative.to_string_lossy().to_string(),
                    model,
                ));
            }
        }
    }
    found.sort();
    found
}

/// In float32 the GPU answers as the CPU does: every golden within 1e-4.
#[test]
fn every_golden_on_cuda_in_float32() {
    if !enabled() {
        return;
    }
    let goldens = goldens();
    assert!(
        goldens.len() > 50,
        "only {} golden files found",
        goldens.len()
    );
    for (task, golden, model) in goldens {
        replay_golden(
            &golden,
            &model,
            &[
                ("HF_TASK", task.as_str()),
                ("SERVER_DEVICE", "cuda"),
                ("SERVER_DTYPE", "float32"),
            ],
        );
    }
}

/// The GPU default is float16: `/ping` says so, scores stay within 1e-2 and greedy generation
/// keeps the pipeline's tokens.
#[test]
fn float16_by_default_on_cuda() {
    if !enabled() {
        return;
    }
    let server = Server::start(
        &repo_path("models/tiny/bert-cls"),
        &[("HF_TASK", "text-classification")],
    );
    let ping = server.request("GET", "/ping", &[], b"");
    assert_eq!(ping.header("x-device"), Some("cuda:0"));
    assert_eq!(ping.header("x-dtype"), Some("f16"));
    drop(server);
    replay_golden_within(
        "models/golden/text-classification/bert-cls.json",
        &repo_path("models/tiny/bert-cls"),
        &[("HF_TASK", "text-classification")],
        1e-2,
    );
    for family in ["gpt2", "llama", "qwen3", "gemma"] {
        replay_golden(
            &format!("models/golden/text-generation/{family}-lm.json"),
            &repo_path(&format!("models/tiny/{family}-lm")),
            &[("HF_TASK", "text-generation")],
        );
    }
}
