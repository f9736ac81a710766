//! Everything built from one [`Config`]: the route table, the upstreams with their pools
//! and endpoints, and the per-route handles the request path needs. Held in one
//! `ArcSwap<Snapshot>` ([`SnapshotCell`]), loaded once per request and swapped whole on
//! reload, so a request finishes on the config it started with.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;

use crate::config::{Config, FallbackConfig, Protocol, RetryConfig, RouteConfig};
use crate::metrics::{Metrics, RouteMetrics};
use crate::proxy::admit::{Concurrency, Fault, RateLimiter};
use crate::proxy::correlate::HeaderPolicy;
use crate::proxy::forward::RetryPolicy;
use crate::proxy::route::Router;
use crate::tls;
use crate::upstream::retry::Backoff;
use crate::upstream::{RouteBreakers, Upstream};

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
    /// The route's retry table merged over the upstream's.
    pub retry: RetryPolicy,
    pub fallback: Option<FallbackRoute>,
    pub metrics: RouteMetrics,
    pub rate_limit: Option<RateLimiter>,
    /// Carried over on reload while its settings stay, so requests admitted under the
    /// old config still count against the cap.
    pub concurrency: Option<Arc<Concurrency>>,
    pub fault: Option<Fault>,
    /// The route's own breakers when it has a `circuit_breaker` table (carried over on
    /// reload while the route keeps its name and upstream).
    pub breakers: Option<Arc<RouteBreakers>>,
}

fn policy(cfg: &RetryConfig, owner: &str) -> Result<RetryPolicy, BuildError> {
    let backoff = Backoff::from_config(cfg)
        .map_err(|e| BuildError::Retry(owner.to_string(), e.to_string()))?;
    Ok(RetryPolicy {
        cfg: cfg.clone(),
        backoff,
    })
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
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("upstream '{0}': {1}")]
    Tls(String, #[source] Box<tls::TlsError>),
    #[error("route '{0}' names unknown upstream '{1}'")]
    UnknownUpstream(String, String),
    #[error("{0}: retry policy: {1}")]
    Retry(String, String),
    #[error("service.name is not a valid header value")]
    ServiceName,
}

impl Snapshot {
    /// Builds a snapshot, carrying endpoint state over from `previous` for upstreams and
    /// endpoints that remain.
    pub fn build(
        config: Config,
        version: String,
        previous: Option<&Snapshot>,
        metrics: &Arc<Metrics>,
    ) -> Result<Snapshot, BuildError> {
        let mut upstreams = HashMap::new();
        for (name, ucfg) in &config.upstreams {
            // Built once per upstream per config build: reads the CA (or the system
            // roots) and the client certificate; a bad file fails the build.
            let tls = match ucfg.protocol {
                Protocol::Https | Protocol::H2 => Some(
                    tls::client_config(ucfg.tls.as_ref(), ucfg.protocol == Protocol::H2)
                        .map_err(|e| BuildError::Tls(name.clone(), Box::new(e)))?,
                ),
                Protocol::Http1 | Protocol::H2c => None,
            };
            let prev = previous.and_then(|p| p.upstreams.get(name)).map(|u| &**u);
            upstreams.insert(
                name.clone(),
                Arc::new(Upstream::build(ucfg, prev, metrics, tls)),
            );
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            // Validation already refuses this; kept so a build can never index wrongly.
            let up = upstreams
                .get(&r.upstream)
                .ok_or_else(|| BuildError::UnknownUpstream(r.name.clone(), r.upstream.clone()))?;
            let retry = policy(r.retry.as_ref().unwrap_or(&up.cfg.retry), &r.name)?;
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
            let prev_route =
                previous.and_then(|p| p.routes.iter().find(|x| x.name.as_ref() == r.name));
            let concurrency = r.concurrency.as_ref().map(|c| {
                match prev_route
                    .and_then(|p| p.concurrency.as_ref().zip(p.cfg.concurrency.as_ref()))
                {
                    Some((old, oc))
                        if oc.max_in_flight == c.max_in_flight
                            && oc.max_queue == c.max_queue
                            && oc.queue_timeout == c.queue_timeout =>
                    {
                        old.clone()
                    }
                    _ => Arc::new(Concurrency::new(c)),
                }
            });
            let breakers = r.circuit_breaker.as_ref().map(|c| {
                match prev_route
                    .filter(|p| p.upstream.name == up.name)
                    .and_then(|p| p.breakers.clone())
                {
                    Some(old) => {
                        old.set_config(c);
                        old
                    }
                    None => Arc::new(RouteBreakers::new(c)),
                }
            });
            routes.push(Route {
                breakers,
                rate_limit: r.rate_limit.as_ref().map(RateLimiter::new),
                concurrency,
                fault: r.fault.as_ref().map(Fault::new),
                name: r.name.as_str().into(),
                metrics: RouteMetrics::new(metrics, &r.name, &r.upstream),
                cfg: r.clone(),
                upstream: up.clone(),
                retry,
                fallback,
            });
        }
        let router = Router::build(&config.routes);
        let service_name =
            HeaderValue::from_str(&config.service.name).map_err(|_| BuildError::ServiceName)?;
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
            metrics: metrics.clone(),
            config: Arc::new(config),
        })
    }

    /// Resolves DNS names of every upstream once and starts their refreshers.
    pub async fn start_background(&self) {
        for up in self.upstreams.values() {
            up.refresh_dns().await;
            up.spawn_dns_refresher();
            up.spawn_health_checks();
            up.spawn_pool_sweeper();
        }
    }
}

/// The current snapshot; one atomic load per request.
pub type SnapshotCell = ArcSwap<Snapshot>;
