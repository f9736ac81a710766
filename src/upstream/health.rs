//! Active health checks (`health_check`): every `interval`, a `GET path` to each
//! endpoint over the endpoint's own probe connection, outside the data pool's
//! `max_connections_per_host`, so a probe never queues behind inference traffic and a
//! busy endpoint that answers its probe in time stays healthy. `unhealthy_threshold` consecutive failures
//! (no 2xx within `timeout`) take an endpoint out of the balancer; `healthy_threshold`
//! consecutive passes bring it back (with slow start, when configured). Independent of
//! the breaker: the breaker judges live traffic, the checks judge an idle endpoint too.
//! The task stops by itself once a reload dropped its upstream.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use http::{Request, Uri};
use tokio::time::{Instant, MissedTickBehavior};

use super::{Endpoint, Upstream};
use crate::body::ReqBody;
use crate::config::{HealthCheckConfig, Protocol};

impl Upstream {
    /// Starts the checks when the upstream has a `health_check` table.
    pub fn spawn_health_checks(self: &Arc<Self>) {
        let Some(hc) = self.cfg.health_check.clone() else {
            // No checks (any more): no verdict holds an endpoint out of rotation. A
            // reload that removed the table would otherwise leave the last
            // "unhealthy" in force with nothing left to lift it.
            for ep in self.endpoints().iter() {
                let core = &*ep.core;
                core.health_fails.store(0, Ordering::Relaxed);
                core.health_streak.store(0, Ordering::Relaxed);
                if !core.is_healthy() {
                    core.set_healthy(true);
                    tracing::info!(event = "health_change", upstream = %self.name, endpoint = %core.key, healthy = true, "endpoint healthy: no health checks are configured");
                }
            }
            return;
        };
        let weak: Weak<Upstream> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(hc.interval);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(up) = weak.upgrade() else { break };
                if up.is_retired() {
                    break;
                }
                let eps = up.endpoints();
                let checks = eps.iter().map(|ep| check_one(&up, ep, &hc));
                futures_util::future::join_all(checks).await;
            }
        });
    }
}

async fn check_one(up: &Upstream, ep: &Arc<Endpoint>, hc: &HealthCheckConfig) {
    let ok = probe(up, ep, hc).await;
    record(up, ep, hc, ok);
}

async fn probe(up: &Upstream, ep: &Endpoint, hc: &HealthCheckConfig) -> bool {
    // HTTP/1.1 sends the origin form; HTTP/2 needs scheme and authority.
    let uri = match up.cfg.protocol {
        Protocol::Http1 | Protocol::Https => Uri::try_from(hc.path.as_str()).ok(),
        Protocol::H2c | Protocol::H2 => Uri::builder()
            .scheme(if up.cfg.protocol == Protocol::H2 {
                "https"
            } else {
                "http"
            })
            .authority(ep.authority.clone())
            .path_and_query(hc.path.as_str())
            .build()
            .ok(),
    };
    let Some(uri) = uri else { return false };
    let mut req = Request::get(uri).header(http::header::USER_AGENT, "fusebox-health-check");
    if matches!(up.cfg.protocol, Protocol::Http1 | Protocol::Https) {
        // HTTP/2 carries it as `:authority` (RFC 9113 8.3.1), as proxied requests do.
        req = req.header(http::header::HOST, ep.authority.as_str());
    }
    let req = req.body(ReqBody::Empty);
    let Ok(req) = req else { return false };
    let pool = ep.core.probe_pool.load_full();
    let check = async move {
        let mark = crate::upstream::pool::LeaseMark::default();
        let (resp, lease) = pool.send(req, &mark).await.ok()?;
        let ok = resp.status().is_success();
        // Read the (small) body so the connection can be reused.
        if http_body_util::BodyExt::collect(resp.into_body())
            .await
            .is_ok()
        {
            if let Some(l) = lease {
                l.release();
            }
        }
        Some(ok)
    };
    matches!(
        tokio::time::timeout(hc.timeout, check).await,
        Ok(Some(true))
    )
}

/// Applies one check result to the endpoint's verdict.
pub fn record(up: &Upstream, ep: &Endpoint, hc: &HealthCheckConfig, ok: bool) {
    let ep = &*ep.core;
    let healthy = ep.is_healthy();
    if ok {
        ep.health_fails.store(0, Ordering::Relaxed);
        if !healthy {
            let streak = ep.health_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if streak >= hc.healthy_threshold {
                ep.health_streak.store(0, Ordering::Relaxed);
                ep.set_healthy(true);
                ep.mark_recovered(Instant::now());
                tracing::info!(event = "health_change", upstream = %up.name, endpoint = %ep.key, healthy = true, "endpoint healthy");
            }
        }
    } else {
        ep.health_streak.store(0, Ordering::Relaxed);
        if healthy {
            let fails = ep.health_fails.fetch_add(1, Ordering::Relaxed) + 1;
            if fails >= hc.unhealthy_threshold {
                ep.health_fails.store(0, Ordering::Relaxed);
                ep.set_healthy(false);
                tracing::warn!(event = "health_change", upstream = %up.name, endpoint = %ep.key, healthy = false, "endpoint unhealthy");
            }
        }
    }
}
