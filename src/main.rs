use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use tokio::net::TcpListener;

use sagemaker_hf_server::config::{log_environment, Cli, ServeArgs};
use sagemaker_hf_server::http::{self, AppState};
use sagemaker_hf_server::model_store::ModelStore;
use sagemaker_hf_server::service::InferenceService;
use sagemaker_hf_server::{logging, telemetry};

fn main() -> ExitCode {
    // candle asks for its thread count on every matrix product and, without RAYON_NUM_THREADS,
    // re-reads /proc/cpuinfo each time (a measurable share of a decoding step): fix it once,
    // before any thread starts, to the value candle would compute.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var(
            "RAYON_NUM_THREADS",
            candle_core::utils::get_num_threads().to_string(),
        );
    }
    let args = Cli::parse().into_serve_args();
    let warning = logging::init(args.log_format, args.log_level.as_deref());
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    log_environment();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(serve(args));
    // A model load still in progress (a blocking task, e.g. a stalled download) must not keep a
    // terminated server alive.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, the whole cause chain: what SageMaker's CloudWatch log shows first.
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let started = Instant::now();
    // Listen first: SageMaker wants the socket within 250 ms; /ping says 503 until the model is up.
    let listener = TcpListener::bind((args.bind_address.as_str(), args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.bind_address, args.port))?;
    tracing::info!("listening on {}", listener.local_addr()?);
    let metrics = http::metrics::install()
        .map_err(|e| tracing::warn!("metrics are off (GET /metrics is a 404): {e}"))
        .ok();
    let models = args.multi_model.then(|| Arc::new(multi_model_store(&args)));
    let timeouts = args.connection_timeouts();
    let state = AppState::new(
        args.max_payload_bytes(),
        timeouts.body,
        args.execution_parameters(),
        metrics,
        models.clone(),
    );

    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    if models.is_none() {
        let loader_state = state.clone();
        tokio::task::spawn_blocking(move || match InferenceService::load(&args) {
            Ok(service) => {
                telemetry::model_loaded(started.elapsed());
                tracing::info!(
                    "ready in {:.0} ms: {}",
                    started.elapsed().as_secs_f64() * 1e3,
                    http::describe(&service)
                );
                loader_state.set_ready(service);
            }
            Err(e) => {
                let _ = failed_tx.send(e);
            }
        });
    }

    let server = http::serve::serve(listener, http::router(state), timeouts, shutdown_signal());
    tokio::select! {
        () = server => Ok(()),
        Ok(error) = failed_rx => Err(error.context("the model failed to load")),
    }
}

/// A multi-model endpoint's empty store; says at start-up what differs from a single model.
fn multi_model_store(args: &ServeArgs) -> ModelStore {
    if let Some(id) = &args.model_id {
        tracing::warn!("HF_MODEL_ID={id} is not supported on a multi-model endpoint (SAGEMAKER_MULTI_MODEL=true) and is ignored: models are loaded by SageMaker through POST /models, each from its own directory (the DLC ignores HF_MODEL_ID there too)");
    }
    let store = ModelStore::new(args);
    let task = args
        .task
        .as_deref()
        .unwrap_or("inferred from each model's config.json");
    tracing::info!(
        "multi-model endpoint: no model loaded yet (POST /models loads one); task {task}; memory budget {} MiB",
        store.budget_bytes() / (1024 * 1024)
    );
    store
}

/// SIGTERM (SageMaker scale-in / update) or Ctrl-C: stop accepting, finish in-flight requests.
/// SIGTERM (SageMaker scale-in / update) or Ctrl-C: stop accepting, finish in-flight requests
/// (within `SERVER_SHUTDOWN_DRAIN_SECONDS`).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}
