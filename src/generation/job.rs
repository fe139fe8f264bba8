//! What travels between a request and the generation scheduler: a [`Job`] in, [`Event`]s out.

use tokio::sync::mpsc;

use super::sampling::{Sampling, TokenLogprobs};
use crate::error::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_new_tokens` reached.
    Length,
    /// An end-of-sequence token was generated.
    EosToken,
}

#[derive(Debug, Clone)]
pub enum Event {
    /// A new token; `finish` is set on the sequence's last one. `logprob`: under the processed
    /// distribution it was chosen from; `model_logprobs`: the model's own, when asked for.
    Token {
        id: u32,
        logprob: f32,
        finish: Option<FinishReason>,
        model_logprobs: Option<Box<TokenLogprobs>>,
    },
    /// The log-probability of each prompt token after the ones before it (all but the first),
    /// before the sequence's first token, when asked for (`Sampling::prompt_logprobs`).
    Prompt(Vec<f32>),
    /// Beam search's answer: the finished hypotheses' generated tokens, best first.
    Sequences(Vec<Vec<u32>>),
    Failed(ModelError),
}

pub struct Job {
    pub prompt: Vec<u32>,
    /// The encoder's input when it is not text: a speech model's features (the prompt is then
    /// the decoder's first tokens).
    pub source: Option<candle_core::Tensor>,
    pub sampling: Sampling,
    pub events: mpsc::UnboundedSender<Event>,
    /// When the job was queued (its first token's wait is a metric).
    pub submitted: std::time::Instant,
}

impl Job {
    /// Tokens the job may hold at once: its prompt and new tokens, for every beam.
    pub fn need(&self) -> usize {
        self.prompt
            .len()
            .saturating_add(self.sampling.max_new_tokens)
            .saturating_mul(self.sampling.num_beams.max(1))
    }
}

/// A job's generated tokens once it finishes: one sequence's (its end token included), or a
/// beam search's hypotheses, best first.
pub async fn sequences(
    receiver: mpsc::UnboundedReceiver<Event>,
) -> Result<Vec<Vec<u32>>, crate::error::ServerError> {
    sequences_until(receiver, |_| Ok(false)).await
}

/// [`sequences`], or one sequence's tokens so far once `enough(tokens)` says so (a stop
/// string in its text: dropping the receiver then takes the sequence out of the batch).
pub async fn sequences_until(
    mut receiver: mpsc::UnboundedReceiver<Event>,
    mut enough: impl FnMut(&[u32]) -> Result<bool, crate::error::ServerError>,
) -> Result<Vec<Vec<u32>>, crate::error::ServerError> {
    let mut ids = Vec::new();
    while let Some(event) = receiver.recv().await {
        match event {
            Event::Token { id, finish, .. } => {
                ids.push(id);
                if finish.is_some() || enough(&ids)? {
                    return Ok(vec![ids]);
                }
            }
            Event::Failed(error) => return Err(error.into()),
            Event::Sequences(sequences) => return Ok(sequences),
            Event::Prompt(_) => {}
        }
    }
    Err(crate::error::ServerError::Internal(
        "the generation scheduler dropped the sequence".into(),
    ))
}
