//! The access log: one line per request, JSON (or text), on stdout. Lines are formatted
//! by hand into a shared buffer that a background task flushes every
//! [`FLUSH_INTERVAL`] (and any request flushes once the buffer passes
//! [`FLUSH_BYTES`]), so a request costs one short buffer append and no write system call.
//! tracing's JSON layer would cost a visitor, a map and a `write` per line; this path is
//! per request, so it is written out here (the other log lines go through tracing).
//!
//! [`Completion`] is carried in the response body and writes the line on drop: after the
//! last byte was sent, or when the caller went away.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Uri};
use tokio::time::Instant;

use crate::config::LogFormat;
use crate::proxy::body::BodyShared;
use crate::proxy::listener::ConnState;

/// How often buffered lines reach stdout at the latest.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// Buffer size past which the request that appended writes the buffer out itself.
pub const FLUSH_BYTES: usize = 32 * 1024;

/// Where access-log lines go. One per process; shared by every snapshot.
#[derive(Debug)]
pub struct AccessLogger {
    buf: Mutex<Vec<u8>>,
}

impl AccessLogger {
    pub fn new() -> Arc<Self> {
        Arc::new(AccessLogger {
            buf: Mutex::new(Vec::with_capacity(FLUSH_BYTES * 2)),
        })
    }

    fn append(&self, line: &str) {
        let full = {
            let mut b = match self.buf.lock() {
                Ok(b) => b,
                Err(p) => p.into_inner(),
            };
            b.extend_from_slice(line.as_bytes());
            if b.len() >= FLUSH_BYTES {
                Some(std::mem::replace(
                    &mut *b,
                    Vec::with_capacity(FLUSH_BYTES * 2),
                ))
            } else {
                None
            }
        };
        if let Some(data) = full {
            write_stdout(&data);
        }
    }

    /// Writes whatever is buffered.
    pub fn flush(&self) {
        let data = {
            let mut b = match self.buf.lock() {
                Ok(b) => b,
                Err(p) => p.into_inner(),
            };
            if b.is_empty() {
                return;
            }
            std::mem::take(&mut *b)
        };
        write_stdout(&data);
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

fn write_stdout(data: &[u8]) {
    let out = std::io::stdout();
    let mut lock = out.lock();
    // A closed stdout must not take the proxy down; the line is lost either way.
    let _ = lock.write_all(data);
    let _ = lock.flush();
}

/// What the access log says of one request; filled in along the request path.
#[derive(Debug)]
pub struct AccessRecord {
    pub service: Arc<str>,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub endpoint: Option<Arc<str>>,
    pub method: Method,
    pub uri: Uri,
    pub status: u16,
    pub attempts: u32,
    pub correlation_id: HeaderValue,
    pub request_id: HeaderValue,
    pub traceparent: Option<HeaderValue>,
    pub org_id: Option<HeaderValue>,
    pub camera_id: Option<HeaderValue>,
    pub error_code: Option<&'static str>,
}

/// Finishes a request when dropped: writes its access-log line (when enabled) and tells
/// the connection one request fewer is in flight.
#[derive(Debug)]
pub struct Completion {
    pub started: Instant,
    pub record: AccessRecord,
    pub bytes_out: u64,
    /// The response body failed mid-stream (upstream reset or idle timeout).
    pub body_error: bool,
    pub body: Arc<BodyShared>,
    pub logger: Option<(Arc<AccessLogger>, LogFormat)>,
    pub conn: Option<Arc<ConnState>>,
    /// Keeps the endpoint's in-flight count up while the response body streams.
    pub in_flight: Option<crate::upstream::InFlight>,
    /// The route's concurrency slot, held until the response body is done.
    pub admission: Option<crate::proxy::admit::ConcurrencyPermit>,
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(conn) = &self.conn {
            conn.request_done();
        }
        if let Some((logger, format)) = &self.logger {
            let line = self.format(*format);
            logger.append(&line);
        }
    }
}

impl Completion {
    fn format(&self, format: LogFormat) -> String {
        let r = &self.record;
        let elapsed = self.started.elapsed();
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        let bytes_in = self.body.bytes_in.load(Ordering::Relaxed);
        let ts = humantime::format_rfc3339_millis(SystemTime::now());
        let trace_id = r.traceparent.as_ref().and_then(trace_id_of);
        let mut s = String::with_capacity(512);
        match format {
            LogFormat::Json => {
                let _ = write!(
                    s,
                    "{{\"timestamp\":\"{ts}\",\"level\":\"INFO\",\"message\":\"access\""
                );
                json_str(&mut s, "service", Some(&r.service));
                json_str(&mut s, "route", r.route.as_deref());
                json_str(&mut s, "upstream", r.upstream.as_deref());
                json_str(&mut s, "endpoint", r.endpoint.as_deref());
                json_str(&mut s, "method", Some(r.method.as_str()));
                json_str(&mut s, "path", Some(r.uri.path()));
                let _ = write!(
                    s,
                    ",\"status\":{},\"duration_ms\":{:.3},\"attempts\":{}",
                    r.status, duration_ms, r.attempts
                );
                json_hv(&mut s, "correlation_id", Some(&r.correlation_id));
                json_hv(&mut s, "request_id", Some(&r.request_id));
                json_str(&mut s, "trace_id", trace_id);
                json_hv(&mut s, "org_id", r.org_id.as_ref());
                json_hv(&mut s, "camera_id", r.camera_id.as_ref());
                json_str(&mut s, "error_code", r.error_code);
                let _ = write!(
                    s,
                    ",\"bytes_in\":{bytes_in},\"bytes_out\":{}",
                    self.bytes_out
                );
                if self.body_error {
                    s.push_str(",\"body_error\":true");
                }
                s.push_str("}\n");
            }
            LogFormat::Text => {
                let _ = write!(
                    s,
                    "{ts}  INFO access: {} {} status={} duration_ms={:.3} route={} upstream={} endpoint={} attempts={} correlation_id={} request_id={} error_code={} bytes_in={} bytes_out={}",
                    r.method,
                    r.uri.path(),
                    r.status,
                    duration_ms,
                    r.route.as_deref().unwrap_or("-"),
                    r.upstream.as_deref().unwrap_or("-"),
                    r.endpoint.as_deref().unwrap_or("-"),
                    r.attempts,
                    String::from_utf8_lossy(r.correlation_id.as_bytes()),
                    String::from_utf8_lossy(r.request_id.as_bytes()),
                    r.error_code.unwrap_or("-"),
                    bytes_in,
                    self.bytes_out,
                );
                s.push('\n');
            }
        }
        s
    }
}

/// The 32-hex trace id of a `traceparent` value (`00-<trace>-<parent>-<flags>`).
pub fn trace_id_of(tp: &HeaderValue) -> Option<&str> {
    let s = tp.to_str().ok()?;
    s.get(3..35)
}

fn json_str(s: &mut String, key: &str, v: Option<&str>) {
    let _ = write!(s, ",\"{key}\":");
    match v {
        None => s.push_str("null"),
        Some(v) => json_escape(s, v),
    }
}

fn json_hv(s: &mut String, key: &str, v: Option<&HeaderValue>) {
    match v {
        None => json_str(s, key, None),
        Some(v) => json_str(s, key, Some(&String::from_utf8_lossy(v.as_bytes()))),
    }
}

/// Appends `v` as a JSON string literal.
pub fn json_escape(s: &mut String, v: &str) {
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_has_every_contract_field() {
        let c = Completion {
            started: Instant::now(),
            record: AccessRecord {
                service: "fusion".into(),
                route: Some("detect".into()),
                upstream: Some("yolo".into()),
                endpoint: Some("127.0.0.1:9001".into()),
                method: Method::POST,
                uri: Uri::from_static("/detect/x?secret=1"),
                status: 200,
                attempts: 2,
                correlation_id: HeaderValue::from_static("c\"1"),
                request_id: HeaderValue::from_static("r1"),
                traceparent: Some(HeaderValue::from_static(
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )),
                org_id: Some(HeaderValue::from_static("org1")),
                camera_id: None,
                error_code: None,
            },
            bytes_out: 10,
            body_error: false,
            body: Arc::new(BodyShared::default()),
            logger: None,
            conn: None,
            in_flight: None,
            admission: None,
        };
        let line = c.format(LogFormat::Json);
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        for k in [
            "timestamp",
            "level",
            "message",
            "service",
            "route",
            "upstream",
            "endpoint",
            "method",
            "path",
            "status",
            "duration_ms",
            "attempts",
            "correlation_id",
            "request_id",
            "trace_id",
            "org_id",
            "camera_id",
            "error_code",
            "bytes_in",
            "bytes_out",
        ] {
            assert!(v.get(k).is_some(), "missing {k}: {line}");
        }
        assert_eq!(v["path"], "/detect/x");
        assert_eq!(v["correlation_id"], "c\"1");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["status"], 200);
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
