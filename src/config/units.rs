//! Parsers for the value syntaxes of the config file: durations, sizes, endpoint
//! addresses and host names. Pure functions returning a message on error; the caller
//! adds the TOML path and the location.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::types::EndpointAddr;

const DURATION_HINT: &str = "expected a number with a unit such as \"250ms\", \"1.5s\", \"5m\" \
                             or \"1h\", or a plain number of seconds";

/// Why a duration or size could not be read. `TooLarge` and `Negative` are told apart
/// so the caller can say which bound the value is past.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitError {
    /// Does not fit a `Duration` / `u64` at all (past every maximum).
    TooLarge,
    Negative,
    /// Not a duration or size; the message says what was expected.
    Invalid(String),
}

/// `"250ms"`, `"1.5s"`, `"5m"`, `"1h 30m"` (humantime's syntax, fractions included).
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(UnitError::Invalid(format!(
            "empty duration; {DURATION_HINT}"
        )));
    }
    if t.starts_with('-') {
        return Err(UnitError::Negative);
    }
    if t.parse::<f64>().is_ok() {
        return Err(UnitError::Invalid(format!(
            "duration {text:?} has no unit; write \"{t}s\" or the number {t} without quotes"
        )));
    }
    // humantime also reads weeks, months and years; the documented units stop at
    // days (a month or a year has no single length).
    for unit in t
        .split(|c: char| !c.is_alphabetic() && c != 'µ')
        .filter(|u| !u.is_empty())
    {
        if !DURATION_UNITS.contains(&unit) {
            return Err(UnitError::Invalid(format!(
                "invalid duration {text:?}: unknown unit {unit:?}; the units are ns, us, ms, s, m, h and d; {DURATION_HINT}"
            )));
        }
    }
    humantime::parse_duration(t).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => UnitError::TooLarge,
        _ => UnitError::Invalid(format!("invalid duration {text:?}; {DURATION_HINT}")),
    })
}

/// The duration units, short and long forms (humantime's spellings up to days).
const DURATION_UNITS: &[&str] = &[
    "ns", "nsec", "nanos", "us", "µs", "usec", "micros", "ms", "msec", "millis", "s", "sec",
    "secs", "second", "seconds", "m", "min", "mins", "minute", "minutes", "h", "hr", "hrs", "hour",
    "hours", "d", "day", "days",
];

/// A plain number of seconds (`30`, `0.25`).
pub fn duration_from_secs(secs: f64) -> Result<Duration, UnitError> {
    if !secs.is_finite() {
        return Err(UnitError::Invalid(format!(
            "duration {secs} is not a finite number of seconds"
        )));
    }
    if secs < 0.0 {
        return Err(UnitError::Negative);
    }
    Duration::try_from_secs_f64(secs).map_err(|_| UnitError::TooLarge)
}

const SIZE_UNITS: &[(&str, u64)] = &[
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
];

/// `"4MiB"`, `"64KiB"`, `"1GiB"` (1024-based), `"512KB"` (1000-based), `"100B"` or
/// `"100"`. Units are case-insensitive; a fraction (`"1.5MiB"`) is rounded down.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let invalid = |m: String| UnitError::Invalid(m);
    if text.trim().starts_with('-') {
        return Err(UnitError::Negative);
    }
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim());
    let hint = "expected bytes or a number with a unit: B, KB, MB, GB, TB (1000-based) \
                or KiB, MiB, GiB, TiB (1024-based)";
    if number.is_empty() {
        return Err(invalid(format!("invalid size {text:?}; {hint}")));
    }
    let lower = unit.to_ascii_lowercase();
    let multiplier = if unit.is_empty() {
        1
    } else {
        match SIZE_UNITS.iter().find(|(u, _)| *u == lower) {
            Some((_, m)) => *m,
            None => {
                return Err(invalid(format!(
                    "unknown size unit {unit:?} in {text:?}; {hint}"
                )))
            }
        }
    };
    if let Ok(n) = number.parse::<u64>() {
        return n.checked_mul(multiplier).ok_or(UnitError::TooLarge);
    }
    match number.parse::<f64>() {
        Ok(n) if n.is_finite() => {
            let bytes = n * multiplier as f64;
            if bytes >= u64::MAX as f64 {
                Err(UnitError::TooLarge)
            } else {
                Ok(bytes as u64)
            }
        }
        Ok(_) => Err(UnitError::TooLarge),
        Err(_) => Err(invalid(format!("invalid size {text:?}; {hint}"))),
    }
}

/// `127.0.0.1:9001` and `[::1]:9001` become socket addresses, `name:9001` a DNS name.
pub fn parse_endpoint(text: &str) -> Result<EndpointAddr, String> {
    let t = text.trim();
    if t.contains("://") {
        return Err(format!(
            "endpoint {text:?} must be \"host:port\" without a scheme (set `protocol` instead)"
        ));
    }
    if let Ok(addr) = t.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("endpoint {text:?} has port 0"));
        }
        return Ok(EndpointAddr::Socket(addr));
    }
    if t.parse::<IpAddr>().is_ok() || t.starts_with('[') && t.ends_with(']') {
        return Err(format!(
            "endpoint {text:?} has no port; expected \"host:port\""
        ));
    }
    let Some((host, port)) = t.rsplit_once(':') else {
        return Err(format!(
            "endpoint {text:?} has no port; expected \"host:port\""
        ));
    };
    if host.contains(':') {
        return Err(format!(
            "endpoint {text:?}: an IPv6 address needs brackets, as in \"[::1]:9001\""
        ));
    }
    let port = match port.parse::<u16>() {
        Ok(0) => return Err(format!("endpoint {text:?} has port 0")),
        Ok(p) => p,
        Err(_) => return Err(format!("endpoint {text:?} has an invalid port {port:?}")),
    };
    check_dns_name(host).map_err(|why| format!("endpoint {text:?}: {why}"))?;
    Ok(EndpointAddr::Dns {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_`.
pub fn check_dns_name(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host name is empty".into());
    }
    if host.len() > 253 {
        return Err("host name is longer than 253 characters".into());
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Err(format!("host name {host:?} has an empty label"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("host name {host:?} contains {c:?}"));
        }
    }
    Ok(())
}

/// A route's host: a DNS name, an IPv4 literal or a bracketed IPv6 literal, no port.
pub fn check_route_host(host: &str) -> Result<(), String> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner
            .parse::<Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("{host:?} is not an IPv6 address"));
    }
    if host.contains(':') {
        return Err(format!(
            "host {host:?} must not include a port (routes match the Host header without its port)"
        ));
    }
    check_dns_name(host)
}

/// An OTLP/HTTP collector's base URL (`http://otel-collector:4318`) and the URL spans
/// are posted to (it + `/v1/traces`). http or https with a host; no credentials (they
/// belong in `headers`), query or fragment, and not already ending in `/v1/traces`.
pub fn parse_otlp_endpoint(text: &str) -> Result<(http::Uri, http::Uri), String> {
    let t = text.trim();
    let hint = "expected an http:// or https:// URL such as \"http://otel-collector:4318\"";
    let uri: http::Uri = t
        .parse()
        .map_err(|_| format!("invalid URL {text:?}; {hint}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("URL {text:?} must start with http:// or https://"));
    }
    let authority = match uri.authority() {
        Some(a) if !a.host().is_empty() => a,
        _ => return Err(format!("URL {text:?} has no host; {hint}")),
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "URL {text:?} must not hold credentials; send them in `headers`"
        ));
    }
    // `http::Uri` takes any digits as a port; a bracketed IPv6 host has its own colons.
    let port = authority.as_str().rsplit_once(':').map(|(_, p)| p);
    match port.filter(|p| !p.contains(']')).map(str::parse::<u16>) {
        Some(Ok(0)) => return Err(format!("URL {text:?} has port 0")),
        Some(Err(_)) => return Err(format!("URL {text:?} has an invalid port")),
        _ => {}
    }
    if uri.query().is_some() || t.contains('#') {
        return Err(format!("URL {text:?} must not have a query or fragment"));
    }
    let path = uri.path().trim_end_matches('/');
    if path.ends_with(super::defaults::OTLP_TRACES_PATH) {
        return Err(format!(
            "URL {text:?}: give the collector's base URL; {} is appended to it",
            super::defaults::OTLP_TRACES_PATH
        ));
    }
    let scheme = uri.scheme_str().unwrap_or("http");
    let traces = format!(
        "{scheme}://{authority}{path}{}",
        super::defaults::OTLP_TRACES_PATH
    );
    let traces = traces
        .parse()
        .map_err(|_| format!("invalid URL {text:?}; {hint}"))?;
    Ok((uri, traces))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_fractions_and_refuse_the_rest() {
        let secs = Duration::from_secs;
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(secs(300)));
        assert_eq!(parse_duration("1h"), Ok(secs(3600)));
        assert_eq!(parse_duration("1m 30s"), Ok(secs(90)));
        let invalid = |t: &str| match parse_duration(t) {
            Err(UnitError::Invalid(m)) => m,
            other => panic!("{t}: {other:?}"),
        };
        assert!(invalid("30").contains("no unit"));
        assert!(invalid("soon").contains("invalid duration"));
        assert!(invalid("").contains("empty"));
        for t in ["0.1w", "1week", "2months", "1y", "10x"] {
            assert!(invalid(t).contains("unknown unit"), "{t}: {}", invalid(t));
        }
        assert_eq!(parse_duration("2days 1hour"), Ok(secs(2 * 86_400 + 3600)));
        assert_eq!(parse_duration("5us"), Ok(Duration::from_micros(5)));
        assert_eq!(parse_duration("-1s"), Err(UnitError::Negative));
        assert_eq!(
            parse_duration("99999999999999999999999h"),
            Err(UnitError::TooLarge)
        );
        assert_eq!(duration_from_secs(1e20), Err(UnitError::TooLarge));
        assert_eq!(duration_from_secs(-0.5), Err(UnitError::Negative));
        assert!(matches!(
            duration_from_secs(f64::NAN),
            Err(UnitError::Invalid(_))
        ));
    }

    #[test]
    fn sizes_take_1024_and_1000_based_units() {
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512KB"), Ok(512_000));
        assert_eq!(parse_size("100B"), Ok(100));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("1.5 MiB"), Ok(3 << 19));
        assert_eq!(parse_size("2mib"), Ok(2 << 20));
        assert!(matches!(
            parse_size("4 parsecs"),
            Err(UnitError::Invalid(m)) if m.contains("unknown size unit")
        ));
        assert!(matches!(parse_size("MiB"), Err(UnitError::Invalid(_))));
        assert_eq!(parse_size("99999999999999TiB"), Err(UnitError::TooLarge));
        let huge = format!("1{}.5", "0".repeat(400));
        assert_eq!(parse_size(&huge), Err(UnitError::TooLarge));
        assert_eq!(parse_size("-1KiB"), Err(UnitError::Negative));
    }

    #[test]
    fn endpoints_are_socket_addresses_or_dns_names() {
        let sock = |s: &str| EndpointAddr::Socket(s.parse().unwrap());
        assert_eq!(parse_endpoint("127.0.0.1:9001"), Ok(sock("127.0.0.1:9001")));
        assert_eq!(parse_endpoint("[::1]:9001"), Ok(sock("[::1]:9001")));
        let dns = EndpointAddr::Dns {
            host: "yolo.default.svc".into(),
            port: 80,
        };
        assert_eq!(parse_endpoint("YOLO.default.svc:80"), Ok(dns));
        for bad in [
            "127.0.0.1",
            "yolo",
            "yolo:0",
            "127.0.0.1:0",
            "yolo:http",
            "::1:80",
            "http://yolo:80",
            "yo lo:80",
            ":80",
            "[::1]",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn otlp_endpoints_are_http_urls_and_get_v1_traces_appended() {
        let traces = |t: &str| parse_otlp_endpoint(t).map(|(_, u)| u.to_string());
        assert_eq!(
            traces("http://otel-collector:4318").as_deref(),
            Ok("http://otel-collector:4318/v1/traces")
        );
        assert_eq!(
            traces("https://otel.example.com/otlp/").as_deref(),
            Ok("https://otel.example.com/otlp/v1/traces")
        );
        for (bad, why) in [
            ("otel-collector:4318", "must start with http"),
            ("grpc://c:4317", "must start with http"),
            ("http://", "invalid URL"),
            ("http://user:pw@c:4318", "credentials"),
            ("http://c:4318/?a=1", "query"),
            ("http://c:4318/v1/traces", "base URL"),
            ("http://c:0", "port 0"),
            ("http://c:99999", "invalid port"),
            ("http://[::1]:4318x", "invalid"),
            ("not a url", "invalid URL"),
        ] {
            let err = parse_otlp_endpoint(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
