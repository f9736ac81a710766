//! Every metric of the contract, in one place, registered on a registry the app owns (so
//! tests each have their own). Labelled handles are resolved when a snapshot is built
//! ([`RouteMetrics`], [`UpstreamMetrics`], [`EndpointMetrics`]) and stored on the route,
//! upstream or endpoint; the request path only bumps them. The one label set that
//! cannot be known in advance, `status` on the request counter, is cached in a
//! copy-on-write map read without a lock.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::Method;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

pub const REQUESTS_TOTAL: &str = "gateway_proxy_requests_total";
pub const REQUEST_DURATION: &str = "gateway_proxy_request_duration_seconds";
pub const RETRIES_TOTAL: &str = "gateway_proxy_retries_total";
pub const BREAKER_STATE: &str = "gateway_circuit_breaker_state";
pub const BREAKER_CHANGES: &str = "gateway_circuit_breaker_state_changes_total";
pub const REJECTED_TOTAL: &str = "gateway_proxy_rejected_total";
pub const CANCELLED_TOTAL: &str = "gateway_proxy_cancelled_total";
pub const FALLBACKS_TOTAL: &str = "gateway_proxy_fallbacks_total";
pub const UPSTREAM_CONNECTIONS: &str = "gateway_upstream_connections";
pub const IN_FLIGHT: &str = "gateway_proxy_in_flight_requests";
pub const CONFIG_RELOADS: &str = "gateway_config_reloads_total";
pub const UPSTREAM_REQUEST_DURATION: &str = "gateway_upstream_request_duration_seconds";
pub const POOL_WAIT: &str = "gateway_upstream_pool_wait_seconds";
pub const ATTEMPTS_PER_REQUEST: &str = "gateway_proxy_attempts_per_request";
pub const CONCURRENCY_LIMIT: &str = "gateway_upstream_concurrency_limit";
pub const UNBUFFERED_BODIES: &str = "gateway_proxy_unbuffered_bodies_total";
pub const ACCESS_LOG_DROPPED: &str = "gateway_access_log_dropped_total";
pub const TRACING_SPANS_DROPPED: &str = "gateway_tracing_spans_dropped_total";
/// Not in the contract's table; counts injected faults (`kind` = abort, delay).
pub const FAULTS_TOTAL: &str = "gateway_proxy_faults_injected_total";

/// The `reason` labels of `gateway_proxy_rejected_total`.
pub const REJECT_REASONS: [&str; 6] = [
    "circuit_open",
    "overloaded",
    "rate_limited",
    "budget",
    "deadline",
    "priority",
];

/// Histogram buckets for inference calls: 1 ms to 30 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets for waits for a pooled connection: 10 us (a pooled connection was ready)
/// to 5 s (the connect timeout's range).
pub const POOL_WAIT_BUCKETS: &[f64] = &[
    0.00001, 0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Buckets for attempts per request: 0 (none made: every breaker open, or shed on the
/// deadline), 1 (no retry) to 10.
pub const ATTEMPT_BUCKETS: &[f64] = &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0];

/// The metric families. One per process; snapshots hold an `Arc` to it.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub retries: IntCounterVec,
    pub breaker_state: IntGaugeVec,
    pub breaker_changes: IntCounterVec,
    pub rejected: IntCounterVec,
    pub fallbacks: IntCounterVec,
    pub connections: IntGaugeVec,
    pub in_flight: IntGaugeVec,
    pub reloads: IntCounterVec,
    pub faults: IntCounterVec,
    pub cancelled: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub pool_wait: HistogramVec,
    pub attempts: HistogramVec,
    pub concurrency_limit: IntGaugeVec,
    pub unbuffered: IntCounterVec,
    pub access_log_dropped: IntCounter,
    /// Spans refused by a full export queue or lost in a failed export (`otel`).
    pub tracing_spans_dropped: IntCounter,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    // Registering fresh, uniquely named families on a new registry cannot fail.
    let _ = r.register(Box::new(c.clone()));
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(g.clone()));
    g
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(h.clone()));
    h
}

fn plain_counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(c.clone()));
    c
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let r = Registry::new();
        let duration = histogram(
            &r,
            REQUEST_DURATION,
            "Request duration until response headers, retries included.",
            &["service", "route", "method"],
            DURATION_BUCKETS,
        );
        let access_log_dropped = plain_counter(
            &r,
            ACCESS_LOG_DROPPED,
            "Access-log lines dropped because stdout could not keep up.",
        );
        #[cfg(target_os = "linux")]
        {
            let _ = r.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        Arc::new(Metrics {
            requests: counter(
                &r,
                REQUESTS_TOTAL,
                "Requests answered, by upstream, route, method and status.",
                &["service", "route", "method", "status"],
            ),
            duration,
            retries: counter(
                &r,
                RETRIES_TOTAL,
                "Retries sent, by upstream and reason.",
                &["service", "reason"],
            ),
            breaker_state: gauge(
                &r,
                BREAKER_STATE,
                "Circuit breaker state per endpoint (and route with its own breakers): 0 closed, 1 open, 2 half open.",
                &["service", "endpoint", "route"],
            ),
            breaker_changes: counter(
                &r,
                BREAKER_CHANGES,
                "Circuit breaker state changes, by the state entered.",
                &["service", "endpoint", "route", "state"],
            ),
            rejected: counter(
                &r,
                REJECTED_TOTAL,
                "Requests or retries refused by fusebox's own policies.",
                &["route", "reason"],
            ),
            fallbacks: counter(
                &r,
                FALLBACKS_TOTAL,
                "Fallback answers, by upstream and kind (static, upstream).",
                &["service", "kind"],
            ),
            connections: gauge(
                &r,
                UPSTREAM_CONNECTIONS,
                "Pooled upstream connections per endpoint (active, idle).",
                &["service", "endpoint", "state"],
            ),
            in_flight: gauge(&r, IN_FLIGHT, "Requests in flight per route.", &["route"]),
            reloads: counter(&r, CONFIG_RELOADS, "Config reloads by result.", &["result"]),
            cancelled: counter(
                &r,
                CANCELLED_TOTAL,
                "Requests the caller abandoned, by stage: before_response (no answer was sent; the access log's status 0), during_body (the answer was cut short).",
                &["route", "stage"],
            ),
            faults: counter(
                &r,
                FAULTS_TOTAL,
                "Injected faults by route and kind (abort, delay).",
                &["route", "kind"],
            ),
            upstream_duration: histogram(
                &r,
                UPSTREAM_REQUEST_DURATION,
                "Duration of one attempt until response headers, per endpoint.",
                &["service", "endpoint"],
                DURATION_BUCKETS,
            ),
            pool_wait: histogram(
                &r,
                POOL_WAIT,
                "Time an attempt waited for a pooled upstream connection.",
                &["service"],
                POOL_WAIT_BUCKETS,
            ),
            attempts: histogram(
                &r,
                ATTEMPTS_PER_REQUEST,
                "Attempts made per request (1 = no retry).",
                &["service"],
                ATTEMPT_BUCKETS,
            ),
            concurrency_limit: gauge(
                &r,
                CONCURRENCY_LIMIT,
                "Adaptive concurrency limit per endpoint.",
                &["service", "endpoint"],
            ),
            unbuffered: counter(
                &r,
                UNBUFFERED_BODIES,
                "Request bodies streamed without being kept for replay because the process-wide buffer budget was full.",
                &["route"],
            ),
            access_log_dropped,
            tracing_spans_dropped: plain_counter(
                &r,
                TRACING_SPANS_DROPPED,
                "Spans dropped from the trace export queue or lost in failed exports.",
            ),
            registry: r,
        })
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = String::new();
        let enc = prometheus::TextEncoder::new();
        let _ = enc.encode_utf8(&self.registry.gather(), &mut buf);
        buf
    }
}

/// The method label: the standard methods by index, anything else as `OTHER`.
fn method_slot(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::PATCH => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::CONNECT => 8,
        _ => 9,
    }
}
const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "OTHER",
];

/// Handles of one route (labels `route`, and `service` = its upstream).
#[derive(Debug)]
pub struct RouteMetrics {
    family: Arc<Metrics>,
    service: Arc<str>,
    route: Arc<str>,
    pub in_flight: IntGauge,
    pub rejected_circuit_open: IntCounter,
    pub rejected_overloaded: IntCounter,
    pub rejected_rate_limited: IntCounter,
    pub rejected_budget: IntCounter,
    pub rejected_deadline: IntCounter,
    pub rejected_priority: IntCounter,
    pub unbuffered: IntCounter,
    pub fault_abort: IntCounter,
    pub fault_delay: IntCounter,
    pub cancelled_before_response: IntCounter,
    pub cancelled_during_body: IntCounter,
    /// Resolved on a method's first request: 8 histograms x 1,000 routes would make up
    /// half of a config build.
    duration: [std::sync::OnceLock<Histogram>; METHODS.len()],
    /// (method slot, status) -> counter; filled on first use, copied on write. A list
    /// searched in order: a route sees a handful of pairs, and comparing them costs
    /// less than hashing the key.
    requests: ArcSwap<Vec<(usize, u16, IntCounter)>>,
}

impl RouteMetrics {
    pub fn new(m: &Arc<Metrics>, route: &str, service: &str) -> RouteMetrics {
        let rej = |reason: &str| m.rejected.with_label_values(&[route, reason]);
        RouteMetrics {
            in_flight: m.in_flight.with_label_values(&[route]),
            rejected_circuit_open: rej("circuit_open"),
            rejected_overloaded: rej("overloaded"),
            rejected_rate_limited: rej("rate_limited"),
            rejected_budget: rej("budget"),
            rejected_deadline: rej("deadline"),
            rejected_priority: rej("priority"),
            unbuffered: m.unbuffered.with_label_values(&[route]),
            fault_abort: m.faults.with_label_values(&[route, "abort"]),
            fault_delay: m.faults.with_label_values(&[route, "delay"]),
            cancelled_before_response: m.cancelled.with_label_values(&[route, "before_response"]),
            cancelled_during_body: m.cancelled.with_label_values(&[route, "during_body"]),
            duration: Default::default(),
            requests: ArcSwap::from_pointee(Vec::new()),
            family: m.clone(),
            service: service.into(),
            route: route.into(),
        }
    }

    /// Counts one answered request and observes its duration.
    pub fn observe(&self, method: &Method, status: u16, secs: f64) {
        let slot = method_slot(method);
        self.duration[slot]
            .get_or_init(|| {
                self.family
                    .duration
                    .with_label_values(&[&self.service, &self.route, METHODS[slot]])
            })
            .observe(secs);
        if let Some((_, _, c)) = self
            .requests
            .load()
            .iter()
            .find(|(m, s, _)| *m == slot && *s == status)
        {
            c.inc();
            return;
        }
        let mut status_buf = itoa_u16(status);
        let c = self.family.requests.with_label_values(&[
            &self.service,
            &self.route,
            METHODS[slot],
            status_str(&mut status_buf),
        ]);
        c.inc();
        self.requests.rcu(|old| {
            let mut m = Vec::clone(old);
            if !m.iter().any(|(ms, st, _)| *ms == slot && *st == status) {
                m.push((slot, status, c.clone()));
            }
            m
        });
    }

    /// Drops this route's series (its route was removed by a reload).
    pub fn remove(&self) {
        let f = &self.family;
        let _ = f.in_flight.remove_label_values(&[&self.route]);
        for reason in REJECT_REASONS {
            let _ = f.rejected.remove_label_values(&[&self.route, reason]);
        }
        let _ = f.unbuffered.remove_label_values(&[&self.route]);
        for kind in ["abort", "delay"] {
            let _ = f.faults.remove_label_values(&[&self.route, kind]);
        }
        for stage in ["before_response", "during_body"] {
            let _ = f.cancelled.remove_label_values(&[&self.route, stage]);
        }
        self.remove_service_series();
    }

    /// Drops the series labelled with this route's upstream (the route moved to
    /// another upstream; its route-only series stay).
    pub fn remove_service_series(&self) {
        let f = &self.family;
        for (slot, meth) in METHODS.iter().enumerate() {
            if self.duration[slot].get().is_some() {
                let _ = f
                    .duration
                    .remove_label_values(&[&*self.service, &*self.route, *meth]);
            }
        }
        for (slot, status, _) in self.requests.load().iter() {
            let mut b = itoa_u16(*status);
            let _ = f.requests.remove_label_values(&[
                &self.service,
                &self.route,
                METHODS[*slot],
                status_str(&mut b),
            ]);
        }
    }
}

fn itoa_u16(v: u16) -> [u8; 5] {
    let mut b = [b' '; 5];
    let mut v = v;
    let mut i = 5;
    loop {
        i -= 1;
        b[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    b
}

fn status_str(b: &mut [u8; 5]) -> &str {
    let start = b.iter().position(|&c| c != b' ').unwrap_or(4);
    std::str::from_utf8(&b[start..]).unwrap_or("0")
}

/// Handles of one upstream.
#[derive(Debug)]
pub struct UpstreamMetrics {
    family: Arc<Metrics>,
    service: Arc<str>,
    pub retry_connect: IntCounter,
    pub retry_timeout: IntCounter,
    pub retry_reset: IntCounter,
    /// One per status in `retry_status_codes` (`reason` = `status_503`, ...).
    pub retry_status: Vec<(u16, IntCounter)>,
    /// One per code in `retry_grpc_codes` (`reason` = `grpc_14`, ...).
    pub retry_grpc: Vec<(u8, IntCounter)>,
    pub fallback_static: IntCounter,
    pub fallback_upstream: IntCounter,
    pub pool_wait: Histogram,
    pub attempts: Histogram,
}

impl UpstreamMetrics {
    pub fn new(
        m: &Arc<Metrics>,
        service: &str,
        retry_codes: &[u16],
        grpc_codes: &[u8],
    ) -> UpstreamMetrics {
        let r = |reason: &str| m.retries.with_label_values(&[service, reason]);
        UpstreamMetrics {
            retry_connect: r("connect_failure"),
            retry_timeout: r("timeout"),
            retry_reset: r("reset"),
            retry_status: retry_codes
                .iter()
                .map(|c| (*c, r(&format!("status_{c}"))))
                .collect(),
            retry_grpc: grpc_codes
                .iter()
                .map(|c| (*c, r(&format!("grpc_{c}"))))
                .collect(),
            fallback_static: m.fallbacks.with_label_values(&[service, "static"]),
            fallback_upstream: m.fallbacks.with_label_values(&[service, "upstream"]),
            pool_wait: m.pool_wait.with_label_values(&[service]),
            attempts: m.attempts.with_label_values(&[service]),
            family: m.clone(),
            service: service.into(),
        }
    }

    pub fn retry_for_status(&self, status: u16) -> Option<&IntCounter> {
        self.retry_status
            .iter()
            .find(|(c, _)| *c == status)
            .map(|(_, c)| c)
    }

    pub fn retry_for_grpc(&self, code: u8) -> Option<&IntCounter> {
        self.retry_grpc
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, c)| c)
    }

    /// Drops every series of this upstream (removed by a reload).
    pub fn remove(&self) {
        let f = &self.family;
        let s: &str = &self.service;
        for reason in ["connect_failure", "timeout", "reset"] {
            let _ = f.retries.remove_label_values(&[s, reason]);
        }
        for (c, _) in &self.retry_status {
            let _ = f.retries.remove_label_values(&[s, &format!("status_{c}")]);
        }
        for (c, _) in &self.retry_grpc {
            let _ = f.retries.remove_label_values(&[s, &format!("grpc_{c}")]);
        }
        for kind in ["static", "upstream"] {
            let _ = f.fallbacks.remove_label_values(&[s, kind]);
        }
        let _ = f.pool_wait.remove_label_values(&[s]);
        let _ = f.attempts.remove_label_values(&[s]);
    }
}

/// Handles of one endpoint of one upstream (labels `service`, `endpoint`): held by the
/// endpoint's state that survives reloads, and removed when it goes.
#[derive(Debug)]
pub struct EndpointMetrics {
    family: Arc<Metrics>,
    service: Arc<str>,
    endpoint: Arc<str>,
    pub conns_active: IntGauge,
    pub conns_idle: IntGauge,
    /// Per attempt, until response headers.
    pub duration: Histogram,
    /// `gateway_upstream_concurrency_limit`: exported only while the upstream has an
    /// adaptive limit (a 0 would read as "limit 0"); see [`EndpointMetrics::set_limit`].
    concurrency_limit: arc_swap::ArcSwapOption<IntGauge>,
}

impl EndpointMetrics {
    pub fn new(m: &Arc<Metrics>, service: &str, endpoint: &str) -> EndpointMetrics {
        EndpointMetrics {
            conns_active: m
                .connections
                .with_label_values(&[service, endpoint, "active"]),
            conns_idle: m
                .connections
                .with_label_values(&[service, endpoint, "idle"]),
            duration: m.upstream_duration.with_label_values(&[service, endpoint]),
            concurrency_limit: arc_swap::ArcSwapOption::empty(),
            family: m.clone(),
            service: service.into(),
            endpoint: endpoint.into(),
        }
    }

    /// Sets the adaptive limit's gauge, exporting its series if it was not.
    pub fn set_limit(&self, limit: usize) {
        let v = i64::try_from(limit).unwrap_or(i64::MAX);
        if let Some(g) = self.concurrency_limit.load().as_ref() {
            g.set(v);
            return;
        }
        let g = self
            .family
            .concurrency_limit
            .with_label_values(&[&self.service, &self.endpoint]);
        g.set(v);
        self.concurrency_limit.store(Some(std::sync::Arc::new(g)));
    }

    /// The upstream has no adaptive limit (any more): its gauge is not exported.
    pub fn clear_limit(&self) {
        if self.concurrency_limit.swap(None).is_some() {
            let _ = self
                .family
                .concurrency_limit
                .remove_label_values(&[&self.service, &self.endpoint]);
        }
    }

    /// Drops the endpoint's series (it left its upstream).
    pub fn remove(&self) {
        let f = &self.family;
        let (s, e): (&str, &str) = (&self.service, &self.endpoint);
        for st in ["active", "idle"] {
            let _ = f.connections.remove_label_values(&[s, e, st]);
        }
        let _ = f.upstream_duration.remove_label_values(&[s, e]);
        let _ = f.concurrency_limit.remove_label_values(&[s, e]);
    }
}

/// Handles of one breaker set (labels `service`, `endpoint`, `route`; `route` is empty
/// for the upstream's own breakers).
#[derive(Debug)]
pub struct BreakerMetrics {
    family: Arc<Metrics>,
    labels: [Arc<str>; 3],
    pub state: IntGauge,
    /// Entered closed, open, half_open.
    pub changes: [IntCounter; 3],
}

impl BreakerMetrics {
    pub fn new(m: &Arc<Metrics>, service: &str, endpoint: &str, route: &str) -> BreakerMetrics {
        BreakerMetrics {
            state: m
                .breaker_state
                .with_label_values(&[service, endpoint, route]),
            changes: ["closed", "open", "half_open"].map(|s| {
                m.breaker_changes
                    .with_label_values(&[service, endpoint, route, s])
            }),
            family: m.clone(),
            labels: [service.into(), endpoint.into(), route.into()],
        }
    }

    pub fn remove(&self) {
        let f = &self.family;
        let [s, e, r] = &self.labels;
        let (s, e, r): (&str, &str, &str) = (s, e, r);
        let _ = f.breaker_state.remove_label_values(&[s, e, r]);
        for st in ["closed", "open", "half_open"] {
            let _ = f.breaker_changes.remove_label_values(&[s, e, r, st]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_and_counts() {
        let m = Metrics::new();
        let r = RouteMetrics::new(&m, "detect", "yolo");
        r.observe(&Method::GET, 200, 0.01);
        r.observe(&Method::GET, 200, 0.01);
        r.observe(&Method::POST, 503, 0.01);
        let text = m.render();
        assert!(text.contains(r#"gateway_proxy_requests_total{method="GET",route="detect",service="yolo",status="200"} 2"#), "{text}");
        assert!(text.contains(r#"gateway_proxy_requests_total{method="POST",route="detect",service="yolo",status="503"} 1"#), "{text}");
        r.remove();
        assert!(!m.render().contains("gateway_proxy_requests_total{"));
    }

    #[test]
    fn itoa() {
        let mut b = itoa_u16(7);
        assert_eq!(status_str(&mut b), "7");
        let mut b = itoa_u16(503);
        assert_eq!(status_str(&mut b), "503");
    }
}
