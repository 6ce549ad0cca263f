//! The one `tracing` subscriber, installed by the binary (`trove serve`):
//! the libraries only emit events.
//!
//! Human-readable lines by default, or one JSON object per line
//! (`--log-format json`), both on stderr (through
//! [`crate::progress::LogWriter`], which clears a progress line first). The level filter is
//! `--log-level`, else `TROVE_LOG`, else `info`, in `EnvFilter`'s syntax:
//! `debug`, or `warn,trove::connection=info` (docs/decisions/0043).

use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `TIME LEVEL TARGET: message field=value ...`
    #[default]
    Human,
    /// One JSON object per line: `timestamp`, `level`, `target`,
    /// `message` and the event's fields, at the top level.
    Json,
}

/// The environment variable that sets the filter when `--log-level` does
/// not.
pub const LOG_ENV: &str = "TROVE_LOG";
/// The filter when neither sets one.
pub const LOG_LEVEL_DEFAULT: &str = "info";

/// The filter `--log-level` (else `TROVE_LOG`, else `info`) names; an
/// error names the directive it could not read.
pub fn filter(level: Option<&str>) -> Result<tracing_subscriber::EnvFilter, String> {
    let (text, from) = match level {
        Some(l) => (l.to_string(), "--log-level"),
        None => match std::env::var(LOG_ENV) {
            Ok(v) if !v.trim().is_empty() => (v, LOG_ENV),
            _ => (LOG_LEVEL_DEFAULT.to_string(), "the default"),
        },
    };
    tracing_subscriber::EnvFilter::builder()
        .parse(&text)
        .map_err(|e| format!("{from} `{text}`: {e} (expected a level such as info, or target=level directives)"))
}

/// Installs the process's subscriber: the log lines, and with `console`
/// tokio-console's layer beside them (which keeps its own filter, so the
/// level filter applies to the lines alone).
pub fn install(format: LogFormat, level: Option<&str>, console: bool) -> Result<(), String> {
    let filter = filter(level)?;
    let lines = match format {
        LogFormat::Human => {
            tracing_subscriber::fmt::layer().with_writer(|| crate::progress::LogWriter).with_ansi(false).boxed()
        }
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(|| crate::progress::LogWriter)
            .boxed(),
    }
    .with_filter(filter);
    let registry = tracing_subscriber::registry().with(lines);
    let installed = if console { registry.with(console_subscriber::spawn()).try_init() } else { registry.try_init() };
    installed.map_err(|e| format!("installing the log subscriber: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_is_an_error_naming_it() {
        assert!(filter(Some("debug")).is_ok());
        assert!(filter(Some("warn,trove::connection=info")).is_ok());
        let e = filter(Some("trove=loud")).unwrap_err();
        assert!(e.contains("--log-level `trove=loud`"), "{e}");
    }
}
