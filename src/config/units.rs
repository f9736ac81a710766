//! Parsers for the value syntaxes of the config file: durations, sizes, endpoint
//! addresses and host names. Pure functions returning a message on error; the caller
//! adds the TOML path and the location.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::types::EndpointAddr;

const DURATION_HINT: &str = "expected a number with a unit such as \"250ms\", \"1.5s\", \"5m\" \
                             or \"1h\", or a plain number of seconds";

/// `"250ms"`, `"1.5s"`, `"5m"`, `"1h 30m"` (humantime's syntax, fractions included).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("empty duration; {DURATION_HINT}"));
    }
    if t.starts_with('-') {
        return Err(format!("negative duration {text:?} is not allowed"));
    }
    if t.parse::<f64>().is_ok() {
        return Err(format!(
            "duration {text:?} has no unit; write \"{t}s\" or the number {t} without quotes"
        ));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("invalid duration {text:?} ({e}); {DURATION_HINT}"))
}

/// A plain number of seconds (`30`, `0.25`).
pub fn duration_from_secs(secs: f64) -> Result<Duration, String> {
    if !secs.is_finite() {
        return Err(format!("duration {secs} is not a finite number of seconds"));
    }
    if secs < 0.0 {
        return Err(format!("negative duration {secs} is not allowed"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("duration {secs} is too large"))
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
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim());
    let hint = "expected bytes or a number with a unit: B, KB, MB, GB, TB (1000-based) \
                or KiB, MiB, GiB, TiB (1024-based)";
    if number.is_empty() {
        return Err(format!("invalid size {text:?}; {hint}"));
    }
    let lower = unit.to_ascii_lowercase();
    let multiplier = if unit.is_empty() {
        1
    } else {
        match SIZE_UNITS.iter().find(|(u, _)| *u == lower) {
            Some((_, m)) => *m,
            None => return Err(format!("unknown size unit {unit:?} in {text:?}; {hint}")),
        }
    };
    if let Ok(n) = number.parse::<u64>() {
        return n
            .checked_mul(multiplier)
            .ok_or_else(|| format!("size {text:?} is too large"));
    }
    match number.parse::<f64>() {
        Ok(n) if n.is_finite() => {
            let bytes = n * multiplier as f64;
            if bytes >= u64::MAX as f64 {
                Err(format!("size {text:?} is too large"))
            } else {
                Ok(bytes as u64)
            }
        }
        _ => Err(format!("invalid size {text:?}; {hint}")),
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
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
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
        assert!(parse_size("4 parsecs")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999TiB")
            .unwrap_err()
            .contains("too large"));
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
}
