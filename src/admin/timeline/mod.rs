//! The status page's charts: a bounded ring buffer of per-second figures, filled by a
//! sampler task and served as `GET /stats/timeline`.
//!
//! Once a second ([`INTERVAL`], `MissedTickBehavior::Delay`, off the request path) the
//! sampler reads the current snapshot's counters (`sample.rs`) and appends one slot to
//! every series: per upstream requests/s, error % (5xx answers, fusebox's own included)
//! and p50/p99 latency of the requests answered in that slot; per endpoint attempts/s,
//! error % (failures among the attempts its breakers judged), p50/p99 of its attempts,
//! and the state of each of its breaker sets (the upstream's own and each route's own).
//! It stops when the admin listener or the control goes away.
//!
//! Memory is bounded: [`SLOTS`] slots (15 minutes) per series, storage growing with a
//! series' age; at most [`MAX_UPSTREAMS`] upstreams, [`MAX_ENDPOINTS_PER_UPSTREAM`]
//! endpoints each and [`MAX_ENDPOINTS`] in all, [`MAX_BREAKERS_PER_ENDPOINT`] breaker
//! rows each; about 16 bytes per figure slot and 1 per state slot, so at most ~6 MB and
//! ~15 kB per series of 15 minutes. A series whose upstream, endpoint or route leaves
//! the config is dropped at the next tick; series over the caps are left out (counted
//! in the answer's `limits.left_out`) until room frees up.
//!
//! Touched once a second by the sampler and by admin reads; never per request.

mod quantile;
mod render;
mod ring;
mod sample;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::control::Control;
use crate::upstream::breaker::BreakerState;
use ring::Ring;
use sample::{Point, Sampler, Tick};

/// How often a slot is taken.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Slots kept per series: 15 minutes of seconds.
pub const SLOTS: usize = 900;
/// Upstreams with series (by name order at first sight; the rest left out).
pub const MAX_UPSTREAMS: usize = 64;
/// Endpoints with series per upstream.
pub const MAX_ENDPOINTS_PER_UPSTREAM: usize = 64;
/// Endpoints with series in all upstreams together.
pub const MAX_ENDPOINTS: usize = 256;
/// Breaker rows per endpoint: the upstream's own and up to 7 routes' own.
pub const MAX_BREAKERS_PER_ENDPOINT: usize = 8;

/// The ring buffers of every series, behind one lock taken once a second by the
/// sampler and by each `/stats/timeline` read.
#[derive(Debug)]
pub struct Timeline {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// How long each slot lasted: the time axis shared by every series.
    slot_ms: Ring<u32>,
    /// Unix ms at which the newest slot ended (0: none yet).
    end_ms: u64,
    upstreams: BTreeMap<Arc<str>, UpstreamSeries>,
    /// Series the caps left out at the last tick.
    left_out: usize,
}

#[derive(Debug)]
struct UpstreamSeries {
    points: Ring<Point>,
    endpoints: BTreeMap<Arc<str>, EndpointSeries>,
}

#[derive(Debug)]
struct EndpointSeries {
    points: Ring<Point>,
    breakers: Vec<BreakerRow>,
}

#[derive(Debug)]
struct BreakerRow {
    /// `""` for the upstream's own breakers, else the route whose table it is.
    route: Arc<str>,
    /// `BreakerState::gauge()` values.
    states: Ring<u8>,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline {
            state: Mutex::new(State {
                slot_ms: Ring::new(SLOTS),
                end_ms: 0,
                upstreams: BTreeMap::new(),
                left_out: 0,
            }),
        }
    }
}

impl Timeline {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under the lock panics; a poisoned one still holds whole slots.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one slot to every series of `tick`, making series for what is new (room
    /// permitting) and dropping those `tick` no longer has.
    fn record(&self, tick: Tick) {
        let mut st = self.lock();
        st.slot_ms.push(tick.slot_ms);
        st.end_ms = tick.end_ms;
        // The ticks list upstreams sorted by name, endpoints in config order.
        st.upstreams
            .retain(|name, _| tick.upstreams.iter().any(|u| u.name == *name));
        for (name, series) in st.upstreams.iter_mut() {
            if let Some(u) = tick.upstreams.iter().find(|u| u.name == *name) {
                series
                    .endpoints
                    .retain(|key, _| u.endpoints.iter().any(|e| e.key == *key));
            }
        }
        let mut endpoints: usize = st.upstreams.values().map(|u| u.endpoints.len()).sum();
        let mut left_out = 0;
        for u in tick.upstreams {
            let room = st.upstreams.len() < MAX_UPSTREAMS;
            let series = match st.upstreams.get_mut(&u.name) {
                Some(s) => s,
                None if room => st.upstreams.entry(u.name).or_insert(UpstreamSeries {
                    points: Ring::new(SLOTS),
                    endpoints: BTreeMap::new(),
                }),
                None => {
                    left_out += 1 + u.endpoints.len();
                    continue;
                }
            };
            series.points.push(u.point);
            for e in u.endpoints {
                let room = series.endpoints.len() < MAX_ENDPOINTS_PER_UPSTREAM
                    && endpoints < MAX_ENDPOINTS;
                let ep = match series.endpoints.get_mut(&e.key) {
                    Some(s) => s,
                    None if room => {
                        endpoints += 1;
                        series.endpoints.entry(e.key).or_insert(EndpointSeries {
                            points: Ring::new(SLOTS),
                            breakers: Vec::new(),
                        })
                    }
                    None => {
                        left_out += 1;
                        continue;
                    }
                };
                ep.points.push(e.point);
                ep.breakers
                    .retain(|row| e.breakers.iter().any(|(r, _)| *r == row.route));
                for (route, state) in e.breakers {
                    let i = match ep.breakers.iter().position(|row| row.route == route) {
                        Some(i) => i,
                        None if ep.breakers.len() < MAX_BREAKERS_PER_ENDPOINT => {
                            ep.breakers.push(BreakerRow {
                                route,
                                states: Ring::new(SLOTS),
                            });
                            ep.breakers.len() - 1
                        }
                        None => {
                            left_out += 1;
                            continue;
                        }
                    };
                    ep.breakers[i].states.push(state_code(state));
                }
            }
        }
        st.left_out = left_out;
    }

    /// The `/stats/timeline` answer for the newest `seconds` slots (at most [`SLOTS`]).
    pub fn render(&self, seconds: usize, now: SystemTime) -> Value {
        render::document(&self.lock(), seconds.min(SLOTS), now)
    }
}

/// The `seconds` of `?seconds=N` (default and maximum [`SLOTS`]; other parameters are
/// ignored); an error message for a value that is not a whole number of at least 1.
pub fn seconds_param(query: Option<&str>) -> Result<usize, String> {
    let value = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("seconds="));
    match value {
        None => Ok(SLOTS),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(usize::try_from(n).unwrap_or(SLOTS).min(SLOTS)),
            _ => Err(format!(
                "seconds must be a whole number from 1 to {SLOTS} (larger means {SLOTS}); got {v:?}"
            )),
        },
    }
}

fn state_code(s: BreakerState) -> u8 {
    u8::try_from(s.gauge()).unwrap_or(u8::MAX)
}

/// Starts the sampler for `ctrl` and returns the timeline it fills. The task holds
/// neither: it ends when the timeline (the admin listener's) or the control is gone,
/// or when `shutdown` turns true or its sender drops.
pub fn start(ctrl: &Arc<Control>, mut shutdown: watch::Receiver<bool>) -> Arc<Timeline> {
    let timeline = Arc::new(Timeline::default());
    let weak_timeline = Arc::downgrade(&timeline);
    let weak_ctrl = Arc::downgrade(ctrl);
    let start = Instant::now();
    let mut sampler = Sampler::new(start);
    tokio::spawn(async move {
        let mut every = tokio::time::interval_at(start + INTERVAL, INTERVAL);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.changed() => break,
            }
            let (Some(ctrl), Some(timeline)) = (weak_ctrl.upgrade(), weak_timeline.upgrade())
            else {
                break;
            };
            // A tick walks every series of the config (about 1 ms for a thousand routes):
            // it runs on the blocking pool, so no request waits behind it on a worker.
            let work = tokio::task::spawn_blocking(move || {
                let snap = ctrl.snapshot();
                let tick = sampler.tick(&snap, &ctrl.metrics, Instant::now(), SystemTime::now());
                timeline.record(tick);
                sampler
            });
            match work.await {
                Ok(s) => sampler = s,
                Err(_) => break,
            }
        }
    });
    timeline
}

#[cfg(test)]
mod sample_tests;
#[cfg(test)]
mod tests;
