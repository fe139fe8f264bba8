//! Text generation: the pipelines of decoder-only and encoder–decoder models, on a
//! continuous-batching scheduler.
//!
//! A request's path: `pipeline` (inputs → prompts; `params` takes, types and validates the
//! parameters into a valid request) → `scheduler` (one thread, every running sequence advanced
//! in one forward pass per step; `beam` for beam searches, `sampling` for the logits processors
//! and the token choice) → `job` events back → `pipeline` (the pipeline's JSON) or `sse`
//! (server-sent events). Imports point one way: pipeline/sse → scheduler → beam → sampling.

pub mod beam;
pub mod choices;
pub mod constrained;
pub mod extra_params;
pub mod job;
pub mod params;
pub mod pipeline;
pub mod processors;
pub mod prompt;
pub mod sampling;
pub mod scheduler;
pub mod sse;

pub use self::pipeline::{GenerationRequest, TextGeneration};
pub use self::scheduler::{Generator, GeneratorConfig};
