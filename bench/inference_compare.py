#!/usr/bin/env python3
"""inference-compare: load balancers in front of a simulated GPU fleet, in one run.

The fleet is bench/gpu-sim (one process, N model-server replicas with a batch queue; one
replica 3x slower, one with periodic stalls), the same for every target. The proxy under
test runs pinned to one core (--proxy-cpu, default 1); the simulator and the load
generator (oha) share the other (--load-cpu, default 0).

Targets (each a fresh process per round, started by this script):
  fusebox-rr        fusebox, load_balancing = "round_robin"
  fusebox-lr        fusebox, load_balancing = "least_request"
  fusebox-pewma     fusebox, load_balancing = "peak_ewma"
  fusebox-pewma-ac  fusebox, "peak_ewma" + [upstreams.fleet.adaptive_concurrency]
  nginx             nginx, upstream { least_conn; keepalive }
  haproxy           HAProxy, balance leastconn, http-reuse always
A target whose config is refused or whose process does not start is skipped with a message.

Per round and target: the proxy starts; a warm-up (oha at --warmup-pct of capacity); then
for each load level (percent of the fleet's computed capacity), in rising order: the
fleet's queues drain, its counters and stall clock are reset, and oha sends an open-loop
POST stream at the level's rate for --seconds (--latency-correction, --timeout = the
client deadline, x-request-timeout-ms = the deadline). Rounds rotate the target order.

Per run: goodput (2xx answers within the deadline, per second of offered load), p50/p99
of 2xx answers, shed (503/429, fusebox's reasons from its /metrics), 504s, client
timeouts, other errors, and from the simulator the share each replica got and the work it
did for clients that had already gone. Medians over rounds with min-max.
See bench/README.md.
"""
import argparse
import json
import math
import os
import platform
import resource
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TICK = os.sysconf("SC_CLK_TCK")
STARTED = []  # every Proc this run started, stopped at exit whatever happens

FUSEBOX_TARGETS = {
    "fusebox-rr": ("round_robin", False),
    "fusebox-lr": ("least_request", False),
    "fusebox-pewma": ("peak_ewma", False),
    "fusebox-pewma-ac": ("peak_ewma", True),
}
ALL_TARGETS = list(FUSEBOX_TARGETS) + ["nginx", "haproxy"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def env_int(name, default):
    v = os.environ.get(name, "")
    return int(v) if v.strip() else default


def env_float(name, default):
    v = os.environ.get(name, "")
    return float(v) if v.strip() else default


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def http(method, port, path, timeout=3.0):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode()


# ---------------------------------------------------------------- processes (as in proxy-compare)

def session_pids(sid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            f = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(f[3]) == sid:
            out.append(int(d))
    return out


def cpu_seconds(sid):
    total = 0
    for p in session_pids(sid):
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except (OSError, IndexError):
            pass
    return total / TICK


def core_times():
    out = {}
    for line in open("/proc/stat"):
        m = re.match(r"cpu(\d+)\s+(.*)", line)
        if m:
            v = [int(x) for x in m.group(2).split()[:8]]
            user, nice, system, idle, iowait, irq, softirq, steal = v + [0] * (8 - len(v))
            out[int(m.group(1))] = (user + nice + system + irq + softirq, steal,
                                    user + nice + system + idle + iowait + irq + softirq + steal)
    return out


def core_share(before, after, cpu):
    b0, s0, t0 = before[cpu]
    b1, s1, t1 = after[cpu]
    t = max(t1 - t0, 1)
    return (b1 - b0) / t, (s1 - s0) / t


class Proc:
    def __init__(self, name, argv, port, workdir, cpu, env=None, stop_signal=signal.SIGTERM):
        self.name, self.port, self.stop_signal = name, port, stop_signal
        self.log_path = os.path.join(workdir, f"{name}.out")
        self.logf = open(self.log_path, "ab")
        self.p = subprocess.Popen(["taskset", "-c", str(cpu)] + argv, stdout=self.logf, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=dict(os.environ, **(env or {})),
                                  start_new_session=True)
        self.pid = self.p.pid  # taskset execs the program: this is it, leader of its own session
        STARTED.append(self)
        if not self.wait_listening(20.0):
            self.stop()
            raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within 20 s; its output:\n{self.tail()}")

    def tail(self, n=800):
        try:
            return open(self.log_path, errors="replace").read()[-n:]
        except OSError:
            return ""

    def wait_listening(self, timeout):
        end = time.time() + timeout
        while time.time() < end:
            if self.p.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        """Stop this process and everything in its session, by PID; never by name."""
        members = [p for p in session_pids(self.pid) if p != self.pid]
        if self.p.poll() is None:
            try:
                os.kill(self.pid, self.stop_signal)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.p.wait()
        for p in members:  # e.g. nginx workers, should the master not have taken them down
            if p in session_pids(self.pid):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self in STARTED:
            STARTED.remove(self)
        self.logf.close()


def stop_all():
    for p in list(STARTED):
        try:
            p.stop()
        except Exception as e:  # keep stopping the others
            log(f"stopping {p.name} (pid {p.pid}): {e}")


# ---------------------------------------------------------------- the fleet

def sim_binary(a):
    if a.sim_bin:
        return a.sim_bin
    target_dir = os.path.join(ROOT, "target", "gpu-sim")
    binp = os.path.join(target_dir, "release", "gpu-sim")
    manifest = os.path.join(HERE, "gpu-sim", "Cargo.toml")
    srcs = [os.path.join(HERE, "gpu-sim", p) for p in ("Cargo.toml", "Cargo.lock", "src/main.rs")]
    if not os.path.exists(binp) or os.path.getmtime(binp) < max(os.path.getmtime(s) for s in srcs):
        log("building bench/gpu-sim (cargo build --release, once)")
        r = subprocess.run(["cargo", "build", "--release", "--locked", "--manifest-path", manifest,
                            "--target-dir", target_dir])
        if r.returncode != 0:
            raise RuntimeError("cargo build of bench/gpu-sim failed")
    return binp


class Sim:
    def __init__(self, a, workdir):
        ports = free_ports(a.replicas + 1)
        self.control, self.ports = ports[0], ports[1:]
        argv = [sim_binary(a), "--replicas", str(a.replicas), "--ports", ",".join(map(str, self.ports)),
                "--control-port", str(self.control)] + shlex.split(a.sim_args)
        self.proc = Proc("gpu-sim", argv, self.control, workdir, a.load_cpu)
        for p in self.ports:
            deadline = time.time() + 5
            while True:
                try:
                    socket.create_connection(("127.0.0.1", p), timeout=0.2).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        raise RuntimeError(f"gpu-sim replica port {p} not listening")
                    time.sleep(0.05)
        self.argv = argv
        st = self.stats()
        self.capacity = st["capacity_rps"]
        self.model = st["model"]
        self.replicas = [{k: r[k] for k in ("replica", "port", "speed_factor", "stall", "load_headers", "capacity_rps")}
                         for r in st["replicas"]]
        self.endpoints = [f"127.0.0.1:{p}" for p in self.ports]

    def stats(self):
        return json.loads(http("GET", self.control, "/stats"))

    def reset(self):
        return json.loads(http("POST", self.control, "/reset"))

    def drain(self, max_s):
        """Wait until no replica holds queued work (work for clients that have gone is
        dropped by each reset); returns (seconds waited, requests still queued)."""
        t0 = time.time()
        while True:
            self.reset()
            q = self.stats()["queue_now"]
            if q == 0 or time.time() - t0 > max_s:
                return time.time() - t0, q
            time.sleep(0.1)


# ---------------------------------------------------------------- targets

def nginx_conf_dir(workdir, name):
    d = os.path.join(workdir, name)
    os.makedirs(d, exist_ok=True)
    for t in ("client_body_temp", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp"):
        os.makedirs(os.path.join(d, t), exist_ok=True)
    return d


def start_nginx(workdir, sim, a, name):
    port = free_ports(1)[0]
    d = nginx_conf_dir(workdir, name)
    conf = os.path.join(d, "nginx.conf")
    user = "user root;" if os.geteuid() == 0 else ""
    servers = "\n".join(f"    server {e};" for e in sim.endpoints)
    tmo = (f"proxy_read_timeout {a.deadline_ms}ms; proxy_send_timeout {a.deadline_ms}ms;"
           if a.peer_upstream_timeout else "")
    with open(conf, "w") as f:
        f.write(f"""
{user}
worker_processes 1;
worker_rlimit_nofile {resource.getrlimit(resource.RLIMIT_NOFILE)[0]};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  client_max_body_size 4m;
  client_body_buffer_size 512k;
  client_body_temp_path {d}/client_body_temp;
  proxy_temp_path {d}/proxy_temp;
  fastcgi_temp_path {d}/fastcgi_temp;
  uwsgi_temp_path {d}/uwsgi_temp;
  scgi_temp_path {d}/scgi_temp;
  upstream fleet {{
    least_conn;
{servers}
    keepalive 128; keepalive_requests 1000000; keepalive_timeout 120s;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=8192;
    location / {{
      proxy_pass http://fleet; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_connect_timeout 1s; {tmo}
    }}
  }}
}}
""")
    return Proc(name, ["nginx", "-p", d, "-c", conf, "-e", f"{d}/error.log"], port, workdir, a.proxy_cpu)


def start_haproxy(workdir, sim, a, name):
    port = free_ports(1)[0]
    cfg = os.path.join(workdir, f"{name}.cfg")
    servers = "\n".join(f"  server r{i} {e}" for i, e in enumerate(sim.endpoints))
    server_tmo = f"{a.deadline_ms}ms" if a.peer_upstream_timeout else "60s"
    with open(cfg, "w") as f:
        f.write(f"""
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 1s
  timeout client 60s
  timeout server {server_tmo}
  timeout http-keep-alive 120s
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}
  default_backend fleet
backend fleet
  balance leastconn
{servers}
""")
    return Proc(name, ["haproxy", "-db", "-f", cfg], port, workdir, a.proxy_cpu)


def fusebox_toml(sim, a, lb, adaptive, port, admin):
    eps = ", ".join(f'"{e}"' for e in sim.endpoints)
    ac = ("\n[upstreams.fleet.adaptive_concurrency]\nmin_limit = 1\nmax_limit = 64\n" if adaptive else "")
    return f"""# written by bench/inference_compare.py (per ../shared/DESIGN.md)
[service]
name = "bench"

[listener]
address = "127.0.0.1:{port}"
shutdown_timeout = "1s"

[admin]
address = "127.0.0.1:{admin}"

[logging]
level = "warn"
access_log = false

[upstreams.fleet]
endpoints = [{eps}]
load_balancing = "{lb}"

[upstreams.fleet.retry]
max_retries = 0

[upstreams.fleet.circuit_breaker]
failure_threshold = {a.breaker_threshold}
recovery_timeout = "{a.breaker_recovery}"
success_threshold = 2
{ac}
[[routes]]
name = "detect"
path_prefix = "/"
upstream = "fleet"
timeout = "{a.deadline_ms}ms"
"""


def write_fusebox_config(workdir, sim, a, name, port, admin):
    if name in FUSEBOX_TARGETS:
        lb, adaptive = FUSEBOX_TARGETS[name]
        text = fusebox_toml(sim, a, lb, adaptive, port, admin)
    else:  # --fusebox-config NAME=TEMPLATE
        text = open(a.fusebox_templates[name]).read()
        for k, v in {"port": port, "admin": admin, "deadline_ms": a.deadline_ms,
                     "endpoints": ", ".join(f'"{e}"' for e in sim.endpoints)}.items():
            text = text.replace("{" + k + "}", str(v))
    cfg = os.path.join(workdir, f"{name}.toml")
    with open(cfg, "w") as f:
        f.write(text)
    return cfg


def start_fusebox(workdir, sim, a, name):
    port, admin = free_ports(2)
    cfg = write_fusebox_config(workdir, sim, a, name, port, admin)
    p = Proc(name, [a.fusebox_bin, "run", "--config", cfg], port, workdir, a.proxy_cpu, env={"FUSEBOX_LOG": "warn"})
    p.admin = admin
    return p


def validate_fusebox(workdir, sim, a, name):
    """None when the binary accepts the config, else its error (first lines)."""
    port, admin = free_ports(2)
    cfg = write_fusebox_config(workdir, sim, a, name, port, admin)
    try:
        r = subprocess.run([a.fusebox_bin, "validate", "--config", cfg], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "fusebox validate did not finish in 20 s"
    if r.returncode == 0:
        return None
    return " ".join((r.stdout + r.stderr).strip().split())[:400] or f"exit code {r.returncode}"


def fusebox_counters(p):
    """Counters from fusebox's /metrics: rejections by reason, answers by status."""
    out = {}
    try:
        text = http("GET", p.admin, "/metrics", timeout=2)
    except (OSError, urllib.error.URLError):
        return None
    for line in text.splitlines():
        m = re.match(r'(gateway_proxy_rejected_total|gateway_proxy_requests_total)\{([^}]*)\}\s+([0-9.e+]+)', line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        key = ("rejected:" + labels.get("reason", "?")) if m.group(1) == "gateway_proxy_rejected_total" \
            else ("status:" + labels.get("status", "?"))
        out[key] = out.get(key, 0) + float(m.group(3))
    return out


# ---------------------------------------------------------------- load

def conns_for(a, rate):
    if a.conns:
        return a.conns
    # open loop: enough connections that every request of the client deadline's worth is in flight
    return min(2000, max(64, int(math.ceil(rate * a.client_timeout_ms / 1000 * 1.5)) + 32))


def oha(a, port, rate, seconds, body, db=None):
    argv = ["taskset", "-c", str(a.load_cpu), "oha", "-z", f"{seconds}s", "-q", f"{rate:.2f}", "-c",
            str(conns_for(a, rate)), "--latency-correction", "--no-tui", "--output-format", "json",
            "-t", f"{a.client_timeout_ms}ms", "-w", "--worker-threads", "1",
            "-m", "POST", "-D", body, "-T", "application/octet-stream",
            "-H", f"x-request-timeout-ms: {a.deadline_ms}"]
    if db:
        argv += ["--db-url", db]
    argv.append(f"http://127.0.0.1:{port}/detect")
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + a.client_timeout_ms / 1000 + 60)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        j = json.loads(r.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"oha output not JSON (exit {r.returncode}): {r.stdout[:300]} {r.stderr[:300]}")
    j["_cpu_s"] = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)  # oha's own CPU time
    return j


def pct(xs, q):
    """Nearest-rank percentile of a sorted list, None when empty."""
    if not xs:
        return None
    k = max(0, min(len(xs) - 1, int(math.ceil(q / 100 * len(xs))) - 1))
    return xs[k]


def analyse(j, db, a, rate, seconds):
    rows = []
    if db and os.path.exists(db):
        c = sqlite3.connect(db)
        rows = c.execute("SELECT status, duration FROM oha").fetchall()
        c.close()
    dl = a.deadline_ms / 1000
    ok = sorted(d for s, d in rows if 200 <= s < 300)
    good = sum(1 for d in ok if d <= dl)
    shed = sorted(d for s, d in rows if s in (503, 429))
    s504 = sum(1 for s, _ in rows if s == 504)
    other = {}
    for s, _ in rows:
        if not (200 <= s < 300) and s not in (503, 429, 504):
            other[str(s)] = other.get(str(s), 0) + 1
    errs = dict(j.get("errorDistribution") or {})
    timeouts = errs.pop("timeout", 0)
    aborted = errs.pop("aborted due to deadline", 0)
    n_err = sum(errs.values())
    sent = len(rows) + timeouts + n_err + aborted
    offered = rate * seconds
    # every request, a timeout or an error counting as infinitely late: what a client waits to know
    every = sorted([d for _, d in rows] + [math.inf] * (timeouts + n_err + aborted))
    ms = lambda v: None if v is None else (v * 1000 if v != math.inf else math.inf)
    rec = {
        "offered_rps": rate, "offered": offered, "sent": sent, "answers": len(rows),
        "goodput_rps": good / seconds, "goodput_pct_cap": None, "good": good,
        "ok": len(ok), "late": len(ok) - good,
        "p50_ms": ms(pct(ok, 50)), "p99_ms": ms(pct(ok, 99)), "p999_ms": ms(pct(ok, 99.9)),
        "p99_every_ms": ms(pct(every, 99)),
        "shed": len(shed), "shed_p99_ms": ms(pct(shed, 99)), "s504": s504, "other_status": other,
        "timeouts": timeouts, "errors": n_err, "error_kinds": errs, "aborted": aborted,
        "problems": [],
    }
    if sent < 0.97 * offered:
        rec["problems"].append(f"the client sent only {sent} of {offered:.0f} requests")
    return rec


def sim_summary(before, after, seconds):
    reps = after["replicas"]
    recv = [r["received"] for r in reps]
    tot = max(sum(recv), 1)
    return {
        "replica_share": [round(x / tot, 4) for x in recv],
        "replica_served": [r["served"] for r in reps],
        "replica_max_queue": [r["max_queue"] for r in reps],
        "replica_busy": [round(r["busy_share"], 3) for r in reps],
        "replica_mean_batch": [round(r["mean_batch"], 2) for r in reps],
        "knee_batches": sum(r["knee_batches"] for r in reps),
        "stalls": sum(r["stalls"] for r in reps),
        "sim_images": sum(r["images"] for r in reps),
        "sim_served": after["served"], "sim_abandoned": after["abandoned"], "sim_received": after["received"],
        "queued_at_end": after["queue_now"],
    }


# ---------------------------------------------------------------- one target, one round

def measure(name, start, a, workdir, sim, body):
    """Every level for one target in one round, on one fresh proxy process."""
    recs = []
    proc = start(workdir, sim, a, name)
    try:
        if a.warmup > 0:
            sim.drain(a.max_drain)
            oha(a, proc.port, sim.capacity * a.warmup_pct / 100, a.warmup, body)
        for level in a.levels:
            rate = sim.capacity * level / 100
            waited, left = sim.drain(a.max_drain)
            time.sleep(a.settle)
            fb0 = fusebox_counters(proc) if hasattr(proc, "admin") else None
            cpu0, sim0, cores0 = cpu_seconds(proc.pid), cpu_seconds(sim.proc.pid), core_times()
            sim.reset()  # counters to zero, stall clock restarted: every run sees the same stalls
            before = sim.stats()
            db = os.path.join(workdir, f"{name}-{level}.db")
            t0 = time.time()
            j = oha(a, proc.port, rate, a.seconds, body, db)
            wall = time.time() - t0
            cores1, cpu1, sim1 = core_times(), cpu_seconds(proc.pid), cpu_seconds(sim.proc.pid)
            after = sim.stats()
            rec = {"target": name, "level_pct": level, "round": None, "drain_s": round(waited, 2),
                   "queued_before": left}
            rec.update(analyse(j, db, a, rate, a.seconds))
            keep = os.environ.get("KEEP_DB")  # a directory: keep oha's per-request rows for analysis
            try:
                if keep:
                    os.makedirs(keep, exist_ok=True)
                    shutil.move(db, os.path.join(keep, os.path.basename(db)))
                else:
                    os.remove(db)
            except OSError:
                pass
            rec["goodput_pct_cap"] = 100 * rec["goodput_rps"] / sim.capacity
            rec.update(sim_summary(before, after, a.seconds))
            # GPU work of the run that became no goodput: late answers, answers nobody read, timeouts
            rec["wasted"] = max(0, rec["sim_images"] - rec["good"])
            lb, ls = core_share(cores0, cores1, a.load_cpu)
            pb, ps = core_share(cores0, cores1, a.proxy_cpu)
            ours_load = (j["_cpu_s"] + sim1 - sim0) / wall  # oha + gpu-sim, in cores
            proxy_busy = (cpu1 - cpu0) / wall
            # CPU that neither the proxy nor the load side used: other processes on this machine
            foreign = max(0.0, lb + pb - ours_load - proxy_busy)
            rec.update(load_core_busy=round(lb, 3), proxy_core_busy=round(pb, 3), steal=round(max(ls, ps), 3),
                       proxy_cpu_s=round(cpu1 - cpu0, 3), proxy_busy=round(proxy_busy, 3),
                       load_side_busy=round(ours_load, 3), foreign_busy=round(foreign, 3), wall_s=round(wall, 2))
            if fb0 is not None:
                fb1 = fusebox_counters(proc) or {}
                rec["fusebox"] = {k: fb1.get(k, 0) - fb0.get(k, 0) for k in fb1 if fb1.get(k, 0) - fb0.get(k, 0)}
            if ours_load > 0.85:
                rec["problems"].append(f"oha + gpu-sim used {ours_load:.0%} of a core: the load side may be the limit")
            if foreign > 0.15:
                rec["problems"].append(f"other processes used {foreign:.2f} cores during the run: not a quiet machine")
            if proxy_busy > 0.9:
                rec["problems"].append(f"the proxy used {proxy_busy:.0%} of its core: it may be the limit")
            if left:
                rec["problems"].append(f"{left} requests were still queued in the fleet at the start")
            if not proc.alive():
                rec["problems"].append("proxy exited during the run")
                recs.append(rec)
                break
            recs.append(rec)
    finally:
        proc.stop()
    return recs


# ---------------------------------------------------------------- report

def med(xs):
    xs = [x for x in xs if isinstance(x, (int, float))]
    return statistics.median(xs) if xs else None


def lo(xs):
    xs = [x for x in xs if isinstance(x, (int, float))]
    return min(xs) if xs else None


def hi(xs):
    xs = [x for x in xs if isinstance(x, (int, float))]
    return max(xs) if xs else None


def fmt(v, f="%.0f"):
    if v == math.inf:
        return "inf"
    return (f % v) if isinstance(v, (int, float)) else "-"


def spread(vals, f="%.0f"):
    a, b = lo(vals), hi(vals)
    return f"{fmt(a, f)}-{fmt(b, f)}" if a is not None else "-"


def summarize(runs, names, levels):
    rows = []
    for lv in levels:
        for n in names:
            rs = [r for r in runs if r["target"] == n and r["level_pct"] == lv]
            if not rs:
                continue
            col = lambda k: [r.get(k) for r in rs]
            fbk = {}
            for r in rs:
                for k, v in (r.get("fusebox") or {}).items():
                    fbk.setdefault(k, []).append(v)
            share = [med([r["replica_share"][i] for r in rs]) for i in range(len(rs[0]["replica_share"]))]
            rows.append({
                "level_pct": lv, "target": n, "rounds_ok": len(rs), "offered_rps": rs[0]["offered_rps"],
                "goodput_rps": med(col("goodput_rps")), "goodput_min": lo(col("goodput_rps")),
                "goodput_max": hi(col("goodput_rps")), "goodput_pct_cap": med(col("goodput_pct_cap")),
                "p50_ms": med(col("p50_ms")), "p99_ms": med(col("p99_ms")), "p99_min": lo(col("p99_ms")),
                "p99_max": hi(col("p99_ms")), "p999_ms": med(col("p999_ms")), "p99_every_ms": med(col("p99_every_ms")),
                "shed": med(col("shed")), "shed_p99_ms": med(col("shed_p99_ms")), "s504": med(col("s504")),
                "timeouts": med(col("timeouts")), "errors": med(col("errors")), "late": med(col("late")),
                "other_status": med([sum(r["other_status"].values()) for r in rs]),
                "wasted": med(col("wasted")), "sim_abandoned": med(col("sim_abandoned")),
                "queued_at_end": med(col("queued_at_end")), "knee_batches": med(col("knee_batches")),
                "replica_share": share,
                "fusebox_rejected": {k.split(":", 1)[1]: med(v) for k, v in fbk.items() if k.startswith("rejected:")},
                "load_core_busy": med(col("load_core_busy")), "proxy_core_busy": med(col("proxy_core_busy")),
                "proxy_busy": med(col("proxy_busy")), "load_side_busy": med(col("load_side_busy")),
                "foreign_busy_max": hi(col("foreign_busy")),
                "steal_max": hi(col("steal")),
                "problems": sorted({p for r in rs for p in r["problems"]}),
            })
    return rows


def print_tables(rows, a, meta, levels):
    print(f"\ninference-compare {meta['date']}: {a.rounds} interleaved round(s) x {a.seconds} s per level; proxy on core "
          f"{a.proxy_cpu}, gpu-sim + oha on core {a.load_cpu}; deadline {a.deadline_ms} ms "
          f"(client timeout {a.client_timeout_ms} ms)")
    print(f"fleet: {meta['fleet']}; capacity {meta['capacity_rps']:.1f} req/s (full batches, stalls included)")
    print("medians over rounds (min-max); counts are per run; goodput = 2xx answers within the deadline per second")
    for lv in levels:
        rs = [r for r in rows if r["level_pct"] == lv]
        if not rs:
            continue
        print(f"\n== {lv}% of capacity: {rs[0]['offered_rps']:.0f} req/s offered for {a.seconds} s "
              f"({rs[0]['offered_rps'] * a.seconds:.0f} requests) ==")
        h = (f"{'target':<17}{'goodput/s':>10}{'(min-max)':>11}{'%cap':>6}{'p50 ms':>8}{'p99 ms':>8}{'(min-max)':>11}"
             f"{'p99 all':>8}{'shed':>6}{'shed p99':>9}{'504':>6}{'timeout':>8}{'late':>6}{'other':>6}"
             f"{'wasted':>7}{'cpu':>5}  replica share %")
        print(h)
        print("-" * (len(h) + 16))
        for r in rs:
            share = "/".join(fmt(100 * s) for s in r["replica_share"])
            p99all = r["p99_every_ms"]
            print(f"{r['target']:<17}{fmt(r['goodput_rps']):>10}{spread([r['goodput_min'], r['goodput_max']]):>11}"
                  f"{fmt(r['goodput_pct_cap']):>6}{fmt(r['p50_ms']):>8}{fmt(r['p99_ms']):>8}"
                  f"{spread([r['p99_min'], r['p99_max']]):>11}"
                  f"{(('>' + str(a.client_timeout_ms)) if p99all == math.inf else fmt(p99all)):>8}"
                  f"{fmt(r['shed']):>6}{fmt(r['shed_p99_ms'], '%.1f'):>9}{fmt(r['s504']):>6}{fmt(r['timeouts']):>8}"
                  f"{fmt(r['late']):>6}{fmt((r['other_status'] or 0) + (r['errors'] or 0)):>6}"
                  f"{fmt(r['wasted']):>7}{fmt(r['proxy_busy'], '%.2f'):>5}  {share}")
    print("\np50/p99 = 2xx answers (latency from the scheduled send, oha --latency-correction); p99 all = every request,"
          " a timeout or an error counting as infinite;\nshed = 503/429 answers (fusebox: see rejected reasons below);"
          " timeout = the client gave up at its timeout; late = 2xx after the deadline;\nother = other statuses and"
          " connection errors; wasted = images the fleet ran in the run that gave no goodput (late, or answered to a client that had gone);"
          " cpu = the proxy's CPU, in cores;"
          "\nreplica share = share of the requests each replica received (" +
          ", ".join(f"r{r['replica']}" + (f" {r['speed_factor']:g}x slower" if r['speed_factor'] != 1 else "")
                    + (" stalls" if r['stall'] else "") for r in meta["replicas"]) + ")")
    fb = [r for r in rows if r["fusebox_rejected"]]
    if fb:
        print("\nfusebox rejections (gateway_proxy_rejected_total, median per run):")
        for r in fb:
            print(f"  {r['level_pct']}% {r['target']}: " + ", ".join(f"{k} {v:.0f}" for k, v in r["fusebox_rejected"].items()))
    # the issue's goals, as same-run ratios
    print("\ngoals (same-run medians):")
    fbn = lambda rs: [r for r in rs if r["target"].startswith("fusebox")]
    peers = lambda rs: [r for r in rs if r["target"] in ("nginx", "haproxy")]
    r80 = [r for r in rows if r["level_pct"] == 80]
    if fbn(r80) and peers(r80):
        best = min(fbn(r80), key=lambda r: r["p99_ms"] if r["p99_ms"] is not None else math.inf)
        peer = min(peers(r80), key=lambda r: r["p99_ms"] if r["p99_ms"] is not None else math.inf)
        ratio = best["p99_ms"] / peer["p99_ms"] if best["p99_ms"] and peer["p99_ms"] else None
        print(f"  80%: best fusebox p99 {fmt(best['p99_ms'])} ms ({best['target']}, goodput {fmt(best['goodput_pct_cap'])}% cap)"
              f" vs {peer['target']} {fmt(peer['p99_ms'])} ms (goodput {fmt(peer['goodput_pct_cap'])}% cap):"
              f" {fmt(ratio, '%.2f')}x (goal <= 0.50x, at a goodput no lower than the peer's)")
    r120 = [r for r in rows if r["level_pct"] == 120]
    if fbn(r120):
        best = max(fbn(r120), key=lambda r: r["goodput_rps"] or 0)
        print(f"  120%: best fusebox goodput {fmt(best['goodput_rps'])} req/s = {fmt(best['goodput_pct_cap'])}% of capacity"
              f" ({best['target']}; goal >= 90%); shed {fmt(best['shed'])}, timeouts {fmt(best['timeouts'])},"
              f" 504 {fmt(best['s504'])}")
        for p in peers(r120):
            print(f"        {p['target']}: {fmt(p['goodput_rps'])} req/s = {fmt(p['goodput_pct_cap'])}%; timeouts"
                  f" {fmt(p['timeouts'])}, wasted {fmt(p['wasted'])}")
    for r in rows:
        if r["problems"]:
            print(f"  WARNING {r['level_pct']}% {r['target']}: {'; '.join(r['problems'])}")
        if r["rounds_ok"] < a.rounds:
            print(f"  WARNING {r['level_pct']}% {r['target']}: only {r['rounds_ok']} of {a.rounds} rounds completed")
    foreign = hi([r["foreign_busy_max"] for r in rows])
    if foreign and foreign > 0.15:
        print(f"  NOTE: other processes used up to {foreign:.2f} cores during the runs: rerun on a quiet machine")
    for n, why in meta["skipped"].items():
        print(f"  skipped {n}: {why}")


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=env_int("ROUNDS", 3), help="interleaved rounds (ROUNDS; 3)")
    ap.add_argument("--seconds", type=float, default=env_float("RUN_SECONDS", 8), help="seconds per load level (RUN_SECONDS; 8)")
    ap.add_argument("--levels", default=os.environ.get("LEVELS", "50,80,100,120"),
                    help="load levels in %% of the fleet's capacity (LEVELS; 50,80,100,120)")
    ap.add_argument("--deadline-ms", type=int, default=env_int("DEADLINE_MS", 500),
                    help="the request deadline: fusebox's route timeout, x-request-timeout-ms, goodput's bound (500)")
    ap.add_argument("--client-timeout-ms", type=int, default=env_int("CLIENT_TIMEOUT_MS", 0),
                    help="oha --timeout (default = the deadline: the client gives up then; larger shows how late the late ones are)")
    ap.add_argument("--only", default=os.environ.get("ONLY", ""), help="comma list of targets (ONLY): " + ",".join(ALL_TARGETS))
    ap.add_argument("--out", default=os.environ.get("INFERENCE_COMPARE_OUT", ""),
                    help="JSON results path (default /tmp/inference-compare-DATE.json; a .tsv beside it)")
    ap.add_argument("--replicas", type=int, default=env_int("REPLICAS", 4), help="replicas of the fleet (4)")
    ap.add_argument("--sim-args", default=os.environ.get("SIM_ARGS", ""),
                    help="more gpu-sim arguments (SIM_ARGS), e.g. '--slow 2=3 --stall 3=10s/1s@2s' (its defaults)")
    ap.add_argument("--sim-bin", default=os.environ.get("GPU_SIM_BIN", ""), help="gpu-sim binary (default: built)")
    ap.add_argument("--warmup", type=float, default=env_float("WARMUP_SECONDS", 2),
                    help="warm-up seconds per proxy start, unmeasured (2)")
    ap.add_argument("--warmup-pct", type=float, default=50, help="warm-up load, %% of capacity (50)")
    ap.add_argument("--settle", type=float, default=0.3, help="pause after the fleet drained (0.3 s)")
    ap.add_argument("--max-drain", type=float, default=20, help="longest wait for the fleet's queues to empty (20 s)")
    ap.add_argument("--conns", type=int, default=env_int("CONNS", 0),
                    help="oha connections (default: rate x client timeout x 1.5 + 32, so the client stays open-loop)")
    ap.add_argument("--body-bytes", type=int, default=4096, help="POST body size (4096)")
    ap.add_argument("--peer-upstream-timeout", action="store_true",
                    default=os.environ.get("PEER_UPSTREAM_TIMEOUT", "") not in ("", "0"),
                    help="give nginx (proxy_read_timeout) and HAProxy (timeout server) the deadline as upstream timeout;"
                         " default: their usual 60 s (the client's timeout ends the request)")
    ap.add_argument("--fusebox-breaker", default=os.environ.get("FUSEBOX_BREAKER", "5/2s"),
                    help="the fusebox configs' breaker: CONSECUTIVE_FAILURES/RECOVERY_TIMEOUT (5/2s), or off")
    ap.add_argument("--fusebox-config", action="append", default=[],
                    help="extra fusebox target NAME=TEMPLATE.toml ({port} {admin} {endpoints} {deadline_ms} filled in)")
    ap.add_argument("--proxy-cpu", type=int, default=env_int("PROXY_CPU", 1))
    ap.add_argument("--load-cpu", type=int, default=env_int("LOAD_CPU", 0))
    ap.add_argument("--max-seconds", type=int, default=env_int("MAX_SECONDS", 1200),
                    help="no new round starts after this many seconds (1200)")
    a = ap.parse_args()
    a.levels = [int(x) for x in a.levels.split(",") if x.strip()]
    a.client_timeout_ms = a.client_timeout_ms or a.deadline_ms
    if a.fusebox_breaker == "off":  # no endpoint ever collects this many consecutive failures in a run
        a.breaker_threshold, a.breaker_recovery = 1000000000, "1s"
    else:
        th, _, rec = a.fusebox_breaker.partition("/")
        if not th.isdigit() or not rec:
            log(f"--fusebox-breaker wants N/DURATION (e.g. 5/2s) or off, got {a.fusebox_breaker!r}")
            sys.exit(2)
        a.breaker_threshold, a.breaker_recovery = int(th), rec
    fb = os.environ.get("FUSEBOX_BIN") or os.path.join(ROOT, "target", "release", "fusebox")
    a.fusebox_bin = os.path.abspath(fb)
    a.fusebox_templates = {}
    for spec in a.fusebox_config:
        n, _, path = spec.partition("=")
        if not n or not os.path.exists(path):
            log(f"--fusebox-config wants NAME=EXISTING_FILE, got {spec!r}")
            sys.exit(2)
        a.fusebox_templates[n] = os.path.abspath(path)

    for tool in ("taskset", "oha"):
        if not shutil.which(tool):
            log(f"missing {tool}: run ../shared/bench/setup (or bench/inference-compare, which does)")
            sys.exit(2)
    ncpu = os.cpu_count() or 1
    if ncpu < 2 or a.proxy_cpu == a.load_cpu or max(a.proxy_cpu, a.load_cpu) >= ncpu:
        log(f"needs two distinct cores (proxy {a.proxy_cpu}, load {a.load_cpu}; this machine has {ncpu})")
        sys.exit(2)

    names = ALL_TARGETS + list(a.fusebox_templates)
    if a.only:
        keep = [x.strip() for x in a.only.split(",") if x.strip()]
        unknown = [k for k in keep if k not in names]
        if unknown:
            log(f"unknown targets: {', '.join(unknown)} (known: {', '.join(names)})")
            sys.exit(2)
        names = [n for n in names if n in keep]
    skipped = {}
    targets = []
    for n in names:
        if n.startswith("fusebox") or n in a.fusebox_templates:
            if not os.access(a.fusebox_bin, os.X_OK):
                skipped[n] = f"no fusebox binary at {a.fusebox_bin} (set FUSEBOX_BIN or cargo build --release)"
                continue
            targets.append((n, start_fusebox))
        elif n == "nginx":
            (targets.append((n, start_nginx)) if shutil.which("nginx") else skipped.setdefault(n, "nginx not installed"))
        elif n == "haproxy":
            (targets.append((n, start_haproxy)) if shutil.which("haproxy") else skipped.setdefault(n, "haproxy not installed"))

    try:  # every proxy and oha inherit it: hundreds of connections each way
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    except (ValueError, OSError):
        pass
    os.sched_setaffinity(0, {a.load_cpu})  # keep this script off the proxy's core

    def on_signal(sig, _frame):
        raise SystemExit(f"interrupted by signal {sig}")
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    workdir = tempfile.mkdtemp(prefix="inference-compare-")
    try:
        sim = Sim(a, workdir)
        for n, start in list(targets):
            if start is start_fusebox:
                why = validate_fusebox(workdir, sim, a, n)
                if why:
                    skipped[n] = f"fusebox refused its config: {why}"
                    targets.remove((n, start))
        for n, why in skipped.items():
            log(f"skipping {n}: {why}")
        if not targets:
            log("no targets left to run")
            sys.exit(2)
        per = 0.6 + a.warmup + len(a.levels) * (a.seconds + a.settle + 1.0)
        log(f"fleet capacity {sim.capacity:.1f} req/s; levels {a.levels} % -> "
            + ", ".join(f"{sim.capacity * lv / 100:.0f}" for lv in a.levels) + " req/s")
        log(f"targets: {', '.join(n for n, _ in targets)}; {a.rounds} rounds; about "
            f"{a.rounds * len(targets) * per / 60:.1f} min")
        runs, meta, truncated, t_start = run_rounds(a, targets, workdir, sim, ncpu)
        meta["skipped"] = skipped
    except RuntimeError as e:
        log(f"inference-compare: {e}")
        sys.exit(1)
    finally:
        stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    if not runs:
        log("no results")
        sys.exit(1)
    report(a, [n for n, _ in targets], runs, meta, truncated, t_start)


def run_rounds(a, targets, workdir, sim, ncpu):
    body = os.path.join(workdir, "image.bin")
    with open(body, "wb") as f:
        f.write(b"\xff\xd8" + b"x" * max(a.body_bytes - 2, 0))
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "kernel": platform.release(), "cpus": ncpu,
            "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
            "capacity_rps": sim.capacity, "model": sim.model, "replicas": sim.replicas,
            "sim_argv": [os.path.relpath(sim.argv[0], ROOT)] + sim.argv[1:], "versions": {},
            "fleet": f"{len(sim.replicas)} replicas, base {sim.model['base_ms']:g} ms + {sim.model['per_image_ms']:g} ms/image,"
                     f" max batch {sim.model['max_batch']}, knee {sim.model['knee']} (x{sim.model['knee_factor']:g}); "
                     + ", ".join(f"r{r['replica']} {r['capacity_rps']:.0f}" for r in sim.replicas) + " req/s"}
    for name, argv in (("nginx", ["nginx", "-v"]), ("haproxy", ["haproxy", "-v"]), ("oha", ["oha", "--version"]),
                       ("fusebox", [a.fusebox_bin, "--version"])):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            meta["versions"][name] = ((r.stdout + r.stderr).strip().splitlines() or ["?"])[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
    c0 = core_times()
    time.sleep(1)
    c1 = core_times()
    meta["idle_busy"] = {c: round(core_share(c0, c1, c)[0], 3) for c in (a.load_cpu, a.proxy_cpu)}
    if max(meta["idle_busy"].values()) > 0.10:
        log(f"warning: the machine is not idle before the run (busy share per core {meta['idle_busy']})")
    runs, t_start, truncated = [], time.time(), False
    failed = set()
    for rnd in range(a.rounds):
        if rnd and time.time() - t_start > a.max_seconds:
            log(f"time budget of {a.max_seconds} s used: stopping after {rnd} rounds")
            truncated = True
            break
        k = rnd % len(targets)
        for name, start in targets[k:] + targets[:k]:
            if name in failed:
                continue
            try:
                recs = measure(name, start, a, workdir, sim, body)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                log(f"round {rnd + 1} {name}: FAILED, skipped from now on: {e}")
                failed.add(name)
                meta.setdefault("failed", {})[name] = str(e)[:600]
                continue
            for rec in recs:
                rec["round"] = rnd + 1
                runs.append(rec)
                log(f"round {rnd + 1} {name:<16} {rec['level_pct']:>3}%: goodput {rec['goodput_rps']:6.0f}/s "
                    f"({rec['goodput_pct_cap']:3.0f}% cap), p50 {fmt(rec['p50_ms'])} p99 {fmt(rec['p99_ms'])} ms, shed "
                    f"{rec['shed']}, timeouts {rec['timeouts']}, 504 {rec['s504']}, wasted {rec['wasted']}, "
                    f"share {'/'.join(fmt(100 * s) for s in rec['replica_share'])}"
                    + (f"; {'; '.join(rec['problems'])}" if rec["problems"] else ""))
            if not sim.proc.alive():
                raise RuntimeError("gpu-sim exited")
    return runs, meta, truncated, t_start


def report(a, names, runs, meta, truncated, t_start):
    rows = summarize(runs, names, a.levels)
    meta["elapsed_s"] = round(time.time() - t_start, 1)
    print_tables(rows, a, meta, a.levels)
    out = a.out or f"/tmp/inference-compare-{time.strftime('%Y%m%d-%H%M%S')}.json"
    settings = {"rounds": a.rounds, "seconds": a.seconds, "levels": a.levels, "deadline_ms": a.deadline_ms,
                "client_timeout_ms": a.client_timeout_ms, "warmup_s": a.warmup, "warmup_pct": a.warmup_pct,
                "body_bytes": a.body_bytes, "peer_upstream_timeout": a.peer_upstream_timeout,
                "fusebox_breaker": a.fusebox_breaker,
                "proxy_cpu": a.proxy_cpu, "load_cpu": a.load_cpu, "truncated": truncated}
    clean = lambda v: None if v == math.inf else v  # JSON has no infinity: null = "more than the client timeout"
    jrows = [{k: clean(v) for k, v in r.items()} for r in rows]
    jruns = [{k: clean(v) for k, v in r.items()} for r in runs]
    with open(out, "w") as f:
        json.dump(dict(settings, meta=meta, rows=jrows, runs=jruns), f, indent=1)
    tsv = os.path.splitext(out)[0] + ".tsv"
    keys = [k for k in rows[0] if k not in ("problems",)]
    with open(tsv, "w") as f:
        f.write("\t".join(keys) + "\n")
        for r in rows:
            cells = []
            for k in keys:
                v = r[k]
                if v is None:
                    cells.append("")
                elif v == math.inf:
                    cells.append("inf")
                elif isinstance(v, float):
                    cells.append(f"{v:.4g}")
                elif isinstance(v, (list, dict)):
                    cells.append(json.dumps(v, separators=(",", ":")))
                else:
                    cells.append(str(v))
            f.write("\t".join(cells) + "\n")
    print(f"\nresults: {out} (and {os.path.basename(tsv)} beside it); took {meta['elapsed_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
