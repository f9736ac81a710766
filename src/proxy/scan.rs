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
            _ => {}
        }
        if name == priority_header {
            s.priority = Some(Priority::parse(value.as_bytes()));
        }
    }
    s
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
}
