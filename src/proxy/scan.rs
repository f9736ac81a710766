//! What the request path reads from the caller's headers, found in one pass over them
//! (name comparisons, no hashing): a message carries a handful of headers, and one
//! walk costs less than a lookup per header of interest.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::attempt::{parse_grpc_timeout, parse_timeout_ms};
use crate::admission::Priority;

/// The headers of interest of one request.
#[derive(Debug, Default)]
pub struct Scan {
    /// `content-type: application/grpc*`.
    pub grpc: bool,
    /// The declared `Content-Length`: `Some(None)` when present but not a number.
    pub content_length: Option<Option<u64>>,
    pub idempotency_key: bool,
    /// The caller's `grpc-timeout` and `x-request-timeout-ms`.
    pub grpc_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub priority: Option<Priority>,
    pub org_id: Option<HeaderValue>,
    pub camera_id: Option<HeaderValue>,
    /// How many `Host` headers (saturating), and whether every one is a valid
    /// `host[:port]` (RFC 9112 3.2: anything else is refused with 400).
    pub hosts: u8,
    pub host_invalid: bool,
}

/// Reads `headers` once; `priority_header` is `[limits] priority_header`.
pub fn scan(headers: &HeaderMap, priority_header: &HeaderName) -> Scan {
    let mut s = Scan::default();
    for (name, value) in headers {
        // A `match` on the name compiles to a length switch and one comparison.
        match name.as_str() {
            "content-type" => s.grpc = value.as_bytes().starts_with(b"application/grpc"),
            "content-length" => {
                s.content_length = Some(
                    std::str::from_utf8(value.as_bytes())
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok()),
                );
            }
            "idempotency-key" => s.idempotency_key = true,
            "grpc-timeout" => s.grpc_timeout = parse_grpc_timeout(value),
            "x-request-timeout-ms" => s.request_timeout = parse_timeout_ms(value),
            "x-org-id" => {
                s.org_id.get_or_insert_with(|| value.clone());
            }
            "x-camera-id" => {
                s.camera_id.get_or_insert_with(|| value.clone());
            }
            "host" => {
                s.hosts = s.hosts.saturating_add(1);
                s.host_invalid |= !valid_host(value.as_bytes());
            }
            _ => {}
        }
        if name == priority_header {
            s.priority = Some(Priority::parse(value.as_bytes()));
        }
    }
    s
}

/// `host [":" port]` as RFC 9112 3.2 allows in `Host`: a reg-name or IPv4 address
/// (no user info, no spaces), or a bracketed IPv6 literal; a port of digits up to
/// 65535. Empty is valid (a target without an authority).
pub fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &rest[..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match &rest[end + 1..] {
            [] => (&b""[..], None),
            [b':', port @ ..] => (&b""[..], Some(port)),
            _ => return false,
        }
    } else {
        match v.iter().rposition(|&b| b == b':') {
            Some(i) => (&v[..i], Some(&v[i + 1..])),
            None => (v, None),
        }
    };
    // unreserved / pct-encoded / sub-delims (RFC 3986 3.2.2), one range test per byte.
    let reg_name = host.iter().all(|&b| {
        matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~'
            | b'%' | b'!' | b'$' | b'&' | b'\''..=b',' | b';' | b'=')
    });
    let port_ok = port.is_none_or(|p| {
        p.len() <= 5
            && p.iter().all(u8::is_ascii_digit)
            && p.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65535
    });
    reg_name && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pass_reads_every_header_of_interest() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("content-type", "application/grpc+proto"),
            ("content-length", "12"),
            ("idempotency-key", "k1"),
            ("grpc-timeout", "100m"),
            ("x-request-timeout-ms", "250"),
            ("x-priority", "critical"),
            ("x-org-id", "org-1"),
            ("x-camera-id", "cam-7"),
            ("user-agent", "t"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let s = scan(&h, &HeaderName::from_static("x-priority"));
        assert!(s.grpc && s.idempotency_key);
        assert_eq!(s.content_length, Some(Some(12)));
        assert_eq!(s.grpc_timeout, Some(Duration::from_millis(100)));
        assert_eq!(s.request_timeout, Some(Duration::from_millis(250)));
        assert_eq!(s.priority, Some(Priority::Critical));
        assert_eq!(s.org_id.as_ref().map(|v| v.as_bytes()), Some(&b"org-1"[..]));
        assert_eq!(
            s.camera_id.as_ref().map(|v| v.as_bytes()),
            Some(&b"cam-7"[..])
        );
        h.insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from_static("twelve"),
        );
        h.remove(http::header::CONTENT_TYPE);
        let s = scan(&h, &HeaderName::from_static("x-priority"));
        assert_eq!(s.content_length, Some(None), "present but not a number");
        assert!(!s.grpc);
        let org = HeaderName::from_static("x-org-id");
        assert_eq!(scan(&HeaderMap::new(), &org).content_length, None);
    }

    #[test]
    fn host_values_follow_rfc_9112() {
        for ok in [
            "",
            "b.local",
            "b.local:8080",
            "B.Local:1",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:9000",
            "host:",
            "xn--bcher-kva.example",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok:?} is valid");
        }
        for bad in [
            "b.local extra",
            "user@b.local",
            "b.local:abc",
            "b.local:99999",
            "[::1",
            "[::1]x",
            "a:b:c",
            "[zz]",
            "b.local/x",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?} is invalid");
        }
        let mut h = HeaderMap::new();
        h.append(http::header::HOST, HeaderValue::from_static("a.local"));
        h.append(http::header::HOST, HeaderValue::from_static("b.local"));
        let s = scan(&h, &HeaderName::from_static("x-priority"));
        assert_eq!((s.hosts, s.host_invalid), (2, false));
    }
}
