use std::sync::mpsc;

use super::*;

fn entry<'a>(propagated: &'a [(HeaderName, HeaderValue)]) -> Entry<'a> {
    Entry {
        service: "fusion",
        route: Some("detect"),
        upstream: Some("yolo"),
        endpoint: Some("127.0.0.1:9001"),
        method: "POST",
        path: "/detect/x",
        status: 200,
        duration: Duration::from_micros(1500),
        attempts: 2,
        correlation_id: b"c\"1",
        request_id: b"r1",
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        org_id: Some(b"org1"),
        camera_id: None,
        priority: "high",
        error_code: None,
        bytes_in: 3,
        bytes_out: 10,
        body_error: false,
        cancelled: false,
        propagated,
    }
}

/// Proves the JSON line has every field of the contract's list, with the values
/// given, and the propagated headers under `propagated`.
#[test]
fn json_line_has_every_contract_field() {
    let extra = [(
        HeaderName::from_static("x-tenant"),
        HeaderValue::from_static("t-9"),
    )];
    let mut line = String::new();
    entry(&extra).format_into(&mut line, LogFormat::Json);
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON object");
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
        "priority",
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
    assert_eq!(v["priority"], "high");
    assert_eq!(v["duration_ms"], 1.5);
    assert_eq!(v["propagated"]["x-tenant"], "t-9");
    assert!(v["timestamp"].as_str().expect("string").ends_with('Z'));
    assert!(line.ends_with('\n'));
}

/// Proves the text line carries the same facts.
#[test]
fn text_line_names_every_field() {
    let mut line = String::new();
    entry(&[]).format_into(&mut line, LogFormat::Text);
    for part in [
        "POST /detect/x",
        "status=200",
        "service=fusion",
        "route=detect",
        "trace_id=4bf92f3577b34da6a3ce929d0e0e4736",
        "org_id=org1",
        "camera_id=-",
        "priority=high",
    ] {
        assert!(line.contains(part), "{part} missing: {line}");
    }
}

/// A sink that blocks every write until the test ends (a log shipper that stopped
/// reading), noting that a write began.
struct Stalled {
    started: mpsc::SyncSender<()>,
    release: mpsc::Receiver<()>,
}

impl std::io::Write for Stalled {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.started.try_send(());
        let _ = self.release.recv();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Proves a stalled stdout never stalls the request path: with the writer stuck in its
/// first write, 20,000 lines are appended without blocking, the queue stays bounded,
/// and the lines that did not fit are counted as dropped.
#[test]
fn stalled_stdout_drops_and_counts_instead_of_blocking() {
    let dropped = prometheus::IntCounter::new("dropped", "test").expect("counter");
    let (started_tx, started_rx) = mpsc::sync_channel(1);
    let (release_tx, release_rx) = mpsc::channel();
    let sink = Stalled {
        started: started_tx,
        release: release_rx,
    };
    let logger = AccessLogger::with_sink(dropped.clone(), Box::new(sink));
    let e = entry(&[]);
    // Fill a first batch and hand it over, so the writer is stuck in its write.
    while started_rx.try_recv().is_err() {
        logger.write(&e, LogFormat::Json);
        logger.flush();
        std::thread::yield_now();
    }
    for _ in 0..20_000 {
        logger.write(&e, LogFormat::Json);
    }
    logger.flush();
    // A line is ~400 bytes: 20,000 lines are ~8 MB, four times the queue.
    assert!(
        dropped.get() > 10_000,
        "dropped {} lines; the queue must be bounded",
        dropped.get()
    );
    drop(release_tx);
}

/// A stdout that is gone (a closed pipe): every write fails.
struct Closed;

impl std::io::Write for Closed {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }
}

/// Proves lines lost to a stdout that is gone are counted as dropped, each of them,
/// once the writer has tried them.
#[test]
fn lines_lost_to_a_closed_stdout_are_counted() {
    let dropped = prometheus::IntCounter::new("dropped", "test").expect("counter");
    let logger = AccessLogger::with_sink(dropped.clone(), Box::new(Closed));
    let e = entry(&[]);
    for _ in 0..5 {
        logger.write(&e, LogFormat::Json);
    }
    logger.flush_and_wait(Duration::from_secs(10));
    assert_eq!(dropped.get(), 5);
}

/// The hand-written pieces of a JSON line write what serde_json, humantime and
/// `format!` would: strings escaped (quotes, backslashes, control characters, any
/// Unicode kept), integers, milliseconds with three decimals, RFC 3339 timestamps.
#[test]
fn hand_written_pieces_match_the_libraries() {
    for v in [
        "",
        "plain /path?q=1",
        "quote \" backslash \\ nl \n cr \r tab \t",
        "\u{1}\u{1f} ctl",
        "é ü 中文 🚀 \"mixed\" \u{7f}",
    ] {
        let mut s = String::new();
        json_escape(&mut s, v);
        assert_eq!(s, serde_json::to_string(v).unwrap(), "{v:?}");
        assert_eq!(serde_json::from_str::<String>(&s).unwrap(), v);
    }
    for n in [0u64, 7, 10, 404, 65_535, u64::MAX] {
        let mut s = String::new();
        push_u64(&mut s, n);
        assert_eq!(s, n.to_string());
    }
    for nanos in [
        0u64,
        1,
        499,
        500,
        999_499,
        999_500,
        1_234_567,
        59_999_999_999,
    ] {
        let d = Duration::from_nanos(nanos);
        let mut s = String::new();
        push_millis(&mut s, d);
        let micros = (nanos + 500) / 1000;
        assert_eq!(
            s,
            format!("{}.{:03}", micros / 1000, micros % 1000),
            "{nanos}"
        );
    }
    let mut s = String::new();
    push_millis(&mut s, Duration::from_micros(1_235));
    assert_eq!(s, format!("{:.3}", 1.235f64));
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_302_566);
    for ms in [0u64, 7, 745, 999, 1_000, 86_400_123] {
        let t = base + Duration::from_millis(ms);
        let mut s = String::new();
        push_timestamp(&mut s, t);
        assert_eq!(s, humantime::format_rfc3339_millis(t).to_string(), "{ms}");
    }
}
