//! Demo vision upstreams and `fusebox demo`: three model servers in-process (a healthy
//! one, a flaky one that fails deterministically, a slow one) behind a proxy configured
//! with retries, a breaker and a fallback, and `peak_ewma` over a fleet with the slow
//! replica, plus the commands that show each of them, every time.
//!
//! The flaky server fails every second `/detect` call it gets (so with round robin over
//! two endpoints, retries visibly hide it) and otherwise only on command:
//! `POST /fail?n=N` makes its next N answers 503 (so the breaker opens after exactly
//! `failure_threshold` failures, and closes again on the first probe after the open
//! time). Every demo server answers `GET /health` at once.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rand::Rng;
use tokio::net::TcpListener;

use crate::cli::{DemoArgs, DemoUpstreamArgs};
use crate::{app, config, telemetry};

/// How a demo model server behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// Share of requests answered 503 at random (the compose demo's flaky node).
    pub fail_rate: f64,
    /// Fail every second `/detect` request (the `fusebox demo` flaky node).
    pub fail_every_second_detect: bool,
    /// Time each inference takes.
    pub delay: Duration,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` advertised to HTTP/2 callers (a model server
    /// that serves so many requests per connection); `None`: hyper's default (200).
    pub h2_max_streams: Option<u32>,
}

#[derive(Debug, Default)]
struct Counters {
    served: AtomicU64,
    detects: AtomicU64,
    /// Answers still to fail, set by `POST /fail?n=N`.
    forced: AtomicU64,
}

/// A demo model server: `GET /health` answers 200 at once; `POST /fail?n=N` makes the
/// next N answers 503; everything else answers a small detection JSON after `delay`,
/// or 503 as `behaviour` says (an overloaded GPU node). The request body is read and
/// counted.
pub async fn serve_upstream(listener: TcpListener, name: Arc<str>, behaviour: Behaviour) {
    let counters = Arc::new(Counters::default());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (name, counters) = (name.clone(), counters.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let (name, counters) = (name.clone(), counters.clone());
                async move { Ok::<_, Infallible>(answer(req, &name, behaviour, &counters).await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            if let Some(n) = behaviour.h2_max_streams {
                builder.http2().max_concurrent_streams(n);
            }
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn answer(
    req: Request<Incoming>,
    name: &str,
    b: Behaviour,
    c: &Counters,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        return json(
            StatusCode::OK,
            serde_json::json!({"status": "ok", "upstream": name}),
        );
    }
    if path == "/fail" && req.method() == http::Method::POST {
        let n = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("n=")))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1);
        c.forced.store(n, Ordering::Relaxed);
        return json(
            StatusCode::OK,
            serde_json::json!({"upstream": name, "will_fail": n}),
        );
    }
    let n = c.served.fetch_add(1, Ordering::Relaxed) + 1;
    let rid = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes_in = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => 0,
    };
    if !b.delay.is_zero() {
        tokio::time::sleep(b.delay).await;
    }
    let forced = c
        .forced
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| f.checked_sub(1))
        .is_ok();
    let every_second = b.fail_every_second_detect
        && path.starts_with("/detect")
        && c.detects.fetch_add(1, Ordering::Relaxed) % 2 == 0;
    let random = b.fail_rate > 0.0 && rand::thread_rng().gen_bool(b.fail_rate.clamp(0.0, 1.0));
    if forced || every_second || random {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "model overloaded", "upstream": name, "request_id": rid}),
        );
    }
    json(
        StatusCode::OK,
        serde_json::json!({
            "upstream": name,
            "path": path,
            "request_id": rid,
            "bytes_in": bytes_in,
            "served": n,
            "detections": [{"label": "person", "confidence": 0.93, "box": [12, 40, 96, 220]}],
        }),
    )
}

/// `fusebox demo-upstream`.
pub async fn run_upstream(a: DemoUpstreamArgs) -> anyhow::Result<()> {
    let mut signals = app::StopSignals::listen();
    let listener = app::bind(a.listen)?;
    {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "demo upstream '{}' on {} (fail rate {}, delay {} ms)",
            a.name,
            listener.local_addr()?,
            a.fail_rate,
            a.delay_ms
        );
    }
    let b = Behaviour {
        fail_rate: a.fail_rate,
        delay: Duration::from_millis(a.delay_ms),
        h2_max_streams: a.h2_max_streams,
        ..Behaviour::default()
    };
    tokio::select! {
        _ = serve_upstream(listener, a.name.into(), b) => {}
        _ = signals.recv() => {}
    }
    Ok(())
}

/// The demo's upstream addresses.
#[derive(Debug, Clone, Copy)]
pub struct DemoUpstreams {
    pub healthy: SocketAddr,
    pub flaky: SocketAddr,
    pub slow: SocketAddr,
}

/// The demo's config: `/detect` spreads over the healthy and the flaky server with
/// retries (the flaky one's 503s are retried on the healthy one); `/flaky` goes to the
/// flaky one alone with a breaker that opens after 3 failures, a 5 s open time and a
/// degraded fallback answer; `/fleet` balances the healthy and the slow server with
/// `peak_ewma`. Every route sets its balancer explicitly, whatever the default is.
pub fn demo_config(
    listen: SocketAddr,
    admin: SocketAddr,
    up: DemoUpstreams,
    otlp: Option<&str>,
) -> String {
    let DemoUpstreams {
        healthy,
        flaky,
        slow,
    } = up;
    let tracing = otlp.map_or_else(String::new, |e| {
        format!("[tracing]\notlp_endpoint = \"{e}\"\nsample_ratio = 1.0\n\n")
    });
    format!(
        r#"[service]
name = "demo-app"

[listener]
address = "{listen}"
shutdown_timeout = "5s"

[admin]
address = "{admin}"

[logging]
format = "json"
level = "info"

{tracing}[upstreams.vision]
endpoints = ["{healthy}", "{flaky}"]
load_balancing = "round_robin"

[upstreams.vision.retry]
# inference calls are safe to repeat, so POSTs are retried too
retry_non_idempotent = true
max_retries = 2
base_delay = "50ms"
max_delay = "500ms"

[upstreams.vision.circuit_breaker]
failure_threshold = 5
recovery_timeout = "10s"

[upstreams.flaky]
endpoints = ["{flaky}"]
load_balancing = "round_robin"

[upstreams.flaky.retry]
max_retries = 0

[upstreams.flaky.circuit_breaker]
failure_threshold = 3
recovery_timeout = "5s"
success_threshold = 1
jitter = false

[upstreams.flaky.fallback]
status = 200
content_type = "application/json"
body = '{{"detections": [], "degraded": true}}'

[upstreams.fleet]
endpoints = ["{healthy}", "{slow}"]
load_balancing = "peak_ewma"

[[routes]]
name = "detect"
path_prefix = "/detect"
upstream = "vision"
timeout = "5s"

[[routes]]
name = "flaky"
path_prefix = "/flaky"
upstream = "flaky"
timeout = "5s"

[[routes]]
name = "fleet"
path_prefix = "/fleet"
upstream = "fleet"
timeout = "5s"
"#
    )
}

/// The commands `fusebox demo` prints, one step per entry: what it shows, and the
/// shell lines that show it (`p` the proxy, `a` the admin API, `f` the flaky server).
pub fn demo_steps(p: SocketAddr, a: SocketAddr, f: SocketAddr) -> Vec<(String, Vec<String>)> {
    vec![
        (
            "retries hide the flaky endpoint: every answer is 200, and the retries are counted".into(),
            vec![
                format!("for i in 1 2 3 4; do curl -s -o /dev/null -w '%{{http_code}} ' -X POST http://{p}/detect -d '{{\"image\":\"cam1.jpg\"}}'; done; echo"),
                format!("curl -s http://{a}/metrics | grep '^gateway_proxy_retries_total{{reason=\"status_503\",service=\"vision\"}}'"),
            ],
        ),
        (
            "ids are stamped and echoed".into(),
            vec![format!("curl -si http://{p}/detect -H 'X-Correlation-ID: demo-123' | grep -i -E '^x-(correlation|request)-id'")],
        ),
        (
            "the flaky upstream alone: make it fail 3 times; its breaker opens after 3 failures and the fallback answers".into(),
            vec![
                format!("curl -s -X POST 'http://{f}/fail?n=3'; echo"),
                format!("for i in 1 2 3 4; do curl -s -w ' %{{http_code}}\\n' http://{p}/flaky; done"),
                format!("curl -s http://{a}/metrics | grep '^gateway_circuit_breaker_state{{.*service=\"flaky\"}}'   # 0 closed, 1 open, 2 half open"),
            ],
        ),
        (
            "after its 5 s recovery_timeout the breaker half-opens; the next request probes it and closes it".into(),
            vec![
                format!("until curl -s http://{a}/metrics | grep -q '^gateway_circuit_breaker_state{{.*service=\"flaky\"}} 2'; do sleep 0.5; done"),
                format!("curl -s -w ' %{{http_code}}\\n' http://{p}/flaky"),
                format!("curl -s http://{a}/metrics | grep '^gateway_circuit_breaker_state{{.*service=\"flaky\"}}'"),
            ],
        ),
        (
            "peak_ewma moves traffic away from the slow replica (150 ms against a few ms)".into(),
            vec![format!("for i in $(seq 30); do curl -s http://{p}/fleet; echo; done | grep -o '\"upstream\":\"[a-z-]*\"' | sort | uniq -c")],
        ),
        (
            format!("breaker state, metrics and the status page (open http://{a}/ in a browser)"),
            vec![
                format!("curl -s http://{a}/circuit_breakers"),
                format!("curl -s http://{a}/metrics | grep '^gateway_' | head -20"),
            ],
        ),
        (
            "no route".into(),
            vec![format!("curl -si http://{p}/nothing-here")],
        ),
    ]
}

/// `fusebox demo`.
pub async fn run(a: DemoArgs) -> anyhow::Result<()> {
    let mut signals = app::StopSignals::listen();
    let local = || app::bind(SocketAddr::from(([127, 0, 0, 1], 0)));
    let (healthy, flaky, slow) = (local()?, local()?, local()?);
    let up = DemoUpstreams {
        healthy: healthy.local_addr()?,
        flaky: flaky.local_addr()?,
        slow: slow.local_addr()?,
    };
    let fast = Behaviour {
        delay: Duration::from_millis(2),
        ..Behaviour::default()
    };
    tokio::spawn(serve_upstream(healthy, "yolo-gpu-healthy".into(), fast));
    let flaky_b = Behaviour {
        fail_every_second_detect: true,
        fail_rate: a.fail_rate,
        ..fast
    };
    tokio::spawn(serve_upstream(flaky, "yolo-gpu-flaky".into(), flaky_b));
    let slow_b = Behaviour {
        delay: Duration::from_millis(150),
        ..Behaviour::default()
    };
    tokio::spawn(serve_upstream(slow, "yolo-gpu-slow".into(), slow_b));
    let text = demo_config(a.listen, a.admin, up, a.otlp_endpoint.as_deref());
    let cfg = config::parse(&text, "<demo>", None).map_err(|e| anyhow::anyhow!("{e}"))?;
    telemetry::init(&cfg.logging);
    let running = app::start(cfg, config::content_hash(&text)).await?;
    let (p, admin) = (running.data_addr, running.admin_addr);
    let mut out = format!(
        "\nfusebox demo: proxy on http://{p}, admin and status page on http://{admin}/\n\
         upstreams: healthy {}, flaky {} (fails every second /detect, or on command), slow {} (150 ms)\n\nTry:\n",
        up.healthy, up.flaky, up.slow
    );
    for (what, lines) in demo_steps(p, admin, up.flaky) {
        out.push_str(&format!("  # {what}\n"));
        for l in lines {
            out.push_str(&format!("  {l}\n"));
        }
    }
    out.push_str("\nCtrl-C stops the demo.\n");
    // A reader that went away (`fusebox demo | head`) is no reason to stop: the
    // demo runs on without its banner rather than panicking on the broken pipe.
    {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "{out}");
    }
    signals.recv().await;
    running.shutdown().await;
    Ok(())
}
