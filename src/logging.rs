//! Log set-up: where the level comes from (`RUST_LOG`, else SageMaker's
//! `SAGEMAKER_CONTAINER_LOG_LEVEL`, else INFO), text or JSON lines (`LOG_FORMAT`), colours only
//! on a terminal (CloudWatch shows escape codes as they are).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `LOG_FORMAT`: `text` (the default) or `json` (one JSON object per line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber on standard error. Returns a warning to log once it runs
/// (a level that could not be read), if any.
pub fn init(format: LogFormat, container_level: Option<&str>) -> Option<String> {
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let (directives, mut warning) = directives(rust_log.as_deref(), container_level);
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        warning = Some(format!(
            "RUST_LOG={directives} cannot be read ({e}); logging at INFO"
        ));
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    warning
}

/// The filter directives: `RUST_LOG` as given; else the container's level for this server's
/// own lines (and the access log), with other crates held at INFO or above (a DEBUG level
/// should not flood the log with the HTTP stack's internals).
fn directives(rust_log: Option<&str>, container_level: Option<&str>) -> (String, Option<String>) {
    if let Some(rust_log) = rust_log {
        return (rust_log.to_string(), None);
    }
    let Some(raw) = container_level.filter(|v| !v.trim().is_empty()) else {
        return ("info".into(), None);
    };
    match python_level(raw) {
        Some(level @ ("trace" | "debug")) => (
            format!("info,sagemaker_hf_server={level},access={level}"),
            None,
        ),
        Some(level) => (level.to_string(), None),
        None => (
            "info".into(),
            Some(format!(
                "SAGEMAKER_CONTAINER_LOG_LEVEL={raw} is not a Python logging level (10 DEBUG, 20 INFO, 30 WARNING, 40 ERROR); logging at INFO"
            )),
        ),
    }
}

/// A Python `logging` level (a number, as the SageMaker SDK sets it, or a name) as a tracing
/// level: below 10 TRACE, 10-19 DEBUG, 20-29 INFO, 30-39 WARN, 40 and above ERROR.
fn python_level(raw: &str) -> Option<&'static str> {
    let raw = raw.trim();
    if let Ok(number) = raw.parse::<i64>() {
        return Some(match number {
            i64::MIN..=9 => "trace",
            10..=19 => "debug",
            20..=29 => "info",
            30..=39 => "warn",
            _ => "error",
        });
    }
    match raw.to_ascii_uppercase().as_str() {
        "NOTSET" | "TRACE" => Some("trace"),
        "DEBUG" => Some("debug"),
        "INFO" => Some("info"),
        "WARNING" | "WARN" => Some("warn"),
        "ERROR" | "CRITICAL" | "FATAL" => Some("error"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_levels_map_to_tracing_levels() {
        assert_eq!(python_level("10"), Some("debug"));
        assert_eq!(python_level("20"), Some("info"));
        assert_eq!(python_level("30"), Some("warn"));
        assert_eq!(python_level("40"), Some("error"));
        assert_eq!(python_level("50"), Some("error"));
        assert_eq!(python_level("warning"), Some("warn"));
        assert_eq!(python_level("loud"), None);
    }

    #[test]
    fn rust_log_wins_and_debug_keeps_other_crates_at_info() {
        assert_eq!(directives(Some("warn"), Some("10")).0, "warn");
        assert_eq!(directives(None, None).0, "info");
        assert_eq!(directives(None, Some("40")).0, "error");
        assert_eq!(
            directives(None, Some("10")).0,
            "info,sagemaker_hf_server=debug,access=debug"
        );
        let (d, warning) = directives(None, Some("loud"));
        assert_eq!(d, "info");
        assert!(warning.unwrap().contains("loud"));
    }
}
