//! Process logging: tracing-subscriber in JSON (one object per line, fields flattened)
//! or text, on stdout, filtered by `FUSEBOX_LOG`, else `RUST_LOG`, else the config's
//! `logging.level`. The access log has its own writer (`access_log.rs`).

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

/// Installs the global subscriber once; later calls (tests) are no-ops.
pub fn init(cfg: &LoggingConfig) {
    let filter = std::env::var("FUSEBOX_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| cfg.level.clone());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_target(false);
    let _ = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
