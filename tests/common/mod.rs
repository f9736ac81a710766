//! Shared harness of the integration tests: a real fusebox started in-process on
//! 127.0.0.1:0 ([`spawn_fusebox`]) or as the built binary ([`spawn_binary`]), scriptable
//! upstreams ([`TestUpstream`]), HTTP/1.1, h2c and raw TCP clients, and bounded waits.
//! Nothing here sleeps and hopes: every wait polls a condition up to a bound.
//
// Each test binary uses a different part of this module.
#![allow(dead_code, unused_imports)]

pub mod binary;
pub mod body;
pub mod client;
pub mod h2_upstream;
pub mod logs;
pub mod prom;
pub mod scripted;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

pub use binary::{run_binary, spawn_binary, spawn_binary_env, spawn_binary_with, FuseboxProcess};
pub use body::{channel_body, empty, full, pattern, pattern_byte, random_bytes, TestBody};
pub use bytes::Bytes;
pub use client::{
    get, h2c_client, http1_client, request, send, send_head, try_send, Ending, RawConn,
    RawResponse, Reply, TestClient,
};
pub use http::{Method, StatusCode, Version};
pub use upstream::{closed_port, Behaviour, Gate, Recorded, StreamSpec, TestUpstream};

/// Upper bound for anything that should happen "soon" (a response, a log line, a
/// connection closing). Generous: the machine has two shared cores.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut`, panicking with `what` if it takes longer than `d`.
pub async fn within<T>(d: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(d, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {d:?} waiting for {what}"),
    }
}

/// Polls `cond` every 5 ms until it holds; panics with `what` after `d`.
pub async fn eventually(what: &str, d: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + d;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {d:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A proxy started in-process with `fusebox::app::start`.
pub struct Fusebox {
    pub addr: SocketAddr,
    /// The admin listener (`/metrics`, `/circuit_breakers` ...).
    pub admin_addr: SocketAddr,
    running: Option<fusebox::app::Running>,
}

/// Parses `toml` (panicking with the located error) and starts a proxy on it.
pub async fn spawn_fusebox(toml: &str) -> Fusebox {
    let config = fusebox::config::parse(toml, "test.toml", None)
        .unwrap_or_else(|e| panic!("test config is invalid:\n{e}\n--- config ---\n{toml}"));
    let version = fusebox::config::content_hash(toml);
    let running = fusebox::app::start(config, version)
        .await
        .unwrap_or_else(|e| panic!("fusebox did not start: {e:#}"));
    Fusebox {
        addr: running.data_addr,
        admin_addr: running.admin_addr,
        running: Some(running),
    }
}

impl Fusebox {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The running proxy, for state the data port does not show (endpoint in-flight
    /// counts, the snapshot's endpoint list).
    pub fn running(&self) -> &fusebox::app::Running {
        self.running.as_ref().expect("running")
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        prom::scrape(self.admin_addr).await
    }

    /// Graceful shutdown; whether every connection drained within shutdown_timeout.
    pub async fn shutdown(mut self) -> bool {
        let running = self.running.take().expect("running");
        running.shutdown().await
    }
}

/// The `[service]`, `[listener]`, `[admin]` and `[logging]` tables of a test config:
/// loopback port 0 everywhere, access log off (in-process tests share stdout).
/// `listener_extra` adds lines to `[listener]` (shutdown_timeout defaults to 5 s here).
pub fn base_config(listener_extra: &str) -> String {
    let shutdown = if listener_extra.contains("shutdown_timeout") {
        ""
    } else {
        "shutdown_timeout = \"5s\"\n"
    };
    format!(
        r#"[service]
name = "fusion-test"

[listener]
address = "127.0.0.1:0"
{shutdown}{listener_extra}

[admin]
address = "127.0.0.1:0"

[logging]
access_log = false

"#
    )
}

/// `[upstreams.NAME]` with `addrs` as endpoints and `extra` lines in its table. Retries
/// are off and breakers need 1000 failures, so each test sees exactly one attempt.
pub fn upstream_toml(name: &str, addrs: &[SocketAddr], extra: &str) -> String {
    let eps: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"[upstreams.{name}]
endpoints = [{eps}]
{extra}

[upstreams.{name}.retry]
max_retries = 0

[upstreams.{name}.circuit_breaker]
failure_threshold = 1000

"#,
        eps = eps.join(", ")
    )
}

/// One `[[routes]]` entry with `extra` lines (methods, host, timeout ...).
pub fn route_toml(name: &str, path_prefix: &str, upstream: &str, extra: &str) -> String {
    format!(
        r#"[[routes]]
name = "{name}"
path_prefix = "{path_prefix}"
upstream = "{upstream}"
{extra}

"#
    )
}

/// The usual single-upstream, catch-all-route config.
pub fn simple_config(up: SocketAddr) -> String {
    format!(
        "{}{}{}",
        base_config(""),
        upstream_toml("app", &[up], ""),
        route_toml("all", "/", "app", "")
    )
}

/// Whether `s` is a lower-case hyphenated UUID version 4 (RFC 4122 variant).
pub fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b.iter()
            .enumerate()
            .all(|(i, c)| [8, 13, 18, 23].contains(&i) || c.is_ascii_hexdigit())
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b' | b'A' | b'B')
}

/// Checks an error fusebox answered itself: status, `x-fusebox-error`, JSON content type
/// and body, and the ids in the body equal the echoed headers. Returns the body.
pub fn assert_fusebox_error(
    r: &Reply,
    status: u16,
    code: &str,
    upstream: Option<&str>,
) -> serde_json::Value {
    assert_eq!(r.status.as_u16(), status, "status; body: {}", r.text());
    assert_eq!(r.header("x-fusebox-error"), Some(code), "x-fusebox-error");
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    let v = r.json();
    let e = &v["error"];
    assert_eq!(e["code"], code, "body: {v}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error message: {v}"
    );
    match upstream {
        Some(u) => assert_eq!(e["upstream"], u, "body: {v}"),
        None => assert!(e["upstream"].is_null(), "no upstream expected: {v}"),
    }
    let rid = r.header("x-request-id").expect("x-request-id echoed");
    let cid = r
        .header("x-correlation-id")
        .expect("x-correlation-id echoed");
    assert_eq!(e["request_id"], rid, "body request_id = header");
    assert_eq!(e["correlation_id"], cid, "body correlation_id = header");
    v
}
