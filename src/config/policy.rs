//! Validation of the policy tables of an upstream: pool, timeouts, circuit breaker,
//! retry, health check, fallback and TLS (a route's admission tables are in
//! `admission.rs`). Breaker and retry tables are read over a base (the defaults for an
//! upstream, the upstream's values for a route), so a route overrides key by key.

use std::time::Duration;

use http::HeaderValue;

use super::ctx::Ctx;
use super::defaults::*;
use super::error::Path;
use super::file::*;
use super::types::*;

pub fn pool(cx: &mut Ctx, f: &PoolFile, p: &Path) -> PoolConfig {
    let d = PoolConfig::default();
    PoolConfig {
        max_connections_per_host: cx.int(
            &p.key("max_connections_per_host"),
            f.max_connections_per_host,
            d.max_connections_per_host,
            POOL_MAX_CONNECTIONS_PER_HOST_BOUNDS,
        ),
        max_idle_per_host: cx.int(
            &p.key("max_idle_per_host"),
            f.max_idle_per_host,
            d.max_idle_per_host,
            POOL_MAX_IDLE_PER_HOST_BOUNDS,
        ),
        idle_timeout: cx.duration(
            &p.key("idle_timeout"),
            f.idle_timeout.as_ref(),
            d.idle_timeout,
            POOL_IDLE_TIMEOUT_BOUNDS,
        ),
    }
}

pub fn timeouts(cx: &mut Ctx, f: &TimeoutsFile, p: &Path) -> TimeoutsConfig {
    let d = TimeoutsConfig::default();
    TimeoutsConfig {
        connect: cx.duration(
            &p.key("connect"),
            f.connect.as_ref(),
            d.connect,
            CONNECT_TIMEOUT_BOUNDS,
        ),
        request: cx.duration(
            &p.key("request"),
            f.request.as_ref(),
            d.request,
            REQUEST_TIMEOUT_BOUNDS,
        ),
        idle: cx.duration(
            &p.key("idle"),
            f.idle.as_ref(),
            d.idle,
            UPSTREAM_IDLE_TIMEOUT_BOUNDS,
        ),
    }
}

/// `f` over `base`: each key written replaces the base's value.
pub fn breaker(cx: &mut Ctx, f: &BreakerFile, base: &BreakerConfig, p: &Path) -> BreakerConfig {
    let mark = cx.mark();
    let recovery_timeout = cx.duration(
        &p.key("recovery_timeout"),
        f.recovery_timeout.as_ref(),
        base.recovery_timeout,
        RECOVERY_TIMEOUT_BOUNDS,
    );
    let max_recovery_timeout = cx.duration(
        &p.key("max_recovery_timeout"),
        f.max_recovery_timeout.as_ref(),
        base.max_recovery_timeout,
        MAX_RECOVERY_TIMEOUT_BOUNDS,
    );
    if max_recovery_timeout < recovery_timeout
        && (f.recovery_timeout.is_some() || f.max_recovery_timeout.is_some())
        && cx.mark() == mark
    {
        let key = if f.max_recovery_timeout.is_some() {
            "max_recovery_timeout"
        } else {
            "recovery_timeout"
        };
        let msg = format!(
            "max_recovery_timeout ({}) must be at least recovery_timeout ({})",
            show(max_recovery_timeout),
            show(recovery_timeout)
        );
        cx.problem(&p.key(key), msg);
    }

    let window = cx.opt_duration(&p.key("window"), f.window.as_ref(), WINDOW_BOUNDS);
    let base_rate = base.error_rate.as_ref();
    let error_rate = match window.or(base_rate.map(|e| e.window)) {
        // A window written but refused still has the keys that need it checked.
        w if w.is_some() || f.window.is_some() => {
            let etp = p.key("error_threshold_percentage");
            let default_pct = base_rate.map_or(DEFAULT_ERROR_THRESHOLD_PERCENTAGE, |e| {
                e.error_threshold_percentage
            });
            let pct = cx.percent(&etp, f.error_threshold_percentage, default_pct);
            if f.error_threshold_percentage == Some(0.0) {
                cx.problem(
                    &etp,
                    "must be greater than 0 (0 would open on the first failure)",
                );
            }
            let request_volume_threshold = cx.int(
                &p.key("request_volume_threshold"),
                f.request_volume_threshold,
                base_rate.map_or(DEFAULT_REQUEST_VOLUME_THRESHOLD, |e| {
                    e.request_volume_threshold
                }),
                REQUEST_VOLUME_THRESHOLD_BOUNDS,
            );
            w.map(|window| ErrorRateConfig {
                window,
                request_volume_threshold,
                error_threshold_percentage: pct,
            })
        }
        _ => {
            needs(
                cx,
                p,
                "request_volume_threshold",
                f.request_volume_threshold.is_some(),
                "window",
            );
            needs(
                cx,
                p,
                "error_threshold_percentage",
                f.error_threshold_percentage.is_some(),
                "window",
            );
            None
        }
    };

    let slow_call_duration = cx
        .opt_duration(
            &p.key("slow_call_duration"),
            f.slow_call_duration.as_ref(),
            SLOW_CALL_DURATION_BOUNDS,
        )
        .or(base.slow_call_duration);
    if f.slow_call_rate_threshold == Some(0.0) {
        cx.problem(
            &p.key("slow_call_rate_threshold"),
            "must be greater than 0 (0 would open on healthy, fast traffic: a share of 0 slow calls reaches it)",
        );
    }
    if slow_call_duration.is_none() && f.slow_call_duration.is_none() {
        needs(
            cx,
            p,
            "slow_call_rate_threshold",
            f.slow_call_rate_threshold.is_some(),
            "slow_call_duration",
        );
    }

    let pb = p.key("partition_by");
    let partition_by = match cx.opt_string(&pb, f.partition_by.as_ref()) {
        None => base.partition_by.clone(),
        Some(s) => match cx.header_key(&pb, &s) {
            Some(name) => name.map(PartitionKey::Header),
            None => {
                cx.problem(
                    &pb,
                    format!("unknown partition key {s:?}; expected \"header:NAME\""),
                );
                None
            }
        },
    };

    BreakerConfig {
        failure_threshold: cx.int(
            &p.key("failure_threshold"),
            f.failure_threshold,
            base.failure_threshold,
            FAILURE_THRESHOLD_BOUNDS,
        ),
        recovery_timeout,
        success_threshold: cx.int(
            &p.key("success_threshold"),
            f.success_threshold,
            base.success_threshold,
            SUCCESS_THRESHOLD_BOUNDS,
        ),
        half_open_max_requests: cx.int(
            &p.key("half_open_max_requests"),
            f.half_open_max_requests,
            base.half_open_max_requests,
            HALF_OPEN_MAX_REQUESTS_BOUNDS,
        ),
        max_recovery_timeout,
        failure_status_codes: cx.status_codes(
            &p.key("failure_status_codes"),
            f.failure_status_codes.as_ref(),
            &base.failure_status_codes,
        ),
        failure_grpc_codes: cx.grpc_codes(
            &p.key("failure_grpc_codes"),
            f.failure_grpc_codes.as_ref(),
            &base.failure_grpc_codes,
        ),
        error_rate,
        slow_call_duration,
        slow_call_rate_threshold: cx.percent(
            &p.key("slow_call_rate_threshold"),
            f.slow_call_rate_threshold,
            base.slow_call_rate_threshold,
        ),
        partition_by,
        max_partitions: cx.int(
            &p.key("max_partitions"),
            f.max_partitions,
            base.max_partitions,
            MAX_PARTITIONS_BOUNDS,
        ),
        jitter: f.jitter.unwrap_or(base.jitter),
    }
}

/// `f` over `base`: each key written replaces the base's value.
pub fn retry(cx: &mut Ctx, f: &RetryFile, base: &RetryConfig, p: &Path) -> RetryConfig {
    let mark = cx.mark();
    let base_delay = cx.duration(
        &p.key("base_delay"),
        f.base_delay.as_ref(),
        base.base_delay,
        RETRY_DELAY_BOUNDS,
    );
    let max_delay = cx.duration(
        &p.key("max_delay"),
        f.max_delay.as_ref(),
        base.max_delay,
        RETRY_DELAY_BOUNDS,
    );
    if max_delay < base_delay
        && (f.base_delay.is_some() || f.max_delay.is_some())
        && cx.mark() == mark
    {
        let key = if f.max_delay.is_some() {
            "max_delay"
        } else {
            "base_delay"
        };
        let msg = format!(
            "max_delay ({}) must be at least base_delay ({})",
            show(max_delay),
            show(base_delay)
        );
        cx.problem(&p.key(key), msg);
    }
    RetryConfig {
        max_retries: cx.int(
            &p.key("max_retries"),
            f.max_retries,
            base.max_retries,
            MAX_RETRIES_BOUNDS,
        ),
        base_delay,
        max_delay,
        jitter: f.jitter.unwrap_or(base.jitter),
        retry_status_codes: cx.status_codes(
            &p.key("retry_status_codes"),
            f.retry_status_codes.as_ref(),
            &base.retry_status_codes,
        ),
        retry_grpc_codes: cx.grpc_codes(
            &p.key("retry_grpc_codes"),
            f.retry_grpc_codes.as_ref(),
            &base.retry_grpc_codes,
        ),
        retry_non_idempotent: f.retry_non_idempotent.unwrap_or(base.retry_non_idempotent),
        max_replay_body: cx.size(
            &p.key("max_replay_body"),
            f.max_replay_body.as_ref(),
            base.max_replay_body,
            MAX_REPLAY_BODY_BOUNDS,
        ),
        budget_percent: cx.percent(
            &p.key("budget_percent"),
            f.budget_percent,
            base.budget_percent,
        ),
        budget_min_per_second: cx.int(
            &p.key("budget_min_per_second"),
            f.budget_min_per_second,
            base.budget_min_per_second,
            BUDGET_MIN_PER_SECOND_BOUNDS,
        ),
    }
}

pub fn health_check(cx: &mut Ctx, f: &HealthCheckFile, p: &Path) -> HealthCheckConfig {
    let path = cx.nonempty(&p.key("path"), f.path.as_ref(), DEFAULT_HEALTH_CHECK_PATH);
    if !path.starts_with('/') {
        cx.problem(&p.key("path"), format!("{path:?} must start with `/`"));
    } else if http::uri::PathAndQuery::try_from(path.as_str()).is_err() {
        // Every probe would fail to build, and the endpoint be marked unhealthy.
        cx.problem(
            &p.key("path"),
            format!("{path:?} is not a valid request path (spaces and controls must be percent-encoded)"),
        );
    }
    HealthCheckConfig {
        path,
        interval: cx.duration(
            &p.key("interval"),
            f.interval.as_ref(),
            DEFAULT_HEALTH_CHECK_INTERVAL,
            HEALTH_CHECK_INTERVAL_BOUNDS,
        ),
        timeout: cx.duration(
            &p.key("timeout"),
            f.timeout.as_ref(),
            DEFAULT_HEALTH_CHECK_TIMEOUT,
            HEALTH_CHECK_TIMEOUT_BOUNDS,
        ),
        unhealthy_threshold: cx.int(
            &p.key("unhealthy_threshold"),
            f.unhealthy_threshold,
            DEFAULT_UNHEALTHY_THRESHOLD,
            HEALTH_THRESHOLD_BOUNDS,
        ),
        healthy_threshold: cx.int(
            &p.key("healthy_threshold"),
            f.healthy_threshold,
            DEFAULT_HEALTHY_THRESHOLD,
            HEALTH_THRESHOLD_BOUNDS,
        ),
    }
}

/// A static answer or another upstream (`names` = every upstream, in file order).
pub fn fallback(
    cx: &mut Ctx,
    f: &FallbackFile,
    own: &str,
    names: &[&str],
    p: &Path,
) -> Option<FallbackConfig> {
    if let Some(raw) = &f.upstream {
        let up = p.key("upstream");
        if f.status.is_some() || f.content_type.is_some() || f.body.is_some() {
            cx.problem(&up, "a fallback is either `upstream` or a static answer (`status`, `content_type`, `body`), not both");
            return None;
        }
        let name = cx.string(&up, raw)?;
        if name == own {
            cx.problem(&up, format!("upstream {own:?} cannot be its own fallback"));
        } else if !names.contains(&name.as_str()) {
            cx.problem(&up, unknown_upstream(&name, names));
        }
        return Some(FallbackConfig::Upstream(name));
    }
    let status = match f.status {
        Some(s) => cx.answer_status(&p.key("status"), s)?,
        None => http::StatusCode::from_u16(DEFAULT_FALLBACK_STATUS).ok()?,
    };
    let content_type = match &f.content_type {
        Some(ct) => cx.header_value(&p.key("content_type"), ct)?,
        None => HeaderValue::from_static(DEFAULT_FALLBACK_CONTENT_TYPE),
    };
    let body = cx
        .opt_string(&p.key("body"), f.body.as_ref())
        .unwrap_or_default();
    Some(FallbackConfig::Static {
        status,
        content_type,
        body: body.into(),
    })
}

pub fn upstream_tls(
    cx: &mut Ctx,
    f: &UpstreamTlsFile,
    protocol: Protocol,
    p: &Path,
) -> UpstreamTls {
    if !matches!(protocol, Protocol::Https | Protocol::H2) {
        cx.problem(p, "a `tls` table needs protocol \"https\" or \"h2\"");
    }
    let client_cert = cx.opt_string(&p.key("client_cert"), f.client_cert.as_ref());
    let client_key = cx.opt_string(&p.key("client_key"), f.client_key.as_ref());
    if f.client_cert.is_some() != f.client_key.is_some() {
        cx.problem(
            p,
            "`client_cert` and `client_key` go together: give both or neither",
        );
    }
    let server_name = cx.opt_string(&p.key("server_name"), f.server_name.as_ref());
    if server_name.as_ref().is_some_and(|s| s.trim().is_empty()) {
        cx.problem(&p.key("server_name"), "must not be empty");
    } else if let Some(s) = server_name.as_deref() {
        // rustls takes a DNS name or an IP address; anything else would be dropped at
        // run time (no SNI, the certificate checked against the endpoint's address).
        if rustls::pki_types::ServerName::try_from(s).is_err() {
            cx.problem(
                &p.key("server_name"),
                format!("{s:?} is not a DNS name or an IP address"),
            );
        }
    }
    let ca = cx.opt_string(&p.key("ca"), f.ca.as_ref());
    let mut all_readable = true;
    for (k, v) in [
        ("ca", &ca),
        ("client_cert", &client_cert),
        ("client_key", &client_key),
    ] {
        if let Some(v) = v {
            all_readable &= cx.readable_file(&p.key(k), v);
        }
    }
    let tls = UpstreamTls {
        ca: ca.map(Into::into),
        server_name,
        client_cert: client_cert.map(Into::into),
        client_key: client_key.map(Into::into),
    };
    // Read as `run` reads them: a file that is there but holds no usable certificate
    // or key (or a certificate and key that do not match) is refused here, located;
    // without `ca`, the system's roots are loaded as `run` loads them (a slim image
    // with no CA bundle is refused by `validate`, not first by `run`).
    let tls_protocol = matches!(protocol, Protocol::Https | Protocol::H2);
    let pair = tls.client_cert.is_some() == tls.client_key.is_some();
    if tls_protocol && pair && all_readable {
        if let Err(e) = crate::tls::client_config(Some(&tls), protocol == Protocol::H2) {
            cx.problem(p, e.to_string());
        }
    }
    tls
}

/// `unknown upstream "x"; expected one of: a, b`.
pub fn unknown_upstream(name: &str, names: &[&str]) -> String {
    if names.is_empty() {
        format!(
            "unknown upstream {name:?}; no upstreams are defined (add an [upstreams.{name}] table)"
        )
    } else {
        format!(
            "unknown upstream {name:?}; expected one of: {}",
            names.join(", ")
        )
    }
}

/// Records that `key` was written without the key that turns its mode on.
pub fn needs(cx: &mut Ctx, p: &Path, key: &str, given: bool, mode_key: &str) {
    if given {
        cx.problem(
            &p.key(key),
            format!("has no effect without `{mode_key}`, which turns this mode on"),
        );
    }
}

fn show(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}
