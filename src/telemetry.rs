//! Logging set-up: human-readable text on a terminal, JSON lines for collectors.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber and a panic hook that logs through it. The filter
/// comes from `JOBD_LOG` (same syntax as `RUST_LOG`), default [`DEFAULT_FILTER`]. Logs go
/// to standard error, which systemd's journal and test harnesses both capture.
pub fn init(format: LogFormat) {
    install(format);
    // The default hook writes several pieces to stderr from whichever thread panicked,
    // which tears JSON lines written at the same moment. Through tracing, a panic is one
    // structured line like any other; the job's outcome records it as well.
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let location = info.location().map(|location| format!("{}:{}", location.file(), location.line()));
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(thread = thread.name().unwrap_or("unnamed"), location, panic = %message, "panic");
    }));
}

/// The log filter without `JOBD_LOG`: `info`, except actix-server's start-up lines
/// (workers started, the runtime found, the service listening), which repeat jobd's own
/// "jobd listening" line.
pub const DEFAULT_FILTER: &str = "info,actix_server=warn";

fn install(format: LogFormat) {
    let filter = EnvFilter::try_from_env("JOBD_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
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
