//! Command line and environment. Every option also reads the environment variable the SageMaker
//! Hugging Face DLC (or the Hugging Face libraries) use for it, so a container configured for the
//! Python DLC configures this server the same way.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// MMS's `max_request_size` default, which the DLC keeps unless `SAGEMAKER_MAX_PAYLOAD_IN_MB` is set.
pub const DLC_DEFAULT_MAX_PAYLOAD_BYTES: usize = 6_553_500;

#[derive(Debug, Parser)]
#[command(
    name = "sagemaker-hf-server",
    version,
    about = "Native drop-in server for the Hugging Face inference DLC on Amazon SageMaker",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no sub-command the server starts, as with `serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the HTTP server (SageMaker runs containers as `<image> serve`).
    Serve(ServeArgs),
}

impl Cli {
    pub fn into_serve_args(self) -> ServeArgs {
        match self.command {
            Some(Command::Serve(args)) => args,
            None => self.serve,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Hugging Face Hub model id, or a local directory holding the model.
    #[arg(long, env = "HF_MODEL_ID")]
    pub model_id: Option<String>,

    /// Hub revision (branch, tag or commit) of `--model-id`.
    #[arg(long, env = "HF_MODEL_REVISION")]
    pub revision: Option<String>,

    /// Pipeline task (`text-classification`, `sentiment-analysis`, ...). Inferred from
    /// `config.json` `architectures[0]` when unset, as the DLC does.
    #[arg(long, env = "HF_TASK")]
    pub task: Option<String>,

    /// Model directory used when no `--model-id` is given (SageMaker untars `model.tar.gz` here).
    /// Defaults to `$SAGEMAKER_BASE_DIR/model`, i.e. `/opt/ml/model`.
    #[arg(long, env = "HF_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,

    /// Port to listen on.
    #[arg(long, env = "SAGEMAKER_BIND_TO_PORT", default_value_t = 8080)]
    pub port: u16,

    /// Address to bind.
    #[arg(long, env = "SERVER_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: String,

    /// Hub token (`HF_TOKEN`, or the DLC's `HF_API_TOKEN`). Never logged.
    #[arg(long, env = "HF_TOKEN", hide_env_values = true)]
    pub hf_token: Option<String>,

    /// Hub cache directory (standard layout, shared with Python). Default `$HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`.
    #[arg(long, env = "HF_HUB_CACHE")]
    pub hub_cache: Option<PathBuf>,

    /// Use only the local Hub cache, never the network.
    #[arg(long, env = "HF_HUB_OFFLINE", value_parser = parse_env_bool, default_value = "false")]
    pub offline: bool,

    /// Request body limit in MiB. Default: the DLC's 6553500 bytes.
    #[arg(long, env = "SAGEMAKER_MAX_PAYLOAD_IN_MB")]
    pub max_payload_mb: Option<u64>,

    /// Per-request deadline in seconds (the DLC reads this value as minutes, a known MMS bug).
    /// Default 60, or 600 in a batch transform job (`SAGEMAKER_BATCH=true`), SageMaker's own
    /// limit there.
    #[arg(long, env = "SAGEMAKER_MODEL_SERVER_TIMEOUT")]
    pub timeout: Option<u64>,

    /// Per-request deadline in seconds; wins over `--timeout` (as in the DLC).
    #[arg(long, env = "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS")]
    pub timeout_seconds: Option<u64>,

    /// Seconds a connection may take to send a complete request head, counted from when it
    /// connects or from its previous response: slow headers and idle keep-alive connections are
    /// closed past it (hyper times both with one clock).
    #[arg(long, env = "SERVER_HEADER_TIMEOUT_SECONDS", default_value_t = 60)]
    pub header_timeout: u64,

    /// Seconds a request body may pause between two pieces: a body that stops arriving gets a
    /// 408 and its connection is closed.
    #[arg(long, env = "SERVER_BODY_TIMEOUT_SECONDS", default_value_t = 60)]
    pub body_timeout: u64,

    /// Seconds in-flight requests get to finish after SIGTERM before the remaining connections
    /// are dropped (SageMaker kills the container 30 s after its SIGTERM).
    #[arg(long, env = "SERVER_SHUTDOWN_DRAIN_SECONDS", default_value_t = 25)]
    pub shutdown_drain: u64,

    /// Model workers: threads that each run forward passes, all sharing one copy of the weights
    /// (the DLC starts this many Python processes, each with its own copy of the model). Two
    /// overlap one batch's forward pass with the encoding of the previous one.
    #[arg(long, env = "SAGEMAKER_MODEL_SERVER_WORKERS", default_value_t = 2)]
    pub workers: usize,

    /// Token budget of one forward pass: sequences x padded length (default 8192 on the CPU,
    /// 32768 on a GPU, whose throughput keeps growing with the batch).
    #[arg(long, env = "MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<usize>,

    /// Requests waiting for a model worker before new ones get 503.
    #[arg(long, env = "MAX_QUEUE", default_value_t = 256)]
    pub max_queue: usize,

    /// Truncate inputs longer than the model accepts instead of answering 400 (a request can
    /// always ask for it with the `truncation` parameter).
    #[arg(long, env = "AUTO_TRUNCATE", value_parser = parse_env_bool, default_value = "false")]
    pub auto_truncate: bool,

    /// The longest input (tokens) a request may send. Default: the model's positions; 4096
    /// for models with relative positions only (T5, DeBERTa-v3), whose memory grows with the
    /// square of the input. Longer inputs are a 400 (or truncated where the request asks).
    #[arg(long, env = "MAX_INPUT_TOKENS")]
    pub max_input_tokens: Option<usize>,

    /// Device: auto (CUDA device 0 when built with CUDA and one is visible, else the CPU), cpu,
    /// cuda, cuda:N.
    #[arg(long, env = "SERVER_DEVICE", default_value = "auto")]
    pub device: crate::device::DeviceChoice,

    /// Precision of the encoder: auto (float32 on the CPU; float16 on a GPU, bfloat16 when the
    /// checkpoint's `torch_dtype` is bfloat16), float32, float16, bfloat16.
    #[arg(long, env = "SERVER_DTYPE", default_value = "auto")]
    pub dtype: crate::device::DTypeChoice,

    /// Quantize dense weights at load: int8 (text encoders on the CPU: int8 weights per channel
    /// and activations per row; a decoder takes q8_0), or for a safetensors decoder q8_0 or q4_k
    /// (rows not a multiple of 256 wide take q8_0). GGUF files always run in their own blocks.
    #[arg(long, env = "SERVER_QUANTIZE")]
    pub quantize: Option<crate::models::quantized::Quantize>,

    /// What GGUF quantized blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0; and `SERVER_QUANTIZE` q8_0)
    /// multiply on the CPU: int8 (activations rounded per block of 32, as llama.cpp does, where
    /// the CPU has AVX-512 VNNI; else f32) or f32 (exact).
    #[arg(long, env = "SERVER_QUANTIZED_ACTIVATIONS", default_value = "int8")]
    pub quantized_activations: crate::models::quantized::BlockActivations,

    /// The user module's file (`inference.py` when unset or empty), as the DLC reads it.
    #[arg(long, env = "SAGEMAKER_PROGRAM", hide = true)]
    pub sagemaker_program: Option<String>,

    /// Where the SageMaker SDK put the user's code (a local folder counts; an S3 prefix does not).
    #[arg(long, env = "SAGEMAKER_SUBMIT_DIRECTORY", hide = true)]
    pub sagemaker_submit_directory: Option<String>,

    /// Serve the native pipeline even though the model ships custom Python handlers
    /// (`code/inference.py`), which this build cannot run.
    #[arg(long, env = "SERVER_IGNORE_CUSTOM_CODE", value_parser = parse_env_bool, default_value = "false")]
    pub ignore_custom_code: bool,

    /// Feature `python`: threads that run the user script's hooks (one interpreter; a hook past
    /// its deadline holds its thread until it returns).
    #[arg(long, env = "SERVER_PYTHON_THREADS", default_value_t = 16)]
    pub python_threads: usize,

    /// SageMaker's GPU count for the instance; 0 keeps `auto` on the CPU.
    #[arg(long, env = "SM_NUM_GPUS", hide = true)]
    pub sm_num_gpus: Option<String>,

    /// Set by SageMaker in batch transform jobs: the request deadline defaults to 600 s.
    #[arg(long, env = "SAGEMAKER_BATCH", value_parser = parse_env_bool, default_value = "false")]
    pub batch: bool,

    /// `BatchStrategy` that `GET /execution-parameters` proposes: MULTI_RECORD (many JSON Lines
    /// records per request, batched together) or SINGLE_RECORD.
    #[arg(long, env = "SAGEMAKER_BATCH_STRATEGY", value_parser = parse_batch_strategy, default_value = "MULTI_RECORD")]
    pub batch_strategy: BatchStrategy,

    /// `MaxConcurrentTransforms` that `GET /execution-parameters` proposes. Default: the number
    /// of model workers (each request's records are batched together already).
    #[arg(long, env = "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS")]
    pub max_concurrent_transforms: Option<usize>,

    /// Log lines as text (`text`, colours only on a terminal) or one JSON object each (`json`).
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: crate::logging::LogFormat,

    /// Multi-model endpoint (SageMaker sets it): start with no model; SageMaker loads and unloads
    /// models through MMS's model API (`POST /models`, `DELETE /models/{name}`). `HF_MODEL_ID` is
    /// ignored then, as in the DLC.
    #[arg(long, env = "SAGEMAKER_MULTI_MODEL", value_parser = parse_env_bool, default_value = "false")]
    pub multi_model: bool,

    /// Multi-model endpoints: MiB the loaded models may take together, each counted as its weight
    /// files' size times `MME_MEMORY_FACTOR`; a load that would go over it is a 507. Default: 90%
    /// of the memory available at start-up (the cgroup's limit less its usage, or MemAvailable).
    #[arg(long, env = "MME_MEMORY_BUDGET_MB")]
    pub mme_memory_budget_mb: Option<u64>,

    /// Multi-model endpoints: memory a model takes per byte of its weight files (2: room for
    /// 16-bit weights widened to 32 bits on the CPU, and for the batches' activations). GGUF files
    /// stay quantized and count the same.
    #[arg(long, env = "MME_MEMORY_FACTOR", default_value_t = 2.0)]
    pub mme_memory_factor: f64,

    /// Python logging level the SageMaker SDK sets (10 DEBUG, 20 INFO, 30 WARNING, 40 ERROR, or
    /// the names); `RUST_LOG`, when set, wins.
    #[arg(long, env = "SAGEMAKER_CONTAINER_LOG_LEVEL")]
    pub log_level: Option<String>,
}

/// How long the HTTP layer waits on a client, and on in-flight work at shutdown.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionTimeouts {
    /// From connection (or previous response) to a complete request head.
    pub header: Duration,
    /// Longest pause inside a request body.
    pub body: Duration,
    /// Cap on the graceful drain after SIGTERM.
    pub drain: Duration,
}

/// SageMaker batch transform's `BatchStrategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStrategy {
    SingleRecord,
    MultiRecord,
}

impl BatchStrategy {
    /// The spelling of SageMaker's container contract.
    pub fn as_str(&self) -> &'static str {
        match self {
            BatchStrategy::SingleRecord => "SINGLE_RECORD",
            BatchStrategy::MultiRecord => "MULTI_RECORD",
        }
    }
}

/// `SINGLE_RECORD` / `MULTI_RECORD`, also as the API spells them (`SingleRecord`), in any case.
pub fn parse_batch_strategy(value: &str) -> Result<BatchStrategy, String> {
    match value
        .trim()
        .replace(['_', '-'], "")
        .to_ascii_lowercase()
        .as_str()
    {
        "singlerecord" => Ok(BatchStrategy::SingleRecord),
        "multirecord" => Ok(BatchStrategy::MultiRecord),
        _ => Err(format!(
            "expected SINGLE_RECORD or MULTI_RECORD, got `{value}`"
        )),
    }
}

/// What `GET /execution-parameters` answers (SageMaker batch transform's container contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecutionParameters {
    pub max_concurrent_transforms: usize,
    pub batch_strategy: BatchStrategy,
    pub max_payload_in_mb: u64,
}

/// `1/true/yes/on` and `0/false/no/off`, in any case (what `huggingface_hub` accepts).
pub fn parse_env_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "y" | "on" | "t" => Ok(true),
        "0" | "false" | "no" | "n" | "off" | "f" | "" => Ok(false),
        other => Err(format!(
            "expected a boolean (1/0, true/false), got `{other}`"
        )),
    }
}

impl ServeArgs {
    pub fn max_payload_bytes(&self) -> usize {
        match self.max_payload_mb {
            Some(mb) => (mb as usize).saturating_mul(1024 * 1024),
            None => DLC_DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }

    pub fn request_timeout(&self) -> Duration {
        let default = if self.batch { 600 } else { 60 };
        let seconds = self.timeout_seconds.or(self.timeout).unwrap_or(default);
        Duration::from_secs(seconds.max(1))
    }

    pub fn connection_timeouts(&self) -> ConnectionTimeouts {
        ConnectionTimeouts {
            header: Duration::from_secs(self.header_timeout.max(1)),
            body: Duration::from_secs(self.body_timeout.max(1)),
            drain: Duration::from_secs(self.shutdown_drain),
        }
    }

    /// Batch transform's execution parameters: the environment SageMaker sets, else ours
    /// (MULTI_RECORD, one request per model worker, 6 MB: SageMaker's default, within the DLC's
    /// 6553500-byte request limit).
    pub fn execution_parameters(&self) -> ExecutionParameters {
        ExecutionParameters {
            max_concurrent_transforms: self
                .max_concurrent_transforms
                .unwrap_or(self.workers)
                .max(1),
            batch_strategy: self.batch_strategy,
            max_payload_in_mb: self.max_payload_mb.unwrap_or(6),
        }
    }

    /// `HF_TOKEN` wins; the DLC's own `HF_API_TOKEN` is the fallback.
    pub fn token(&self) -> Option<String> {
        self.hf_token
            .clone()
            .or_else(|| std::env::var("HF_API_TOKEN").ok())
            .filter(|t| !t.is_empty())
    }

    pub fn hub_cache_dir(&self) -> PathBuf {
        if let Some(dir) = &self.hub_cache {
            return dir.clone();
        }
        if let Ok(home) = std::env::var("HF_HOME") {
            return PathBuf::from(home).join("hub");
        }
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        PathBuf::from(home).join(".cache/huggingface/hub")
    }

    pub fn default_model_dir(&self) -> PathBuf {
        if let Some(dir) = &self.model_dir {
            return dir.clone();
        }
        let base = std::env::var("SAGEMAKER_BASE_DIR").unwrap_or_else(|_| "/opt/ml".into());
        PathBuf::from(base).join("model")
    }
}

/// Variables this server reads; anything else under `HF_`/`SAGEMAKER_`/`SM_` is reported as ignored.
const READ_VARIABLES: &[&str] = &[
    "HF_MODEL_ID",
    "HF_MODEL_REVISION",
    "HF_TASK",
    "HF_MODEL_DIR",
    "HF_TOKEN",
    "HF_API_TOKEN",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "HF_ENDPOINT",
    "SAGEMAKER_BIND_TO_PORT",
    "SAGEMAKER_BATCH",
    "SAGEMAKER_BATCH_STRATEGY",
    "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS",
    "SAGEMAKER_CONTAINER_LOG_LEVEL",
    "SAGEMAKER_MAX_PAYLOAD_IN_MB",
    "SAGEMAKER_MODEL_SERVER_TIMEOUT",
    "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS",
    "SAGEMAKER_MODEL_SERVER_WORKERS",
    "SAGEMAKER_MULTI_MODEL",
    "SAGEMAKER_BASE_DIR",
    "SAGEMAKER_HF_BF16_KERNELS",
    "SAGEMAKER_HF_GENERIC_KERNELS",
    "SAGEMAKER_HF_INT8_TILES",
    "SAGEMAKER_HF_NO_AMX",
    "SAGEMAKER_HF_NO_AVX512",
    "SAGEMAKER_PROGRAM",
    "SAGEMAKER_SUBMIT_DIRECTORY",
    "SM_NUM_GPUS",
];

const SECRET_VARIABLES: &[&str] = &["HF_TOKEN", "HF_API_TOKEN"];

/// Logs every `HF_*` / `SAGEMAKER_*` / `SM_*` variable: the ones we read (tokens redacted) and a
/// warning for the ones we do not.
pub fn log_environment() {
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("HF_") || k.starts_with("SAGEMAKER_") || k.starts_with("SM_")
        })
        .collect();
    vars.sort();
    for (key, value) in vars {
        let shown = if SECRET_VARIABLES.contains(&key.as_str()) || key.contains("TOKEN") {
            "<redacted>".to_string()
        } else {
            value
        };
        if READ_VARIABLES.contains(&key.as_str()) {
            tracing::info!("environment {key}={shown}");
        } else {
            tracing::warn!("environment {key}={shown} is not used by this server");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_bools() {
        assert_eq!(parse_env_bool("1"), Ok(true));
        assert_eq!(parse_env_bool("TRUE"), Ok(true));
        assert_eq!(parse_env_bool("0"), Ok(false));
        assert!(parse_env_bool("maybe").is_err());
    }

    #[test]
    fn serve_subcommand_and_bare_invocation_parse_the_same_options() {
        let a = Cli::parse_from(["x", "serve", "--port", "9000"]).into_serve_args();
        let b = Cli::parse_from(["x", "--port", "9000"]).into_serve_args();
        assert_eq!(a.port, 9000);
        assert_eq!(b.port, 9000);
    }

    #[test]
    fn payload_limit_follows_sagemaker_megabytes() {
        let mut a = Cli::parse_from(["x"]).into_serve_args();
        a.max_payload_mb = None;
        assert_eq!(a.max_payload_bytes(), DLC_DEFAULT_MAX_PAYLOAD_BYTES);
        a.max_payload_mb = Some(2);
        assert_eq!(a.max_payload_bytes(), 2 * 1024 * 1024);
    }

    #[test]
    fn execution_parameters_and_batch_deadline() {
        let mut a = Cli::parse_from(["x", "--workers", "3"]).into_serve_args();
        a.max_payload_mb = None;
        a.max_concurrent_transforms = None;
        a.batch_strategy = BatchStrategy::MultiRecord;
        let p = a.execution_parameters();
        assert_eq!((p.max_concurrent_transforms, p.max_payload_in_mb), (3, 6));
        assert_eq!(
            parse_batch_strategy("SingleRecord"),
            Ok(BatchStrategy::SingleRecord)
        );
        assert_eq!(
            parse_batch_strategy("multi_record"),
            Ok(BatchStrategy::MultiRecord)
        );
        assert!(parse_batch_strategy("both").is_err());
        (a.timeout, a.timeout_seconds, a.batch) = (None, None, false);
        assert_eq!(a.request_timeout(), Duration::from_secs(60));
        a.batch = true;
        assert_eq!(a.request_timeout(), Duration::from_secs(600));
        a.timeout = Some(5);
        assert_eq!(a.request_timeout(), Duration::from_secs(5));
    }
}
