//! A transcription's deadline, shared by the Whisper and CTC paths.

use std::time::{Duration, Instant};

use crate::error::ServerError;

/// When a request's time is up: its start plus the deadline.
#[derive(Clone, Copy)]
pub(super) struct Until {
    at: Instant,
    deadline: Duration,
}

impl Until {
    pub(super) fn new(deadline: Duration) -> Self {
        Until {
            at: Instant::now() + deadline,
            deadline,
        }
    }

    /// The time left.
    pub(super) fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// The error of a request whose time ran out.
    pub(super) fn expired(&self) -> ServerError {
        ServerError::Timeout(self.deadline.as_secs())
    }
}
