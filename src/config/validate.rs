//! File mirror -> `Config` of valid values. Each check records its problem with the TOML
//! path and goes on with a default, so one pass reports everything wrong; `Config` is
//! returned only when nothing was. Upstream policies live in `policy.rs` and
//! `balance.rs`, routes in `routes.rs`, `[limits]` and `[tracing]` in `global.rs`, the
//! value helpers in `ctx.rs`; this file has the other top-level tables.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::ctx::Ctx;
use super::defaults::*;
use super::env::Env;
use super::error::Path;
use super::file::*;
use super::types::*;
use super::{balance, global, policy, routes, units};

/// A valid config and, with `allow_missing_env`, the variables that were not set (by
/// the key that needed them; their keys took their defaults), and with
/// `allow_missing_files` the files that could not be read (by the key naming them).
pub type Validated = (Config, Vec<(String, Path)>, Vec<(String, Path)>);

/// Validates a whole file. `Err` holds every problem found, by TOML path. With
/// `allow_missing_env`, an unset variable is not a problem (see `Ctx::missing`).
pub fn validate(
    file: &FileConfig,
    env: Env<'_>,
    allow_missing_env: bool,
    allow_missing_files: bool,
    source: Option<PathBuf>,
) -> Result<Validated, Vec<(Path, String)>> {
    let mut cx = Ctx {
        env,
        problems: Vec::new(),
        allow_missing_env,
        missing: Vec::new(),
        interpolated: Vec::new(),
        allow_missing_files,
        missing_files: Vec::new(),
        secret_values: Vec::new(),
    };
    let root = Path::default();
    let name_path = root.key("service").key("name");
    let name = cx.nonempty(&name_path, file.service.name.as_ref(), DEFAULT_SERVICE_NAME);
    // It is sent as `X-Service-Name` on every request.
    if http::HeaderValue::from_str(&name).is_err() {
        cx.problem(
            &name_path,
            "is not a valid header value (it is sent as X-Service-Name): visible ASCII and spaces only",
        );
    }
    let service = ServiceConfig { name };
    let listener = listener(&mut cx, &file.listener, &root.key("listener"));
    let admin = admin(&mut cx, &file.admin, &root.key("admin"));
    // The same port on the same address, or on any address beside one that takes
    // them all (0.0.0.0, ::): the second bind would fail at run time.
    let clash = listener.address.tcp().is_some_and(|l| {
        l.port() == admin.address.port()
            && admin.address.port() != 0
            && (l.ip() == admin.address.ip()
                || l.ip().is_unspecified()
                || admin.address.ip().is_unspecified())
    });
    if clash {
        let msg = format!(
            "{} cannot be bound beside the listener's address {}: same port",
            admin.address, listener.address
        );
        cx.problem(&root.key("admin").key("address"), msg);
    }
    let lp = root.key("logging");
    let logging = LoggingConfig {
        format: cx.choice(
            &lp.key("format"),
            "log format",
            file.logging.format.as_ref(),
            DEFAULT_LOG_FORMAT,
            &[("json", LogFormat::Json), ("text", LogFormat::Text)],
        ),
        level: {
            let level = cx.nonempty(
                &lp.key("level"),
                file.logging.level.as_ref(),
                DEFAULT_LOG_LEVEL,
            );
            if let Err(m) = check_log_filter(&level) {
                cx.problem(&lp.key("level"), m);
            }
            // Spaces around the commas mean nothing: the filter is kept without them.
            let directives: Vec<&str> = level.split(',').map(str::trim).collect();
            directives.join(",")
        },
        access_log: file.logging.access_log.unwrap_or(DEFAULT_ACCESS_LOG),
    };
    let pp = root.key("correlation").key("propagate");
    let propagate = file.correlation.propagate.iter().flatten().enumerate();
    let mut propagate: Vec<http::HeaderName> = propagate
        .filter_map(|(i, raw)| {
            let name = cx.string(&pp.idx(i), raw)?;
            cx.header_name(&pp.idx(i), &name)
        })
        .collect();
    if file.correlation.propagate.is_none() {
        // DESIGN's default: the two ids every vision service sends (they are passed on
        // and logged whatever the list says).
        propagate = DEFAULT_PROPAGATE
            .iter()
            .map(|n| http::HeaderName::from_static(n))
            .collect();
    }
    let limits = global::limits(&mut cx, &file.limits, &root.key("limits"));
    let tracing = global::tracing(
        &mut cx,
        file.tracing.as_ref(),
        &service.name,
        &root.key("tracing"),
    );

    let names: Vec<&str> = file.upstreams.0.iter().map(|(n, _)| n.as_str()).collect();
    let mut upstreams = BTreeMap::new();
    for (name, up) in &file.upstreams.0 {
        let path = root.key("upstreams").key(name);
        let config = upstream(&mut cx, name, up, &names, &path);
        upstreams.insert(name.clone(), config);
    }
    let routes = routes::routes(
        &mut cx,
        &file.routes,
        &upstreams,
        &names,
        &root.key("routes"),
    );

    if !cx.problems.is_empty() {
        return Err(cx.scrubbed());
    }
    let config = Config {
        service,
        listener,
        admin,
        logging,
        correlation: CorrelationConfig { propagate },
        limits,
        tracing,
        upstreams,
        routes,
        source,
        interpolated: cx.interpolated.iter().map(ToString::to_string).collect(),
    };
    Ok((config, cx.missing, cx.missing_files))
}

/// `IP:port`, or `unix:` and a socket path.
fn listen_addr(cx: &mut Ctx, p: &Path, v: Option<&String>) -> ListenAddr {
    let default = ListenAddr::Tcp(DEFAULT_LISTENER_ADDRESS);
    let Some(raw) = v else { return default };
    let Some(rest) = raw.trim().strip_prefix("unix:") else {
        return ListenAddr::Tcp(cx.socket_addr(p, v, DEFAULT_LISTENER_ADDRESS));
    };
    let Some(path) = cx.opt_string(p, Some(&rest.to_owned())) else {
        return default;
    };
    if path.is_empty() || path.ends_with('/') {
        cx.problem(p, format!("invalid Unix socket address {raw:?}; expected unix: and a file path such as \"unix:/run/fusebox/fusebox.sock\""));
        return default;
    }
    if path.len() > MAX_UNIX_PATH_BYTES {
        cx.problem(
            p,
            format!(
                "Unix socket path is {} bytes; the kernel takes at most {MAX_UNIX_PATH_BYTES}",
                path.len()
            ),
        );
        return default;
    }
    ListenAddr::Unix(PathBuf::from(path))
}

/// An octal file mode between 0 and 0777.
fn unix_mode(cx: &mut Ctx, p: &Path, v: Option<&ModeValue>) -> u32 {
    let parsed = match v {
        None => return DEFAULT_UNIX_MODE,
        Some(ModeValue::Int(i)) => u32::try_from(*i).ok(),
        Some(ModeValue::Str(s)) => {
            let s = s.trim();
            let digits = s.strip_prefix("0o").unwrap_or(s);
            u32::from_str_radix(digits, 8)
                .ok()
                .filter(|_| !digits.is_empty())
        }
    };
    match parsed.filter(|m| *m <= 0o777) {
        Some(m) => m,
        None => {
            cx.problem(
                p,
                "invalid file mode; expected an octal mode such as \"0660\" (at most 0777)",
            );
            DEFAULT_UNIX_MODE
        }
    }
}

fn listener(cx: &mut Ctx, f: &ListenerFile, p: &Path) -> ListenerConfig {
    let tls = f.tls.as_ref().map(|t| {
        let tp = p.key("tls");
        let cert = cx.required_string(&tp, "cert", t.cert.as_ref());
        let key = cx.required_string(&tp, "key", t.key.as_ref());
        let client_ca = cx.opt_string(&tp.key("client_ca"), t.client_ca.as_ref());
        let mut all_readable = true;
        for (k, v) in [("cert", &cert), ("key", &key), ("client_ca", &client_ca)] {
            if let Some(v) = v {
                all_readable &= cx.readable_file(&tp.key(k), v);
            }
        }
        let tls = ListenerTls {
            cert: cert.unwrap_or_default().into(),
            key: key.unwrap_or_default().into(),
            client_ca: client_ca.map(PathBuf::from),
        };
        // Loaded as `run` loads it: unusable contents are refused here, located.
        if all_readable && !tls.cert.as_os_str().is_empty() && !tls.key.as_os_str().is_empty() {
            if let Err(e) = crate::tls::ServerTls::load(&tls) {
                cx.problem(&tp, e.to_string());
            }
        }
        tls
    });
    let max_header_bytes = cx.size(
        &p.key("max_header_bytes"),
        f.max_header_bytes.as_ref(),
        DEFAULT_MAX_HEADER_BYTES as u64,
        MAX_HEADER_BYTES_BOUNDS,
    );
    ListenerConfig {
        address: listen_addr(cx, &p.key("address"), f.address.as_ref()),
        unix_mode: unix_mode(cx, &p.key("unix_mode"), f.unix_mode.as_ref()),
        tls,
        max_connections: cx.int(
            &p.key("max_connections"),
            f.max_connections,
            DEFAULT_MAX_CONNECTIONS,
            MAX_CONNECTIONS_BOUNDS,
        ),
        header_read_timeout: cx.duration(
            &p.key("header_read_timeout"),
            f.header_read_timeout.as_ref(),
            DEFAULT_HEADER_READ_TIMEOUT,
            HEADER_READ_TIMEOUT_BOUNDS,
        ),
        idle_timeout: cx.duration(
            &p.key("idle_timeout"),
            f.idle_timeout.as_ref(),
            DEFAULT_LISTENER_IDLE_TIMEOUT,
            LISTENER_IDLE_TIMEOUT_BOUNDS,
        ),
        max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
        max_request_body: cx.size(
            &p.key("max_request_body"),
            f.max_request_body.as_ref(),
            DEFAULT_MAX_REQUEST_BODY,
            MAX_REQUEST_BODY_BOUNDS,
        ),
        shutdown_timeout: cx.duration(
            &p.key("shutdown_timeout"),
            f.shutdown_timeout.as_ref(),
            DEFAULT_SHUTDOWN_TIMEOUT,
            SHUTDOWN_TIMEOUT_BOUNDS,
        ),
    }
}

fn admin(cx: &mut Ctx, f: &AdminFile, p: &Path) -> AdminConfig {
    let address = cx.socket_addr(&p.key("address"), f.address.as_ref(), DEFAULT_ADMIN_ADDRESS);
    let tp = p.key("token_env");
    let token_env = cx.opt_string(&tp, f.token_env.as_ref());
    let mut token = None;
    match &token_env {
        Some(name) => match cx.variable(&tp, name, "; it must hold the admin token") {
            Some(value) if !value.trim().is_empty() => token = Some(value),
            Some(_) => cx.problem(&tp, format!("environment variable {name} is empty; it must hold the admin token")),
            None => {}
        },
        None if f.token_env.is_none() && !address.ip().is_loopback() => cx.problem(
            &p.key("address"),
            format!("{address} is not a loopback address, so `token_env` must name the variable holding the admin token"),
        ),
        None => {}
    }
    AdminConfig {
        address,
        token_env,
        token,
    }
}

fn upstream(
    cx: &mut Ctx,
    name: &str,
    f: &UpstreamFile,
    names: &[&str],
    p: &Path,
) -> UpstreamConfig {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        cx.problem(p, format!("upstream name {name:?} may only hold letters, digits, `_`, `-` and `.` (it appears in admin URLs and metric labels)"));
    }
    let protocol = cx.choice(
        &p.key("protocol"),
        "protocol",
        f.protocol.as_ref(),
        DEFAULT_PROTOCOL,
        &[
            ("http1", Protocol::Http1),
            ("h2c", Protocol::H2c),
            ("https", Protocol::Https),
            ("h2", Protocol::H2),
        ],
    );
    let tls = f
        .tls
        .as_ref()
        .map(|t| policy::upstream_tls(cx, t, protocol, &p.key("tls")));
    // No `tls` table: the system's roots, loaded as `run` loads them (a slim image
    // without a CA bundle is refused here, located, not first by `run`).
    if tls.is_none() && matches!(protocol, Protocol::Https | Protocol::H2) {
        if let Err(e) = crate::tls::client_config(None, protocol == Protocol::H2) {
            cx.problem(&p.key("protocol"), e.to_string());
        }
    }
    let fallback = f
        .fallback
        .as_ref()
        .and_then(|fb| policy::fallback(cx, fb, name, names, &p.key("fallback")));
    let circuit_breaker = policy::breaker(
        cx,
        &f.circuit_breaker,
        &BreakerConfig::default(),
        &p.key("circuit_breaker"),
    );
    let lp = p.key("load_report_header");
    UpstreamConfig {
        name: name.to_owned(),
        endpoints: endpoints(cx, f.endpoints.as_deref(), p),
        protocol,
        load_balancing: cx.choice(
            &p.key("load_balancing"),
            "load balancing",
            f.load_balancing.as_ref(),
            DEFAULT_LOAD_BALANCING,
            &[
                ("round_robin", LoadBalancing::RoundRobin),
                ("least_request", LoadBalancing::LeastRequest),
                ("random", LoadBalancing::Random),
                ("weighted", LoadBalancing::Weighted),
                ("peak_ewma", LoadBalancing::PeakEwma),
            ],
        ),
        load_report_header: cx
            .opt_string(&lp, f.load_report_header.as_ref())
            .and_then(|name| cx.header_name(&lp, &name))
            .filter(|name| {
                // The report header is removed from every answer: one the answer needs
                // would break it (`grpc-status` fails every gRPC call).
                let reserved = answer_needs(name);
                if reserved {
                    cx.problem(
                        &lp,
                        format!(
                            "{:?} is a header the answer needs (HTTP framing, gRPC status, correlation or tracing); name the upstream's own load header, such as \"x-queue-depth\"",
                            name.as_str()
                        ),
                    );
                }
                !reserved
            }),
        forward_load_report: f.forward_load_report.unwrap_or(DEFAULT_FORWARD_LOAD_REPORT),
        load_report_expiry: cx.duration(
            &p.key("load_report_expiry"),
            f.load_report_expiry.as_ref(),
            DEFAULT_LOAD_REPORT_EXPIRY,
            LOAD_REPORT_EXPIRY_BOUNDS,
        ),
        peak_ewma: balance::peak_ewma(cx, &f.peak_ewma, &p.key("peak_ewma")),
        adaptive_concurrency: f
            .adaptive_concurrency
            .as_ref()
            .map(|a| balance::adaptive_concurrency(cx, a, &p.key("adaptive_concurrency"))),
        dns_refresh: cx.duration(
            &p.key("dns_refresh"),
            f.dns_refresh.as_ref(),
            DEFAULT_DNS_REFRESH,
            DNS_REFRESH_BOUNDS,
        ),
        slow_start: cx.duration(
            &p.key("slow_start"),
            f.slow_start.as_ref(),
            DEFAULT_SLOW_START,
            SLOW_START_BOUNDS,
        ),
        pool: policy::pool(cx, &f.pool, &p.key("pool")),
        timeouts: policy::timeouts(cx, &f.timeouts, &p.key("timeouts")),
        circuit_breaker,
        retry: policy::retry(cx, &f.retry, &RetryConfig::default(), &p.key("retry")),
        health_check: f
            .health_check
            .as_ref()
            .map(|h| policy::health_check(cx, h, &p.key("health_check"))),
        fallback,
        tls,
    }
}

fn endpoints(cx: &mut Ctx, list: Option<&[EndpointFile]>, p: &Path) -> Vec<EndpointConfig> {
    let Some(list) = list else {
        cx.problem(
            p,
            "missing `endpoints`: an upstream needs at least one \"host:port\"",
        );
        return Vec::new();
    };
    let ep = p.key("endpoints");
    if list.is_empty() {
        cx.problem(&ep, "an upstream needs at least one endpoint");
    }
    let mut out: Vec<EndpointConfig> = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let path = ep.idx(i);
        let (raw, weight) = match e {
            EndpointFile::Address(a) => (Some(a), None),
            EndpointFile::Table(t) => (t.address.as_ref(), t.weight),
        };
        let weight = cx.int(
            &path.key("weight"),
            weight,
            DEFAULT_ENDPOINT_WEIGHT,
            ENDPOINT_WEIGHT_BOUNDS,
        );
        let Some(raw) = raw else {
            cx.problem(&path, "missing `address` (\"host:port\")");
            continue;
        };
        let addr_path = match e {
            EndpointFile::Address(_) => path.clone(),
            EndpointFile::Table(_) => path.key("address"),
        };
        let Some(text) = cx.string(&addr_path, raw) else {
            continue;
        };
        match units::parse_endpoint(&text) {
            Ok(address) if out.iter().any(|o| o.address == address) => {
                cx.problem(&addr_path, format!("duplicate endpoint {address}"));
            }
            Ok(address) => out.push(EndpointConfig { address, weight }),
            Err(msg) => cx.problem(&addr_path, msg),
        }
    }
    out
}

/// Level names of a tracing filter.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// `logging.level` as a tracing filter whose every directive names a level: `info`,
/// `fusebox=debug,info`. A bare word that is not a level (`warning`, `inf`) would be
/// read as a target name and silence every line, the reload errors included.
pub(crate) fn check_log_filter(filter: &str) -> Result<(), String> {
    let is_level = |l: &str| LEVELS.iter().any(|n| n.eq_ignore_ascii_case(l.trim()));
    for d in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        // `fusebox =debug` would filter on a target named `fusebox ` (matching
        // nothing), and `fusebox= debug` is refused by the parser: neither is meant.
        if d.contains(char::is_whitespace) {
            return Err(format!(
                "{d:?} has a space inside it; write directives as target=level, separated by commas (e.g. \"fusebox=debug,info\")"
            ));
        }
        let level = match d.rsplit_once('=') {
            Some((target, level)) if !target.trim().is_empty() => level,
            Some(_) => d,
            None => d,
        };
        if !is_level(level) {
            return Err(format!(
                "{d:?} names no level; expected one of {} or target=level (e.g. \"fusebox=debug,info\")",
                LEVELS.join(", ")
            ));
        }
    }
    let directives: Vec<&str> = filter.split(',').map(str::trim).collect();
    tracing_subscriber::EnvFilter::try_new(directives.join(","))
        .map(|_| ())
        .map_err(|e| format!("not a tracing filter: {e}"))
}

/// Headers an answer needs, which a load report header (removed from every answer)
/// must not name.
fn answer_needs(name: &http::HeaderName) -> bool {
    let n = name.as_str();
    const EXACT: &[&str] = &[
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "date",
        "location",
        "set-cookie",
        "retry-after",
        "x-request-id",
        "x-correlation-id",
        "traceparent",
        "tracestate",
        "vary",
        "cache-control",
        "etag",
    ];
    EXACT.contains(&n)
        || n.starts_with("content-")
        || n.starts_with("grpc-")
        || n.starts_with("proxy-")
        || n.starts_with("x-fusebox-")
}
