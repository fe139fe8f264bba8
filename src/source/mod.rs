//! Where the model files come from: a local directory (`/opt/ml/model`, the untarred
//! `model.tar.gz`, or a path in `HF_MODEL_ID`) or the Hugging Face Hub.

mod byte_level_bpe;
mod clip_bpe;
mod hub;
mod hub_retry;
mod local;
mod sentencepiece;

use std::path::PathBuf;

use anyhow::{Context, Result};

pub use hub::{resolve_from_hub, HubRequest};
pub use hub_retry::Backoff;
pub use local::{component_weights, from_dir};
pub use sentencepiece::tokenizer_file;

/// The tokenizer of a model folder; an image model (a `preprocessor_config.json` and no
/// tokenizer files) gets the path where one would be, which only text tasks open.
pub(crate) fn tokenizer_or_image_model(dir: &std::path::Path) -> Result<PathBuf> {
    match tokenizer_file(dir) {
        Err(_) if dir.join(PREPROCESSOR_CONFIG).is_file() => Ok(dir.join("tokenizer.json")),
        other => other,
    }
}

/// The index of a diffusers pipeline folder (text-to-image).
pub const MODEL_INDEX: &str = "model_index.json";

/// An image processor's settings (vision models).
pub(crate) const PREPROCESSOR_CONFIG: &str = "preprocessor_config.json";

use crate::config::ServeArgs;

/// The files of one model, all resolved to local paths.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// Directory of `config.json`; optional files (tokenizer_config.json, ...) are looked up here.
    pub dir: PathBuf,
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub weights: Weights,
    /// Human-readable origin for logs and `GET /models`.
    pub origin: String,
}

#[derive(Debug, Clone)]
pub enum Weights {
    /// One or more safetensors files (several when sharded with `model.safetensors.index.json`).
    Safetensors(Vec<PathBuf>),
    /// PyTorch pickles (`pytorch_model.bin`, or its shards).
    Pytorch(Vec<PathBuf>),
    /// A llama.cpp GGUF file (quantized Llama-family weights, kept in their blocks).
    Gguf(PathBuf),
}

impl ModelFiles {
    /// The model's `config.json`, parsed (for a GGUF folder without one: from the file's metadata).
    pub fn config_json(&self) -> Result<serde_json::Value> {
        if let (false, Weights::Gguf(gguf)) = (self.config.is_file(), &self.weights) {
            return crate::models::gguf::config(gguf);
        }
        let text = std::fs::read_to_string(&self.config)
            .with_context(|| format!("reading {}", self.config.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", self.config.display()))
    }

    /// An optional file next to `config.json`.
    pub fn optional(&self, name: &str) -> Option<PathBuf> {
        let path = self.dir.join(name);
        path.is_file().then_some(path)
    }
}

/// Weight files in order of preference: safetensors first (fast, safe, mmap-able), then pickles.
pub(crate) const SAFETENSORS: &str = "model.safetensors";
pub(crate) const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";
pub(crate) const PYTORCH: &str = "pytorch_model.bin";
pub(crate) const PYTORCH_INDEX: &str = "pytorch_model.bin.index.json";

/// Non-weight files a task may use; fetched from the Hub when the repo has them.
pub(crate) const AUXILIARY_FILES: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
    PREPROCESSOR_CONFIG,
];

/// The DLC's order: `HF_MODEL_ID` (a Hub id, or here also a local directory), else the model directory.
pub fn resolve(args: &ServeArgs) -> Result<ModelFiles> {
    match location(args) {
        Location::Local(dir) => local::from_dir(&dir),
        Location::Hub(model_id) => resolve_from_hub(&HubRequest {
            model_id,
            revision: args.revision.clone(),
            token: args.token(),
            cache_dir: args.hub_cache_dir(),
            offline: args.offline,
            endpoint: std::env::var("HF_ENDPOINT").ok(),
            backoff: Backoff::default(),
        }),
    }
}

/// Where the model is: a local folder, or a Hub repository.
enum Location {
    Local(PathBuf),
    Hub(String),
}

fn location(args: &ServeArgs) -> Location {
    match &args.model_id {
        // A directory, or something shaped like a path (Hub ids never start with `/` or `.`).
        Some(id) if PathBuf::from(id).is_dir() || id.starts_with(['/', '.', '~']) => {
            Location::Local(PathBuf::from(id))
        }
        Some(id) => Location::Hub(id.clone()),
        None => Location::Local(args.default_model_dir()),
    }
}

/// The model's folder when it is local (not a Hub id), before anything in it is read.
pub fn local_dir(args: &ServeArgs) -> Option<PathBuf> {
    match location(args) {
        Location::Local(dir) => Some(dir),
        Location::Hub(_) => None,
    }
}

/// Shard file names listed by a `*.index.json` (`weight_map` values), in first-seen order.
pub(crate) fn shard_names(index_json: &str) -> Result<Vec<String>> {
    let index: serde_json::Value = serde_json::from_str(index_json)?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| anyhow::anyhow!("index has no `weight_map` object"))?;
    let mut names: Vec<String> = Vec::new();
    for file in map.values().filter_map(|v| v.as_str()) {
        if !names.iter().any(|n| n == file) {
            names.push(file.to_string());
        }
    }
    Ok(names)
}
