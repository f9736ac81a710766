//! The attempt loop, bounded by the request's deadline: pick an endpoint of the
//! request's pinned endpoint list whose breakers admit (the balancer skips open ones),
//! send over its pooled connection with the per-attempt timeout capped by the time
//! left ([`attempt`](super::attempt)), judge the outcome ([`classify`]), record the
//! verdict on the breakers, then retry (budget, backoff, another endpoint) or finish.
//! When no attempt can succeed, the [`fallback`](super::fallback) may answer.

use std::sync::Arc;
use std::time::Duration;

use http::{request, HeaderMap, Response};
use tokio::time::Instant;

use super::apply::{admit, count_retry, record};
use super::attempt::{self, upstream_path, Outbound, Sent};
use super::classify::{classify, Facts, Outcome};
use super::ctx::RequestCtx;
use super::ending::{all_open, caller_fault, deadline_exceeded, finish, LoopEnd};
use super::error::ProxyError;
use super::inference;
use super::resp_body::RespBody;
use crate::body::{LimitedIncoming, ReplaySource};
use crate::snapshot::Route;
use crate::upstream::balancer::Tried;
use crate::upstream::retry::{is_idempotent, RetryPolicy};
use crate::upstream::{Endpoint, Upstream};

/// Sends the request to the route's upstream and returns its response, a fallback
/// answer, or the typed error fusebox answers with.
pub async fn send(
    route: &Route,
    parts: request::Parts,
    body: LimitedIncoming,
    ctx: &mut RequestCtx,
) -> Result<Response<RespBody>, ProxyError> {
    let up = &route.upstream;
    let pq = upstream_path(&parts.uri, route.cfg.strip_prefix.as_deref())?;
    let facts = Facts {
        retry_any_failure: is_idempotent(&parts.method)
            || ctx.idempotency_key
            || route.retry.cfg.retry_non_idempotent,
        grpc: ctx.grpc,
        keyed: false,
        caller_deadline: ctx.caller_deadline,
    };
    // A body is kept for replay only when a retry after it was sent is allowed (and
    // gRPC, whose UNAVAILABLE is retried for any call). Otherwise only a connect
    // failure is retried, and that happens before any byte is read: keeping the body
    // would cost memory for nothing.
    let keep = if facts.retry_any_failure || facts.grpc {
        route.retry.cfg.max_replay_body
    } else {
        0
    };
    let source = (!body.is_end_stream())
        .then(|| ReplaySource::new(body, keep, ctx.declared_length, route.replay_budget.clone()));
    let out = Outbound {
        method: &parts.method,
        headers: &parts.headers,
        pq: &pq,
        body: source.as_ref(),
        grpc: ctx.grpc,
        caller_deadline: ctx.caller_deadline_at,
        propagate_deadline: route.cfg.propagate_deadline || ctx.caller_timeout_ms,
    };
    route.retry.budget(&up.budget).record_request(ctx.started);
    ctx.attempt_loop = Some(up.metrics.attempts.clone());
    let end = attempts(
        route,
        up,
        route.breaker_slot,
        &route.retry,
        &out,
        facts,
        ctx,
    )
    .await;
    if source.as_ref().is_some_and(|s| s.budget_refused()) {
        route.metrics.unbuffered.inc();
    }
    let answer = match end {
        LoopEnd::Response(r) => Ok(r),
        LoopEnd::Error { err, fallback } => {
            // Boxed: it holds a second attempt loop (the fallback upstream's), which
            // would double the size of every request's future (see `Pool::connect_h1`).
            Box::pin(super::fallback::answer(
                route, err, fallback, &out, facts, ctx,
            ))
            .await
        }
    };
    // As the access log's `attempts` (a fallback upstream's included): 0 when no
    // attempt was made (every breaker open, shed on the deadline).
    if let Some(h) = ctx.attempt_loop.take() {
        h.observe(f64::from(ctx.attempts));
    }
    answer
}

/// Tries `up` until an attempt succeeds, the verdicts allow no retry, or time is up.
/// `slot` is the breaker policy the attempts go through.
pub(super) async fn attempts(
    route: &Route,
    up: &Upstream,
    slot: usize,
    policy: &RetryPolicy,
    out: &Outbound<'_>,
    facts: Facts,
    ctx: &mut RequestCtx,
) -> LoopEnd {
    let retry = &policy.cfg;
    let breaker_cfg = &up.policies[slot.min(up.policies.len() - 1)].cfg;
    // The request's endpoint list: a DNS refresh mid-request changes nothing here.
    let eps = up.endpoints();
    let mut tried = Tried::for_len(eps.len());
    let mut queue = inference::QueuePlace::default();
    let mut retries_done = 0u32;
    let mut refused = 0usize;
    // Why the next attempt is made (for its span).
    let mut reason: Option<super::classify::RetryReason> = None;
    let mut now = Instant::now();
    // Shed on a prediction only before any attempt: a fallback upstream's loop after
    // a failed attempt ends on the deadline instead (DEADLINE_EXCEEDED, not OVERLOADED).
    if route.cfg.shed_on_deadline && ctx.attempts == 0 {
        let left = ctx.deadline.saturating_duration_since(now);
        let p = inference::predicted(up, &eps, slot, out.headers, ctx.priority, now);
        if let Some(p) = p.filter(|p| left < *p) {
            if let Some(s) = &ctx.span {
                s.shed("deadline");
            }
            return LoopEnd::Error {
                err: inference::deadline_shed(route, left, p),
                fallback: false,
            };
        }
    }
    loop {
        if now >= ctx.deadline {
            // A fallback answers for a failed attempt, not for a request that never
            // made one (a caller's deadline of 0).
            return LoopEnd::Error {
                err: deadline_exceeded(route, up, ctx),
                fallback: ctx.attempts > 0,
            };
        }
        // With deadline shedding on, an endpoint whose mean latency is longer than the
        // time left is not picked: its answer would come after the caller gave up.
        let left = route
            .cfg
            .shed_on_deadline
            .then(|| ctx.deadline.saturating_duration_since(now));
        let Some(i) = pick(up, &eps, slot, &tried, out.headers, now, left) else {
            queue.pass_on(up, ctx.priority);
            match inference::why_no_pick(up, &eps, slot, out.headers, now, left) {
                inference::NoPick::Wait(max_wait) => {
                    let recheck = || {
                        let now = Instant::now();
                        let left = left.map(|_| ctx.deadline.saturating_duration_since(now));
                        pick(up, &eps, slot, &tried, out.headers, now, left).is_some()
                    };
                    if let Err((err, why)) =
                        inference::wait_for_capacity(route, up, ctx, &mut queue, max_wait, recheck)
                            .await
                    {
                        if let Some(s) = &ctx.span {
                            s.shed(why);
                        }
                        return LoopEnd::Error {
                            err,
                            fallback: false,
                        };
                    }
                    now = Instant::now();
                    continue;
                }
                inference::NoPick::Deadline(p) if ctx.attempts == 0 => {
                    if let Some(s) = &ctx.span {
                        s.shed("deadline");
                    }
                    return LoopEnd::Error {
                        err: inference::deadline_shed(route, left.unwrap_or_default(), p),
                        fallback: false,
                    };
                }
                // A retry with less time left than any endpoint takes: the deadline
                // is as good as passed.
                inference::NoPick::Deadline(_) => {
                    return LoopEnd::Error {
                        err: deadline_exceeded(route, up, ctx),
                        fallback: ctx.attempts > 0,
                    };
                }
                // Capacity freed between the pick and the look (or the free one was
                // tried already): a bounded number of fresh picks, as for a lost
                // half-open race below.
                inference::NoPick::Again if refused <= eps.len() * 2 => {
                    refused += 1;
                    now = Instant::now();
                    continue;
                }
                _ => return all_open(route, up, slot, &eps, out.headers, now, ctx),
            }
        };
        queue.used();
        let ep = &eps[i];
        tried.add(i);
        // The slot under the adaptive limit is taken before the breaker's permit (a
        // lost race has nothing to give back): the pick read the count, and another
        // request may have taken the last slot since.
        let Some((in_flight, in_flight_at_send)) = ep.try_start_request() else {
            now = Instant::now();
            continue;
        };
        let set = ep.breakers(slot);
        let key = set.key_breaker(out.headers);
        let span = ctx.span.as_ref();
        let Some((main, keyed)) = admit(ep, slot, set.main(), key.as_ref(), now, span) else {
            // Lost a race for the last half-open probe slot: pick again.
            refused += 1;
            if refused > eps.len() * 2 {
                return all_open(route, up, slot, &eps, out.headers, now, ctx);
            }
            now = Instant::now();
            continue;
        };
        ctx.attempts += 1;
        ctx.endpoint = Some(ep.key.clone());

        let mut attempt_span = ctx.span.as_ref().map(|s| {
            let state = if main.is_probe() {
                "half_open"
            } else {
                "closed"
            };
            let why = reason.map(|r| r.label());
            s.attempt(ctx.attempts, &ep.key, why.as_deref(), state)
        });
        let left = ctx.deadline.saturating_duration_since(now);
        let per_attempt = up.cfg.timeouts.request.min(left);
        let capped = per_attempt < up.cfg.timeouts.request;
        let tp = attempt_span.as_ref().map(|a| a.traceparent());
        let watch = inference::CancelWatch::new(up, ep, now, in_flight_at_send + 1);
        let clock = out.body.map(|_| attempt::BodyClock {
            body: &ctx.body,
            request: up.cfg.timeouts.request,
            idle: up.cfg.timeouts.idle,
            route: route.cfg.timeout,
            caller: ctx.caller_deadline_at,
        });
        let mut sent =
            attempt::send_once(up, ep, out, per_attempt, capped, left, tp, clock.as_ref()).await;
        watch.done();
        let done = Instant::now();
        // The route's timeout counts from the end of the caller's body (see
        // `BodyClock`): what is left for retries too.
        if let Some(&end) = ctx.body.ended_at.get() {
            let from_end = end + route.cfg.timeout;
            let (from_end, callers) = match ctx.caller_deadline_at {
                Some(c) if c <= from_end => (c, true),
                _ => (from_end, false),
            };
            if from_end > ctx.deadline {
                ctx.deadline = from_end;
                ctx.caller_deadline = callers;
            }
        }
        let elapsed = done.saturating_duration_since(now);
        // The endpoint's service time counts from the end of the caller's body when it
        // ended during the attempt: a slow upload is the caller's time, not a slow
        // endpoint (for the breaker's slow calls and the latency the balancer and the
        // deadline predictions learn).
        let service = match ctx.body.ended_at.get() {
            Some(&end) if end > now => done.saturating_duration_since(end),
            _ => elapsed,
        };
        let outcome = match ctx.body.caller_fault() {
            Some(fault) => Outcome::CallerBody(fault),
            None => sent.outcome(out.grpc),
        };
        if !matches!(outcome, Outcome::CallerBody(_) | Outcome::Unsendable) {
            ep.core.metrics.duration.observe(elapsed.as_secs_f64());
        }
        let facts = Facts {
            keyed: key.is_some(),
            // The deadline may have become the caller's as the body ended (above), or
            // the caller's passed while its body was still arriving (which holds the
            // route's timeouts but never the caller's).
            caller_deadline: ctx.caller_deadline
                || ctx.caller_deadline_at.is_some_and(|c| done >= c),
            ..facts
        };
        let verdict = classify(outcome, facts, breaker_cfg, retry);
        let streaming =
            matches!(&sent, Sent::Response(r, _) if !http_body::Body::is_end_stream(r.body()));
        let pending = record(
            ep,
            slot,
            main,
            keyed,
            key.as_ref(),
            &verdict,
            service,
            done,
            ctx.span.as_ref(),
            streaming,
        );
        let response = match &mut sent {
            Sent::Response(r, _) => Some(r),
            Sent::Failed(..) => None,
        };
        inference::learn(
            up,
            ep,
            outcome,
            &verdict,
            service,
            in_flight_at_send + 1,
            done,
            response,
        );

        if let Outcome::CallerBody(fault) = outcome {
            if let Some(a) = attempt_span.take() {
                end_attempt(a, &sent, out.grpc);
            }
            return LoopEnd::Error {
                err: caller_fault(fault, up),
                fallback: false,
            };
        }
        let may_retry = verdict.retry.is_some()
            && retries_done < retry.max_retries
            && out.body.is_none_or(|b| b.can_replay())
            && any_available(&eps, slot, out.headers, done);
        let delay = may_retry
            .then(|| next_delay(policy, retries_done + 1, verdict.retry_after, ctx.deadline))
            .flatten();
        let go = match delay {
            Some(_) if !policy.budget(&up.budget).try_withdraw(done) => {
                route.metrics.rejected_budget.inc();
                if let Some(s) = &ctx.span {
                    s.shed("budget");
                }
                false
            }
            Some(_) => true,
            None => false,
        };
        if !go {
            // The answer goes to the caller: its body's end settles the success.
            ctx.breaker_pending = pending.map(|g| (slot, g));
            // Failure statuses count per key with `partition_by` (at the headers too):
            // a keyed call's trailers do not fail the endpoint's shared breaker.
            if ctx.grpc && pending.is_some() && key.is_none() {
                ctx.grpc_failure_mask = breaker_cfg
                    .failure_grpc_codes
                    .iter()
                    .filter(|c| **c < 32)
                    .fold(0, |m, c| m | 1u32 << c);
            }
            if let Some(a) = attempt_span {
                match &sent {
                    // A streamed gRPC answer: its status is in the trailers, so the
                    // attempt ends with the body.
                    Sent::Response(r, _)
                        if out.grpc && attempt::grpc_status_of(r.headers()).is_none() =>
                    {
                        ctx.attempt_span = Some((a, r.status().as_u16()));
                    }
                    _ => end_attempt(a, &sent, out.grpc),
                }
            }
            return finish(sent, in_flight, up, ctx);
        }
        if let Some(a) = attempt_span {
            end_attempt(a, &sent, out.grpc);
        }
        if let Some(r) = verdict.retry {
            count_retry(up, r);
        }
        reason = verdict.retry;
        if !verdict.prefer_other {
            tried = Tried::for_len(eps.len());
        }
        drop(sent);
        drop(in_flight);
        if let Some(d) = delay.filter(|d| !d.is_zero()) {
            tokio::time::sleep(d).await;
        }
        retries_done += 1;
        now = Instant::now();
    }
}

/// Healthy, admitted, past slow start and not stalled first; failing that (every
/// endpoint fails its health checks, or slow start said no) any not stalled whose
/// breakers and limits admit and whose mean latency fits the time left (`left`, when
/// the route sheds on deadlines); a stalled one only when no other that fits could take
/// the request once it frees capacity (the caller waits for that one instead: a
/// stalled replica holds what it is sent until the caller gives up).
fn pick(
    up: &Upstream,
    eps: &[Arc<Endpoint>],
    slot: usize,
    tried: &Tried,
    headers: &HeaderMap,
    now: Instant,
    left: Option<Duration>,
) -> Option<usize> {
    let fits = |ep: &Endpoint| {
        ep.breakers(slot).available(headers, now)
            && left.is_none_or(|l| inference::fits(ep, l, now))
    };
    let admits = |ep: &Endpoint| ep.core.under_limit() && fits(ep);
    let stalled = |ep: &Endpoint| inference::stalled(up, ep, now);
    let slow_start = up.cfg.slow_start;
    up.pick(eps, tried, now, |ep: &Endpoint| {
        ep.is_healthy() && admits(ep) && ep.core.slow_start_admits(now, slow_start) && !stalled(ep)
    })
    .or_else(|| up.pick(eps, tried, now, |ep: &Endpoint| admits(ep) && !stalled(ep)))
    .or_else(|| {
        let another_later = eps.iter().any(|ep| fits(ep) && !stalled(ep));
        (!another_later)
            .then(|| up.pick(eps, tried, now, admits))
            .flatten()
    })
}

/// Ends an attempt's span with what its headers said (for gRPC, a trailers-only
/// answer's status).
fn end_attempt(a: crate::otel::AttemptSpan, sent: &Sent, grpc: bool) {
    match sent {
        Sent::Response(r, _) => {
            let g = grpc.then(|| attempt::grpc_status_of(r.headers())).flatten();
            a.end(Some(r.status().as_u16()), None, g);
        }
        Sent::Failed(_, e) => a.end(None, Some(e.code.as_str()), None),
    }
}

/// The wait before retry `n`, or `None` when it would not fit: a `Retry-After` past
/// `max_delay`, or a wait that would end at or after the deadline.
fn next_delay(
    policy: &RetryPolicy,
    n: u32,
    retry_after: Option<Duration>,
    deadline: Instant,
) -> Option<Duration> {
    let delay = match retry_after {
        Some(ra) if ra > policy.cfg.max_delay => return None,
        Some(ra) => ra,
        None => policy.backoff.delay(n),
    };
    let left = deadline.saturating_duration_since(Instant::now());
    (delay < left).then_some(delay)
}

fn any_available(eps: &[Arc<Endpoint>], slot: usize, headers: &HeaderMap, now: Instant) -> bool {
    eps.iter()
        .any(|ep| ep.breakers(slot).available(headers, now))
}
