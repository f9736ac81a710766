//! Demo vision upstreams and `fusebox demo`: two upstreams in-process (one healthy, one
//! that fails a share of requests with 503) behind a proxy configured with retries, a
//! breaker and a fallback, plus the curl commands that show them working.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

/// A demo model server: `GET /health` answers 200; everything else answers a small
/// detection JSON, except a `fail_rate` share answered 503 (as an overloaded GPU node
/// would). The request body is read and counted.
pub async fn serve_upstream(listener: TcpListener, name: Arc<str>, fail_rate: f64) {
    let served = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        let served = served.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let name = name.clone();
                let served = served.clone();
                async move { Ok::<_, Infallible>(answer(req, &name, fail_rate, &served).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    name: &str,
    fail_rate: f64,
    served: &AtomicU64,
) -> Response<Full<Bytes>> {
    let n = served.fetch_add(1, Ordering::Relaxed) + 1;
    let path = req.uri().path().to_string();
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
    let json = |status: StatusCode, v: serde_json::Value| {
        let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    };
    if path == "/health" {
        return json(
            StatusCode::OK,
            serde_json::json!({"status": "ok", "upstream": name}),
        );
    }
    if fail_rate > 0.0 && rand::thread_rng().gen_bool(fail_rate.clamp(0.0, 1.0)) {
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
    let listener = app::bind(a.listen)?;
    eprintln!(
        "demo upstream '{}' on {} (fail rate {})",
        a.name,
        listener.local_addr()?,
        a.fail_rate
    );
    tokio::select! {
        _ = serve_upstream(listener, a.name.into(), a.fail_rate) => {}
        _ = app::wait_for_signal() => {}
    }
    Ok(())
}

/// The demo's config: `/detect` spreads over both endpoints with retries (so the flaky
/// one's 503s are retried on the healthy one), `/flaky` goes to the flaky one alone with
/// a breaker that opens after 3 failures and a degraded fallback answer.
pub fn demo_config(
    listen: SocketAddr,
    admin: SocketAddr,
    healthy: SocketAddr,
    flaky: SocketAddr,
) -> String {
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

[upstreams.vision]
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

[upstreams.flaky.retry]
max_retries = 0

[upstreams.flaky.circuit_breaker]
failure_threshold = 3
recovery_timeout = "10s"
success_threshold = 2

[upstreams.flaky.fallback]
status = 200
content_type = "application/json"
body = '{{"detections": [], "degraded": true}}'

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
"#
    )
}

/// `fusebox demo`.
pub async fn run(a: DemoArgs) -> anyhow::Result<()> {
    let healthy = app::bind("127.0.0.1:0".parse()?)?;
    let flaky = app::bind("127.0.0.1:0".parse()?)?;
    let (h_addr, f_addr) = (healthy.local_addr()?, flaky.local_addr()?);
    tokio::spawn(serve_upstream(healthy, "yolo-gpu-healthy".into(), 0.0));
    tokio::spawn(serve_upstream(flaky, "yolo-gpu-flaky".into(), a.fail_rate));
    let text = demo_config(a.listen, a.admin, h_addr, f_addr);
    let cfg = config::parse(&text, "<demo>", None).map_err(|e| anyhow::anyhow!("{e}"))?;
    telemetry::init(&cfg.logging);
    let running = app::start(cfg, config::content_hash(&text)).await?;
    let p = running.data_addr;
    println!(
        "\nfusebox demo: proxy on http://{p}, healthy upstream on {h_addr}, flaky upstream on {f_addr} (fails {:.0}%)\n\n\
Try:\n\
  # retries hide the flaky endpoint: every answer is 200\n\
  for i in $(seq 10); do curl -s -o /dev/null -w '%{{http_code}}\\n' -X POST http://{p}/detect -d '{{\"image\":\"cam1.jpg\"}}'; done\n\
  # ids are stamped and echoed\n\
  curl -si http://{p}/detect -H 'X-Correlation-ID: demo-123' | grep -i -E 'x-(correlation|request)-id'\n\
  # the flaky upstream alone: after 3 failures its breaker opens and the fallback answers\n\
  for i in $(seq 12); do curl -s -w ' %{{http_code}}\\n' http://{p}/flaky; done\n\
  # breaker state and metrics\n\
  curl -s http://{}/circuit_breakers; curl -s http://{}/metrics | grep gateway_\n\
  # no route\n\
  curl -si http://{p}/nothing-here\n\n\
Ctrl-C stops the demo.\n",
        a.fail_rate * 100.0,
        a.admin,
        a.admin,
    );
    app::wait_for_signal().await;
    running.shutdown().await;
    Ok(())
}
