//! Load-time checks that `config.json` describes the weights beside it. `transformers` refuses
//! such a model at `from_pretrained` ("size mismatch for ..."); without these checks the server
//! would report healthy and then fail every request. Tables whose size `config.json` states are
//! compared directly; everything else (hidden sizes, heads, layer widths) is checked by one small
//! forward pass, whose error or panic becomes the start-up error.

use std::panic::{catch_unwind, AssertUnwindSafe};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Tensor;

use crate::error::panic_message;

use super::{Batch, BatchModel, Output, Sequence, StepInput, StepModel};

const MISMATCH: &str = "config.json does not match the model's weights";

/// `tensor` (the checkpoint's `name`) has the `expected` rows that `config.json`'s `field` says.
pub fn rows(tensor: &Tensor, name: &str, field: &str, expected: usize) -> Result<()> {
    let found = tensor.dim(0)?;
    if found != expected {
        bail!("{MISMATCH}: `{name}` has {found} rows, but {field} is {expected}");
    }
    Ok(())
}

/// `tensor` (the checkpoint's `name`) is `expected` wide, as `config.json`'s `field` says.
pub fn width(tensor: &Tensor, name: &str, field: &str, expected: usize) -> Result<()> {
    width_of(tensor.dim(1)?, name, field, expected)
}

/// As [`width`], for a width already read.
pub fn width_of(found: usize, name: &str, field: &str, expected: usize) -> Result<()> {
    if found != expected {
        bail!("{MISMATCH}: `{name}` is {found} wide, but {field} is {expected}");
    }
    Ok(())
}

/// The attention heads split the hidden size evenly (transformers refuses the model otherwise).
pub fn heads(hidden_size: usize, heads: usize) -> Result<()> {
    if heads == 0 || !hidden_size.is_multiple_of(heads) {
        bail!(
            "config.json: the hidden size ({hidden_size}) is not a multiple of the number of \
             attention heads ({heads})"
        );
    }
    Ok(())
}

/// Runs `probe`, turning a panic into an error (a shape mismatch deep in a kernel may panic).
fn guarded<T>(probe: impl FnOnce() -> Result<T>) -> Result<T> {
    // The default hook would print the panic (and, with RUST_BACKTRACE, a slow backtrace) as if
    // the server had crashed; the panic is the start-up error here. Nothing else runs model code
    // while the model loads, so swapping the process-wide hook for this call is safe.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = catch_unwind(AssertUnwindSafe(probe));
    std::panic::set_hook(hook);
    match outcome {
        Ok(result) => result.map_err(|e| anyhow!("{MISMATCH}: a test forward pass failed: {e:#}")),
        Err(panic) => {
            let message = panic_message(panic.as_ref());
            // One line: the start-up error is one line in the log.
            let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
            bail!("{MISMATCH}: a test forward pass failed: {message}")
        }
    }
}

/// The probe's token ids: small ones, which every vocabulary has.
fn probe_sequence(len: usize) -> Sequence {
    Sequence {
        ids: (1..=len as u32).collect(),
        type_ids: vec![0; len],
        pixels: None,
    }
}

/// One forward pass over two short sequences of different lengths (so padding is exercised);
/// `labels`: how many scores a classifier head must give per sequence or position, as
/// `config.json`'s `id2label` says.
pub fn probe_encoder(model: &dyn BatchModel, labels: Option<usize>) -> Result<()> {
    probe_with(model, &[probe_sequence(3), probe_sequence(2)], labels)
}

/// One forward pass over `sequences` (an image model's: processed images), checked as
/// [`probe_encoder`] checks its own.
pub fn probe_with(
    model: &dyn BatchModel,
    sequences: &[Sequence],
    labels: Option<usize>,
) -> Result<()> {
    let outputs = guarded(|| model.forward(&Batch::from_sequences(sequences)))?;
    if outputs.len() != sequences.len() {
        bail!(
            "{MISMATCH}: a test forward pass over {} sequences gave {} results",
            sequences.len(),
            outputs.len()
        );
    }
    let Some(labels) = labels else {
        return Ok(());
    };
    for output in &outputs {
        let width = match output {
            Output::Vector(values) => values.len(),
            Output::Rows { width, .. } => *width,
        };
        if width != labels {
            bail!(
                "{MISMATCH}: config.json gives {labels} labels (id2label / num_labels), but the \
                 classifier head gives {width} scores"
            );
        }
    }
    Ok(())
}

/// One prefill step of two tokens for a generative model.
pub fn probe_steps<M: StepModel>(model: &M) -> Result<()> {
    let logits = guarded(|| {
        let mut cache = model.new_cache();
        let tokens = probe_sequence(2).ids;
        model.step(&mut [StepInput {
            tokens: &tokens,
            cache: &mut cache,
        }])
    })
    .context("checking the generative model")?;
    if logits.len() != 1 || logits[0].is_empty() {
        bail!("{MISMATCH}: a test step gave no logits");
    }
    Ok(())
}
