//! What an endpoint's load looks like from the proxy: a peak-EWMA latency estimate
//! (Finagle's and linkerd's `PeakEwma`: a sample above the estimate replaces it at
//! once, lower samples pull it down with weight `1 - e^(-dt/decay)`), the load figures
//! the upstream reports in its responses (ORCA `endpoint-load-metrics` or a configured
//! header), and the cost the `peak_ewma` balancer compares:
//!
//! ```text
//! cost = latency x (1 + in flight / scale) x (1 + queue / scale) / (1 - utilisation)
//! ```
//!
//! with `queue` and `utilisation` from a load report younger than
//! `load_report_expiry` (0 otherwise; utilisation capped at 0.9), and `scale` 1, or
//! the endpoint's adaptive concurrency limit when the upstream has one (load in units
//! of what the endpoint takes at once: with 1 it is linkerd's `latency x (in flight +
//! 1)`).
//!
//! The pitfalls the anchors report are handled here: an endpoint with no samples
//! starts at `default_latency`, not zero; a failed attempt (a replica that fails fast)
//! counts as at least twice its mean answer or `default_latency`, so failing fast never
//! looks fast; without
//! samples the estimate drifts back to `default_latency` with the same decay, so an
//! endpoint that was slow once is probed again later. Cancelled attempts and health
//! probes are never samples (the caller does not report them).
//!
//! Lock-free: a few atomics per endpoint; racing updates may lose one sample, which an
//! average can afford. Touched per attempt (`observe`, `report`) and per pick (`cost`).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use tokio::time::Instant;

use super::endpoint::epoch;

/// ORCA's response header (TEXT format), as vLLM and others send it.
pub static ENDPOINT_LOAD_METRICS: HeaderName = HeaderName::from_static("endpoint-load-metrics");

/// The largest utilisation a report may claim in the cost (a report of 1.0 would make
/// the cost infinite and the endpoint unpickable forever).
const MAX_UTILISATION: f32 = 0.9;

/// A failed attempt counts as at least this many times the endpoint's mean answer (or
/// `default_latency`, when longer), and a fast one as this many times the estimate.
const FAILURE_PENALTY: f64 = 2.0;

/// A run of fast failures raises the estimate to at most this many times the mean
/// answer (or `default_latency`).
const FAILURE_CAP: f64 = 16.0;

/// Weight of a new sample in the mean latency (about the last ten samples count).
const MEAN_WEIGHT: f64 = 0.1;

/// One endpoint's load.
#[derive(Debug)]
pub struct LoadState {
    /// Peak-EWMA latency estimate, nanoseconds as `f64` bits.
    est_ns: AtomicU64,
    /// Microseconds since [`epoch`] of the last update.
    stamp_us: AtomicU64,
    /// Samples seen (0: the estimate is the default, nothing is known).
    samples: AtomicU64,
    /// Microseconds since [`epoch`] of the last sample of any kind.
    sample_us: AtomicU64,
    /// Microseconds since [`epoch`] of the last answer (a sample that was no failure).
    answer_us: AtomicU64,
    /// Attempts sent and not ended yet (waiting for the answer's headers), counted for
    /// upstreams with an adaptive limit (the stall check); and since when (microseconds
    /// since [`epoch`]) some have been waiting without a break.
    awaiting: AtomicU32,
    busy_us: AtomicU64,
    /// Plain moving average of successful attempts' latency (nanoseconds, `f64` bits;
    /// 0 = none yet): the service time deadline predictions use, which a single stall
    /// does not dominate the way it dominates the peak estimate.
    mean_ns: AtomicU64,
    /// Last reported queue length and utilisation (`f32` bits), and until when
    /// (milliseconds since [`epoch`]) they count.
    queue: AtomicU32,
    /// The last report's queue has not been read by an adaptive-limit sample yet.
    queue_unread: AtomicBool,
    utilisation: AtomicU32,
    report_until_ms: AtomicU64,
}

fn us_since_epoch(now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch()).as_micros()).unwrap_or(u64::MAX)
}

impl LoadState {
    pub fn new(default_latency: Duration) -> LoadState {
        LoadState {
            est_ns: AtomicU64::new((default_latency.as_nanos() as f64).to_bits()),
            stamp_us: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            sample_us: AtomicU64::new(0),
            answer_us: AtomicU64::new(0),
            awaiting: AtomicU32::new(0),
            busy_us: AtomicU64::new(0),
            mean_ns: AtomicU64::new(0f64.to_bits()),
            queue: AtomicU32::new(0f32.to_bits()),
            queue_unread: AtomicBool::new(false),
            utilisation: AtomicU32::new(0f32.to_bits()),
            report_until_ms: AtomicU64::new(0),
        }
    }

    /// Records one attempt's latency (to response headers, or to its failure).
    ///
    /// A failure counts as at least [`FAILURE_PENALTY`] x what an answer takes here
    /// (the mean of answers, or `default` when that is longer or there is none yet). A
    /// slow one (a timeout: as long as the estimate or longer) counts as what it took:
    /// it raised the estimate already, and doubling it per timeout compounded (a
    /// stalled replica's run of timeouts took it to hours, which kept the replica out
    /// of rotation long after it recovered). A fast one (a 503 in 1 ms) counts as
    /// [`FAILURE_PENALTY`] x the estimate, so a run of them raises it quickly, up to
    /// [`FAILURE_CAP`] x an answer: failing fast never looks fast, and a replica back
    /// from failing is tried again within seconds.
    pub fn observe(
        &self,
        rtt: Duration,
        failure: bool,
        now: Instant,
        decay: Duration,
        default: Duration,
    ) {
        let mut rtt_ns = rtt.as_nanos() as f64;
        let old = self.latency_ns_at(now, decay, Duration::ZERO);
        if failure {
            let mean = f64::from_bits(self.mean_ns.load(Ordering::Relaxed));
            let reference = mean.max(default.as_nanos() as f64);
            let floor = reference * FAILURE_PENALTY;
            rtt_ns = if rtt_ns >= old {
                rtt_ns.max(floor)
            } else {
                (old * FAILURE_PENALTY)
                    .max(floor)
                    .min(reference * FAILURE_CAP)
                    .max(rtt_ns)
            };
        }
        let est = if rtt_ns >= old || self.samples.load(Ordering::Relaxed) == 0 {
            rtt_ns // a peak replaces the estimate at once (and the first sample does)
        } else {
            let w = weight(self.since_update(now), decay);
            old * w + rtt_ns * (1.0 - w)
        };
        self.est_ns.store(est.to_bits(), Ordering::Relaxed);
        self.stamp_us.store(us_since_epoch(now), Ordering::Relaxed);
        self.observe_mean(rtt, failure, now);
    }

    /// An attempt cancelled (its caller went away) after `waited`: a lower bound of its
    /// latency, fed to the peak estimate only when above it (a bound below says
    /// nothing, and a cancelled request must never look fast). Under overload most late
    /// attempts end this way, so ignoring them would hide the queueing from the
    /// balancer. The mean that deadline predictions use takes completed answers only.
    pub fn observe_censored(&self, waited: Duration, now: Instant, decay: Duration) {
        let old = self.latency_ns_at(now, decay, Duration::ZERO);
        let waited_ns = waited.as_nanos() as f64;
        if self.has_samples() && waited_ns > old {
            // A peak replaces the estimate at once, as in `observe`.
            self.est_ns.store(waited_ns.to_bits(), Ordering::Relaxed);
            self.stamp_us.store(us_since_epoch(now), Ordering::Relaxed);
        }
    }

    /// Whether the last sample is younger than `max_age`: a deadline prediction from
    /// older knowledge is not acted on (the next request goes through and refreshes
    /// it), so shedding can never lock itself in once nothing reaches the endpoint.
    pub fn fresh(&self, now: Instant, max_age: Duration) -> bool {
        let last = self.sample_us.load(Ordering::Relaxed);
        Duration::from_micros(us_since_epoch(now).saturating_sub(last)) < max_age
    }

    /// An attempt was sent and waits for its answer (see [`LoadState::unanswered_for`]).
    pub fn attempt_started(&self, now: Instant) {
        if self.awaiting.fetch_add(1, Ordering::Relaxed) == 0 {
            self.busy_us.store(us_since_epoch(now), Ordering::Relaxed);
        }
    }

    /// The attempt of an [`LoadState::attempt_started`] ended (answer, failure,
    /// timeout or cancel).
    pub fn attempt_ended(&self) {
        let _ = self
            .awaiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// How long attempts have been waiting here with no answer: since the last answer
    /// or since attempts started waiting (whichever is later); `None` while none waits.
    /// A timeout or a reset ends an attempt but is no answer: it says nothing of the
    /// endpoint working. An endpoint streaming long answers, or idle until now, has
    /// none waiting for its headers, so it never counts. (Racing the first
    /// `attempt_started` may read a busy time one wait too old: a moment's false
    /// reading, corrected by the next.)
    pub fn unanswered_for(&self, now: Instant) -> Option<Duration> {
        if self.awaiting.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let answer = self.answer_us.load(Ordering::Relaxed);
        let busy = self.busy_us.load(Ordering::Relaxed);
        Some(Duration::from_micros(
            us_since_epoch(now).saturating_sub(answer.max(busy)),
        ))
    }

    /// Records a sample in the mean latency only (balancers other than `peak_ewma`
    /// read just that, for deadline predictions; no `exp`).
    pub fn observe_mean(&self, rtt: Duration, failure: bool, now: Instant) {
        self.samples.fetch_add(1, Ordering::Relaxed);
        let at = us_since_epoch(now);
        self.sample_us.store(at, Ordering::Relaxed);
        if !failure {
            self.answer_us.store(at, Ordering::Relaxed);
            let m = f64::from_bits(self.mean_ns.load(Ordering::Relaxed));
            let rtt_ns = rtt.as_nanos() as f64;
            let m = if m == 0.0 {
                rtt_ns
            } else {
                m + (rtt_ns - m) * MEAN_WEIGHT
            };
            self.mean_ns.store(m.max(1.0).to_bits(), Ordering::Relaxed);
        }
    }

    /// The moving average of successful latencies; `None` before the first one.
    pub fn mean_latency(&self) -> Option<Duration> {
        let m = f64::from_bits(self.mean_ns.load(Ordering::Relaxed));
        (m > 0.0).then(|| Duration::from_nanos(m as u64))
    }

    /// Whether any attempt has been observed (a prediction needs one).
    pub fn has_samples(&self) -> bool {
        self.samples.load(Ordering::Relaxed) > 0
    }

    /// The estimate now: the last one drifting back to `default` without samples.
    pub fn latency(&self, now: Instant, decay: Duration, default: Duration) -> Duration {
        Duration::from_nanos(self.latency_ns_at(now, decay, default) as u64)
    }

    fn latency_ns_at(&self, now: Instant, decay: Duration, default: Duration) -> f64 {
        let est = f64::from_bits(self.est_ns.load(Ordering::Relaxed));
        if default.is_zero() || !self.has_samples() {
            return est;
        }
        let d = default.as_nanos() as f64;
        let w = weight(self.since_update(now), decay);
        d + (est - d) * w
    }

    fn since_update(&self, now: Instant) -> Duration {
        let last = self.stamp_us.load(Ordering::Relaxed);
        Duration::from_micros(us_since_epoch(now).saturating_sub(last))
    }

    /// Stores the load figures of a response's report, valid for `expiry`.
    pub fn report(
        &self,
        queue: Option<f32>,
        utilisation: Option<f32>,
        now: Instant,
        expiry: Duration,
    ) {
        if queue.is_none() && utilisation.is_none() {
            return;
        }
        let clean = |v: Option<f32>| v.filter(|x| x.is_finite() && *x >= 0.0);
        // NaN: this report says nothing of the queue (see `fresh_queue`).
        let q = clean(queue).unwrap_or(f32::NAN);
        self.queue.store(q.to_bits(), Ordering::Relaxed);
        self.queue_unread.store(!q.is_nan(), Ordering::Relaxed);
        let u = clean(utilisation).unwrap_or(0.0).min(MAX_UTILISATION);
        self.utilisation.store(u.to_bits(), Ordering::Relaxed);
        let until = now.checked_add(expiry).unwrap_or(now);
        let ms = u64::try_from(until.saturating_duration_since(epoch()).as_millis()).unwrap_or(0);
        self.report_until_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// `(1 + queue / scale) / (1 - utilisation)` of a report still valid at `now`,
    /// else 1.
    pub fn report_factor(&self, now: Instant, scale: f64) -> f64 {
        let until = self.report_until_ms.load(Ordering::Relaxed);
        let now_ms = u64::try_from(now.saturating_duration_since(epoch()).as_millis()).unwrap_or(0);
        if until == 0 || now_ms >= until {
            return 1.0;
        }
        let q = f32::from_bits(self.queue.load(Ordering::Relaxed));
        let q = if q.is_nan() { 0.0 } else { f64::from(q) };
        let u = f64::from(f32::from_bits(self.utilisation.load(Ordering::Relaxed)));
        (1.0 + q / scale) / (1.0 - u)
    }

    /// The queue of the last report, once: for the adaptive limit's next sample, while
    /// the report is still valid at `now` and gave a queue. An answer with a report in
    /// its headers reads its own; one from a server that reports in the trailers (after
    /// the answer's headers were learned from) reads the previous answer's. Once, because
    /// the limit's rule steps per report: one report read by every answer for its 2 s
    /// would cut the limit many times over.
    pub fn take_queue(&self, now: Instant) -> Option<f32> {
        if !self.queue_unread.swap(false, Ordering::Relaxed) {
            return None;
        }
        let until = self.report_until_ms.load(Ordering::Relaxed);
        let now_ms = u64::try_from(now.saturating_duration_since(epoch()).as_millis()).unwrap_or(0);
        if until == 0 || now_ms >= until {
            return None;
        }
        let q = f32::from_bits(self.queue.load(Ordering::Relaxed));
        (!q.is_nan()).then_some(q)
    }

    /// The peak-EWMA balancer's cost of sending one more request here; `scale` is what
    /// one unit of load is (1, or the endpoint's adaptive limit: a replica that runs
    /// batches of 8 is not 8x as loaded with 8 in flight).
    pub fn cost(
        &self,
        in_flight: usize,
        scale: f64,
        now: Instant,
        decay: Duration,
        default: Duration,
    ) -> f64 {
        let scale = scale.max(1.0);
        self.latency_ns_at(now, decay, default)
            * (1.0 + in_flight as f64 / scale)
            * self.report_factor(now, scale)
    }
}

/// The weight of the old estimate after `elapsed`: `e^(-elapsed/decay)`.
fn weight(elapsed: Duration, decay: Duration) -> f64 {
    if decay.is_zero() {
        return 0.0;
    }
    (-elapsed.as_secs_f64() / decay.as_secs_f64()).exp()
}

/// ORCA's binary form without a prefix, as gRPC servers send it (binary metadata, often
/// in the trailers): base64 of a serialized `OrcaLoadReport`.
pub static ENDPOINT_LOAD_METRICS_BIN: HeaderName =
    HeaderName::from_static("endpoint-load-metrics-bin");

/// How an upstream reads its endpoints' load reports: its `load_report_header`,
/// `forward_load_report` and `load_report_expiry`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSettings {
    pub header: Option<HeaderName>,
    pub forward: bool,
    pub expiry: Duration,
}

impl Default for ReportSettings {
    fn default() -> Self {
        ReportSettings {
            header: None,
            forward: false,
            expiry: Duration::from_secs(2),
        }
    }
}

/// Whether `headers` (a response's headers or its trailers) carry a load report. One
/// pass over the names, comparisons only: most responses carry none.
pub fn has_report(headers: &HeaderMap, configured: Option<&HeaderName>) -> bool {
    headers.keys().any(|k| {
        k == ENDPOINT_LOAD_METRICS || k == ENDPOINT_LOAD_METRICS_BIN || Some(k) == configured
    })
}

/// Removes the load-report headers (what the caller is not meant to see).
pub fn strip_report(headers: &mut HeaderMap, configured: Option<&HeaderName>) {
    headers.remove(&ENDPOINT_LOAD_METRICS);
    headers.remove(&ENDPOINT_LOAD_METRICS_BIN);
    if let Some(h) = configured {
        headers.remove(h);
    }
}

/// The fields of `xds.data.orca.v3.OrcaLoadReport` fusebox reads (the others are
/// skipped by the decoder). Field numbers from cncf/xds `orca_load_report.proto`.
#[derive(Clone, PartialEq, prost::Message)]
struct OrcaLoadReport {
    #[prost(double, tag = "1")]
    cpu_utilization: f64,
    #[prost(map = "string, double", tag = "8")]
    named_metrics: std::collections::HashMap<String, f64>,
    #[prost(double, tag = "9")]
    application_utilization: f64,
}

/// gRPC binary metadata may come with or without base64 padding.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// What a report says, the largest figure of each kind when several are present.
#[derive(Debug, Default)]
struct Figures {
    queue: Option<f32>,
    util: Option<f32>,
}

impl Figures {
    fn queue(&mut self, v: f64) {
        let v = v as f32;
        self.queue = Some(self.queue.map_or(v, |q| q.max(v)));
    }

    fn util(&mut self, v: f64) {
        let v = v as f32;
        self.util = Some(self.util.map_or(v, |u| u.max(v)));
    }

    /// `application_utilization`, `cpu_utilization`, or a named metric.
    fn field(&mut self, name: &str, v: f64) {
        match name {
            "application_utilization"
            | "applicationUtilization"
            | "cpu_utilization"
            | "cpuUtilization" => self.util(v),
            _ => {}
        }
    }

    /// A `named_metrics` entry: vLLM's `num_requests_waiting` and `kv_cache_usage_perc`,
    /// or a `queue_size`.
    fn named(&mut self, name: &str, v: f64) {
        match name {
            "num_requests_waiting" | "queue_size" => self.queue(v),
            "kv_cache_usage_perc" => self.util(v),
            _ => {}
        }
    }

    /// `TEXT named_metrics.num_requests_waiting=3, cpu_utilization=0.4`
    fn text(&mut self, text: &str) {
        for pair in text.split(',') {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            let Ok(v) = v.trim().parse::<f64>() else {
                continue;
            };
            let k = k.trim();
            match k.strip_prefix("named_metrics.") {
                Some(name) => self.named(name, v),
                None => self.field(k, v),
            }
        }
    }

    /// `JSON {"named_metrics": {"num_requests_waiting": 3}, "cpu_utilization": 0.4}`
    /// (vLLM's JSON form; protobuf's JSON names, `namedMetrics`, are read too).
    fn json(&mut self, text: &str) {
        let Ok(serde_json::Value::Object(doc)) = serde_json::from_str(text) else {
            return;
        };
        for (k, v) in &doc {
            if k == "named_metrics" || k == "namedMetrics" {
                if let serde_json::Value::Object(m) = v {
                    for (name, v) in m {
                        if let Some(v) = v.as_f64() {
                            self.named(name, v);
                        }
                    }
                }
            } else if let Some(v) = v.as_f64() {
                self.field(k, v);
            }
        }
    }

    /// Base64 of a serialized `OrcaLoadReport`. An undecodable one says nothing.
    fn bin(&mut self, b64: &[u8]) {
        use base64::Engine as _;
        use prost::Message as _;
        let Ok(bytes) = BASE64.decode(b64.trim_ascii()) else {
            return;
        };
        let Ok(r) = OrcaLoadReport::decode(bytes.as_slice()) else {
            return;
        };
        // proto3 scalars: 0 is "not set" and "zero" alike; zero utilisation is no load.
        if r.cpu_utilization > 0.0 {
            self.util(r.cpu_utilization);
        }
        if r.application_utilization > 0.0 {
            self.util(r.application_utilization);
        }
        for (name, v) in &r.named_metrics {
            self.named(name, *v);
        }
    }
}

/// The load figures of a response's headers or trailers: ORCA's `endpoint-load-metrics`
/// in each of its forms (`TEXT ...`, `JSON {...}`, `BIN <base64>`) and
/// `endpoint-load-metrics-bin` (base64, as gRPC servers send it), and, when configured,
/// a header whose value is the queue length (`x-queue-depth: 7`).
/// Returns (queue, utilisation); `None` each when not reported.
pub fn parse_report(
    headers: &HeaderMap,
    queue_header: Option<&HeaderName>,
) -> (Option<f32>, Option<f32>) {
    let mut f = Figures::default();
    if let Some(q) = queue_header.and_then(|h| headers.get(h)).and_then(|v| {
        std::str::from_utf8(v.as_bytes())
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
    }) {
        f.queue(q);
    }
    for v in headers.get_all(&ENDPOINT_LOAD_METRICS) {
        let Ok(t) = std::str::from_utf8(v.as_bytes()) else {
            continue;
        };
        let t = t.trim_start();
        if let Some(rest) = t.strip_prefix("TEXT") {
            f.text(rest);
        } else if let Some(rest) = t.strip_prefix("JSON") {
            f.json(rest);
        } else if let Some(rest) = t.strip_prefix("BIN") {
            f.bin(rest.as_bytes());
        }
    }
    for v in headers.get_all(&ENDPOINT_LOAD_METRICS_BIN) {
        f.bin(v.as_bytes());
    }
    (f.queue, f.util)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const DECAY: Duration = Duration::from_secs(10);

    /// Proves the peak-EWMA rules: a new endpoint is at the default latency; the first
    /// sample and every peak replace the estimate at once; lower samples pull it down
    /// by `1 - e^(-dt/decay)`; with no samples it drifts back to the default.
    #[tokio::test(start_paused = true)]
    async fn peak_ewma_follows_peaks_at_once_and_decays_slowly() {
        let s = LoadState::new(30 * MS);
        let t0 = Instant::now();
        assert_eq!(s.latency(t0, DECAY, 30 * MS), 30 * MS);
        assert!(!s.has_samples());
        s.observe(5 * MS, false, t0, DECAY, 30 * MS);
        assert_eq!(s.latency(t0, DECAY, Duration::ZERO), 5 * MS);
        s.observe(100 * MS, false, t0, DECAY, 30 * MS);
        assert_eq!(
            s.latency(t0, DECAY, Duration::ZERO),
            100 * MS,
            "a peak at once"
        );
        let mean = s.mean_latency().expect("a mean").as_secs_f64() * 1000.0;
        assert!((mean - 14.5).abs() < 0.01, "mean moves by a tenth: {mean}");
        // 10 s later a 10 ms sample: weight e^-1 on the old 100 ms.
        let t1 = t0 + Duration::from_secs(10);
        s.observe(10 * MS, false, t1, DECAY, 30 * MS);
        let want = 100.0 * (-1f64).exp() + 10.0 * (1.0 - (-1f64).exp());
        let got = s.latency(t1, DECAY, Duration::ZERO).as_secs_f64() * 1000.0;
        assert!((got - want).abs() < 0.01, "{got} vs {want}");
        // Without samples it drifts toward the default (30 ms).
        let later = s.latency(t1 + Duration::from_secs(100), DECAY, 30 * MS);
        assert!(
            (later.as_secs_f64() * 1000.0 - 30.0).abs() < 0.01,
            "{later:?}"
        );
    }

    /// Proves a replica that fails fast does not look fast: a 1 ms failure counts as
    /// twice its mean answer or the default latency (30 ms here), then twice the
    /// estimate per failure, up to 16x: fast failures raise its cost quickly, boundedly.
    #[tokio::test(start_paused = true)]
    async fn fast_failures_raise_the_estimate() {
        let s = LoadState::new(30 * MS);
        let now = Instant::now();
        s.observe(3 * MS, false, now, DECAY, 30 * MS);
        for _ in 0..3 {
            s.observe(MS, true, now, DECAY, 30 * MS);
        }
        // 2 x the default (longer than the 3 ms answer), then doubling per failure.
        assert_eq!(s.latency(now, DECAY, Duration::ZERO), 240 * MS);
        for _ in 0..20 {
            s.observe(MS, true, now, DECAY, 30 * MS);
        }
        assert_eq!(
            s.latency(now, DECAY, Duration::ZERO),
            480 * MS,
            "a run of fast failures stops at 16 x the default"
        );
        let healthy = LoadState::new(30 * MS);
        healthy.observe(3 * MS, false, now, DECAY, 30 * MS);
        assert!(s.cost(0, 1.0, now, DECAY, 30 * MS) > healthy.cost(0, 1.0, now, DECAY, 30 * MS));
    }

    /// Proves a run of failures does not compound: a replica that stalled (30 timeouts
    /// of 500 ms in a row, its answers 60 ms before) is at 500 ms, not 2^30 x that, and
    /// two seconds of 60 ms answers bring it back under 2x an answer. Doubling the
    /// estimate per failure kept such a replica avoided for tens of seconds.
    #[tokio::test(start_paused = true)]
    async fn a_run_of_failures_does_not_compound() {
        const SECOND: Duration = Duration::from_secs(1); // the default decay
        let s = LoadState::new(30 * MS);
        let mut now = Instant::now();
        for _ in 0..20 {
            s.observe(60 * MS, false, now, SECOND, 30 * MS);
        }
        for _ in 0..30 {
            s.observe(500 * MS, true, now, SECOND, 30 * MS);
        }
        assert_eq!(s.latency(now, SECOND, Duration::ZERO), 500 * MS);
        for _ in 0..100 {
            now += 20 * MS;
            s.observe(60 * MS, false, now, SECOND, 30 * MS);
        }
        let after = s.latency(now, SECOND, Duration::ZERO);
        assert!(after < 120 * MS, "{after:?} two seconds after the stall");
    }

    /// Proves a cancelled attempt never makes an endpoint look fast: a wait below the
    /// estimate changes nothing, a longer one raises it like a sample; the mean that
    /// deadline predictions read is not touched.
    #[tokio::test(start_paused = true)]
    async fn cancelled_attempts_only_raise_the_estimate() {
        let s = LoadState::new(30 * MS);
        let now = Instant::now();
        s.observe_censored(500 * MS, now, DECAY);
        assert!(
            !s.has_samples(),
            "nothing known yet: a cancel teaches nothing"
        );
        s.observe(20 * MS, false, now, DECAY, 30 * MS);
        s.observe_censored(2 * MS, now, DECAY);
        assert_eq!(s.latency(now, DECAY, Duration::ZERO), 20 * MS);
        s.observe_censored(80 * MS, now, DECAY);
        assert_eq!(s.latency(now, DECAY, Duration::ZERO), 80 * MS);
        assert_eq!(
            s.mean_latency(),
            Some(20 * MS),
            "the mean keeps answers only"
        );
    }

    /// Proves knowledge goes stale: fresh right after a sample, not after `max_age`.
    #[tokio::test(start_paused = true)]
    async fn samples_go_stale() {
        let s = LoadState::new(30 * MS);
        s.observe_mean(20 * MS, false, Instant::now());
        assert!(s.fresh(Instant::now(), Duration::from_secs(2)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!s.fresh(Instant::now(), Duration::from_secs(2)));
    }

    /// Proves the cost formula: latency x (in flight + 1) x (1 + queue) / (1 - util),
    /// the report counting until it expires.
    #[tokio::test(start_paused = true)]
    async fn cost_multiplies_in_flight_and_a_fresh_report() {
        let s = LoadState::new(10 * MS);
        let now = Instant::now();
        s.observe(10 * MS, false, now, DECAY, 30 * MS);
        let base = 10e6;
        assert_eq!(s.cost(0, 1.0, now, DECAY, 10 * MS), base);
        assert_eq!(s.cost(3, 1.0, now, DECAY, 10 * MS), 4.0 * base);
        assert_eq!(
            s.cost(8, 16.0, now, DECAY, 10 * MS),
            1.5 * base,
            "in units of a limit of 16"
        );
        s.report(Some(4.0), Some(0.5), now, Duration::from_secs(2));
        let c = s.cost(0, 1.0, now, DECAY, 10 * MS);
        assert!((c - base * 5.0 / 0.5).abs() < 1.0, "{c}");
        let c = s.cost(0, 8.0, now, DECAY, 10 * MS);
        assert!((c - base * 1.5 / 0.5).abs() < 1.0, "queue in units: {c}");
        s.report(None, Some(1.0), now, Duration::from_secs(2));
        assert!(
            s.cost(0, 1.0, now, DECAY, 10 * MS).is_finite(),
            "utilisation is capped"
        );
        let after = now + Duration::from_secs(3);
        assert_eq!(
            s.report_factor(after, 1.0),
            1.0,
            "an expired report counts for nothing"
        );
    }

    #[test]
    fn orca_text_and_a_configured_header_are_read() {
        let mut h = HeaderMap::new();
        h.insert(
            ENDPOINT_LOAD_METRICS.clone(),
            HeaderValue::from_static(
                "TEXT named_metrics.kv_cache_usage_perc=0.4, named_metrics.num_requests_waiting=3",
            ),
        );
        assert_eq!(parse_report(&h, None), (Some(3.0), Some(0.4)));
        let depth = HeaderName::from_static("x-queue-depth");
        h.insert(depth.clone(), HeaderValue::from_static("7"));
        assert_eq!(parse_report(&h, Some(&depth)), (Some(7.0), Some(0.4)));
        let mut bad = HeaderMap::new();
        bad.insert(
            ENDPOINT_LOAD_METRICS.clone(),
            HeaderValue::from_static("JSON {}"),
        );
        bad.insert(depth.clone(), HeaderValue::from_static("lots"));
        assert_eq!(parse_report(&bad, Some(&depth)), (None, None));
        assert_eq!(parse_report(&HeaderMap::new(), Some(&depth)), (None, None));
    }

    /// Proves ORCA's other forms are read as TEXT is: vLLM's JSON (and protobuf's JSON
    /// names), `BIN <base64>` (the spec's own example: cpu 0.1, named foo and bar) and
    /// `endpoint-load-metrics-bin` without prefix, padded or not; an undecodable report
    /// says nothing rather than failing the answer.
    #[test]
    fn orca_json_and_binary_forms_are_read() {
        let one = |name: &HeaderName, v: &str| {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_str(v).unwrap());
            parse_report(&h, None)
        };
        let json =
            r#"JSON {"named_metrics": {"kv_cache_usage_perc": 0.25, "num_requests_waiting": 3.0}}"#;
        assert_eq!(one(&ENDPOINT_LOAD_METRICS, json), (Some(3.0), Some(0.25)));
        let camel = r#"JSON {"cpuUtilization": 0.5, "namedMetrics": {"queue_size": 9}}"#;
        assert_eq!(one(&ENDPOINT_LOAD_METRICS, camel), (Some(9.0), Some(0.5)));
        let spec = "CZqZmZmZmbk/MQAAAAAAAABAQg4KA2ZvbxGamZmZmZm5P0IOCgNiYXIRmpmZmZmZyT8=";
        assert_eq!(
            one(&ENDPOINT_LOAD_METRICS, &format!("BIN {spec}")),
            (None, Some(0.1))
        );
        assert_eq!(one(&ENDPOINT_LOAD_METRICS_BIN, spec), (None, Some(0.1)));
        // named_metrics { "num_requests_waiting": 12.0 }, unpadded.
        let waiting = "Qh8KFG51bV9yZXF1ZXN0c193YWl0aW5nEQAAAAAAAChA";
        assert_eq!(one(&ENDPOINT_LOAD_METRICS_BIN, waiting), (Some(12.0), None));
        for bad in [
            "BIN !!notbase64",
            "BIN QUJD",
            "JSON [1,2]",
            "JSON {",
            "XML <a/>",
        ] {
            assert_eq!(one(&ENDPOINT_LOAD_METRICS, bad), (None, None), "{bad}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            ENDPOINT_LOAD_METRICS_BIN.clone(),
            HeaderValue::from_static(waiting),
        );
        assert!(has_report(&h, None));
        strip_report(&mut h, None);
        assert!(h.is_empty());
    }

    /// Proves `take_queue`: a report's queue once while it is valid, none the second
    /// time, none once it expired, and none from a report that gave only a utilisation
    /// (which must not switch the adaptive limit to its queue rule).
    #[tokio::test(start_paused = true)]
    async fn a_reported_queue_is_taken_once_while_valid() {
        let s = LoadState::new(10 * MS);
        let now = Instant::now();
        assert_eq!(s.take_queue(now), None);
        s.report(Some(5.0), None, now, Duration::from_secs(2));
        assert_eq!(s.take_queue(now + Duration::from_secs(1)), Some(5.0));
        assert_eq!(s.take_queue(now + Duration::from_secs(1)), None, "once");
        s.report(Some(5.0), None, now, Duration::from_secs(2));
        assert_eq!(s.take_queue(now + Duration::from_secs(3)), None, "expired");
        s.report(None, Some(0.5), now, Duration::from_secs(2));
        assert_eq!(s.take_queue(now), None);
        assert!(
            (s.report_factor(now, 1.0) - 2.0).abs() < 1e-6,
            "utilisation alone"
        );
    }
}
