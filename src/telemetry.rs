//! Process logging: tracing-subscriber in JSON (one object per line, fields flattened)
//! or text, on stdout, filtered by `FUSEBOX_LOG`, else `RUST_LOG`, else the config's
//! `logging.level`. The access log has its own writer (`access_log.rs`).

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

/// The process-log writer thread's guard: dropping it writes what is queued.
static GUARD: std::sync::Mutex<Option<tracing_appender::non_blocking::WorkerGuard>> =
    std::sync::Mutex::new(None);

/// Lines queued for the process-log writer thread before new ones are dropped.
const QUEUED_LINES: usize = 4096;

/// Writes the queued process-log lines (bounded by the writer's own flush timeout)
/// and stops the writer; called once, as the process exits.
pub fn shutdown() {
    let guard = GUARD.lock().map(|mut g| g.take()).unwrap_or_default();
    drop(guard);
}

/// Installs the global subscriber once; later calls (tests) are no-ops.
///
/// Lines go through a bounded queue to a thread of their own, as the access log
/// does: a stdout that stops reading (a stalled log shipper) must not block a runtime
/// thread at the first breaker change, admin action or reload line; lines that do not
/// fit are dropped.
pub fn init(cfg: &LoggingConfig) {
    // The environment's filter is judged as `logging.level` is: one naming no level
    // (`warning`, or empty) would silence every line, the errors included. It is
    // refused on stderr and the config's level applies.
    let mut refused = None;
    let from_env = ["FUSEBOX_LOG", "RUST_LOG"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().map(|v| (name, v)));
    let filter = match from_env {
        Some((name, v)) => match crate::config::check_log_filter(&v) {
            Ok(()) if !v.trim().is_empty() => v,
            Ok(()) => {
                refused = Some(format!("{name} is empty"));
                cfg.level.clone()
            }
            Err(why) => {
                refused = Some(format!("{name}={v:?}: {why}"));
                cfg.level.clone()
            }
        },
        None => cfg.level.clone(),
    };
    if let Some(why) = &refused {
        eprintln!(
            "fusebox: ignoring {why}; using logging.level {:?}",
            cfg.level
        );
    }
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("fusebox-log")
        .finish(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    let installed = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        // Colour only for a person at a terminal: a file or a pipe (`| less`, a
        // log shipper) gets plain text, as the access lines are.
        LogFormat::Text => {
            use std::io::IsTerminal;
            builder
                .with_ansi(std::io::stdout().is_terminal())
                .try_init()
        }
    };
    if installed.is_ok() {
        if let Ok(mut g) = GUARD.lock() {
            *g = Some(guard);
        }
        if let Some(why) = refused {
            tracing::warn!("ignoring {why}; using logging.level {:?}", cfg.level);
        }
    }
}
