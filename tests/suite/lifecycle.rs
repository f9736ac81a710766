//! Graceful shutdown: new connections are refused, requests in flight finish (up to
//! `shutdown_timeout`), idle keep-alive connections are closed; the binary does this on
//! SIGTERM and exits 0.

use std::time::Duration;

use crate::common::*;

fn config(up: std::net::SocketAddr, shutdown_timeout: &str) -> String {
    format!(
        "{}{}{}",
        base_config(&format!(
            "idle_timeout = \"60s\"\nshutdown_timeout = \"{shutdown_timeout}\""
        )),
        upstream_toml("app", &[up], ""),
        route_toml("all", "/", "app", "")
    )
}

async fn refused(addr: std::net::SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_err()
}

/// Waits (bounded) until connecting to `addr` is refused.
async fn wait_refused(addr: std::net::SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !refused(addr).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// In-process: shutdown stops accepting, lets the in-flight request finish, closes an
/// idle keep-alive connection, and reports that everything drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_and_closes_idle_connections() {
    let gate = Gate::new();
    let up = TestUpstream::start(Behaviour::gated(&gate, Behaviour::ok("finished"))).await;
    let fb = spawn_fusebox(&config(up.addr, "10s")).await;
    let addr = fb.addr;

    // An idle keep-alive connection (one request served, then nothing).
    up.set(Behaviour::ok("quick"));
    let mut idle = RawConn::connect(addr).await;
    idle.write(b"GET /idle HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(idle.read_response().await.status, 200);

    // A request in flight, held at the upstream.
    up.set(Behaviour::gated(&gate, Behaviour::ok("finished")));
    let c = http1_client();
    let url = fb.url("/slow");
    let in_flight = tokio::spawn(async move { get(&c, &url).await });
    up.wait_hits(2).await;

    let shutdown = tokio::spawn(fb.shutdown());
    wait_refused(addr).await;
    assert_eq!(
        idle.wait_closed(WAIT).await,
        Ending::Closed(Vec::new()),
        "the idle keep-alive connection is closed on shutdown"
    );
    assert!(
        !shutdown.is_finished(),
        "shutdown must wait for the request in flight"
    );
    assert!(!in_flight.is_finished());

    gate.open();
    let r = within(WAIT, "the in-flight request", in_flight)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "finished");
    let drained = within(WAIT, "shutdown", shutdown).await.unwrap();
    assert!(drained, "everything drained within shutdown_timeout");
}

/// In-process: a request still in flight when shutdown_timeout passes does not keep
/// the proxy up; shutdown reports it did not drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_after_shutdown_timeout() {
    let up = TestUpstream::start(Behaviour::Hang).await;
    let fb = spawn_fusebox(&config(up.addr, "300ms")).await;
    let c = http1_client();
    let url = fb.url("/hang");
    let _in_flight = tokio::spawn(async move {
        try_send(&c, request(Method::GET, &url).body(empty()).unwrap()).await
    });
    up.wait_hits(1).await;
    let started = std::time::Instant::now();
    let drained = within(WAIT, "shutdown", fb.shutdown()).await;
    assert!(!drained, "a hanging request cannot drain");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// The binary on SIGTERM: refuses new connections, finishes the request in flight,
/// then exits 0, saying it drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_request_and_exits_zero() {
    let gate = Gate::new();
    let up = TestUpstream::start(Behaviour::gated(
        &gate,
        Behaviour::ok("finished after SIGTERM"),
    ))
    .await;
    let mut p = spawn_binary(&config(up.addr, "20s")).await;
    let c = http1_client();
    let url = p.url("/slow");
    let in_flight = tokio::spawn(async move { get(&c, &url).await });
    up.wait_hits(1).await;

    p.sigterm();
    wait_refused(p.addr).await;
    assert!(
        p.try_exit().is_none(),
        "fusebox exited with a request in flight"
    );

    gate.open();
    let r = within(WAIT, "the in-flight request", in_flight)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "finished after SIGTERM");
    assert_stopped_drained(&mut p).await;
    let status = p.wait_exit(WAIT).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM; stderr: {}",
        p.stderr()
    );
}

/// The binary on SIGTERM with nothing in flight (one idle keep-alive connection open)
/// closes that connection and exits 0 having drained, rather than waiting out its 20 s
/// shutdown_timeout (which it would report as not drained).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_when_idle_exits_zero() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let mut p = spawn_binary(&config(up.addr, "20s")).await;
    // The client keeps its keep-alive connection open: shutdown must close it.
    let c = http1_client();
    assert_eq!(get(&c, &p.url("/x")).await.status, 200);
    p.sigterm();
    assert_stopped_drained(&mut p).await;
    let status = p.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(0), "stderr: {}", p.stderr());
    drop(c);
}

/// Waits for the binary's "fusebox stopped" line (bounded past the 20 s
/// shutdown_timeout, so a shutdown that waited it out is reported by the line, not by
/// this wait) and asserts it drained.
async fn assert_stopped_drained(p: &mut FuseboxProcess) {
    let stopped = p
        .wait_json(Duration::from_secs(20) + WAIT, |v| {
            v["message"] == "fusebox stopped"
        })
        .await;
    assert_eq!(stopped["drained"], true, "{stopped}");
}

/// A stdout nobody reads (a stalled log shipper) costs log lines, never service: with
/// the pipe full of access lines, a breaker opening writes a process-log line, and the
/// data port and `/health/live` still answer. Before, that line's write blocked a
/// runtime thread on the stdout lock and froze the proxy, liveness probe included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stdout_freezes_nothing() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let dead = closed_port();
    let text = format!(
        "{}{}{}{}{}",
        base_config("").replace("access_log = false", "access_log = true"),
        upstream_toml("app", &[up.addr], ""),
        upstream_toml("gone", &[dead], "")
            .replace("failure_threshold = 1000", "failure_threshold = 1"),
        route_toml("gone", "/gone", "gone", ""),
        route_toml("all", "/", "app", "")
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fusebox.toml");
    std::fs::write(&path, &text).expect("config");
    let mut child = Command::new(crate::common::binary::binary_path())
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .env("FUSEBOX_LOG", "info")
        // One runtime thread: a write that blocks it stops everything, as in a
        // one-core pod.
        .env("FUSEBOX_WORKER_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start fusebox");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().expect("stdout");
    let _child = Kill(child);
    // Read until the listening line, then hold the pipe and never read again.
    let (tx, rx) = std::sync::mpsc::channel();
    let (release, hold) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["message"] == "fusebox listening" {
                    let _ = tx.send((v["address"].to_string(), v["admin"].to_string()));
                    let _ = hold.recv();
                    return;
                }
            }
            line.clear();
        }
    });
    let (data, admin) = within(WAIT * 3, "the listening line", async {
        loop {
            if let Ok(a) = rx.try_recv() {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let data = format!("http://{}", data.trim_matches('"'));
    let admin = format!("http://{}", admin.trim_matches('"'));
    let c = http1_client();
    // Access lines until the pipe (64 KiB) and the logger's queue are full and lines
    // drop: stdout is stalled (bounded: at most 40 rounds of 250).
    let url = format!("{data}/fill/{}", "x".repeat(200));
    let dropped = || async {
        let m = within(WAIT, "metrics", get(&c, &format!("{admin}/metrics"))).await;
        crate::common::prom::metric(&m.text(), "gateway_access_log_dropped_total", "")
            .unwrap_or(0.0)
    };
    for _ in 0..40 {
        for _ in 0..250 {
            assert_eq!(get(&c, &url).await.status, 200);
        }
        if dropped().await > 0.0 {
            break;
        }
    }
    assert!(
        dropped().await > 0.0,
        "stdout is stalled: access lines drop"
    );
    // The breaker of `gone` opens: a process-log line while stdout is stalled.
    assert_eq!(get(&c, &format!("{data}/gone")).await.status, 502);
    for _ in 0..3 {
        let r = within(
            WAIT,
            "a request after the breaker line",
            get(&c, &format!("{data}/gone")),
        )
        .await;
        assert_eq!(r.status, 503, "the open breaker answers CIRCUIT_OPEN");
        let r = within(
            WAIT,
            "the liveness probe",
            get(&c, &format!("{admin}/health/live")),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            within(WAIT, "a data request", get(&c, &url)).await.status,
            200
        );
    }
    drop(release);
}

/// A request still in flight when `shutdown_timeout` passes is cut, and still logged:
/// its access-log line (status 0, nothing answered) is written before the binary
/// exits, after its `fusebox stopped` line says it did not drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_at_shutdown_timeout_is_logged() {
    let up = TestUpstream::start(Behaviour::Hang).await;
    let text = config(up.addr, "300ms").replace("access_log = false", "access_log = true");
    let mut p = spawn_binary(&text).await;
    let c = http1_client();
    let url = p.url("/cut-at-shutdown");
    let in_flight = tokio::spawn(async move {
        try_send(&c, request(Method::GET, &url).body(empty()).unwrap()).await
    });
    up.wait_hits(1).await;
    p.sigterm();
    let stopped = p
        .wait_json(WAIT, |v| v["message"] == "fusebox stopped")
        .await;
    assert_eq!(stopped["drained"], false, "{stopped}");
    let status = p.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(0), "stderr: {}", p.stderr());
    let line = p.wait_json(WAIT, |v| v["path"] == "/cut-at-shutdown").await;
    assert_eq!(line["status"], 0, "{line}");
    assert!(within(WAIT, "the cut request", in_flight)
        .await
        .unwrap()
        .is_err());
}
