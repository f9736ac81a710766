#!/usr/bin/env bash
# The caller on a Unix socket against the caller on loopback TCP, fusebox beside nginx.
# A sidecar's application sits in the same pod, so it can reach the proxy through a
# socket file and skip the TCP stack on the first hop (the upstream hop stays TCP).
#
#   bench/unix-socket.sh [FUSEBOX_BINARY] [ROUNDS]
#   FUSEBOX_BINARY default target/release/fusebox; ROUNDS default 3
#   SECONDS_PER_RUN  throughput run length (default 4)
#
# Per target and transport: small-GET throughput with 64 connections (oha -z), the
# proxy's CPU seconds per 100k requests (utime+stime of its process, read from /proc),
# then p50 / p99 / p99.9 at 2,000 req/s for 5 s. Proxy pinned to core 1, the upstream
# (nginx, 100-byte answer) and oha to core 0. Medians over the rounds; rounds are
# interleaved (nginx tcp, nginx unix, fusebox tcp, fusebox unix, ...).
# Needs nginx, oha and python3 (../shared/bench/setup installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(realpath "${1:-target/release/fusebox}")"
rounds="${2:-3}"
secs="${SECONDS_PER_RUN:-4}"
work="$(mktemp -d)"
up_port=18301; fb_port=18380; ng_port=18390
fb_sock="$work/fusebox.sock"; ng_sock="$work/nginx.sock"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

mkdir -p "$work/up" "$work/ng"
temp_paths() {
  for t in client_body proxy fastcgi uwsgi scgi; do printf '  %s_temp_path %s;\n' "$t" "$1"; done
}
cat > "$work/up.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/up/nginx.pid;
error_log $work/up/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
$(temp_paths "$work/up")
  keepalive_requests 10000000;
  server {
    listen 127.0.0.1:$up_port;
    location / { default_type text/plain; return 200 '$(printf 'x%.0s' $(seq 100))'; }
  }
}
EOF
cat > "$work/ng.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/ng/nginx.pid;
error_log $work/ng/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
$(temp_paths "$work/ng")
  keepalive_requests 10000000;
  upstream up { server 127.0.0.1:$up_port; keepalive 128; }
  server {
    listen 127.0.0.1:$ng_port;
    listen unix:$ng_sock;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
cat > "$work/fb-tcp.toml" <<EOF
[listener]
address = "127.0.0.1:$fb_port"
[admin]
address = "127.0.0.1:19391"
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
sed "s|^address = \"127.0.0.1:$fb_port\"|address = \"unix:$fb_sock\"|" "$work/fb-tcp.toml" > "$work/fb-unix.toml"

taskset -c 0 nginx -p "$work/up" -c "$work/up.conf" -e "$work/up/error.log" &
pids+=($!)

# start NAME: starts the proxy of NAME (nginx | fusebox-tcp | fusebox-unix) on core 1.
start() {
  case "$1" in
    nginx) taskset -c 1 nginx -p "$work/ng" -c "$work/ng.conf" -e "$work/ng/error.log" & ;;
    fusebox-tcp) taskset -c 1 "$bin" run --config "$work/fb-tcp.toml" >"$work/fb.log" 2>&1 & ;;
    fusebox-unix) taskset -c 1 "$bin" run --config "$work/fb-unix.toml" >"$work/fb.log" 2>&1 & ;;
  esac
  proxy_pid=$!
}
stop() { kill "$proxy_pid" 2>/dev/null || true; wait "$proxy_pid" 2>/dev/null || true; rm -f "$fb_sock"; }
# cpu_pid PID: the CPU ticks of PID and its children threads (nginx: its worker).
cpu_ticks() {
  local total=0 p
  for p in "$proxy_pid" $(pgrep -P "$proxy_pid" || true); do
    total=$(( total + $(awk '{print $14 + $15}' "/proc/$p/stat") ))
  done
  echo "$total"
}
# oha_args TRANSPORT PORT SOCK: the target arguments for oha.
target() {
  if [ "$1" = unix ]; then echo "--unix-socket $3 http://localhost/small"; else echo "http://127.0.0.1:$2/small"; fi
}
wait_ready() {
  for _ in $(seq 200); do
    # shellcheck disable=SC2046
    oha -n 1 --no-tui $(target "$@") 2>/dev/null | grep -q "\[200\]" && return 0
    sleep 0.05
  done
  echo "proxy did not become ready" >&2; cat "$work/fb.log" >&2 || true; exit 1
}
hz=$(getconf CLK_TCK)
results="$work/results.tsv"
for r in $(seq "$rounds"); do
  for t in nginx-tcp nginx-unix fusebox-tcp fusebox-unix; do
    name="${t%-*}"; transport="${t##*-}"
    if [ "$name" = nginx ]; then start nginx; port=$ng_port; sock=$ng_sock
    else start "fusebox-$transport"; port=$fb_port; sock=$fb_sock; fi
    wait_ready "$transport" "$port" "$sock"
    # shellcheck disable=SC2046
    taskset -c 0 oha -z 2s -c 64 --no-tui --output-format quiet $(target "$transport" "$port" "$sock") >/dev/null
    c0=$(cpu_ticks)
    # shellcheck disable=SC2046
    taskset -c 0 oha -z "${secs}s" -c 64 --no-tui --output-format json $(target "$transport" "$port" "$sock") >"$work/thr.json"
    c1=$(cpu_ticks)
    # shellcheck disable=SC2046
    taskset -c 0 oha -z 5s -q 2000 -c 16 --latency-correction --no-tui --output-format json \
      $(target "$transport" "$port" "$sock") >"$work/lat.json"
    python3 - "$work/thr.json" "$work/lat.json" "$t" "$r" $(( c1 - c0 )) "$hz" >>"$results" <<'PY'
import json, sys
thr, lat = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
name, rnd, ticks, hz = sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
ok = sum(v for k, v in thr["statusCodeDistribution"].items() if k == "200")
cpu = ticks / hz / ok * 100000 if ok else float("nan")
p = lat["latencyPercentiles"]
print(f"{name}\t{rnd}\t{thr['summary']['requestsPerSec']:.0f}\t{cpu:.3f}\t{p['p50']*1000:.3f}\t{p['p99']*1000:.3f}\t{p['p99.9']*1000:.3f}")
PY
    stop
  done
done
python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = line.split("\t")
    rows.setdefault(f[0], []).append([float(x) for x in f[2:]])
base = {k: statistics.median(r[0] for r in v) for k, v in rows.items()}
print("target\treq/s\tCPU s/100k\tp50 ms\tp99 ms\tp99.9 ms  (medians of %d rounds)" % len(next(iter(rows.values()))))
for k, v in rows.items():
    med = [statistics.median(r[i] for r in v) for i in range(5)]
    print(f"{k}\t{med[0]:.0f}\t{med[1]:.2f}\t{med[2]:.3f}\t{med[3]:.3f}\t{med[4]:.3f}")
PY
