//! A native server for the Hugging Face inference DLC contract of Amazon SageMaker.
//!
//! The flow of a request, module by module:
//! `http` (routes, decode) → `service` → `tasks` (parameters, tokenize) → `batching` (queue,
//! dynamic batches) → `models` (networks and heads; `kernels` underneath) → `tasks` (the
//! pipeline's JSON) → `http` (encode). Text generation: `service` → `generation` (parameters →
//! validate, prompts, the continuous-batching scheduler, beams, sampling, server-sent events) →
//! `models` (`StepModel`s). OpenAI's APIs (`openai`: requests → the generation engine's
//! choices → OpenAI's shapes) come in through `service` (`/invocations`) and `http::openai`;
//! TGI's through `http::tgi`.
//! At start-up `config` reads the command line and the SageMaker / Hugging Face environment,
//! `source` finds the model files (local directory or the Hub), `custom_code` refuses Python
//! handlers this build cannot run, `task` decides which pipeline serves them and `registry`
//! which network serves the model for it. `error` holds the errors, `device` where and in which
//! precision the model runs, `logging` the log set-up, `telemetry` the metrics' names and
//! recording calls (rendered by `http::metrics`), and `offload` keeps a request's CPU work
//! (parsing, tokenizing, chat templates, encoding) off the async threads. A multi-model endpoint
//! starts with no model: `model_store` loads and unloads them by name (through
//! `http::models_api`) under a budget sized by `memory`.

pub mod audio;
pub mod batching;
pub mod config;
pub mod custom_code;
pub mod device;
pub mod error;
pub mod generation;
pub mod http;
pub mod image;
pub mod kernels;
pub mod logging;
pub mod memory;
pub mod model_store;
pub mod models;
pub mod offload;
pub mod openai;
#[cfg(feature = "python")]
pub mod python;
pub mod registry;
pub mod service;
pub mod source;
pub mod task;
pub mod tasks;
pub mod telemetry;
