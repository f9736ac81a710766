//! Header rules of the contract, applied once per request: hop-by-hop removal first (so a
//! caller's `Connection: X-Correlation-ID` cannot strip what fusebox sets), then the
//! correlation and request ids, W3C `traceparent`, `X-Service-Name` and the forwarding
//! headers; and on the way back, the ids echoed on the response.

use crate::otel::traceparent::hex_into;
use http::header::{
    Entry, HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};

pub static X_CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_SERVICE_NAME: HeaderName = HeaderName::from_static("x-service-name");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub static X_ORG_ID: HeaderName = HeaderName::from_static("x-org-id");
pub static X_CAMERA_ID: HeaderName = HeaderName::from_static("x-camera-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The ids of one request, echoed on the response and written to the access log.
#[derive(Debug, Clone)]
pub struct Ids {
    pub correlation_id: HeaderValue,
    pub request_id: HeaderValue,
    pub traceparent: HeaderValue,
    /// The caller's trace goes on (its `traceparent` was valid); otherwise a new one
    /// started and the caller's `tracestate`, which belonged to another trace, is gone.
    pub trace_kept: bool,
}

/// Whether `v` is an id fusebox keeps: 1-128 characters of `[A-Za-z0-9._:-]`.
pub fn is_valid_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Fast, thread-local random numbers for ids and trace ids (wyrand, seeded once per
/// thread from the OS-seeded `rand` generator). Ids must be unique, not unguessable:
/// a request or trace id is not a secret. Cheaper than a ChaCha draw per id.
fn random_u64() -> u64 {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(rand::random::<u64>() | 1);
    }
    STATE.with(|c| {
        let s = c.get().wrapping_add(0xa076_1d64_78bd_642f);
        c.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    for chunk in out.chunks_mut(8) {
        let r = random_u64().to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    out
}

/// A header value owning `bytes` (lower-case hex digits and dashes, built here) in a
/// shared buffer: clones are reference counts, not copies (a value built from a `Vec`
/// allocates again on its first clone).
fn shared_value<const N: usize>(bytes: [u8; N]) -> HeaderValue {
    debug_assert!(bytes.iter().all(|b| b.is_ascii_hexdigit() || *b == b'-'));
    // SAFETY: every byte is an ASCII hex digit or '-' (each caller writes only those;
    // asserted above in debug builds, and `http` checks again in debug builds), all of
    // them visible ASCII, which is what a header value may hold. Checked by
    // `from_maybe_shared`, the 36 to 55 bytes cost ~4 instructions each, three values
    // per request.
    unsafe { HeaderValue::from_maybe_shared_unchecked(bytes::Bytes::from_owner(bytes)) }
}

/// A new UUID v4 as a header value.
pub fn new_uuid() -> HeaderValue {
    let mut b: [u8; 16] = random_bytes();
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let mut out = [b'-'; 36];
    let mut pos = 0;
    for (i, group) in [4usize, 2, 2, 2, 6].iter().enumerate() {
        let start: usize = [0usize, 4, 6, 8, 10][i];
        hex_into(&mut out[pos..pos + group * 2], &b[start..start + group]);
        pos += group * 2 + 1;
    }
    shared_value(out)
}

/// The next `traceparent`: the caller's trace id (when its header is valid W3C, a later
/// version read as version 00 as the spec says) with a new parent id, else a new trace;
/// and whether the caller's trace was kept.
pub fn next_traceparent(incoming: Option<&HeaderValue>) -> (HeaderValue, bool) {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-01";
    let parent: [u8; 8] = random_bytes();
    hex_into(&mut out[36..52], &parent);
    let kept = incoming
        .map(|v| v.as_bytes())
        .filter(|v| crate::otel::traceparent::parse(v).is_some());
    match kept {
        Some(v) => {
            out[3..35].copy_from_slice(&v[3..35]);
            out[53..55].copy_from_slice(&v[53..55]);
        }
        None => {
            let trace: [u8; 16] = random_bytes();
            hex_into(&mut out[3..35], &trace);
        }
    }
    (shared_value(out), kept.is_some())
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
///
/// One pass over the header names finds what is there (comparisons, no hashing), so
/// the common message without any of them costs no lookup; `Connection` tokens are
/// parsed without allocating (`keep-alive` and `close`, the usual ones, name no header
/// that is not removed anyway).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_te_trailers: bool) {
    const CONN: u8 = 1;
    const KA: u8 = 2;
    const PC: u8 = 4;
    const TENC: u8 = 8;
    const UPG: u8 = 16;
    const TRL: u8 = 32;
    const TEH: u8 = 64;
    let mut found = 0u8;
    for name in headers.keys() {
        // One match on the name's text: a length test, then at most one comparison
        // (seven `HeaderName` comparisons per header cost ~8x that).
        found |= match name.as_str() {
            "connection" => CONN,
            "transfer-encoding" => TENC,
            "upgrade" => UPG,
            "te" => TEH,
            "trailer" => TRL,
            "keep-alive" => KA,
            "proxy-connection" => PC,
            _ => 0,
        };
    }
    if found == 0 {
        return;
    }
    if found & CONN != 0 {
        // Most messages carry only `Connection: keep-alive` (or `close`): nothing else
        // to remove, and no list to split.
        let mut values = headers.get_all(CONNECTION).iter();
        let framing_only = match (values.next(), values.next()) {
            (Some(v), None) => {
                let v = v.as_bytes();
                v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
            }
            _ => false,
        };
        if !framing_only {
            strip_connection_listed(headers);
        }
        headers.remove(CONNECTION);
    }
    if found & KA != 0 {
        headers.remove(&KEEP_ALIVE);
    }
    if found & PC != 0 {
        headers.remove(&PROXY_CONNECTION);
    }
    if found & TENC != 0 {
        headers.remove(TRANSFER_ENCODING);
        // A message framed by Transfer-Encoding has no valid Content-Length: forwarding
        // it would announce a length the re-framed body does not have (RFC 9112 6.3).
        headers.remove(CONTENT_LENGTH);
    }
    if found & UPG != 0 {
        headers.remove(UPGRADE);
    }
    if found & TRL != 0 {
        headers.remove(TRAILER);
    }
    if found & TEH != 0 {
        let trailers_only = headers
            .get(TE)
            .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
        if !(keep_te_trailers && trailers_only) {
            headers.remove(TE);
        }
    }
}

/// Removes the headers a `Connection` value lists (RFC 9110 7.6.1).
fn strip_connection_listed(headers: &mut HeaderMap) {
    let mut listed: [Option<HeaderName>; 8] = Default::default();
    let mut more: Vec<HeaderName> = Vec::new();
    let mut n = 0;
    for v in headers.get_all(CONNECTION) {
        let Ok(v) = v.to_str() else { continue };
        for token in v.split(',').map(str::trim) {
            if token.is_empty()
                || token.eq_ignore_ascii_case("keep-alive")
                || token.eq_ignore_ascii_case("close")
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                if n < listed.len() {
                    listed[n] = Some(name);
                    n += 1;
                } else {
                    more.push(name);
                }
            }
        }
    }
    for name in listed.iter().flatten().chain(more.iter()) {
        headers.remove(name);
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
    stamp_request(headers, policy, peer_ip)
}

/// The request-side rules after hop-by-hop removal (the request path strips first and
/// reads the caller's headers in between): ids, `traceparent`, `X-Service-Name`, the
/// forwarding headers.
pub fn stamp_request(headers: &mut HeaderMap, policy: &HeaderPolicy, peer_ip: &HeaderValue) -> Ids {
    // Room for what is added, so the map grows (and rehashes) at most once.
    headers.reserve(6);
    // One lookup per header through the entry API: read and set in the same place.
    let correlation_id = ensure_id(headers, &X_CORRELATION_ID);
    let request_id = ensure_id(headers, &X_REQUEST_ID);
    let (traceparent, trace_kept) = match headers.entry(&TRACEPARENT) {
        Entry::Occupied(mut e) => {
            // Two of them are invalid (W3C: restart), as for the ids.
            let mut all = e.iter();
            let one = match (all.next(), all.next()) {
                (Some(v), None) => Some(v),
                _ => None,
            };
            let (next, kept) = next_traceparent(one);
            e.insert(next.clone());
            (next, kept)
        }
        Entry::Vacant(e) => {
            let (next, kept) = next_traceparent(None);
            e.insert(next.clone());
            (next, kept)
        }
    };
    if !trace_kept {
        headers.remove(&TRACESTATE);
    }
    if let Entry::Vacant(e) = headers.entry(&X_SERVICE_NAME) {
        e.insert(policy.service_name.clone());
    }
    append_forwarded_for(headers, peer_ip);
    headers.insert(X_FORWARDED_PROTO.clone(), policy.proto.clone());
    Ids {
        correlation_id,
        request_id,
        traceparent,
        trace_kept,
    }
}

fn ensure_id(headers: &mut HeaderMap, name: &HeaderName) -> HeaderValue {
    // Exactly one valid value is kept; several values count as invalid.
    match headers.entry(name) {
        Entry::Occupied(mut e) => {
            let mut all = e.iter();
            if let (Some(v), None) = (all.next(), all.next()) {
                if is_valid_id(v.as_bytes()) {
                    return v.clone();
                }
            }
            let v = new_uuid();
            e.insert(v.clone());
            v
        }
        Entry::Vacant(e) => {
            let v = new_uuid();
            e.insert(v.clone());
            v
        }
    }
}

/// A list value without the blanks and commas around it.
fn trim_list(v: &[u8]) -> &[u8] {
    let blank = |b: &u8| matches!(b, b' ' | b'\t' | b',');
    let start = v.iter().position(|b| !blank(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !blank(b)).map_or(start, |i| i + 1);
    &v[start..end]
}

fn append_forwarded_for(headers: &mut HeaderMap, peer_ip: &HeaderValue) {
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(e) => {
            e.insert(peer_ip.clone());
        }
        Entry::Occupied(mut e) => {
            let mut joined = Vec::with_capacity(64);
            for v in e.iter() {
                // An empty value (or one of only spaces and commas) adds no hop.
                let v = trim_list(v.as_bytes());
                if v.is_empty() {
                    continue;
                }
                joined.extend_from_slice(v);
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(peer_ip.as_bytes());
            let v = HeaderValue::from_bytes(&joined).unwrap_or_else(|_| peer_ip.clone());
            e.insert(v);
        }
    }
}

/// Response side: drop hop-by-hop headers (an upstream's, a fallback's) and echo the
/// ids.
pub fn stamp_response(headers: &mut HeaderMap, ids: &Ids) {
    strip_hop_by_hop(headers, false);
    headers.reserve(2);
    headers.insert(X_CORRELATION_ID.clone(), ids.correlation_id.clone());
    headers.insert(X_REQUEST_ID.clone(), ids.request_id.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_uuids_are_v4_in_lower_case_hex() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let v = new_uuid();
            let b = v.as_bytes();
            assert_eq!(b.len(), 36);
            for (i, c) in b.iter().enumerate() {
                if [8, 13, 18, 23].contains(&i) {
                    assert_eq!(*c, b'-', "{v:?}");
                } else {
                    assert!(matches!(c, b'0'..=b'9' | b'a'..=b'f'), "{v:?}");
                }
            }
            assert_eq!(b[14], b'4', "version 4: {v:?}");
            assert!(matches!(b[19], b'8' | b'9' | b'a' | b'b'), "variant: {v:?}");
            assert!(seen.insert(v), "a repeated id");
        }
        let mut out = [0u8; 6];
        hex_into(&mut out, &[0x00, 0x9f, 0xff]);
        assert_eq!(&out, b"009fff");
    }

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
        let (next, kept) = next_traceparent(Some(&inc));
        assert!(kept);
        let s = next.to_str().unwrap();
        assert_eq!(&s[..36], "00-4bf92f3577b34da6a3ce929d0e0e4736-");
        assert_ne!(&s[36..52], "00f067aa0ba902b7");
        assert!(s.ends_with("-01"));
        let (fresh, kept) = next_traceparent(Some(&HeaderValue::from_static("garbage")));
        assert!(!kept);
        assert_eq!(fresh.len(), 55);
        assert_ne!(
            &fresh.to_str().unwrap()[3..35],
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    /// W3C trace context 3.2.4: a later version is read as version 00 (its first 55
    /// characters, then a `-`); `ff`, a longer version 00, bad hex restart the trace.
    #[test]
    fn traceparent_versions_follow_the_w3c_rules() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        for v in [
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ] {
            let (next, kept) = next_traceparent(Some(&HeaderValue::from_str(v).unwrap()));
            let s = next.to_str().unwrap();
            assert!(kept, "{v}");
            assert_eq!(&s[..3], "00-", "{v}: sent on as version 00");
            assert_eq!(&s[3..35], trace, "{v}");
            assert_eq!(&s[53..], &v[53..55], "{v}: flags kept");
            assert_eq!(s.len(), 55);
        }
        for v in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        ] {
            let (next, kept) = next_traceparent(Some(&HeaderValue::from_str(v).unwrap()));
            assert!(!kept, "{v}");
            assert_ne!(&next.to_str().unwrap()[3..35], trace, "{v}");
        }
    }

    /// Two `traceparent` headers restart the trace (W3C), and a restarted trace drops
    /// the caller's `tracestate`, which belonged to another one; a kept trace keeps it.
    #[test]
    fn duplicate_traceparents_restart_and_tracestate_follows_the_trace() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = HeaderMap::new();
        h.append("traceparent", HeaderValue::from_static(tp));
        h.append(
            "traceparent",
            HeaderValue::from_static("00-12345678901234567890123456789012-00f067aa0ba902b7-01"),
        );
        h.insert("tracestate", HeaderValue::from_static("vendor=x"));
        let ids = prepare_request(
            &mut h,
            &policy(),
            &HeaderValue::from_static("1.2.3.4"),
            false,
        );
        assert!(!ids.trace_kept);
        assert_eq!(h.get_all("traceparent").iter().count(), 1);
        assert_ne!(&ids.traceparent.to_str().unwrap()[3..35], &tp[3..35]);
        assert!(!h.contains_key("tracestate"));
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static(tp));
        h.insert("tracestate", HeaderValue::from_static("vendor=x"));
        let ids = prepare_request(
            &mut h,
            &policy(),
            &HeaderValue::from_static("1.2.3.4"),
            false,
        );
        assert!(ids.trace_kept);
        assert_eq!(h["tracestate"], "vendor=x");
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

    #[test]
    fn empty_forwarded_for_values_add_no_hop() {
        let peer = HeaderValue::from_static("127.0.0.1");
        for (sent, want) in [
            (vec![""], "127.0.0.1"),
            (vec![" , "], "127.0.0.1"),
            (vec!["", "10.0.0.1"], "10.0.0.1, 127.0.0.1"),
            (
                vec!["10.0.0.1, ", "10.0.0.2"],
                "10.0.0.1, 10.0.0.2, 127.0.0.1",
            ),
        ] {
            let mut h = HeaderMap::new();
            for v in &sent {
                h.append(&X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
            }
            prepare_request(&mut h, &policy(), &peer, false);
            assert_eq!(h[&X_FORWARDED_FOR], want, "{sent:?}");
        }
    }

    #[test]
    fn transfer_encoding_drops_content_length() {
        let mut h = HeaderMap::new();
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("50"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("50"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h[CONTENT_LENGTH], "50");
    }

    #[test]
    fn a_lone_keep_alive_or_close_is_removed_and_a_list_still_strips() {
        for v in ["keep-alive", "Keep-Alive", "close", "CLOSE"] {
            let mut h = HeaderMap::new();
            h.insert(CONNECTION, HeaderValue::from_static(v));
            h.insert("x-keep", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h, false);
            assert!(h.get(CONNECTION).is_none(), "{v}: {h:?}");
            assert_eq!(h["x-keep"], "1", "{v}");
        }
        // Two values, each alone a framing word: the names after them still go.
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(CONNECTION, HeaderValue::from_static("x-secret"));
        h.insert("x-secret", HeaderValue::from_static("s"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("s"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }
}
