//! The models of a multi-model endpoint (`SAGEMAKER_MULTI_MODEL=true`): each loaded by name from
//! a directory, with its own task, pipeline and batcher (an [`InferenceService`]), under one
//! memory budget. A load that would go over the budget is refused (507) and nothing is evicted:
//! SageMaker decides which models to unload and retries.
//!
//! A model's memory is estimated before it loads, from its weight files: their size times
//! `MME_MEMORY_FACTOR`. Loading and loaded models hold their estimate until unloaded; the memory
//! itself is freed once the last request on an unloaded model has finished.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::config::ServeArgs;
use crate::error::ServerError;
use crate::service::InferenceService;
use crate::source::{ModelFiles, Weights};

const MIB: u64 = 1024 * 1024;

/// What `POST /models` asks for.
#[derive(Debug, Clone, Default)]
pub struct LoadRequest {
    pub name: String,
    pub url: String,
    /// Model worker threads (MMS's `initial_workers`); the server's default when unset.
    pub workers: Option<usize>,
    /// The model's request deadline in seconds (MMS's `response_timeout`).
    pub response_timeout_s: Option<u64>,
    /// Echoed by `GET /models/{name}` as MMS does; our batcher sizes batches by itself.
    pub batch_size: Option<u64>,
    pub max_batch_delay_ms: Option<u64>,
}

/// A loaded model.
pub struct LoadedModel {
    pub name: String,
    pub url: String,
    pub service: Arc<InferenceService>,
    pub workers: usize,
    pub batch_size: u64,
    pub max_batch_delay_ms: u64,
    /// The memory it is counted for against the budget.
    pub reserved_bytes: u64,
}

enum Slot {
    /// Registered, weights not loaded yet: the name is taken; `reserved_bytes` is 0 until its
    /// files are sized.
    Loading {
        reserved_bytes: u64,
    },
    Ready(Arc<LoadedModel>),
}

impl Slot {
    fn reserved_bytes(&self) -> u64 {
        match self {
            Slot::Loading { reserved_bytes } => *reserved_bytes,
            Slot::Ready(model) => model.reserved_bytes,
        }
    }
}

pub struct ModelStore {
    /// By name; sorted, as MMS lists them.
    slots: Mutex<BTreeMap<String, Slot>>,
    budget_bytes: u64,
    memory_factor: f64,
    /// The settings every model loads with (`HF_TASK`, device, batching, ...).
    args: ServeArgs,
}

impl ModelStore {
    /// An empty store; the budget is `MME_MEMORY_BUDGET_MB`, else 90% of the memory available now.
    pub fn new(args: &ServeArgs) -> ModelStore {
        let budget_bytes = match args.mme_memory_budget_mb {
            Some(mb) => mb.saturating_mul(MIB),
            None => match crate::memory::available_bytes() {
                Some(bytes) => bytes / 10 * 9,
                None => {
                    tracing::warn!("cannot read the memory available (no /proc/meminfo or cgroup): models are loaded without a memory budget; set MME_MEMORY_BUDGET_MB");
                    u64::MAX
                }
            },
        };
        ModelStore {
            slots: Mutex::new(BTreeMap::new()),
            budget_bytes,
            memory_factor: args.mme_memory_factor.max(0.0),
            args: args.clone(),
        }
    }

    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes
    }

    /// Takes the name (409 when it is taken, also by a load in progress). The load itself is
    /// [`PendingLoad::run`].
    pub fn register(self: &Arc<Self>, request: LoadRequest) -> Result<PendingLoad, ServerError> {
        let mut slots = self.slots();
        if slots.contains_key(&request.name) {
            return Err(ServerError::ModelAlreadyRegistered(request.name));
        }
        slots.insert(request.name.clone(), Slot::Loading { reserved_bytes: 0 });
        Ok(PendingLoad {
            store: self.clone(),
            request,
            settled: false,
        })
    }

    /// A loaded model by name (one still loading is not found).
    pub fn get(&self, name: &str) -> Option<Arc<LoadedModel>> {
        match self.slots().get(name) {
            Some(Slot::Ready(model)) => Some(model.clone()),
            _ => None,
        }
    }

    /// The loaded models, by name.
    pub fn loaded(&self) -> Vec<Arc<LoadedModel>> {
        self.slots()
            .values()
            .filter_map(|slot| match slot {
                Slot::Ready(model) => Some(model.clone()),
                Slot::Loading { .. } => None,
            })
            .collect()
    }

    /// Unregisters a loaded model and frees its share of the budget. Requests already holding
    /// it finish; new ones get 404.
    pub fn unload(&self, name: &str) -> Result<Arc<LoadedModel>, ServerError> {
        let mut slots = self.slots();
        match slots.get(name) {
            None => Err(ServerError::ModelNotFound(name.to_string())),
            Some(Slot::Loading { .. }) => Err(ServerError::ModelStillLoading(name.to_string())),
            Some(Slot::Ready(_)) => match slots.remove(name) {
                Some(Slot::Ready(model)) => {
                    tracing::info!(
                        "model {name} unloaded ({} MiB of the budget freed)",
                        model.reserved_bytes / MIB
                    );
                    Ok(model)
                }
                _ => unreachable!("the slot was just seen ready under the lock"),
            },
        }
    }

    fn slots(&self) -> MutexGuard<'_, BTreeMap<String, Slot>> {
        // A panic while the lock is held leaves the map consistent (every change is one insert
        // or remove): keep serving.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `bytes` for the loading model `name`, or refuses when the budget cannot take it.
    fn reserve(&self, name: &str, bytes: u64) -> Result<(), ServerError> {
        let mut slots = self.slots();
        let others: u64 = slots
            .iter()
            .filter(|(other, _)| other.as_str() != name)
            .map(|(_, slot)| slot.reserved_bytes())
            .sum();
        if others.saturating_add(bytes) > self.budget_bytes {
            return Err(ServerError::InsufficientMemory {
                model: name.to_string(),
                needed_mib: bytes.div_ceil(MIB),
                free_mib: self.budget_bytes.saturating_sub(others) / MIB,
                budget_mib: self.budget_bytes / MIB,
            });
        }
        if let Some(Slot::Loading { reserved_bytes }) = slots.get_mut(name) {
            *reserved_bytes = bytes;
        }
        Ok(())
    }

    /// The memory a model is counted for: its weight files' size times the factor (four times
    /// that for GGUF, whose quantized weights are widened at load).
    fn estimate_bytes(&self, files: &ModelFiles) -> u64 {
        let size = |paths: &[PathBuf]| -> u64 {
            paths
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum()
        };
        let (bytes, widening) = match &files.weights {
            Weights::Safetensors(paths) | Weights::Pytorch(paths) => (size(paths), 1.0),
            // Kept in their quantized blocks; Q/K/V stacked at load (a transient copy).
            Weights::Gguf(path) => (size(std::slice::from_ref(path)), 1.0),
        };
        (bytes as f64 * self.memory_factor * widening) as u64
    }

    /// The memory a model loaded by its own script is counted for: its folder's files (all
    /// levels), times the factor; what its `model_fn` loads is its own affair.
    #[cfg(feature = "python")]
    fn estimate_folder_bytes(&self, dir: &Path) -> u64 {
        fn size(path: &Path) -> u64 {
            match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.is_dir() => std::fs::read_dir(path)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|entry| size(&entry.path()))
                    .sum(),
                Ok(meta) => meta.len(),
                Err(_) => 0,
            }
        }
        (size(dir) as f64 * self.memory_factor) as u64
    }

    /// The settings this model loads with: the server's, with its directory and its own
    /// workers and deadline where `POST /models` set them.
    fn model_args(&self, request: &LoadRequest) -> ServeArgs {
        let mut args = self.args.clone();
        args.model_id = Some(request.url.clone());
        if let Some(workers) = request.workers.filter(|w| *w > 0) {
            args.workers = workers;
        }
        if let Some(seconds) = request.response_timeout_s.filter(|s| *s > 0) {
            args.timeout_seconds = Some(seconds);
        }
        args
    }
}

/// A registered name whose model is not loaded yet. Dropped without loading (an error, a
/// panic), it gives the name and its memory back.
pub struct PendingLoad {
    store: Arc<ModelStore>,
    request: LoadRequest,
    settled: bool,
}

impl PendingLoad {
    /// Sizes the model against the budget and loads it, off the async runtime's threads.
    pub async fn run(self) -> Result<Arc<LoadedModel>, ServerError> {
        let name = self.request.name.clone();
        tokio::task::spawn_blocking(move || self.load())
            .await
            .map_err(|e| ServerError::Internal(format!("loading model {name} failed: {e}")))?
    }

    fn load(mut self) -> Result<Arc<LoadedModel>, ServerError> {
        let started = Instant::now();
        let LoadRequest { name, url, .. } = &self.request;
        let dir = PathBuf::from(url);
        if !dir.is_dir() {
            return Err(ServerError::ModelUrlNotFound(url.clone()));
        }
        let failed = |e: anyhow::Error| {
            ServerError::Internal(format!("Failed to load model {name} from {url}: {e:#}"))
        };
        let args = self.store.model_args(&self.request);
        let (service, reserved_bytes) = self.load_service(&args, &dir, failed)?;
        let model = Arc::new(LoadedModel {
            name: name.clone(),
            url: url.clone(),
            service,
            workers: args.workers,
            batch_size: self.request.batch_size.unwrap_or(1),
            max_batch_delay_ms: self.request.max_batch_delay_ms.unwrap_or(100),
            reserved_bytes,
        });
        tracing::info!(
            "model {name} loaded in {:.0} ms from {url}: {}, {} MiB of the {} MiB budget",
            started.elapsed().as_secs_f64() * 1e3,
            model.service.task_name(),
            reserved_bytes / MIB,
            self.store.budget_bytes / MIB
        );
        self.store
            .slots()
            .insert(name.clone(), Slot::Ready(model.clone()));
        self.settled = true;
        Ok(model)
    }

    /// Reserves the model's memory, then loads it. A model whose user script loads it
    /// (`model_fn`) may hold files our loader cannot read: it is counted by its folder's size.
    fn load_service(
        &self,
        args: &ServeArgs,
        dir: &Path,
        failed: impl Fn(anyhow::Error) -> ServerError,
    ) -> Result<(Arc<InferenceService>, u64), ServerError> {
        let name = &self.request.name;
        #[cfg(feature = "python")]
        if let Some(script) = user_script(args, dir) {
            let reserved_bytes = self.store.estimate_folder_bytes(dir);
            self.store.reserve(name, reserved_bytes)?;
            let service = crate::python::serve(args, &script, dir, || crate::source::from_dir(dir))
                .map_err(failed)?;
            return Ok((service, reserved_bytes));
        }
        let files = crate::source::from_dir(dir).map_err(&failed)?;
        let reserved_bytes = self.store.estimate_bytes(&files);
        self.store.reserve(name, reserved_bytes)?;
        Ok((start_service(args, files).map_err(failed)?, reserved_bytes))
    }
}

impl Drop for PendingLoad {
    fn drop(&mut self) {
        if !self.settled {
            let mut slots = self.store.slots();
            if let Some(Slot::Loading { .. }) = slots.get(&self.request.name) {
                slots.remove(&self.request.name);
            }
        }
    }
}

/// Resolves the model, decides the task and loads everything; blocking (run it off the runtime).
pub fn load_service(args: &ServeArgs) -> anyhow::Result<Arc<InferenceService>> {
    // A local model with a user script is the script's to load: its model_fn may read a
    // folder our loader cannot (no config.json, an architecture we lack).
    #[cfg(feature = "python")]
    if let Some(dir) = crate::source::local_dir(args) {
        if let Some(script) = user_script(args, &dir) {
            return crate::python::serve(args, &script, &dir, || crate::source::resolve(args));
        }
    }
    let files = crate::source::resolve(args)?;
    start_service(args, files)
}

/// The service for a model whose files are found: the native pipeline and, when the model
/// ships a user script (`code/inference.py`), that script's handlers around it (without the
/// feature `python`, such a model is refused: `custom_code::check`). Blocking.
pub fn start_service(args: &ServeArgs, files: ModelFiles) -> anyhow::Result<Arc<InferenceService>> {
    #[cfg(not(feature = "python"))]
    crate::custom_code::check(args, &files.dir)?;
    #[cfg(feature = "python")]
    if let Some(script) = user_script(args, &files.dir) {
        let dir = files.dir.clone();
        return crate::python::serve(args, &script, &dir, || Ok(files));
    }
    Ok(Arc::new(InferenceService::load_files(args, files)?))
}

/// The model's user script, unless SERVER_IGNORE_CUSTOM_CODE says to serve the native pipeline.
#[cfg(feature = "python")]
fn user_script(args: &ServeArgs, model_dir: &std::path::Path) -> Option<PathBuf> {
    crate::custom_code::find_script(args, model_dir)
        .filter(|script| !crate::custom_code::ignored(args, script))
}
