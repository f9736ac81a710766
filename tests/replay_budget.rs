//! The process-wide budget of request bodies held for replay (`[limits]
//! max_buffered_body_bytes`): many concurrent idempotent PUTs of 4 MiB, held at the
//! upstream until all have arrived, keep fusebox's memory within the budget plus a
//! fixed margin; the bodies past the budget stream through unkept (counted in
//! `gateway_proxy_unbuffered_bodies_total`) and every request is answered. In a test
//! binary of its own: it reads the process's resident memory, which no other test may
//! share. The test's own upstream and client hold no bodies (they count and drop, and
//! send clones of one chunk), so what grows is fusebox's.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use common::*;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

const MIB: usize = 1024 * 1024;
const BODY: usize = 4 * MIB;
const REQUESTS: usize = 32;
const BUDGET: usize = 16 * MIB;
/// Room for what is not a kept body: hyper's read and write buffers of 64 connections
/// (each caller-side read buffer grows to 64 KiB and a connection holds about two
/// while a body streams), allocator slack, the runtime's threads. Measured 27-39 MiB of
/// growth in all, with the budget's 16; without a budget it is about 140 MiB, so the
/// margin cannot hide an unbounded store.
const MARGIN: usize = 32 * MIB;

/// `len` bytes sent as clones of one 64 KiB chunk (no copy), with a declared length.
struct Repeat {
    chunk: Bytes,
    left: usize,
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len());
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left as u64)
    }
}

/// An upstream that reads each body to the end (dropping it), then holds the answer
/// until `REQUESTS` bodies have arrived whole, so every request's body is held by
/// fusebox at the same time.
async fn holding_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let done = Arc::new(AtomicUsize::new(0));
    let all_in = Arc::new(Notify::new());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (done, all_in) = (done.clone(), all_in.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (done, all_in) = (done.clone(), all_in.clone());
                    async move {
                        let mut body = req.into_body();
                        let mut n = 0;
                        while let Some(Ok(f)) = body.frame().await {
                            n += f.data_ref().map_or(0, |d| d.len());
                        }
                        let waiting = all_in.notified();
                        if n == BODY && done.fetch_add(1, Ordering::SeqCst) + 1 >= REQUESTS {
                            all_in.notify_waiters();
                        } else {
                            waiting.await;
                        }
                        Ok::<_, Infallible>(http::Response::new(full(format!("{n}"))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn status_kib(field: &str) -> usize {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// Proves: 32 concurrent 4 MiB PUTs (retryable, so each would be kept for replay)
/// with a 16 MiB budget raise the process's peak resident memory by at most the
/// budget plus a fixed margin (128 MiB would be kept without it); 28 bodies stream
/// through unkept and are counted; all 32 are answered with the whole body received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_puts_stay_within_the_replay_budget() {
    let up = holding_upstream().await;
    let toml = format!(
        "{}[limits]\nmax_buffered_body_bytes = \"{}MiB\"\n\n{}{}",
        base_config(""),
        BUDGET / MIB,
        upstream_toml(
            "app",
            &[up],
            "[upstreams.app.pool]\nmax_connections_per_host = 64"
        ),
        route_toml("uploads", "/", "app", "timeout = \"60s\"")
    );
    let config = fusebox::config::parse(&toml, "budget.toml", None).expect("config");
    let running = fusebox::app::start(config, "v".into())
        .await
        .expect("start");
    let url = format!("http://{}/frame", running.data_addr);
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http::<Repeat>();

    // Resident memory now, and the peak from here on.
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
    let base = status_kib("VmRSS:") * 1024;
    let mut tasks = Vec::new();
    for _ in 0..REQUESTS {
        let req = http::Request::put(&url)
            .body(Repeat {
                chunk: chunk.clone(),
                left: BODY,
            })
            .expect("request");
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let resp = c.request(req).await.expect("an answer");
            let status = resp.status();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            (status, body)
        }));
    }
    for t in tasks {
        let (status, body) = within(WAIT * 6, "an upload", t).await.expect("task");
        assert_eq!(status, 200);
        assert_eq!(
            body,
            format!("{BODY}"),
            "the whole body reached the upstream"
        );
    }
    let peak = status_kib("VmHWM:") * 1024;
    let grew = peak.saturating_sub(base);
    println!(
        "peak RSS grew {} MiB for {REQUESTS} x 4 MiB uploads",
        grew / MIB
    );
    assert!(
        grew <= BUDGET + MARGIN,
        "peak RSS grew {} MiB: more than the {} MiB budget plus {} MiB",
        grew / MIB,
        BUDGET / MIB,
        MARGIN / MIB
    );
    let admin = format!("http://{}/metrics", running.admin_addr);
    let text = get(&http1_client(), &admin).await.text();
    let unbuffered = text
        .lines()
        .find_map(|l| l.strip_prefix("gateway_proxy_unbuffered_bodies_total{route=\"uploads\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(
        unbuffered,
        Some((REQUESTS - BUDGET / BODY) as f64),
        "bodies past the budget streamed through unkept"
    );
    assert_eq!(running.state.load().shared.replay.used(), 0, "all released");
    assert!(running.shutdown().await);
}
