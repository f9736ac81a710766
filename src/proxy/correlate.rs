//! Header rules of the contract, applied once per request: hop-by-hop removal first (so a
//! caller's `Connection: X-Correlation-ID` cannot strip what fusebox sets), then the
//! correlation and request ids, W3C `traceparent`, `X-Service-Name` and the forwarding
//! headers; and on the way back, the ids echoed on the response.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, TE, TRANSFER_ENCODING, UPGRADE,
};

pub static X_CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_SERVICE_NAME: HeaderName = HeaderName::from_static("x-service-name");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static X_ORG_ID: HeaderName = HeaderName::from_static("x-org-id");
pub static X_CAMERA_ID: HeaderName = HeaderName::from_static("x-camera-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static TRAILER: HeaderName = HeaderName::from_static("trailer");

/// The ids of one request, echoed on the response and written to the access log.
#[derive(Debug, Clone)]
pub struct Ids {
    pub correlation_id: HeaderValue,
    pub request_id: HeaderValue,
    pub traceparent: HeaderValue,
}

/// Whether `v` is an id fusebox keeps: 1-128 characters of `[A-Za-z0-9._:-]`.
pub fn is_valid_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A new UUID v4 as a header value.
pub fn new_uuid() -> HeaderValue {
    let mut buf = [0u8; 36];
    let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    // A hyphenated UUID is visible ASCII: always a valid header value.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 0xf) as usize];
    }
}

fn is_lower_hex(s: &[u8]) -> bool {
    s.iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// The next `traceparent`: the caller's trace id (when its header is valid W3C version
/// 00) with a new parent id, else a new trace.
pub fn next_traceparent(incoming: Option<&HeaderValue>) -> HeaderValue {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-01";
    let parent: [u8; 8] = rand::random();
    hex_into(&mut out[36..52], &parent);
    let kept = incoming.map(|v| v.as_bytes()).filter(|v| {
        v.len() == 55
            && &v[0..3] == b"00-"
            && v[35] == b'-'
            && v[52] == b'-'
            && is_lower_hex(&v[3..35])
            && is_lower_hex(&v[36..52])
            && is_lower_hex(&v[53..55])
            && v[3..35].iter().any(|&b| b != b'0')
            && v[36..52].iter().any(|&b| b != b'0')
    });
    match kept {
        Some(v) => {
            out[3..35].copy_from_slice(&v[3..35]);
            out[53..55].copy_from_slice(&v[53..55]);
        }
        None => {
            let trace: [u8; 16] = rand::random();
            hex_into(&mut out[3..35], &trace);
        }
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// `tp` with its sampled flag cleared (`...-00`): fusebox traces and did not sample.
pub fn unsampled(tp: &HeaderValue) -> HeaderValue {
    let b = tp.as_bytes();
    if b.len() != 55 {
        return tp.clone();
    }
    let mut out = [0u8; 55];
    out.copy_from_slice(b);
    out[53] = b'0';
    out[54] = b'0';
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| tp.clone())
}

/// Removes hop-by-hop headers, including every name the `Connection` header lists.
/// `TE: trailers` survives when `keep_te_trailers` (gRPC needs it end to end).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_te_trailers: bool) {
    if headers.contains_key(CONNECTION) {
        // Names listed in Connection are collected first: removing while iterating the
        // map is not possible. Only on requests that send Connection with tokens.
        let listed: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(&name);
        }
        headers.remove(CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(TRANSFER_ENCODING);
    headers.remove(UPGRADE);
    headers.remove(&TRAILER);
    if let Some(te) = headers.get(TE) {
        let trailers_only = te.as_bytes().eq_ignore_ascii_case(b"trailers");
        if !(keep_te_trailers && trailers_only) {
            headers.remove(TE);
        }
    }
}

pub use crate::snapshot::HeaderPolicy;

/// Applies the request-side rules and returns the ids. `peer_ip` is the caller's address
/// as a header value (formatted once per connection).
pub fn prepare_request(
    headers: &mut HeaderMap,
    policy: &HeaderPolicy,
    peer_ip: &HeaderValue,
    keep_te_trailers: bool,
) -> Ids {
    strip_hop_by_hop(headers, keep_te_trailers);
    let correlation_id = ensure_id(headers, &X_CORRELATION_ID);
    let request_id = ensure_id(headers, &X_REQUEST_ID);
    let traceparent = next_traceparent(headers.get(&TRACEPARENT));
    headers.insert(TRACEPARENT.clone(), traceparent.clone());
    if !headers.contains_key(&X_SERVICE_NAME) {
        headers.insert(X_SERVICE_NAME.clone(), policy.service_name.clone());
    }
    append_forwarded_for(headers, peer_ip);
    headers.insert(X_FORWARDED_PROTO.clone(), policy.proto.clone());
    Ids {
        correlation_id,
        request_id,
        traceparent,
    }
}

fn ensure_id(headers: &mut HeaderMap, name: &HeaderName) -> HeaderValue {
    // Exactly one valid value is kept; several values count as invalid.
    let mut all = headers.get_all(name).iter();
    let kept = match (all.next(), all.next()) {
        (Some(v), None) if is_valid_id(v.as_bytes()) => Some(v.clone()),
        _ => None,
    };
    match kept {
        Some(v) => v,
        None => {
            let v = new_uuid();
            headers.insert(name.clone(), v.clone());
            v
        }
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, peer_ip: &HeaderValue) {
    let existing: Vec<&[u8]> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if existing.is_empty() {
        headers.insert(X_FORWARDED_FOR.clone(), peer_ip.clone());
        return;
    }
    let mut joined = Vec::with_capacity(64);
    for v in existing {
        joined.extend_from_slice(v);
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(peer_ip.as_bytes());
    match HeaderValue::from_bytes(&joined) {
        Ok(v) => {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        Err(_) => {
            headers.insert(X_FORWARDED_FOR.clone(), peer_ip.clone());
        }
    }
}

/// Response side: drop hop-by-hop headers (an upstream's, a fallback's) and echo the
/// ids.
pub fn stamp_response(headers: &mut HeaderMap, ids: &Ids) {
    strip_hop_by_hop(headers, false);
    headers.insert(X_CORRELATION_ID.clone(), ids.correlation_id.clone());
    headers.insert(X_REQUEST_ID.clone(), ids.request_id.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HeaderPolicy {
        HeaderPolicy {
            service_name: HeaderValue::from_static("fusion"),
            proto: HeaderValue::from_static("http"),
        }
    }

    #[test]
    fn valid_ids_are_kept_and_invalid_replaced() {
        assert!(is_valid_id(b"abc-123_x.y:z"));
        assert!(!is_valid_id(b""));
        assert!(!is_valid_id(b"has space"));
        assert!(!is_valid_id(&[b'a'; 129]));
        assert!(is_valid_id(&[b'a'; 128]));
        let mut h = HeaderMap::new();
        h.insert("x-correlation-id", HeaderValue::from_static("keep-me"));
        h.insert("x-request-id", HeaderValue::from_static("bad id!"));
        let ids = prepare_request(
            &mut h,
            &policy(),
            &HeaderValue::from_static("1.2.3.4"),
            false,
        );
        assert_eq!(ids.correlation_id, "keep-me");
        assert_ne!(ids.request_id, "bad id!");
        assert_eq!(ids.request_id.len(), 36);
        assert_eq!(h["x-request-id"], ids.request_id);
    }

    #[test]
    fn connection_listed_headers_cannot_strip_ids() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("X-Correlation-ID, x-secret"),
        );
        h.insert("x-correlation-id", HeaderValue::from_static("client-id"));
        h.insert("x-secret", HeaderValue::from_static("s"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        let ids = prepare_request(
            &mut h,
            &policy(),
            &HeaderValue::from_static("1.2.3.4"),
            false,
        );
        assert!(!h.contains_key("x-secret"));
        assert!(!h.contains_key(CONNECTION));
        assert!(!h.contains_key("keep-alive"));
        // The client's id was listed as hop-by-hop, so it is gone and a new one is set.
        assert_eq!(h["x-correlation-id"], ids.correlation_id);
        assert_ne!(ids.correlation_id, "client-id");
    }

    #[test]
    fn traceparent_keeps_trace_id_with_new_parent() {
        let inc =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let next = next_traceparent(Some(&inc));
        let s = next.to_str().unwrap();
        assert_eq!(&s[..36], "00-4bf92f3577b34da6a3ce929d0e0e4736-");
        assert_ne!(&s[36..52], "00f067aa0ba902b7");
        assert!(s.ends_with("-01"));
        let fresh = next_traceparent(Some(&HeaderValue::from_static("garbage")));
        assert_eq!(fresh.len(), 55);
        assert_ne!(
            &fresh.to_str().unwrap()[3..35],
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn forwarding_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        prepare_request(
            &mut h,
            &policy(),
            &HeaderValue::from_static("127.0.0.1"),
            false,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-service-name"], "fusion");
        let mut h = HeaderMap::new();
        h.insert("x-service-name", HeaderValue::from_static("caller"));
        prepare_request(
            &mut h,
            &policy(),
            &HeaderValue::from_static("127.0.0.1"),
            false,
        );
        assert_eq!(h["x-service-name"], "caller");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    }

    #[test]
    fn te_trailers_kept_only_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, true);
        assert!(h.contains_key(TE));
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key(TE));
    }
}
