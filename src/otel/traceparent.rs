//! The W3C `traceparent` header (Trace Context level 1) read and written without
//! allocating, and the sampling decision made from it before any span exists.
//!
//! Touched per request: [`decide`] (and, for sampled requests only, [`format()`]).

use http::HeaderValue;
use opentelemetry::trace::{SpanId, TraceId};

/// A valid incoming `traceparent`: the caller's trace id, its span id (the parent of
/// fusebox's server span) and its sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

/// What to do with one request, decided before anything is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Record a server span, parented on the caller's span when it sent one.
    Sample(Option<Parent>),
    /// Record nothing.
    Drop,
}

/// The sampling rule: a valid incoming `traceparent` is followed either way (flag `01`
/// samples, `00` does not); only requests without one are sampled at `ratio`
/// (0.0..=1.0), drawing from `draw` (uniform in `[0, 1)`) only when the ratio leaves a
/// choice.
pub fn decide(incoming: Option<&HeaderValue>, ratio: f64, draw: impl FnOnce() -> f64) -> Decision {
    match incoming.and_then(|v| parse(v.as_bytes())) {
        Some(p) if p.sampled => Decision::Sample(Some(p)),
        Some(_) => Decision::Drop,
        None if ratio >= 1.0 => Decision::Sample(None),
        None if ratio <= 0.0 => Decision::Drop,
        None if draw() < ratio => Decision::Sample(None),
        None => Decision::Drop,
    }
}

/// Parses a `traceparent` value: `version-traceid-parentid-flags`, lower-case hex only.
/// Version `00` must be exactly 55 bytes; a later version may carry more fields after
/// a `-` (read as version 00, as the spec asks); version `ff`, all-zero ids and any
/// malformed value are invalid.
pub fn parse(v: &[u8]) -> Option<Parent> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex(&v[0..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace = hex(&v[3..35])?;
    let span = hex(&v[36..52])?;
    let flags = hex(&v[53..55])?;
    if trace == 0 || span == 0 {
        return None;
    }
    Some(Parent {
        trace_id: TraceId::from(trace),
        // 16 hex digits always fit in 64 bits.
        span_id: SpanId::from(span as u64),
        sampled: flags & 0x01 == 0x01,
    })
}

/// `00-<trace id>-<span id>-01` (or `-00` when not sampled).
pub fn format(trace_id: TraceId, span_id: SpanId, sampled: bool) -> HeaderValue {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(&mut out[3..35], &trace_id.to_bytes());
    hex_into(&mut out[36..52], &span_id.to_bytes());
    if sampled {
        out[54] = b'1';
    }
    // Every byte written is an ASCII hex digit or '-', all valid in a header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Lower-case hex digits (at most 32) as a number; `None` for any other byte.
fn hex(s: &[u8]) -> Option<u128> {
    s.iter().try_fold(0u128, |acc, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some((acc << 4) | u128::from(d))
    })
}

/// Each byte's two lower-case hex digits, so a byte costs one load and one store.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
};

/// `bytes` as lower-case hex digits into `out` (two per byte), for ids and trace ids.
pub(crate) fn hex_into(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    fn hv(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    fn no_draw() -> f64 {
        panic!("the ratio must not be consulted when the caller decided")
    }

    #[test]
    fn parses_the_spec_example() {
        let p = parse(SAMPLED.as_bytes()).expect("valid");
        assert_eq!(
            p.trace_id,
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(p.span_id, SpanId::from_hex("00f067aa0ba902b7").unwrap());
        assert!(p.sampled);
        assert!(!parse(UNSAMPLED.as_bytes()).unwrap().sampled);
        // Only the sampled bit counts; other flag bits are ignored.
        let other_bits = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02";
        assert!(!parse(other_bits.as_bytes()).unwrap().sampled);
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "garbage",
            // all-zero trace id, all-zero parent id
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // upper-case hex, version ff, wrong separators, too short, too long for 00
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_as_version_00() {
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(parse(v.as_bytes()).expect("future version").sampled);
    }

    #[test]
    fn format_round_trips() {
        let p = parse(SAMPLED.as_bytes()).unwrap();
        assert_eq!(format(p.trace_id, p.span_id, true), SAMPLED);
        assert_eq!(format(p.trace_id, p.span_id, false), UNSAMPLED);
    }

    #[test]
    fn an_incoming_flag_is_followed_whatever_the_ratio() {
        let p = parse(SAMPLED.as_bytes());
        assert_eq!(
            decide(Some(&hv(SAMPLED)), 0.0, no_draw),
            Decision::Sample(p)
        );
        assert_eq!(decide(Some(&hv(UNSAMPLED)), 1.0, no_draw), Decision::Drop);
    }

    #[test]
    fn the_ratio_decides_without_a_valid_traceparent() {
        assert_eq!(decide(None, 1.0, no_draw), Decision::Sample(None));
        assert_eq!(decide(None, 0.0, no_draw), Decision::Drop);
        assert_eq!(decide(None, 0.25, || 0.2), Decision::Sample(None));
        assert_eq!(decide(None, 0.25, || 0.3), Decision::Drop);
        // An invalid header counts as absent.
        assert_eq!(
            decide(Some(&hv("garbage")), 0.25, || 0.1),
            Decision::Sample(None)
        );
        assert_eq!(decide(Some(&hv("garbage")), 0.25, || 0.9), Decision::Drop);
    }
}
