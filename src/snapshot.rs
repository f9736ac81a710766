//! Everything built from one [`Config`]: the route table, the upstreams with their pools
//! and endpoints, and the per-route handles the request path needs. Held in one
//! `ArcSwap<Snapshot>` ([`SnapshotCell`]), loaded once per request and swapped whole on
//! reload, so a request finishes on the config it started with.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;

use crate::config::{Config, Protocol, RouteConfig};
use crate::proxy::correlate::HeaderPolicy;
use crate::proxy::route::Router;
use crate::upstream::Upstream;

/// A route with its upstream resolved (per request: read only).
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub cfg: RouteConfig,
    pub upstream: Arc<Upstream>,
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
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("upstream '{0}': protocol {1:?} needs TLS, which this build does not support yet")]
    Unsupported(String, Protocol),
    #[error("route '{0}' names unknown upstream '{1}'")]
    UnknownUpstream(String, String),
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
    ) -> Result<Snapshot, BuildError> {
        let mut upstreams = HashMap::new();
        for (name, ucfg) in &config.upstreams {
            if matches!(ucfg.protocol, Protocol::Https | Protocol::H2) {
                return Err(BuildError::Unsupported(name.clone(), ucfg.protocol));
            }
            let prev = previous.and_then(|p| p.upstreams.get(name)).map(|u| &**u);
            upstreams.insert(name.clone(), Arc::new(Upstream::build(ucfg, prev)));
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            // Validation already refuses this; kept so a build can never index wrongly.
            let up = upstreams
                .get(&r.upstream)
                .ok_or_else(|| BuildError::UnknownUpstream(r.name.clone(), r.upstream.clone()))?;
            routes.push(Route {
                name: r.name.as_str().into(),
                cfg: r.clone(),
                upstream: up.clone(),
            });
        }
        let router = Router::build(&config.routes);
        let service_name =
            HeaderValue::from_str(&config.service.name).map_err(|_| BuildError::ServiceName)?;
        let proto = if config.listener.tls.is_some() { "https" } else { "http" };
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
            config: Arc::new(config),
        })
    }

    /// Resolves DNS names of every upstream once and starts their refreshers.
    pub async fn start_background(&self) {
        for up in self.upstreams.values() {
            up.refresh_dns().await;
            up.spawn_dns_refresher();
        }
    }
}

/// The current snapshot; one atomic load per request.
pub type SnapshotCell = ArcSwap<Snapshot>;
