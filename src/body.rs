//! Request bodies, shared by the request path (which reads the caller's body) and the
//! upstream pools (which send it). The caller's body streams to the upstream with the
//! listener's size cap and a stall timeout enforced as it streams; bodies that may be
//! retried after they were sent are kept for replay, within a per-request cap
//! (`max_replay_body`) and a process-wide budget (`[limits] max_buffered_body_bytes`).
//! Concrete enums rather than boxed trait objects: no allocation per frame and no
//! dynamic dispatch on the hot path.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Per-request facts the body wrappers report back to the request path.
#[derive(Debug, Default)]
pub struct BodyShared {
    /// Request body bytes read from the caller.
    pub bytes_in: AtomicU64,
    /// Set when the caller's body passed `max_request_body` and the stream was cut.
    pub too_large: AtomicBool,
    /// Set when the caller stopped sending its body for the upstream's `timeouts.idle`.
    pub stalled: AtomicBool,
    /// Set when the caller's body could not be read: the caller closed or reset before
    /// its declared end, or sent malformed chunked framing.
    pub broken: AtomicBool,
    /// When the caller's body ended (its last frame was read): the wait for response
    /// headers counts from then (a long upload or client stream is not cut while the
    /// caller is still sending).
    pub ended_at: std::sync::OnceLock<tokio::time::Instant>,
    /// Signalled when `ended_at` is set: the wait for headers re-arms from the end.
    pub end_signal: tokio::sync::Notify,
    /// Response body bytes sent to the caller: progress for the request body's stall
    /// timer ("no body bytes either way" for `timeouts.idle`).
    pub bytes_out: AtomicU64,
}

impl BodyShared {
    /// The caller's body ended now.
    fn end(&self, now: tokio::time::Instant) {
        if self.ended_at.set(now).is_ok() {
            self.end_signal.notify_waiters();
        }
    }

    /// The caller, not the upstream, ended the attempt (too large, stalled, or a body
    /// that could not be read): the breaker learns nothing and no retry helps.
    pub fn caller_fault(&self) -> Option<CallerFault> {
        if self.too_large.load(Ordering::Relaxed) {
            Some(CallerFault::TooLarge)
        } else if self.stalled.load(Ordering::Relaxed) {
            Some(CallerFault::Stalled)
        } else if self.broken.load(Ordering::Relaxed) {
            Some(CallerFault::Broken)
        } else {
            None
        }
    }
}

/// How the caller's body broke an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerFault {
    TooLarge,
    Stalled,
    /// The caller closed or reset mid-body, or its chunked framing was malformed.
    Broken,
}

#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub struct TooLarge(pub u64);

#[derive(Debug, thiserror::Error)]
#[error("no body bytes for {0:?}")]
pub struct IdleTimeout(pub Duration);

#[derive(Debug, thiserror::Error)]
#[error("request body ended after {read} of its {declared} declared bytes")]
pub struct EndedShort {
    pub declared: u64,
    pub read: u64,
}

/// The process-wide budget of request-body bytes held for replay
/// (`[limits] max_buffered_body_bytes`). Reservations are lock-free; a body that does
/// not fit streams through unkept. The cap follows reloads (`set_cap`).
#[derive(Debug)]
pub struct ReplayBudget {
    cap: AtomicU64,
    used: AtomicU64,
}

impl ReplayBudget {
    pub fn new(cap: u64) -> Arc<ReplayBudget> {
        Arc::new(ReplayBudget {
            cap: AtomicU64::new(cap),
            used: AtomicU64::new(0),
        })
    }

    pub fn set_cap(&self, cap: u64) {
        self.cap.store(cap, Ordering::Relaxed);
    }

    /// Bytes held for replay now, by every request.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes from the budget, or nothing when they do not fit.
    fn reserve(&self, n: u64) -> bool {
        let cap = self.cap.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&t| t <= cap)
            })
            .is_ok()
    }

    fn release(&self, n: u64) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::AcqRel);
        }
    }
}

/// Watches a streaming body for a stall: ready once no frame arrived for `idle`.
///
/// Armed on the first `Pending` only (most small bodies arrive in one poll). A frame
/// only notes the time; the sleep is moved on when it fires early, so a body of many
/// frames re-registers its timer once per `idle` period rather than once per frame
/// (each re-registration is a trip through tokio's timer wheel).
#[derive(Debug)]
pub struct StallTimer {
    idle: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// When the latest frame since the sleep was (re)armed arrived.
    last: Option<Instant>,
    /// The other direction's byte count at the last look (see `poll_stalled_both`).
    other_seen: u64,
    /// The last poll returned a frame: the next one notes progress first, so the time
    /// the reader took to ask again (the caller not reading, flow control holding the
    /// sender) is not taken for the sender's silence.
    delivered: bool,
}

impl StallTimer {
    pub fn new(idle: Duration) -> Self {
        StallTimer {
            idle,
            sleep: None,
            last: None,
            other_seen: 0,
            delivered: false,
        }
    }

    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// A frame arrived.
    pub fn progress(&mut self) {
        self.delivered = true;
        if self.sleep.is_some() {
            self.last = Some(Instant::now());
        }
    }

    /// Called at the start of each poll: after a frame was handed on, silence counts
    /// from this poll.
    pub fn polled(&mut self) {
        if std::mem::take(&mut self.delivered) && self.sleep.is_some() {
            self.last = Some(Instant::now());
        }
    }

    /// The body is pending: ready when it has been silent for `idle`.
    pub fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_stalled_both(cx, None)
    }

    /// As [`StallTimer::poll_stalled`], with `other` the byte count of the other
    /// direction of the same exchange: bytes moving there are progress too ("no body
    /// bytes either way"), so a caller still streaming its request is not cut because
    /// the upstream answers only at the end, nor a bidirectional stream whose caller
    /// only listens.
    pub fn poll_stalled_both(
        &mut self,
        cx: &mut Context<'_>,
        other: Option<&AtomicU64>,
    ) -> Poll<()> {
        let idle = self.idle;
        if self.sleep.is_none() {
            self.other_seen = other.map_or(0, |o| o.load(Ordering::Relaxed));
        }
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        loop {
            ready!(sleep.as_mut().poll(cx));
            let now = Instant::now();
            match self.last.take() {
                Some(t) if t + idle > now => sleep.as_mut().reset(t + idle),
                _ => {
                    let moved = other.map(|o| o.load(Ordering::Relaxed));
                    match moved {
                        Some(n) if n != self.other_seen => {
                            self.other_seen = n;
                            sleep.as_mut().reset(now + idle);
                        }
                        _ => return Poll::Ready(()),
                    }
                }
            }
        }
    }
}

/// The caller's body, counted, capped and watched for stalls as it streams.
#[derive(Debug)]
pub struct LimitedIncoming {
    inner: Incoming,
    limit: u64,
    read: u64,
    shared: Arc<BodyShared>,
    /// The upstream's `timeouts.idle`: a caller silent this long mid-body is cut.
    stall: StallTimer,
    /// The declared `Content-Length`: a body that ends short of it was cut by the
    /// caller (an HTTP/2 caller's `RST_STREAM(NO_ERROR)` ends the stream cleanly).
    declared: Option<u64>,
}

impl LimitedIncoming {
    pub fn new(inner: Incoming, limit: u64, idle: Duration, shared: Arc<BodyShared>) -> Self {
        LimitedIncoming {
            inner,
            limit,
            read: 0,
            shared,
            stall: StallTimer::new(idle),
            declared: None,
        }
    }

    /// The caller declared this many bytes (`Content-Length`).
    pub fn declared(mut self, n: Option<u64>) -> Self {
        self.declared = n;
        self
    }

    pub fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    /// Next frame, with the cap and the stall timeout applied.
    pub fn poll_frame_limited(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.stall.polled();
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let Poll::Ready(next) = polled else {
            ready!(self
                .stall
                .poll_stalled_both(cx, Some(&self.shared.bytes_out)));
            self.shared.stalled.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(Box::new(IdleTimeout(self.stall.idle())))));
        };
        self.stall.progress();
        match next {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    self.read = self.read.saturating_add(n);
                    self.shared.bytes_in.fetch_add(n, Ordering::Relaxed);
                    if self.read > self.limit {
                        self.shared.too_large.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(TooLarge(self.limit)))));
                    }
                }
                if self.inner.is_end_stream() {
                    // The last frame (a declared length reached): the sender of a sized
                    // body may not poll again for the end.
                    self.shared.end(tokio::time::Instant::now());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                self.shared.broken.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            None if self.declared.is_some_and(|n| self.read < n) => {
                self.shared.broken.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(Box::new(EndedShort {
                    declared: self.declared.unwrap_or_default(),
                    read: self.read,
                }))))
            }
            None => {
                self.shared.end(tokio::time::Instant::now());
                Poll::Ready(None)
            }
        }
    }
}

/// What is sent upstream as the request body.
#[derive(Debug)]
pub enum ReqBody {
    Empty,
    /// A body held whole (health checks, fixed bodies).
    Full(Option<Bytes>),
    /// The caller's body, kept for replay while it fits (see [`ReplaySource`]).
    Replay(ReplayBody),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Replay(r) => r.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Replay(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Replay(r) => match r.src.declared {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::new(),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("request body superseded by a newer attempt")]
pub struct Superseded;

/// The caller's body, shared by every attempt of one request. It streams to the first
/// attempt as it arrives (no store-and-forward delay) while the chunks are kept, up to
/// `max_replay_body` and as long as the process-wide [`ReplayBudget`] has room; a
/// retry replays the kept chunks and then continues reading the caller's stream. Once
/// more was read than could be kept, the chunks are dropped and the request can no
/// longer be retried; a body that was never read (a connect failure) can always be.
/// One lock per request, never contended across requests.
#[derive(Debug)]
pub struct ReplaySource {
    state: std::sync::Mutex<ReplayState>,
    /// The declared `Content-Length`, so each attempt announces the same length.
    declared: Option<u64>,
    budget: Arc<ReplayBudget>,
}

#[derive(Debug)]
struct ReplayState {
    chunks: Vec<Bytes>,
    /// Bytes kept, all of them reserved from the budget.
    kept: u64,
    /// Bytes reserved from the budget (a declared length is reserved up front).
    reserved: u64,
    cap: u64,
    /// Bytes were read and not kept: no replay possible.
    overflowed: bool,
    /// The budget, not the per-request cap, refused to keep this body.
    budget_refused: bool,
    rest: Option<LimitedIncoming>,
    trailers: Option<http::HeaderMap>,
    failed: bool,
    /// Bodies of older attempts stop at once (a late read by an abandoned attempt must
    /// not steal the stream's waker from the current one).
    generation: u64,
}

impl ReplaySource {
    /// `cap` = 0: stream without keeping anything (no retry after sending).
    pub fn new(
        rest: LimitedIncoming,
        cap: u64,
        declared: Option<u64>,
        budget: Arc<ReplayBudget>,
    ) -> Arc<ReplaySource> {
        // A declared body over the cap is not kept at all; one within it reserves its
        // whole length now, so it is kept whole or not at all.
        let cap = if declared.is_some_and(|n| n > cap) {
            0
        } else {
            cap
        };
        let (mut reserved, mut budget_refused) = (0, false);
        if let Some(n) = declared.filter(|&n| cap > 0 && n > 0) {
            if budget.reserve(n) {
                reserved = n;
            } else {
                budget_refused = true;
            }
        }
        Arc::new(ReplaySource {
            state: std::sync::Mutex::new(ReplayState {
                chunks: Vec::new(),
                kept: 0,
                reserved,
                cap: if budget_refused { 0 } else { cap },
                overflowed: false,
                budget_refused,
                rest: Some(rest),
                trailers: None,
                failed: false,
                generation: 0,
            }),
            declared,
            budget,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReplayState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether another attempt can send the whole body again.
    pub fn can_replay(&self) -> bool {
        let s = self.lock();
        !s.overflowed && !s.failed
    }

    /// Whether the process-wide budget made this body stream through unkept.
    pub fn budget_refused(&self) -> bool {
        self.lock().budget_refused
    }

    /// A body for the next attempt (older attempts' bodies stop).
    pub fn attempt(self: &Arc<Self>) -> ReplayBody {
        let mut s = self.lock();
        s.generation += 1;
        ReplayBody {
            src: self.clone(),
            pos: 0,
            generation: s.generation,
            trailers_sent: false,
        }
    }
}

impl Drop for ReplaySource {
    fn drop(&mut self) {
        let reserved = self.lock().reserved;
        self.budget.release(reserved);
    }
}

impl ReplayState {
    /// Keeps `data` when it fits the cap and the budget; otherwise gives up keeping.
    fn keep(&mut self, data: &Bytes, budget: &ReplayBudget) -> bool {
        let n = data.len() as u64;
        if self.overflowed || self.kept + n > self.cap {
            self.give_up(budget);
            return false;
        }
        if self.kept + n > self.reserved {
            let more = self.kept + n - self.reserved;
            if !budget.reserve(more) {
                self.budget_refused = true;
                self.give_up(budget);
                return false;
            }
            self.reserved += more;
        }
        self.kept += n;
        self.chunks.push(data.clone());
        true
    }

    fn give_up(&mut self, budget: &ReplayBudget) {
        self.overflowed = true;
        self.chunks = Vec::new();
        self.kept = 0;
        budget.release(std::mem::take(&mut self.reserved));
    }
}

/// One attempt's view of a [`ReplaySource`].
#[derive(Debug)]
pub struct ReplayBody {
    src: Arc<ReplaySource>,
    pos: usize,
    generation: u64,
    trailers_sent: bool,
}

impl ReplayBody {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let src = self.src.clone();
        let mut s = src.lock();
        if s.generation != self.generation {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        if let Some(c) = s.chunks.get(self.pos) {
            let c = c.clone();
            self.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        let Some(rest) = s.rest.as_mut() else {
            if !self.trailers_sent {
                self.trailers_sent = true;
                if let Some(t) = s.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
            return Poll::Ready(None);
        };
        match ready!(rest.poll_frame_limited(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if s.cap > 0 && s.keep(data, &src.budget) {
                        self.pos += 1;
                    } else {
                        s.overflowed = true;
                        self.pos = 0;
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    s.trailers = Some(t.clone());
                    self.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                s.failed = true;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                s.rest = None;
                Poll::Ready(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_reserves_within_its_cap_and_follows_reloads() {
        let b = ReplayBudget::new(100);
        assert!(b.reserve(60));
        assert!(!b.reserve(41), "over the cap");
        assert!(b.reserve(40));
        b.release(50);
        assert_eq!(b.used(), 50);
        b.set_cap(40);
        assert!(
            !b.reserve(1),
            "a smaller cap refuses until enough is released"
        );
        b.release(50);
        assert!(b.reserve(40));
    }

    /// Polls `t` as a pending body would, without a task: Ready when stalled.
    fn stalled(t: &mut StallTimer) -> bool {
        let waker = futures_util::task::noop_waker();
        t.poll_stalled(&mut Context::from_waker(&waker)).is_ready()
    }

    /// Proves: the stall timer fires `idle` after the last frame, however many frames
    /// came before, and not while frames keep coming.
    #[tokio::test(start_paused = true)]
    async fn stall_timer_fires_idle_after_the_last_frame() {
        let idle = Duration::from_millis(100);
        let mut t = StallTimer::new(idle);
        assert!(!stalled(&mut t), "armed, not yet fired");
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(60)).await;
            t.progress();
            assert!(!stalled(&mut t), "a frame every 60 ms is no stall");
        }
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(!stalled(&mut t), "99 ms after the last frame");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(stalled(&mut t), "100 ms after the last frame");
    }

    /// Proves: a body that never sends a frame after its first wait stalls `idle` after it.
    #[tokio::test(start_paused = true)]
    async fn stall_timer_without_frames_fires_after_idle() {
        let mut t = StallTimer::new(Duration::from_millis(50));
        assert!(!stalled(&mut t));
        tokio::time::advance(Duration::from_millis(49)).await;
        assert!(!stalled(&mut t));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(stalled(&mut t));
    }
}
