//! The access log: one line per request, JSON (or text), on stdout. A request formats
//! its line (into a reused per-thread buffer) and appends it to a shared batch under a
//! short lock; full batches, and every [`FLUSH_INTERVAL`] the current one, go through a
//! bounded queue to one writer thread that does the blocking writes. So the request
//! path never writes to stdout itself and never waits for it: when stdout cannot keep
//! up (a stalled log shipper), the queue fills and batches are dropped and their lines
//! counted in `gateway_access_log_dropped_total`, as a sidecar must rather than block
//! traffic. tracing's JSON layer would cost a visitor, a map and a `write` per line;
//! this path is per request, so it is written out here (other log lines go through
//! tracing).
//!
//! The log reads an [`Entry`] that the request's context fills in when the response is
//! done; it owns nothing of the request.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue};

use crate::config::LogFormat;

/// How often buffered lines reach stdout at the latest.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// Batch size past which the request that appended hands the batch to the writer.
pub const FLUSH_BYTES: usize = 32 * 1024;
/// Batches queued for the writer at most (with [`FLUSH_BYTES`]: ~2 MiB of lines); past
/// it lines are dropped and counted.
pub const QUEUE_BATCHES: usize = 64;

/// Lines of one batch.
#[derive(Debug, Default)]
struct Batch {
    bytes: Vec<u8>,
    lines: u64,
}

/// Where access-log lines go. One per process; shared by every snapshot.
#[derive(Debug)]
pub struct AccessLogger {
    batch: Mutex<Batch>,
    queue: SyncSender<Msg>,
    dropped: prometheus::IntCounter,
}

#[derive(Debug)]
enum Msg {
    /// A batch and how many lines it holds.
    Lines(Vec<u8>, u64),
    /// Everything sent before has been written when the reply arrives.
    Sync(SyncSender<()>),
}

thread_local! {
    /// The line being formatted: reused, so formatting allocates nothing once warm.
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AccessLogger {
    /// A logger writing to stdout from its own thread; dropped lines count on `dropped`.
    pub fn new(dropped: prometheus::IntCounter) -> Arc<Self> {
        Self::with_sink(dropped, Box::new(std::io::stdout()))
    }

    /// As [`AccessLogger::new`], writing to `sink` (tests use a pipe that stalls).
    pub fn with_sink(
        dropped: prometheus::IntCounter,
        sink: Box<dyn std::io::Write + Send>,
    ) -> Arc<Self> {
        let (tx, rx) = sync_channel(QUEUE_BATCHES);
        let lost = dropped.clone();
        let spawned = std::thread::Builder::new()
            .name("fusebox-access-log".into())
            .spawn(move || writer(rx, sink, lost));
        if let Err(e) = spawned {
            // No thread: every batch is dropped (and counted); traffic is unaffected.
            tracing::error!(error = %e, "cannot start the access-log writer thread");
        }
        Arc::new(AccessLogger {
            batch: Mutex::new(Batch::default()),
            queue: tx,
            dropped,
        })
    }

    /// Formats and appends one request's line.
    pub fn write(&self, entry: &Entry<'_>, format: LogFormat) {
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            entry.format_into(&mut line, format);
            self.append(line.as_bytes());
        });
    }

    fn append(&self, line: &[u8]) {
        let full = {
            let mut b = lock(&self.batch);
            if b.bytes.capacity() == 0 {
                b.bytes.reserve(FLUSH_BYTES + 1024);
            }
            b.bytes.extend_from_slice(line);
            b.lines += 1;
            (b.bytes.len() >= FLUSH_BYTES).then(|| std::mem::take(&mut *b))
        };
        if let Some(batch) = full {
            self.send(batch);
        }
    }

    fn send(&self, batch: Batch) {
        if batch.lines == 0 {
            return;
        }
        match self.queue.try_send(Msg::Lines(batch.bytes, batch.lines)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.inc_by(batch.lines);
            }
        }
    }

    /// Hands whatever is buffered to the writer (never blocks).
    pub fn flush(&self) {
        let batch = std::mem::take(&mut *lock(&self.batch));
        self.send(batch);
    }

    /// Flushes and waits up to `timeout` for the writer to have written everything
    /// (shutdown: the last lines must not be lost).
    pub fn flush_and_wait(&self, timeout: Duration) {
        self.flush();
        let (tx, rx) = sync_channel(1);
        if self.queue.try_send(Msg::Sync(tx)).is_ok() {
            let _ = rx.recv_timeout(timeout);
        }
    }

    /// Flushes every [`FLUSH_INTERVAL`] until the logger is dropped elsewhere.
    pub fn spawn_flusher(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_INTERVAL);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(l) => l.flush(),
                    None => break,
                }
            }
        });
    }
}

/// The writer thread: blocking writes, as slow as stdout is; ends when the logger goes.
fn writer(
    rx: Receiver<Msg>,
    mut sink: Box<dyn std::io::Write + Send>,
    dropped: prometheus::IntCounter,
) {
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Lines(bytes, lines) => {
                // A closed stdout must not take the proxy down; the lines are lost,
                // and counted as dropped (a stdout that is gone is the extreme case of
                // one that cannot keep up). A write cut short counts the whole batch.
                if sink.write_all(&bytes).and_then(|()| sink.flush()).is_err() {
                    dropped.inc_by(lines);
                }
            }
            Msg::Sync(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// What the access log says of one request, borrowed from its context.
#[derive(Debug)]
pub struct Entry<'a> {
    pub service: &'a str,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub attempts: u32,
    pub correlation_id: &'a [u8],
    pub request_id: &'a [u8],
    pub trace_id: Option<&'a str>,
    pub org_id: Option<&'a [u8]>,
    pub camera_id: Option<&'a [u8]>,
    pub priority: &'a str,
    pub error_code: Option<&'a str>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub body_error: bool,
    /// The caller went away before the answer was complete.
    pub cancelled: bool,
    /// `correlation.propagate` headers present on the request.
    pub propagated: &'a [(HeaderName, HeaderValue)],
}

impl Entry<'_> {
    /// Appends the line (with its newline) to `s`.
    pub fn format_into(&self, s: &mut String, format: LogFormat) {
        match format {
            LogFormat::Json => {
                // Written piece by piece, without `format_args!`: this runs per request.
                s.push_str("{\"timestamp\":\"");
                push_timestamp(s, SystemTime::now());
                s.push_str("\",\"level\":\"INFO\",\"message\":\"access\"");
                json_str(s, "service", Some(self.service));
                json_str(s, "route", self.route);
                json_str(s, "upstream", self.upstream);
                json_str(s, "endpoint", self.endpoint);
                json_str(s, "method", Some(self.method));
                json_str(s, "path", Some(self.path));
                s.push_str(",\"status\":");
                push_u64(s, u64::from(self.status));
                s.push_str(",\"duration_ms\":");
                push_millis(s, self.duration);
                s.push_str(",\"attempts\":");
                push_u64(s, u64::from(self.attempts));
                json_bytes(s, "correlation_id", Some(self.correlation_id));
                json_bytes(s, "request_id", Some(self.request_id));
                json_str(s, "trace_id", self.trace_id);
                json_bytes(s, "org_id", self.org_id);
                json_bytes(s, "camera_id", self.camera_id);
                json_str(s, "priority", Some(self.priority));
                json_str(s, "error_code", self.error_code);
                s.push_str(",\"bytes_in\":");
                push_u64(s, self.bytes_in);
                s.push_str(",\"bytes_out\":");
                push_u64(s, self.bytes_out);
                if self.body_error {
                    s.push_str(",\"body_error\":true");
                }
                if self.cancelled {
                    s.push_str(",\"cancelled\":true");
                }
                if !self.propagated.is_empty() {
                    s.push_str(",\"propagated\":{");
                    for (i, (name, value)) in self.propagated.iter().enumerate() {
                        if i > 0 {
                            s.push(',');
                        }
                        json_escape(s, name.as_str());
                        s.push(':');
                        json_escape(s, &String::from_utf8_lossy(value.as_bytes()));
                    }
                    s.push('}');
                }
                s.push_str("}\n");
            }
            LogFormat::Text => {
                let ts = humantime::format_rfc3339_millis(SystemTime::now());
                let duration_ms = self.duration.as_secs_f64() * 1000.0;
                let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                let _ = write!(
                    s,
                    "{ts}  INFO access: {} {} status={} duration_ms={:.3} service={} route={} upstream={} endpoint={} attempts={} correlation_id={} request_id={} trace_id={} org_id={} camera_id={} priority={} error_code={} bytes_in={} bytes_out={}",
                    self.method,
                    self.path,
                    self.status,
                    duration_ms,
                    self.service,
                    self.route.unwrap_or("-"),
                    self.upstream.unwrap_or("-"),
                    self.endpoint.unwrap_or("-"),
                    self.attempts,
                    lossy(self.correlation_id),
                    lossy(self.request_id),
                    self.trace_id.unwrap_or("-"),
                    self.org_id.map_or_else(|| "-".into(), lossy),
                    self.camera_id.map_or_else(|| "-".into(), lossy),
                    self.priority,
                    self.error_code.unwrap_or("-"),
                    self.bytes_in,
                    self.bytes_out,
                );
                if self.cancelled {
                    s.push_str(" cancelled=true");
                }
                for (name, value) in self.propagated {
                    let _ = write!(s, " {}={}", name, lossy(value.as_bytes()));
                }
                s.push('\n');
            }
        }
    }
}

/// The 32-hex trace id of a `traceparent` value (`00-<trace>-<parent>-<flags>`).
pub fn trace_id_of(tp: &HeaderValue) -> Option<&str> {
    let s = tp.to_str().ok()?;
    s.get(3..35)
}

fn json_str(s: &mut String, key: &str, v: Option<&str>) {
    s.push_str(",\"");
    s.push_str(key);
    s.push_str("\":");
    match v {
        None => s.push_str("null"),
        Some(v) => json_escape(s, v),
    }
}

fn json_bytes(s: &mut String, key: &str, v: Option<&[u8]>) {
    match v {
        None => json_str(s, key, None),
        // Header values are ASCII almost always: validated, not copied.
        Some(v) => match std::str::from_utf8(v) {
            Ok(v) => json_str(s, key, Some(v)),
            Err(_) => json_str(s, key, Some(&String::from_utf8_lossy(v))),
        },
    }
}

/// `n` in decimal, without the formatting machinery.
fn push_u64(s: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    s.push_str(std::str::from_utf8(&buf[at..]).unwrap_or("0"));
}

/// `d` in milliseconds with three decimals (to the nearest microsecond), as
/// `format!("{:.3}", ms)` writes it.
fn push_millis(s: &mut String, d: Duration) {
    let micros = (d.as_nanos() + 500) / 1000;
    push_u64(s, u64::try_from(micros / 1000).unwrap_or(u64::MAX));
    let frac = (micros % 1000) as u16;
    s.push('.');
    s.push(char::from(b'0' + (frac / 100) as u8));
    s.push(char::from(b'0' + (frac / 10 % 10) as u8));
    s.push(char::from(b'0' + (frac % 10) as u8));
}

/// `t` as RFC 3339 UTC with milliseconds (`2026-12-03T12:55:43.745Z`), as
/// `humantime::format_rfc3339_millis` writes it. The date and time of day are
/// formatted once per second per thread; each line adds only the milliseconds.
fn push_timestamp(s: &mut String, t: SystemTime) {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let (secs, millis) = (since.as_secs(), since.subsec_millis());
    SECOND.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            let text = humantime::format_rfc3339_seconds(whole).to_string();
            c.0 = secs;
            c.1 = text.trim_end_matches('Z').to_owned();
        }
        s.push_str(&c.1);
    });
    s.push('.');
    let m = millis as u16;
    s.push(char::from(b'0' + (m / 100) as u8));
    s.push(char::from(b'0' + (m / 10 % 10) as u8));
    s.push(char::from(b'0' + (m % 10) as u8));
    s.push('Z');
}

/// Appends `v` as a JSON string literal.
/// Runs of bytes that need no escape are copied whole: the bytes that do are ASCII,
/// never part of a multi-byte character, so the runs end on character boundaries.
pub fn json_escape(s: &mut String, v: &str) {
    s.push('"');
    let mut run = 0;
    for (i, b) in v.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        s.push_str(&v[run..i]);
        if escaped.is_empty() {
            let _ = write!(s, "\\u{:04x}", b);
        } else {
            s.push_str(escaped);
        }
        run = i + 1;
    }
    s.push_str(&v[run..]);
    s.push('"');
}

#[cfg(test)]
mod tests;
