//! gpu-sim: a fleet of simulated model servers (GPU replicas with a batch queue), one
//! process, one loopback port per replica. See bench/README.md ("GPU-fleet simulator").
//!
//! Each replica is a FIFO queue and one batcher. The batcher waits until the queue holds
//! work, takes up to `max_batch` requests and "runs" them for
//!     speed * (base + per_image' * batch)      (a tokio sleep: no CPU is burnt)
//! where per_image' = per_image * knee_factor when more than `knee` requests were queued
//! at the start of the batch (a GPU that thrashes), else per_image; then it answers every
//! request of the batch at once. A replica with a stall (`--stall IDX=EVERY/FOR@FIRST`)
//! starts no batch during FOR out of every EVERY (the batch already running finishes).
//! Requests whose client went away are still run, as most model servers do, unless
//! `--drop-abandoned`; they are counted as `abandoned` (GPU time spent for nobody).
//!
//! Capacity of replica i (req/s with full batches, below the knee):
//!     max_batch / (speed_i * (base + per_image * max_batch)) * (1 - FOR_i / EVERY_i)
//! and the fleet's capacity is the sum. It is printed at start and served in /stats.
//!
//! Replica ports: `GET /health` -> 200 at once (outside the queue); `GET /stats` -> this
//! replica's counters; any other request -> one inference (the body is read and dropped).
//! Control port (`--control-port`): `GET /stats` (all replicas, the model, the capacity),
//! `POST /reset` (counters to zero, the stall clock restarted, queued requests whose client
//! is gone dropped), `GET /health`. Only 127.0.0.1 is ever bound.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio::sync::{oneshot, Notify};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "gpu-sim",
    version,
    about = "Simulated GPU model-server replicas with a batch queue, on loopback ports"
)]
struct Args {
    /// Number of replicas.
    #[arg(long, default_value_t = 4)]
    replicas: usize,
    /// Ports of the replicas, comma separated (one per replica); or use --base-port.
    #[arg(long, value_delimiter = ',')]
    ports: Vec<u16>,
    /// First port: replica i listens on BASE+i (when --ports is not given).
    #[arg(long, default_value_t = 9101)]
    base_port: u16,
    /// Port of the control API (GET /stats, POST /reset); none when unset.
    #[arg(long)]
    control_port: Option<u16>,
    /// Fixed cost of one batch, ms.
    #[arg(long, default_value_t = 20.0)]
    base_ms: f64,
    /// Cost of each image of a batch, ms.
    #[arg(long, default_value_t = 4.0)]
    per_image_ms: f64,
    /// Largest batch the batcher takes.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Queue length (requests queued when a batch starts, the batch included) past which the
    /// per-image cost is multiplied by --knee-factor.
    #[arg(long, default_value_t = 16)]
    knee: usize,
    /// Per-image cost multiplier past the knee.
    #[arg(long, default_value_t = 1.5)]
    knee_factor: f64,
    /// Slow replicas: IDX=FACTOR (service time x FACTOR), comma separated, or "none".
    #[arg(long, value_delimiter = ',', default_value = "2=3")]
    slow: Vec<String>,
    /// Stalling replicas: IDX=EVERY/FOR[@FIRST] (e.g. 3=10s/1s@2s: no batch starts for 1 s
    /// every 10 s, the first stall 2 s after start or after POST /reset), or "none".
    #[arg(long, value_delimiter = ',', default_value = "3=10s/1s@2s")]
    stall: Vec<String>,
    /// Which replicas send x-queue-depth and ORCA endpoint-load-metrics: all, none, or a
    /// comma list of indexes.
    #[arg(long, default_value = "all")]
    load_headers: String,
    /// When the queue holds less than a full batch, wait this long (ms) for more before
    /// starting (Triton's max_queue_delay); 0 = start at once with what is queued.
    #[arg(long, default_value_t = 0.0)]
    batch_wait_ms: f64,
    /// Drop queued requests whose client has gone instead of running them.
    #[arg(long)]
    drop_abandoned: bool,
}

#[derive(Debug, Clone, Copy)]
struct Stall {
    every: Duration,
    dur: Duration,
    first: Duration,
}

#[derive(Debug, Clone)]
struct Model {
    base: f64,      // ms
    per_image: f64, // ms
    max_batch: usize,
    knee: usize,
    knee_factor: f64,
    batch_wait: Duration,
    drop_abandoned: bool,
}

struct Job {
    tx: oneshot::Sender<Done>,
    arrived: Instant,
}

struct Done {
    waiting: usize,
    batch: usize,
    queued: Duration,
    service: Duration,
}

#[derive(Default, Clone)]
struct Stats {
    received: u64,
    answered: u64,
    abandoned: u64,
    dropped: u64,
    batches: u64,
    images: u64,
    knee_batches: u64,
    busy: Duration,
    stalls: u64,
    stalled: Duration,
    max_queue: usize,
    queue_wait_total: Duration,
    queue_wait_max: Duration,
}

struct State {
    queue: VecDeque<Job>,
    stats: Stats,
    origin: Instant,
}

struct Replica {
    idx: usize,
    port: u16,
    speed: f64,
    stall: Option<Stall>,
    load_headers: bool,
    model: Arc<Model>,
    st: Mutex<State>,
    notify: Notify,
}

impl Replica {
    /// Requests per second with full batches below the knee, stalls included.
    fn capacity(&self) -> f64 {
        let m = &self.model;
        let batch_s = self.speed * (m.base + m.per_image * m.max_batch as f64) / 1000.0;
        let duty = self
            .stall
            .map(|s| 1.0 - s.dur.as_secs_f64() / s.every.as_secs_f64())
            .unwrap_or(1.0);
        m.max_batch as f64 / batch_s * duty
    }

    /// End of the stall window that `now` falls in, if any.
    fn stall_end(&self, origin: Instant, now: Instant) -> Option<Instant> {
        let s = self.stall?;
        let t = now.saturating_duration_since(origin);
        if t < s.first {
            return None;
        }
        let k = ((t - s.first).as_nanos() / s.every.as_nanos().max(1)) as u32;
        let start = s.first + s.every * k;
        (t < start + s.dur).then(|| origin + start + s.dur)
    }

    fn stats_json(&self) -> Value {
        let st = self.st.lock().unwrap();
        let s = &st.stats;
        let wall = st.origin.elapsed().as_secs_f64();
        json!({
            "replica": self.idx,
            "port": self.port,
            "speed_factor": self.speed,
            "stall": self.stall.map(|s| json!({"every_s": s.every.as_secs_f64(), "for_s": s.dur.as_secs_f64(),
                                               "first_s": s.first.as_secs_f64()})),
            "load_headers": self.load_headers,
            "capacity_rps": self.capacity(),
            "since_reset_s": wall,
            "received": s.received,
            "served": s.answered,
            "abandoned": s.abandoned,
            "dropped": s.dropped,
            "batches": s.batches,
            "images": s.images,
            "mean_batch": if s.batches > 0 { s.images as f64 / s.batches as f64 } else { 0.0 },
            "knee_batches": s.knee_batches,
            "busy_s": s.busy.as_secs_f64(),
            "busy_share": if wall > 0.0 { s.busy.as_secs_f64() / wall } else { 0.0 },
            "stalls": s.stalls,
            "stalled_s": s.stalled.as_secs_f64(),
            "queue_now": st.queue.len(),
            "max_queue": s.max_queue,
            "mean_queue_wait_ms": if s.images > 0 { s.queue_wait_total.as_secs_f64() * 1000.0 / s.images as f64 } else { 0.0 },
            "max_queue_wait_ms": s.queue_wait_max.as_secs_f64() * 1000.0,
        })
    }

    /// Counters to zero, stall clock restarted; queued requests nobody waits for are dropped.
    fn reset(&self, now: Instant) -> usize {
        let mut st = self.st.lock().unwrap();
        let before = st.queue.len();
        st.queue.retain(|j| !j.tx.is_closed());
        st.stats = Stats::default();
        st.origin = now;
        before - st.queue.len()
    }
}

async fn batcher(r: Arc<Replica>) {
    let m = r.model.clone();
    loop {
        loop {
            let notified = r.notify.notified();
            if !r.st.lock().unwrap().queue.is_empty() {
                break;
            }
            notified.await;
        }
        let origin = r.st.lock().unwrap().origin;
        let now = Instant::now();
        if let Some(end) = r.stall_end(origin, now) {
            tokio::time::sleep_until(end.into()).await;
            let mut st = r.st.lock().unwrap();
            if st.origin == origin {
                st.stats.stalls += 1;
                st.stats.stalled += end - now;
            }
            continue; // look again: the clock may have been reset meanwhile
        }
        if !m.batch_wait.is_zero() && r.st.lock().unwrap().queue.len() < m.max_batch {
            tokio::time::sleep(m.batch_wait).await;
        }
        let (batch, queued_at_start) = {
            let mut st = r.st.lock().unwrap();
            if m.drop_abandoned {
                let before = st.queue.len();
                st.queue.retain(|j| !j.tx.is_closed());
                st.stats.dropped += (before - st.queue.len()) as u64;
            }
            let before = st.queue.len();
            let n = before.min(m.max_batch);
            (st.queue.drain(..n).collect::<Vec<Job>>(), before)
        };
        if batch.is_empty() {
            continue;
        }
        let n = batch.len();
        let past_knee = queued_at_start > m.knee;
        let per = if past_knee {
            m.per_image * m.knee_factor
        } else {
            m.per_image
        };
        let service = Duration::from_secs_f64(r.speed * (m.base + per * n as f64) / 1000.0);
        let started = Instant::now();
        tokio::time::sleep_until((started + service).into()).await;
        let mut st = r.st.lock().unwrap();
        let waiting = st.queue.len();
        st.stats.batches += 1;
        st.stats.images += n as u64;
        st.stats.busy += service;
        if past_knee {
            st.stats.knee_batches += 1;
        }
        for j in batch {
            let queued = started.saturating_duration_since(j.arrived);
            st.stats.queue_wait_total += queued;
            st.stats.queue_wait_max = st.stats.queue_wait_max.max(queued);
            let done = Done {
                waiting,
                batch: n,
                queued,
                service,
            };
            if j.tx.send(done).is_ok() {
                st.stats.answered += 1;
            } else {
                st.stats.abandoned += 1;
            }
        }
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(v.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

async fn replica_handle(
    req: Request<Incoming>,
    r: Arc<Replica>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() == Method::GET && req.uri().path() == "/health" {
        return Ok(json_response(
            StatusCode::OK,
            &json!({"status": "ok", "replica": r.idx}),
        ));
    }
    if req.method() == Method::GET && req.uri().path() == "/stats" {
        return Ok(json_response(StatusCode::OK, &r.stats_json()));
    }
    // An inference: the image is read (and dropped), then the request joins the queue.
    if req.into_body().collect().await.is_err() {
        return Ok(json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "body not received"}),
        ));
    }
    let (tx, rx) = oneshot::channel();
    {
        let mut st = r.st.lock().unwrap();
        st.queue.push_back(Job {
            tx,
            arrived: Instant::now(),
        });
        st.stats.received += 1;
        st.stats.max_queue = st.stats.max_queue.max(st.queue.len());
    }
    r.notify.notify_one();
    let done = match rx.await {
        Ok(d) => d,
        Err(_) => {
            return Ok(json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "dropped"}),
            ))
        }
    };
    let body = json!({
        "replica": r.idx,
        "batch": done.batch,
        "queue_ms": (done.queued.as_secs_f64() * 1e4).round() / 10.0,
        "service_ms": (done.service.as_secs_f64() * 1e4).round() / 10.0,
        "detections": [
            {"class": "car", "score": 0.91, "box": [12, 40, 180, 160]},
            {"class": "person", "score": 0.84, "box": [220, 35, 260, 150]},
            {"class": "truck", "score": 0.62, "box": [300, 20, 470, 190]}
        ]
    });
    let mut resp = json_response(StatusCode::OK, &body);
    let h = resp.headers_mut();
    h.insert("x-replica", HeaderValue::from(r.idx));
    if r.load_headers {
        h.insert("x-queue-depth", HeaderValue::from(done.waiting));
        let orca = format!("TEXT named_metrics.num_requests_waiting={}", done.waiting);
        h.insert(
            "endpoint-load-metrics",
            HeaderValue::from_str(&orca).unwrap(),
        );
    }
    Ok(resp)
}

struct Fleet {
    replicas: Vec<Arc<Replica>>,
    model: Arc<Model>,
}

impl Fleet {
    fn capacity(&self) -> f64 {
        self.replicas.iter().map(|r| r.capacity()).sum()
    }

    fn model_json(&self) -> Value {
        let m = &self.model;
        json!({"base_ms": m.base, "per_image_ms": m.per_image, "max_batch": m.max_batch, "knee": m.knee,
               "knee_factor": m.knee_factor, "batch_wait_ms": m.batch_wait.as_secs_f64() * 1000.0,
               "drop_abandoned": m.drop_abandoned})
    }

    fn stats_json(&self) -> Value {
        let reps: Vec<Value> = self.replicas.iter().map(|r| r.stats_json()).collect();
        let sum = |k: &str| reps.iter().map(|v| v[k].as_u64().unwrap_or(0)).sum::<u64>();
        json!({
            "model": self.model_json(),
            "capacity_rps": self.capacity(),
            "received": sum("received"), "served": sum("served"), "abandoned": sum("abandoned"),
            "dropped": sum("dropped"), "queue_now": sum("queue_now"),
            "replicas": reps,
        })
    }
}

async fn control_handle(
    req: Request<Incoming>,
    f: Arc<Fleet>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    Ok(match (req.method().clone(), path.as_str()) {
        (Method::GET, "/health") => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (Method::GET, "/stats") => json_response(StatusCode::OK, &f.stats_json()),
        (Method::POST, "/reset") => {
            let now = Instant::now();
            let purged: usize = f.replicas.iter().map(|r| r.reset(now)).sum();
            json_response(
                StatusCode::OK,
                &json!({"reset": true, "purged_abandoned": purged}),
            )
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "GET /stats, POST /reset, GET /health"}),
        ),
    })
}

async fn serve<F, Fut>(port: u16, handler: F) -> std::io::Result<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let sock = TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    let listener = sock.listen(4096)?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(5)).await; // e.g. out of descriptors
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let h = handler.clone();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service_fn(h))
                    .await;
            });
        }
    });
    Ok(())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("ms") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else {
        (s, 1.0)
    };
    let x: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (e.g. 10s, 500ms)"))?;
    if !(x >= 0.0) {
        return Err(format!("negative duration: {s:?}"));
    }
    Ok(Duration::from_secs_f64(x * mult))
}

fn parse_index(s: &str, n: usize) -> Result<usize, String> {
    let i: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("not a replica index: {s:?}"))?;
    if i >= n {
        return Err(format!(
            "replica index {i} out of range (there are {n} replicas)"
        ));
    }
    Ok(i)
}

fn build(args: &Args) -> Result<Fleet, String> {
    let n = args.replicas;
    if n == 0 || args.max_batch == 0 {
        return Err("--replicas and --max-batch must be at least 1".into());
    }
    let ports: Vec<u16> = if args.ports.is_empty() {
        (0..n).map(|i| args.base_port + i as u16).collect()
    } else if args.ports.len() == n {
        args.ports.clone()
    } else {
        return Err(format!(
            "--ports lists {} ports for {} replicas",
            args.ports.len(),
            n
        ));
    };
    let mut speed = vec![1.0; n];
    for s in args
        .slow
        .iter()
        .filter(|s| !s.is_empty() && s.as_str() != "none")
    {
        let (i, f) = s
            .split_once('=')
            .ok_or(format!("--slow wants IDX=FACTOR, got {s:?}"))?;
        let f: f64 = f
            .parse()
            .map_err(|_| format!("--slow factor not a number: {s:?}"))?;
        if !(f > 0.0) {
            return Err(format!("--slow factor must be > 0: {s:?}"));
        }
        speed[parse_index(i, n)?] = f;
    }
    let mut stall: Vec<Option<Stall>> = vec![None; n];
    for s in args
        .stall
        .iter()
        .filter(|s| !s.is_empty() && s.as_str() != "none")
    {
        let (i, rest) = s
            .split_once('=')
            .ok_or(format!("--stall wants IDX=EVERY/FOR[@FIRST], got {s:?}"))?;
        let (timing, first) = match rest.split_once('@') {
            Some((t, f)) => (t, Some(parse_duration(f)?)),
            None => (rest, None),
        };
        let (every, dur) = timing
            .split_once('/')
            .ok_or(format!("--stall wants IDX=EVERY/FOR[@FIRST], got {s:?}"))?;
        let (every, dur) = (parse_duration(every)?, parse_duration(dur)?);
        if every.is_zero() || dur >= every {
            return Err(format!("--stall needs 0 <= FOR < EVERY: {s:?}"));
        }
        let first = first.unwrap_or(every);
        stall[parse_index(i, n)?] = Some(Stall { every, dur, first });
    }
    let mut headers = vec![true; n];
    match args.load_headers.trim() {
        "all" => {}
        "none" => headers = vec![false; n],
        list => {
            headers = vec![false; n];
            for i in list.split(',') {
                headers[parse_index(i, n)?] = true;
            }
        }
    }
    let model = Arc::new(Model {
        base: args.base_ms,
        per_image: args.per_image_ms,
        max_batch: args.max_batch,
        knee: args.knee,
        knee_factor: args.knee_factor,
        batch_wait: Duration::from_secs_f64(args.batch_wait_ms.max(0.0) / 1000.0),
        drop_abandoned: args.drop_abandoned,
    });
    let now = Instant::now();
    let replicas = (0..n)
        .map(|i| {
            Arc::new(Replica {
                idx: i,
                port: ports[i],
                speed: speed[i],
                stall: stall[i],
                load_headers: headers[i],
                model: model.clone(),
                st: Mutex::new(State {
                    queue: VecDeque::new(),
                    stats: Stats::default(),
                    origin: now,
                }),
                notify: Notify::new(),
            })
        })
        .collect();
    Ok(Fleet { replicas, model })
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let fleet = match build(&args) {
        Ok(f) => Arc::new(f),
        Err(e) => {
            eprintln!("gpu-sim: {e}");
            std::process::exit(2);
        }
    };
    for r in &fleet.replicas {
        let rr = r.clone();
        if let Err(e) = serve(r.port, move |req| replica_handle(req, rr.clone())).await {
            eprintln!("gpu-sim: cannot listen on 127.0.0.1:{}: {e}", r.port);
            std::process::exit(1);
        }
        tokio::spawn(batcher(r.clone()));
    }
    if let Some(p) = args.control_port {
        let f = fleet.clone();
        if let Err(e) = serve(p, move |req| control_handle(req, f.clone())).await {
            eprintln!("gpu-sim: cannot listen on 127.0.0.1:{p}: {e}");
            std::process::exit(1);
        }
    }
    // One line that says what runs, for the harness and for the reader.
    let reps: Vec<Value> = fleet
        .replicas
        .iter()
        .map(|r| json!({"replica": r.idx, "address": format!("127.0.0.1:{}", r.port), "speed_factor": r.speed,
                        "stall": r.stall.map(|s| format!("{:?}/{:?}@{:?}", s.every, s.dur, s.first)),
                        "load_headers": r.load_headers, "capacity_rps": r.capacity()}))
        .collect();
    println!(
        "{}",
        json!({"gpu_sim": "listening", "model": fleet.model_json(), "capacity_rps": fleet.capacity(),
               "control": args.control_port.map(|p| format!("127.0.0.1:{p}")), "replicas": reps})
    );
    std::future::pending::<()>().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(extra: &[&str]) -> Fleet {
        let mut argv = vec!["gpu-sim"];
        argv.extend_from_slice(extra);
        build(&Args::parse_from(argv)).unwrap()
    }

    #[test]
    fn default_capacity_matches_the_formula() {
        let f = fleet(&[]);
        let full = 8.0 / 0.052; // 153.85 req/s
        let want = full + full + full / 3.0 + full * 0.9;
        assert!(
            (f.capacity() - want).abs() < 1e-6,
            "{} vs {}",
            f.capacity(),
            want
        );
    }

    #[test]
    fn stall_windows() {
        let f = fleet(&["--stall", "0=10s/1s@2s", "--slow", "none"]);
        let r = &f.replicas[0];
        let o = Instant::now();
        assert!(r.stall_end(o, o + Duration::from_millis(1999)).is_none());
        assert_eq!(
            r.stall_end(o, o + Duration::from_millis(2500)),
            Some(o + Duration::from_secs(3))
        );
        assert!(r.stall_end(o, o + Duration::from_millis(3001)).is_none());
        assert_eq!(
            r.stall_end(o, o + Duration::from_millis(12100)),
            Some(o + Duration::from_secs(13))
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        for bad in [
            ["--slow", "9=3"],
            ["--stall", "0=1s/2s"],
            ["--load-headers", "7"],
        ] {
            let mut argv = vec!["gpu-sim"];
            argv.extend_from_slice(&bad);
            assert!(build(&Args::parse_from(argv)).is_err(), "{bad:?}");
        }
    }
}
