//! Models from the Hugging Face Hub through `hf-hub`, in the standard cache layout
//! (`models--org--name/{blobs,snapshots,refs}`), so a cache filled by Python is reused and the
//! other way round. Transient failures are retried with backoff (`hub_retry`); each file is
//! logged with its size.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use super::hub_retry::{broke_off, size_text, with_retries, Backoff};
use super::sentencepiece::{MARIAN_FILES, SIGLIP_FILE, XLM_ROBERTA_FILE};
use super::{
    shard_names, ModelFiles, Weights, AUXILIARY_FILES, PYTORCH, PYTORCH_INDEX, SAFETENSORS,
    SAFETENSORS_INDEX,
};

#[derive(Debug, Clone)]
pub struct HubRequest {
    pub model_id: String,
    pub revision: Option<String>,
    pub token: Option<String>,
    pub cache_dir: PathBuf,
    pub offline: bool,
    /// `HF_ENDPOINT`: a mirror, or a local stand-in of the Hub in tests.
    pub endpoint: Option<String>,
    /// Retries of requests that failed for a transient cause.
    pub backoff: Backoff,
}

impl HubRequest {
    fn repo(&self) -> Repo {
        match &self.revision {
            Some(rev) => Repo::with_revision(self.model_id.clone(), RepoType::Model, rev.clone()),
            None => Repo::new(self.model_id.clone(), RepoType::Model),
        }
    }

    fn label(&self) -> String {
        match &self.revision {
            Some(rev) => format!("{}@{}", self.model_id, rev),
            None => self.model_id.clone(),
        }
    }
}

pub fn resolve_from_hub(req: &HubRequest) -> Result<ModelFiles> {
    if req.offline {
        return from_cache(req).with_context(|| {
            format!(
                "model {} is not in the Hub cache {} and HF_HUB_OFFLINE is set",
                req.label(),
                req.cache_dir.display()
            )
        });
    }
    match download(req) {
        Ok(files) => Ok(files),
        Err(HubFailure::Unreachable(cause)) => match from_cache(req) {
            // As huggingface_hub does: no network, but a complete cached copy is good enough.
            Ok(files) => {
                tracing::warn!("cannot reach the Hub ({cause}); using the cached copy of {}", req.label());
                Ok(files)
            }
            Err(_) => Err(anyhow!(
                "cannot download model {}: the Hub is unreachable ({cause}) and the cache {} has no complete copy. \
                 Ship the model in model.tar.gz, or fill the cache and set HF_HUB_OFFLINE=1",
                req.label(),
                req.cache_dir.display()
            )),
        },
        Err(HubFailure::Refused(message)) => Err(anyhow!("cannot download model {}: {message}", req.label())),
        Err(HubFailure::Other(e)) => Err(e.context(format!("cannot download model {}", req.label()))),
    }
}

enum HubFailure {
    /// Network-level failure: worth trying the cache.
    Unreachable(String),
    /// The Hub answered no (401, 403, 404...): the cache is not consulted, the answer is final.
    Refused(String),
    Other(anyhow::Error),
}

fn download(req: &HubRequest) -> Result<ModelFiles, HubFailure> {
    let mut builder = ApiBuilder::from_cache(Cache::new(req.cache_dir.clone()))
        .with_progress(false)
        .with_token(req.token.clone())
        .with_user_agent("origin", "sagemaker-hf-server");
    if let Some(endpoint) = &req.endpoint {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
    }
    let api = builder.build().map_err(|e| classify(e, req))?;
    let repo = api.repo(req.repo());
    let label = req.label();
    let info = with_retries(&req.backoff, &format!("listing {label}"), || repo.info())
        .map_err(|e| classify(e, req))?;
    let listed: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    let has = |name: &str| listed.iter().any(|f| f == name);

    let cached = Cache::new(req.cache_dir.clone()).repo(req.repo());
    let started = Instant::now();
    let downloaded = std::cell::Cell::new((0usize, 0u64));
    let fetch = |name: &str| -> Result<PathBuf, HubFailure> {
        let was_cached = cached.get(name).is_some();
        let t0 = Instant::now();
        let path = with_retries(&req.backoff, &format!("fetching {name} of {label}"), || {
            repo.get(name)
        })
        .map_err(|e| classify(e, req))?;
        let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        if was_cached {
            tracing::info!("{name} of {label}: {} (cached)", size_text(bytes));
        } else {
            let (files, total) = downloaded.get();
            downloaded.set((files + 1, total + bytes));
            tracing::info!(
                "downloaded {name} of {label}: {} in {:.1} s",
                size_text(bytes),
                t0.elapsed().as_secs_f64()
            );
        }
        Ok(path)
    };

    if !has("config.json") && has(super::MODEL_INDEX) {
        let index = diffusers_files(&listed)
            .iter()
            .map(|name| fetch(name))
            .collect::<Result<Vec<_>, _>>()?
            .swap_remove(0);
        let dir = index.parent().map(PathBuf::from).unwrap_or_default();
        let mut files = super::local::from_dir(&dir).map_err(HubFailure::Other)?;
        files.origin = format!("Hub model {}", req.label());
        return Ok(files);
    }
    let mut config = None;
    for name in model_files(&listed)? {
        let path = fetch(name)?;
        if name == "config.json" {
            config = Some(path);
        }
    }
    let config = config.expect("config.json is listed and fetched");
    let dir = config.parent().map(PathBuf::from).unwrap_or_default();

    let weights = if has(SAFETENSORS) {
        Weights::Safetensors(vec![fetch(SAFETENSORS)?])
    } else if has(SAFETENSORS_INDEX) {
        Weights::Safetensors(fetch_shards(SAFETENSORS_INDEX, &fetch)?)
    } else if has(PYTORCH) {
        Weights::Pytorch(vec![fetch(PYTORCH)?])
    } else if has(PYTORCH_INDEX) {
        Weights::Pytorch(fetch_shards(PYTORCH_INDEX, &fetch)?)
    } else {
        return Err(HubFailure::Refused(format!(
            "the repository has no PyTorch weights ({SAFETENSORS}, {PYTORCH} or their sharded index)"
        )));
    };
    let (files, total) = downloaded.get();
    if files > 0 {
        tracing::info!(
            "downloaded {files} files of {label} ({}) in {:.1} s",
            size_text(total),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ModelFiles {
        tokenizer: super::tokenizer_or_image_model(&dir).map_err(HubFailure::Other)?,
        config,
        dir,
        weights,
        origin: format!("Hub model {}", req.label()),
    })
}

/// The files of a (non-diffusers) repository to fetch besides its weights: `config.json`, the
/// tokenizer (`tokenizer.json`, or the slow files a fast tokenizer is built from: Marian's,
/// SigLIP's and XLM-R's SentencePiece models, GPT-2 / RoBERTa / BART's vocab.json and merges.txt; none for an
/// image model) and the settings files the repository has; or why it cannot be served.
fn model_files(listed: &[String]) -> Result<Vec<&'static str>, HubFailure> {
    let has = |name: &str| listed.iter().any(|f| f == name);
    let fast = has("tokenizer.json");
    let marian = !fast && has("source.spm") && has("vocab.json");
    let image_model = !fast && has(super::PREPROCESSOR_CONFIG);
    let bpe = !fast && !marian && has("vocab.json") && has("merges.txt");
    let required: &[&str] = if marian || image_model || bpe {
        &["config.json"]
    } else {
        &["config.json", "tokenizer.json"]
    };
    if let Some(missing) = required.iter().find(|r| !has(r)) {
        return Err(HubFailure::Refused(format!(
            "the repository has no {missing} (files: {})",
            listed.join(", ")
        )));
    }
    let marian_files = if marian { MARIAN_FILES } else { &[] };
    // SigLIP and TrOCR-small ship a SentencePiece model and no tokenizer.json (image models
    // otherwise).
    let siglip_files: &[&str] = if !fast && has(SIGLIP_FILE) {
        &[SIGLIP_FILE]
    } else {
        &[]
    };
    let xlm_roberta_files: &[&str] = if !fast && has(XLM_ROBERTA_FILE) {
        &[XLM_ROBERTA_FILE]
    } else {
        &[]
    };
    let bpe_files: &[&str] = if bpe {
        &["vocab.json", "merges.txt", "added_tokens.json"]
    } else {
        &[]
    };
    Ok(AUXILIARY_FILES
        .iter()
        .chain(marian_files)
        .chain(siglip_files)
        .chain(xlm_roberta_files)
        .chain(bpe_files)
        .copied()
        .filter(|n| has(n))
        .collect())
}

fn fetch_shards(
    index: &str,
    fetch: &dyn Fn(&str) -> Result<PathBuf, HubFailure>,
) -> Result<Vec<PathBuf>, HubFailure> {
    let index_path = fetch(index)?;
    let text = std::fs::read_to_string(&index_path).map_err(|e| HubFailure::Other(e.into()))?;
    let names = shard_names(&text).map_err(HubFailure::Other)?;
    names.iter().map(|n| fetch(n)).collect()
}

/// What a text-to-image pipeline reads of a diffusers repository (`model_index.json` first):
/// each component's config and safetensors weights (not the fp16 variants, ckpt files or
/// ONNX exports beside them), the scheduler's config, the tokenizer's files.
fn diffusers_files(listed: &[String]) -> Vec<String> {
    let mut names = vec![super::MODEL_INDEX.to_string()];
    let has = |name: &str| listed.iter().any(|f| f == name);
    for component in ["text_encoder", "unet", "vae"] {
        names.push(format!("{component}/config.json"));
        let weights = ["diffusion_pytorch_model", "model"]
            .iter()
            .map(|stem| format!("{component}/{stem}.safetensors"))
            .find(|name| has(name));
        match weights {
            Some(name) => names.push(name),
            // Sharded: the index and every file in the component's folder it could list.
            None => names.extend(
                listed
                    .iter()
                    .filter(|f| {
                        f.starts_with(&format!("{component}/"))
                            && (f.ends_with(".safetensors")
                                || f.ends_with(".safetensors.index.json"))
                            && !f.contains(".fp16.")
                    })
                    .cloned(),
            ),
        }
    }
    names.push("scheduler/scheduler_config.json".into());
    for file in [
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
    ] {
        let name = format!("tokenizer/{file}");
        if has(&name) {
            names.push(name);
        }
    }
    names
}

/// The same files, from the cache only.
fn from_cache(req: &HubRequest) -> Result<ModelFiles> {
    let cached = Cache::new(req.cache_dir.clone()).repo(req.repo());
    if let (None, Some(index)) = (cached.get("config.json"), cached.get(super::MODEL_INDEX)) {
        let dir = index.parent().map(PathBuf::from).unwrap_or_default();
        return super::local::from_dir(&dir);
    }
    let get = |name: &str| {
        cached
            .get(name)
            .ok_or_else(|| anyhow!("{name} is not cached"))
    };
    let config = get("config.json")?;
    let dir = config.parent().map(PathBuf::from).unwrap_or_default();
    let tokenizer = match get("tokenizer.json") {
        Ok(file) => file,
        // (a Marian repo's SentencePiece files, cached in the same snapshot)
        Err(e) => super::tokenizer_or_image_model(&dir).map_err(|_| e)?,
    };
    let shards = |index: &str| -> Result<Vec<PathBuf>> {
        let text = std::fs::read_to_string(get(index)?)?;
        shard_names(&text)?.iter().map(|n| get(n)).collect()
    };
    let weights = if let Ok(file) = get(SAFETENSORS) {
        Weights::Safetensors(vec![file])
    } else if cached.get(SAFETENSORS_INDEX).is_some() {
        Weights::Safetensors(shards(SAFETENSORS_INDEX)?)
    } else if let Ok(file) = get(PYTORCH) {
        Weights::Pytorch(vec![file])
    } else if cached.get(PYTORCH_INDEX).is_some() {
        Weights::Pytorch(shards(PYTORCH_INDEX)?)
    } else {
        bail!("no weights are cached");
    };
    Ok(ModelFiles {
        dir,
        config,
        tokenizer,
        weights,
        origin: format!(
            "Hub model {} (from cache {})",
            req.label(),
            req.cache_dir.display()
        ),
    })
}

/// Turns an `hf-hub` error into a cause a person can act on.
fn classify(error: ApiError, req: &HubRequest) -> HubFailure {
    match error {
        ApiError::TooManyRetries(inner) => classify(*inner, req),
        ApiError::RequestError(inner) => match *inner {
            ureq::Error::Status(status, response) => {
                let code = response.header("x-error-code").unwrap_or("").to_string();
                let message = response.header("x-error-message").unwrap_or("").to_string();
                let detail = if message.is_empty() {
                    String::new()
                } else {
                    format!(" ({message})")
                };
                let token_state = if req.token.is_some() {
                    "the token in HF_TOKEN/HF_API_TOKEN"
                } else {
                    "no HF_TOKEN"
                };
                let text = match (status, code.as_str()) {
                    (_, "GatedRepo") | (403, _) => format!(
                        "access to this gated or restricted repository was refused (HTTP {status}){detail}; accept its conditions on the Hub with the account of the token, then set HF_TOKEN"
                    ),
                    (_, "RevisionNotFound") => format!(
                        "revision `{}` does not exist (HTTP {status}){detail}; check HF_MODEL_REVISION",
                        req.revision.as_deref().unwrap_or("main")
                    ),
                    (401, _) => format!(
                        "the Hub answered 401 unauthorised with {token_state}: the repository does not exist, or it is private and needs a valid token{detail}"
                    ),
                    (404, _) => format!("the repository or file was not found (HTTP 404){detail}; check HF_MODEL_ID"),
                    _ => format!("the Hub answered HTTP {status}{detail}"),
                };
                HubFailure::Refused(text)
            }
            ureq::Error::Transport(transport) => {
                let text = transport.to_string();
                if text.contains("UnknownIssuer") || text.contains("invalid peer certificate") {
                    // Final, as huggingface_hub treats an SSLError: not retried, no cache fallback.
                    return HubFailure::Refused(format!(
                        "the TLS certificate of {} is not trusted ({text}); add its CA to the \
                         system store (/usr/local/share/ca-certificates + update-ca-certificates) \
                         or point SSL_CERT_FILE at a PEM bundle that has it",
                        req.endpoint.as_deref().unwrap_or("the Hub")
                    ));
                }
                HubFailure::Unreachable(text)
            }
        },
        ApiError::IoError(e) if broke_off(&e) => {
            HubFailure::Unreachable(format!("the download broke off: {e}"))
        }
        ApiError::IoError(e) => HubFailure::Other(anyhow!(e).context("writing to the Hub cache")),
        other => HubFailure::Other(anyhow!(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cache: PathBuf, offline: bool) -> HubRequest {
        HubRequest {
            model_id: "org/model".into(),
            revision: None,
            token: None,
            cache_dir: cache,
            offline,
            // Nothing listens on port 9 of loopback: a network failure without leaving the machine.
            endpoint: Some("http://127.0.0.1:9".into()),
            backoff: Backoff {
                retries: 1,
                first_delay: std::time::Duration::from_millis(1),
            },
        }
    }

    fn fill_cache(cache: &std::path::Path, files: &[&str]) {
        let repo = cache.join("models--org--model");
        let snapshot = repo.join("snapshots/abc123");
        std::fs::create_dir_all(snapshot.join("1_Pooling")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123").unwrap();
        for f in files {
            std::fs::write(snapshot.join(f), "{}").unwrap();
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shs-hub-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// TrOCR-small's files: an image model with XLM-R's SentencePiece model and no
    /// tokenizer.json, which the server builds one from.
    #[test]
    fn sentencepiece_only_repositories_fetch_their_model() {
        let listed: Vec<String> = [
            "config.json",
            "preprocessor_config.json",
            "sentencepiece.bpe.model",
            "special_tokens_map.json",
            "tokenizer_config.json",
            "model.safetensors",
        ]
        .map(String::from)
        .to_vec();
        let Ok(files) = model_files(&listed) else {
            panic!("refused")
        };
        for wanted in [
            "config.json",
            "sentencepiece.bpe.model",
            "tokenizer_config.json",
        ] {
            assert!(files.contains(&wanted), "{files:?}");
        }
    }

    #[test]
    fn offline_reads_the_standard_cache_layout() {
        let cache = tmp("offline");
        fill_cache(
            &cache,
            &["config.json", "tokenizer.json", "model.safetensors"],
        );
        let files = resolve_from_hub(&request(cache.clone(), true)).unwrap();
        assert!(files.config.ends_with("snapshots/abc123/config.json"));
        assert!(matches!(files.weights, Weights::Safetensors(ref w) if w.len() == 1));
    }

    #[test]
    fn offline_without_cache_names_model_and_cache() {
        let cache = tmp("empty");
        let e = format!("{:#}", resolve_from_hub(&request(cache, true)).unwrap_err());
        assert!(
            e.contains("org/model") && e.contains("HF_HUB_OFFLINE"),
            "{e}"
        );
    }

    #[test]
    fn unreachable_hub_falls_back_to_a_complete_cache() {
        let cache = tmp("fallback");
        fill_cache(
            &cache,
            &["config.json", "tokenizer.json", "pytorch_model.bin"],
        );
        let files = resolve_from_hub(&request(cache, false)).unwrap();
        assert!(matches!(files.weights, Weights::Pytorch(_)));
    }

    #[test]
    fn unreachable_hub_without_cache_says_so() {
        let cache = tmp("nocache");
        let e = format!(
            "{:#}",
            resolve_from_hub(&request(cache, false)).unwrap_err()
        );
        assert!(e.contains("unreachable") && e.contains("org/model"), "{e}");
    }
}
