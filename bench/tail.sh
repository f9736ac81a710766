#!/usr/bin/env bash
# Latency distributions of two or more fusebox builds (the tail, not the median):
# open-loop small GETs at 2,000 req/s and 256 KiB POSTs (4 KB answers) at 200 req/s, each build a
# fresh process pinned to core 1, nginx as the upstream and oha on core 0, builds
# interleaved per round. Prints percentiles up to p99.99 and a log-scale histogram per
# build and workload (all rounds pooled).
#
#   bench/tail.sh [ROUNDS] BINARY...        e.g. bench/tail.sh 3 /tmp/fusebox-old target/release/fusebox
#   SECONDS_PER_RUN  length of each run (default 10)
# Needs nginx, oha and python3 (../shared/bench/setup installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="$1"; shift
secs="${SECONDS_PER_RUN:-10}"
work="$(mktemp -d)"
up_port=18401; px_port=18480
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

mkdir -p "$work/up"
head -c 262144 /dev/urandom > "$work/image.bin"
cat > "$work/up.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/up/nginx.pid;
error_log $work/up/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/up; proxy_temp_path $work/up; fastcgi_temp_path $work/up;
  uwsgi_temp_path $work/up; scgi_temp_path $work/up;
  keepalive_requests 10000000;
  client_max_body_size 1m;
  client_body_buffer_size 512k;
  server {
    listen 127.0.0.1:$up_port;
    location /small { default_type text/plain; return 200 '$(printf 'x%.0s' $(seq 100))'; }
    location /vision { default_type application/json; return 200 '$(printf 'y%.0s' $(seq 4000))'; }
  }
}
EOF
cat > "$work/fb.toml" <<EOF
[listener]
address = "127.0.0.1:$px_port"
[admin]
address = "127.0.0.1:19481"
[logging]
level = "warn"
access_log = false
[upstreams.up]
endpoints = ["127.0.0.1:$up_port"]
[[routes]]
name = "all"
path_prefix = "/"
upstream = "up"
EOF
taskset -c 0 nginx -p "$work/up" -c "$work/up.conf" -e "$work/up/error.log" &
pids+=($!)

for r in $(seq "$rounds"); do
  i=0
  for bin in "$@"; do
    i=$((i + 1))
    taskset -c 1 "$bin" run --config "$work/fb.toml" >"$work/fb.log" 2>&1 &
    pid=$!
    for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$px_port/small" && break; sleep 0.05; done
    taskset -c 0 oha -z 2s -c 32 --no-tui --output-format quiet "http://127.0.0.1:$px_port/small" >/dev/null
    taskset -c 0 oha -z "${secs}s" -q 2000 -c 32 --latency-correction --no-tui --output-format json \
      "http://127.0.0.1:$px_port/small" >"$work/small-$i-$r.json"
    taskset -c 0 oha -z "${secs}s" -q 200 -c 16 --latency-correction --no-tui --output-format json \
      -m POST -D "$work/image.bin" -T application/octet-stream \
      "http://127.0.0.1:$px_port/vision" >"$work/vision-$i-$r.json"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done

python3 - "$work" "$rounds" "$@" <<'PY'
import glob, json, math, sys
work, rounds, bins = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
edges = [0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 10, 20, 1e9]
for kind in ("small", "vision"):
    print(f"== {kind}: {'2,000' if kind == 'small' else '200'} req/s, {rounds} round(s) pooled")
    hdr = "build".ljust(34) + "".join(p.rjust(9) for p in ("n", "p50", "p90", "p99", "p99.9", "p99.99", "max"))
    print(hdr + "   (ms)")
    hists = []
    for i, b in enumerate(bins, 1):
        lat = []
        for f in glob.glob(f"{work}/{kind}-{i}-*.json"):
            d = json.load(open(f))
            # oha's JSON keeps percentiles per run; pool runs by averaging percentiles and
            # rebuild a histogram from its bucketed distribution.
            lat.append(d)
        def med(key):
            vals = sorted(d["latencyPercentiles"][key] * 1000 for d in lat if d["latencyPercentiles"].get(key) is not None)
            return vals[len(vals) // 2] if vals else float("nan")
        n = sum(sum(d["statusCodeDistribution"].values()) for d in lat)
        mx = max(d["summary"]["slowest"] * 1000 for d in lat)
        print(b[-32:].ljust(34) + f"{n:9d}" + "".join(f"{med(k):9.3f}" for k in ("p50", "p90", "p99", "p99.9", "p99.99")) + f"{mx:9.3f}")
        counts = [0] * len(edges)
        for d in lat:
            for k, v in d.get("responseTimeHistogram", {}).items():
                ms = float(k) * 1000
                j = next(j for j, e in enumerate(edges) if ms <= e)
                counts[j] += v
        hists.append((b, counts))
    print("histogram (share of answers at or below each bound, ms; oha's buckets):")
    print("build".ljust(34) + "".join(f"{'<=' + format(e, 'g') if e < 1e9 else '>20':>9}" for e in edges))
    for b, c in hists:
        t = sum(c) or 1
        print(b[-32:].ljust(34) + "".join(f"{100 * x / t:8.2f}%" for x in c))
    print()
PY
