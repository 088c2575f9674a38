//! Logging set-up: human-readable text on a terminal, JSON lines for collectors.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. The filter comes from `JOBD_LOG` (same syntax as
/// `RUST_LOG`), default `info`. Logs go to standard error, which systemd's journal and
/// test harnesses both capture.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("JOBD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes are for people at a terminal; the journal and files get plain text.
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
    }
}
