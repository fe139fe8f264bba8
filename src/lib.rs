//! A native server for the Hugging Face inference DLC contract of Amazon SageMaker.
//!
//! The flow of a request, module by module:
//! `http` (routes, decode) → `tasks` (parameters, tokenize) → `batching` (queue, dynamic batches)
//! → `models` (candle networks and heads) → `tasks` (pipeline-shaped JSON) → `http` (encode).
//! `config` reads the command line and the SageMaker / Hugging Face environment, `source` finds the
//! model files (local directory or the Hub) and `task` decides which pipeline serves them.

pub mod batching;
pub mod config;
pub mod custom_code;
pub mod device;
pub mod error;
pub mod generation;
pub mod http;
pub mod kernels;
pub mod models;
pub mod registry;
pub mod service;
pub mod source;
pub mod task;
pub mod tasks;
