//! The log lines of an in-process fusebox, for tests that wait on a log line rather
//! than sleep: [`capture`] installs (once per test binary) a global subscriber that
//! keeps every event of the targets it is given, as JSON objects with their fields
//! flattened (the binary's own log format). Each test picks its own lines out by a field
//! only it has (a config path in its temp dir, say).

use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

use super::WAIT;

/// Everything the subscriber wrote, one JSON object per line.
static LINES: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts keeping log events matching `filter` (an `EnvFilter` directive such as
/// `fusebox::reload=debug`). The first call in a test binary decides the filter.
pub fn capture(filter: &str) {
    LINES.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
        buf
    });
}

/// Every line kept so far, parsed.
pub fn lines() -> Vec<Value> {
    let Some(buf) = LINES.get() else {
        panic!("logs::capture was not called");
    };
    let text = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Lines kept so far: pass it to [`wait_line`] to look only at what comes after.
pub fn mark() -> usize {
    lines().len()
}

/// Waits (bounded by [`WAIT`]) for a line after `from` that `pred` accepts.
pub async fn wait_line(what: &str, from: usize, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = lines().into_iter().skip(from).find(|v| pred(v)) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line within {WAIT:?}: {what}; lines after {from}:\n{:#?}",
            lines().into_iter().skip(from).collect::<Vec<_>>()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
