//! Greedy text generation against the `transformers` text-generation pipeline (transformers
//! 4.51, as the DLC runs it) on one tiny model per architecture (models/make_generation_fixtures.py).
//! Each golden is replayed one request at a time and then all at once, so that prompts join and
//! leave the running batch while others decode (continuous batching must not change a token).

mod common;

use common::{replay_golden, repo_path};

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
