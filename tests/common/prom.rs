//! The admin listener's `/metrics`, read the way a dashboard does: scrape the text
//! exposition over loopback and pick series by name and label set (labels in
//! Prometheus' sorted order, e.g. `reason="budget",route="all"`). Counters that move
//! after the response (request counts, gauges released when a body ends) are read with
//! [`wait_metric`], a bounded poll, never a sleep.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::{get, http1_client, WAIT};

/// `GET http://ADMIN/metrics`; panics unless it answers 200.
pub async fn scrape(admin: SocketAddr) -> String {
    let r = get(&http1_client(), &format!("http://{admin}/metrics")).await;
    assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
    r.text()
}

/// Every sample of metric `name` in a text exposition: label set -> value.
pub fn series(text: &str, name: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let (labels, value) = r.split_once("} ")?;
                    (labels.to_owned(), value)
                }
                None => (String::new(), rest.strip_prefix(' ')?),
            };
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

/// The value of `name{labels}`, `None` when the series is not exposed.
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    series(text, name).get(labels).copied()
}

/// Scrapes and reads `name{labels}`; panics (with the exposition) when it is absent.
pub async fn read_metric(admin: SocketAddr, name: &str, labels: &str) -> f64 {
    let text = scrape(admin).await;
    metric(&text, name, labels)
        .unwrap_or_else(|| panic!("no series {name}{{{labels}}} in:\n{text}"))
}

/// Scrapes until `name{labels}` reads `want` (bounded by [`WAIT`]).
pub async fn wait_metric(admin: SocketAddr, name: &str, labels: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = scrape(admin).await;
        let got = metric(&text, name, labels);
        if got == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{{{labels}}} is {got:?}, not {want}, after {WAIT:?}:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// `gateway_proxy_rejected_total{route,reason}` now.
pub async fn rejected(admin: SocketAddr, route: &str, reason: &str) -> f64 {
    read_metric(
        admin,
        "gateway_proxy_rejected_total",
        &format!(r#"reason="{reason}",route="{route}""#),
    )
    .await
}

/// `gateway_proxy_retries_total{service,reason}` now (0 when the series is absent:
/// status and gRPC reasons exist only for the codes the policy retries).
pub async fn retries(admin: SocketAddr, service: &str, reason: &str) -> f64 {
    let text = scrape(admin).await;
    metric(
        &text,
        "gateway_proxy_retries_total",
        &format!(r#"reason="{reason}",service="{service}""#),
    )
    .unwrap_or(0.0)
}

/// Every `gateway_proxy_retries_total` series of `service` (reason -> count), so a test
/// can say that no retry of another reason was made.
pub async fn retries_by_reason(admin: SocketAddr, service: &str) -> BTreeMap<String, f64> {
    let text = scrape(admin).await;
    let suffix = format!(r#",service="{service}""#);
    series(&text, "gateway_proxy_retries_total")
        .into_iter()
        .filter_map(|(labels, v)| {
            let reason = labels.strip_suffix(&suffix)?.strip_prefix("reason=\"")?;
            Some((reason.trim_end_matches('"').to_owned(), v))
        })
        .filter(|(_, v)| *v != 0.0)
        .collect()
}

/// `gateway_proxy_fallbacks_total{service,kind}` now.
pub async fn fallbacks(admin: SocketAddr, service: &str, kind: &str) -> f64 {
    read_metric(
        admin,
        "gateway_proxy_fallbacks_total",
        &format!(r#"kind="{kind}",service="{service}""#),
    )
    .await
}

/// Waits (bounded) until `gateway_proxy_in_flight_requests{route}` reads `want`.
pub async fn wait_in_flight(admin: SocketAddr, route: &str, want: f64) {
    wait_metric(
        admin,
        "gateway_proxy_in_flight_requests",
        &format!(r#"route="{route}""#),
        want,
    )
    .await;
}
