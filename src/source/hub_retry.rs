//! Hub requests tried again after a transient failure (a 5xx or 429 answer, a connection refused
//! or reset, a body cut short), with exponential backoff and a bounded number of tries, as
//! `huggingface_hub` does; and the sizes of downloaded files, for the log.

use std::io::ErrorKind;
use std::time::Duration;

use hf_hub::api::sync::ApiError;

/// How often, and after how long, a failed Hub request is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Tries after the first one.
    pub retries: u32,
    /// The wait before the first retry; each further wait doubles it.
    pub first_delay: Duration,
}

impl Default for Backoff {
    /// 4 retries after 1, 2, 4 and 8 s: a Hub or mirror that restarts, or answers 503 for a
    /// few seconds, is waited out (15 s in all); one that stays down fails start-up within
    /// seconds of that, with the Hub's last answer.
    fn default() -> Self {
        Backoff {
            retries: 4,
            first_delay: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    fn delay(&self, retry: u32) -> Duration {
        self.first_delay.saturating_mul(1 << retry.min(16))
    }
}

/// `call` until it succeeds, fails for good, or has been retried `backoff.retries` times;
/// each retry logged with the cause (WARN: start-up is slower than it should be).
pub fn with_retries<T>(
    backoff: &Backoff,
    what: &str,
    mut call: impl FnMut() -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let mut retry = 0;
    loop {
        match call() {
            Err(error) if retry < backoff.retries && transient(&error) => {
                let delay = backoff.delay(retry);
                retry += 1;
                tracing::warn!(
                    "{what}: {error}; retry {retry} of {} in {:.1} s",
                    backoff.retries,
                    delay.as_secs_f64()
                );
                std::thread::sleep(delay);
            }
            other => return other,
        }
    }
}

/// Whether trying again may help: the Hub was overloaded or restarting, or the connection
/// broke. A refusal (4xx), a name that does not resolve, or a certificate the system does not
/// trust is final.
fn transient(error: &ApiError) -> bool {
    match error {
        ApiError::TooManyRetries(inner) => transient(inner),
        ApiError::RequestError(inner) => match &**inner {
            ureq::Error::Status(status, _) => matches!(status, 429 | 500 | 502 | 503 | 504),
            ureq::Error::Transport(transport) => {
                use ureq::ErrorKind as Kind;
                let tls = std::error::Error::source(transport)
                    .and_then(|s| s.downcast_ref::<std::io::Error>())
                    .is_some_and(|io| io.kind() == ErrorKind::InvalidData);
                !tls && matches!(
                    transport.kind(),
                    Kind::ConnectionFailed | Kind::Io | Kind::BadStatus | Kind::BadHeader
                )
            }
        },
        // A body cut short while downloading (the download resumes where it stopped).
        ApiError::IoError(io) => broke_off(io),
        _ => false,
    }
}

/// An I/O error of the connection (not of the disk the cache is on).
pub fn broke_off(io: &std::io::Error) -> bool {
    matches!(
        io.kind(),
        ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::UnexpectedEof
            | ErrorKind::TimedOut
            | ErrorKind::BrokenPipe
    )
}

/// `1234567` → `1.2 MB (1234567 bytes)`: readable, and exact for comparing with the Hub.
pub fn size_text(bytes: u64) -> String {
    const UNITS: &[&str] = &["kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = "";
    for next in UNITS {
        if value < 1000.0 {
            break;
        }
        value /= 1000.0;
        unit = next;
    }
    if unit.is_empty() {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {unit} ({bytes} bytes)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn io(kind: ErrorKind) -> ApiError {
        ApiError::IoError(std::io::Error::new(kind, "test"))
    }

    #[test]
    fn transient_failures_are_retried_up_to_the_bound() {
        let backoff = Backoff {
            retries: 3,
            first_delay: Duration::from_millis(1),
        };
        let calls = Cell::new(0);
        let answer = with_retries(&backoff, "test", || {
            calls.set(calls.get() + 1);
            if calls.get() < 3 {
                Err(io(ErrorKind::ConnectionReset))
            } else {
                Ok(7)
            }
        });
        assert_eq!((answer.unwrap(), calls.get()), (7, 3));

        calls.set(0);
        let answer: Result<(), _> = with_retries(&backoff, "test", || {
            calls.set(calls.get() + 1);
            Err(io(ErrorKind::UnexpectedEof))
        });
        assert!(matches!(answer, Err(ApiError::IoError(_))));
        assert_eq!(calls.get(), 4, "one try and three retries");

        // A disk that is full is not a network hiccup.
        calls.set(0);
        let _ = with_retries(&backoff, "test", || -> Result<(), _> {
            calls.set(calls.get() + 1);
            Err(io(ErrorKind::StorageFull))
        });
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn delays_double_from_the_first() {
        let backoff = Backoff::default();
        let delays: Vec<u64> = (0..4).map(|r| backoff.delay(r).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8]);
    }

    #[test]
    fn sizes_read_as_units_and_bytes() {
        assert_eq!(size_text(999), "999 bytes");
        assert_eq!(size_text(90_868_376), "90.9 MB (90868376 bytes)");
        assert_eq!(size_text(1_500), "1.5 kB (1500 bytes)");
    }
}
