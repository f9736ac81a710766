//! Everything built from one [`Config`]: the route table, the upstreams with their
//! breaker policies and endpoints, and the per-route handles the request path needs.
//! Held in one `ArcSwap<Snapshot>` ([`SnapshotCell`]), loaded once per request and
//! swapped whole on reload, so a request finishes on the config it started with.
//!
//! Built on reload only, never per request. What must outlive a config lives in
//! [`Shared`] (one per process): the metric families, the endpoint registry (cores and
//! breaker sets by identity) and the replay-buffer budget. Route-level state that a
//! reload should not reset (rate-limit buckets, concurrency slots and queues, retry
//! budgets) is carried over from the previous snapshot while its settings stay.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;

use crate::admission::{Concurrency, Fault, RateLimiter};
use crate::body::ReplayBudget;
use crate::config::{
    ConcurrencyConfig, Config, FallbackConfig, Protocol, RateLimitConfig, RetryConfig, RouteConfig,
};
use crate::metrics::{Metrics, RouteMetrics};
use crate::router::Router;
use crate::tls;
use crate::upstream::breakers::BreakerPolicy;
use crate::upstream::registry::Registry;
use crate::upstream::retry::{RetryBudget, RetryPolicy};
use crate::upstream::Upstream;

/// The process's state that outlives any one config. One per process (and per test
/// proxy): built at start, handed to every snapshot build.
#[derive(Debug)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Registry>,
    /// Request-body bytes held for replay, process-wide (`[limits]`).
    pub replay: Arc<ReplayBudget>,
    /// Span export, when `[tracing]` is set (read at start: a restart applies a change).
    pub tracing: Option<crate::otel::Tracing>,
}

impl Shared {
    /// Without tracing (tests, benches).
    pub fn new() -> Arc<Shared> {
        Shared::assemble(Metrics::new(), None)
    }

    fn assemble(metrics: Arc<Metrics>, tracing: Option<crate::otel::Tracing>) -> Arc<Shared> {
        Arc::new(Shared {
            registry: Registry::new(&metrics),
            replay: ReplayBudget::new(crate::config::DEFAULT_MAX_BUFFERED_BODY_BYTES),
            tracing,
            metrics,
        })
    }

    /// With span export per `[tracing]` (`None`: off).
    pub fn with_tracing(
        tracing: Option<&crate::config::TracingConfig>,
    ) -> Result<Arc<Shared>, crate::otel::OtelError> {
        let metrics = Metrics::new();
        let tracing = match tracing {
            None => None,
            Some(t) => Some(crate::otel::Tracing::new(
                crate::otel::OtelSettings {
                    endpoint: t.otlp_endpoint.to_string(),
                    headers: t.headers.clone(),
                    sample_ratio: t.sample_ratio,
                    service_name: t.service_name.clone(),
                    max_queue: t.max_queue,
                    export_timeout: t.export_timeout,
                },
                metrics.tracing_spans_dropped.clone(),
            )?),
        };
        Ok(Shared::assemble(metrics, tracing))
    }
}

/// What the request path needs to apply the header rules, built once per config.
#[derive(Debug, Clone)]
pub struct HeaderPolicy {
    pub service_name: HeaderValue,
    /// `X-Forwarded-Proto` value of the listener.
    pub proto: HeaderValue,
}

/// The upstream a route falls back to, with its own retry policy.
#[derive(Debug)]
pub struct FallbackRoute {
    pub upstream: Arc<Upstream>,
    pub retry: RetryPolicy,
}

/// A route with everything it needs resolved (per request: read only).
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub cfg: RouteConfig,
    pub upstream: Arc<Upstream>,
    /// The breaker policy its attempts go through: its own table's slot in the
    /// upstream when it has one, else 0 (the upstream's).
    pub breaker_slot: usize,
    /// The route's retry table merged over the upstream's.
    pub retry: RetryPolicy,
    pub fallback: Option<FallbackRoute>,
    /// Shared with the previous snapshot's route of the same name and upstream.
    pub metrics: Arc<RouteMetrics>,
    /// Carried over on reload while its settings stay (buckets keep their tokens).
    pub rate_limit: Option<Arc<RateLimiter>>,
    /// Carried over on reload while its settings stay, so requests admitted under the
    /// old config still count against the cap and queued ones keep their place.
    pub concurrency: Option<Arc<Concurrency>>,
    pub fault: Option<Fault>,
    pub replay_budget: Arc<ReplayBudget>,
}

/// One config, built.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    /// Short content hash of the config text (the `config_version`).
    pub version: String,
    pub service: Arc<str>,
    pub router: Router,
    pub routes: Vec<Route>,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub headers: HeaderPolicy,
    pub metrics: Arc<Metrics>,
    /// Counts requests answered before a route was known (`route=""`, `service=""`).
    pub unrouted: Arc<RouteMetrics>,
    pub shared: Arc<Shared>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// (The TLS error is in the message, not also a source: a chain printed with
    /// `{:#}` would say it twice.)
    #[error("upstream '{0}': {1}")]
    Tls(String, Box<tls::TlsError>),
    #[error("route '{0}' names unknown upstream '{1}'")]
    UnknownUpstream(String, String),
    #[error("{0}: retry policy: {1}")]
    Retry(String, String),
    #[error("service.name is not a valid header value")]
    ServiceName,
}

fn policy(cfg: &RetryConfig, owner: &str) -> Result<RetryPolicy, BuildError> {
    RetryPolicy::new(cfg).map_err(|e| BuildError::Retry(owner.to_string(), e.to_string()))
}

fn same_rate(a: &RateLimitConfig, b: &RateLimitConfig) -> bool {
    a.requests_per_second == b.requests_per_second
        && a.burst == b.burst
        && a.key == b.key
        && a.max_keys == b.max_keys
}

fn same_concurrency(a: &ConcurrencyConfig, b: &ConcurrencyConfig) -> bool {
    a.max_in_flight == b.max_in_flight
        && a.max_queue == b.max_queue
        && a.queue_timeout == b.queue_timeout
}

impl Snapshot {
    /// Builds a snapshot; endpoint state comes from the registry by identity, route
    /// state from `previous` while its settings stay.
    pub fn build(
        config: Config,
        version: String,
        previous: Option<&Snapshot>,
        shared: &Arc<Shared>,
    ) -> Result<Snapshot, BuildError> {
        // Every fallible read first (the CA or the system roots and the client
        // certificate, once per upstream per build; unchanged files keep the previous
        // config object): building an upstream touches the endpoint cores the running
        // build shares (adaptive limits), so a refused reload must fail before any is
        // built.
        let mut tls_of = HashMap::new();
        for (name, ucfg) in &config.upstreams {
            let tls = match ucfg.protocol {
                Protocol::Https | Protocol::H2 => Some(
                    shared
                        .registry
                        .tls_config(name, ucfg.tls.as_ref(), ucfg.protocol == Protocol::H2)
                        .map_err(|e| BuildError::Tls(name.clone(), Box::new(e)))?,
                ),
                Protocol::Http1 | Protocol::H2c => None,
            };
            tls_of.insert(name.as_str(), tls);
        }
        let mut upstreams = HashMap::new();
        for (name, ucfg) in &config.upstreams {
            let tls = tls_of.remove(name.as_str()).flatten();
            let mut policies = vec![BreakerPolicy {
                route: None,
                cfg: ucfg.circuit_breaker.clone(),
            }];
            for r in config.routes.iter().filter(|r| &r.upstream == name) {
                if let Some(b) = &r.circuit_breaker {
                    policies.push(BreakerPolicy {
                        route: Some(r.name.as_str().into()),
                        cfg: b.clone(),
                    });
                }
            }
            let prev = previous.and_then(|p| p.upstreams.get(name)).map(|u| &**u);
            let route_retries: Vec<&crate::config::RetryConfig> = config
                .routes
                .iter()
                .filter(|r| &r.upstream == name)
                .filter_map(|r| r.retry.as_ref())
                .collect();
            let up = Upstream::build(ucfg, policies, prev, &shared.registry, tls, &route_retries);
            upstreams.insert(name.clone(), Arc::new(up));
        }
        // By name, once: a search per route made a 1,000-route build quadratic.
        let prev_routes: HashMap<&str, &Route> = previous
            .map(|p| p.routes.iter().map(|x| (x.name.as_ref(), x)).collect())
            .unwrap_or_default();
        let mut routes = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            let prev = prev_routes.get(r.name.as_str()).copied();
            routes.push(build_route(r, &upstreams, prev, shared)?);
        }
        let router = Router::build(&config.routes);
        let service_name =
            HeaderValue::from_str(&config.service.name).map_err(|_| BuildError::ServiceName)?;
        // The last fallible step is done: the budget follows the new config at once.
        shared.replay.set_cap(config.limits.max_buffered_body_bytes);
        let proto = if config.listener.tls.is_some() {
            "https"
        } else {
            "http"
        };
        Ok(Snapshot {
            service: config.service.name.as_str().into(),
            headers: HeaderPolicy {
                service_name,
                proto: HeaderValue::from_static(proto),
            },
            router,
            routes,
            upstreams,
            version,
            metrics: shared.metrics.clone(),
            unrouted: previous.map_or_else(
                || Arc::new(RouteMetrics::new(&shared.metrics, "", "")),
                |p| p.unrouted.clone(),
            ),
            shared: shared.clone(),
            config: Arc::new(config),
        })
    }

    /// Starts every upstream's background work: DNS refreshes (the first one at once
    /// when `resolve_now`), health checks, the pool sweeper. Never waits.
    pub fn start_background(&self, resolve_now: bool) {
        for up in self.upstreams.values() {
            up.spawn_dns_refresher(resolve_now);
            up.spawn_health_checks();
            up.spawn_pool_sweeper();
        }
    }

    /// Resolves every DNS name once (each lookup bounded), for the first start.
    pub async fn resolve_all(&self) {
        let all = self.upstreams.values().map(|u| u.refresh_dns());
        futures_util::future::join_all(all).await;
    }
}

fn build_route(
    r: &RouteConfig,
    upstreams: &HashMap<String, Arc<Upstream>>,
    prev: Option<&Route>,
    shared: &Arc<Shared>,
) -> Result<Route, BuildError> {
    // Validation already refuses this; kept so a build can never index wrongly.
    let up = upstreams
        .get(&r.upstream)
        .ok_or_else(|| BuildError::UnknownUpstream(r.name.clone(), r.upstream.clone()))?;
    let mut retry = policy(r.retry.as_ref().unwrap_or(&up.cfg.retry), &r.name)?;
    let same_budget = |a: &RetryConfig, b: &RetryConfig| {
        a.budget_percent == b.budget_percent && a.budget_min_per_second == b.budget_min_per_second
    };
    if !same_budget(&retry.cfg, &up.cfg.retry) {
        // The route's own budget values: a budget of its own, kept across reloads
        // while they stay.
        retry.budget = Some(
            match prev.and_then(|p| p.retry.budget.as_ref().map(|b| (b, &p.retry.cfg))) {
                Some((b, old)) if same_budget(old, &retry.cfg) => b.clone(),
                _ => Arc::new(RetryBudget::from_config(&retry.cfg)),
            },
        );
    }
    let fallback = match &up.cfg.fallback {
        Some(FallbackConfig::Upstream(name)) => match upstreams.get(name) {
            Some(fb) => Some(FallbackRoute {
                upstream: fb.clone(),
                retry: policy(&fb.cfg.retry, name)?,
            }),
            None => return Err(BuildError::UnknownUpstream(r.name.clone(), name.clone())),
        },
        _ => None,
    };
    let rate_limit = r.rate_limit.as_ref().map(|c| {
        match prev.and_then(|p| p.rate_limit.as_ref().zip(p.cfg.rate_limit.as_ref())) {
            Some((old, oc)) if same_rate(oc, c) => old.clone(),
            _ => Arc::new(RateLimiter::new(c)),
        }
    });
    let concurrency = r.concurrency.as_ref().map(|c| {
        match prev.and_then(|p| p.concurrency.as_ref().zip(p.cfg.concurrency.as_ref())) {
            Some((old, oc)) if same_concurrency(oc, c) => old.clone(),
            _ => Arc::new(Concurrency::new(c)),
        }
    });
    Ok(Route {
        breaker_slot: if r.circuit_breaker.is_some() {
            up.slot_of(&r.name).unwrap_or(0)
        } else {
            0
        },
        rate_limit,
        concurrency,
        fault: r.fault.as_ref().map(Fault::new),
        name: r.name.as_str().into(),
        // The handles of an unchanged name and upstream carry over: resolving a
        // route's label values is the costliest part of its build.
        metrics: match prev {
            Some(p) if p.cfg.upstream == r.upstream => p.metrics.clone(),
            _ => Arc::new(RouteMetrics::new(&shared.metrics, &r.name, &r.upstream)),
        },
        cfg: r.clone(),
        upstream: up.clone(),
        retry,
        fallback,
        replay_budget: shared.replay.clone(),
    })
}

/// The current snapshot; one atomic load per request.
pub type SnapshotCell = ArcSwap<Snapshot>;
