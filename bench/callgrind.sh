#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: repeatable for the
# same binary and inputs whatever else the machine is doing (unlike CPU seconds on a
# shared VM), so two builds can be compared on a busy machine. Prints Ir per request
# and the top functions by inclusive and self cost.
#
#   bench/callgrind.sh [BINARY] [REQUESTS] [CONFIG]
#   BINARY   default target/release/fusebox
#   REQUESTS default 20000 small GETs (100-byte answer) over 8 keep-alive connections
#   CONFIG   default bench/fusebox-bench.toml (access log off)
#   OHA_ARGS more oha arguments, e.g. a 256 KiB POST: OHA_ARGS='-m POST -D /tmp/256k.bin'
#   VG_ARGS  more valgrind arguments, e.g. --dump-instr=yes to see costs per instruction
#   PEER_CMD instead of fusebox: a command with {port} and {upstream}, e.g. the hyper
#            floor: PEER_CMD='target/hyper-floor/release/hyper-floor 127.0.0.1:{port} {upstream}' 
# Needs valgrind, nginx (the upstream) and oha (../shared/bench/setup installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release/fusebox}"
n="${2:-20000}"
cfg="${3:-bench/fusebox-bench.toml}"
work="$(mktemp -d)"
up_port=18101; px_port=18180; admin_port=19981
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

mkdir -p "$work/nginx"
cat > "$work/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx;
  proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx;
  scgi_temp_path $work/nginx;
  server {
    listen 127.0.0.1:$up_port;
    location / { default_type text/plain; return 200 '$(printf 'x%.0s' $(seq 100))'; }
  }
}
EOF
nginx -p "$work/nginx" -c "$work/nginx.conf" -e "$work/nginx/error.log" &
pids+=($!)

if [ -n "${PEER_CMD:-}" ]; then
  cmd="${PEER_CMD//\{port\}/$px_port}"; cmd="${cmd//\{upstream\}/127.0.0.1:$up_port}"
  # shellcheck disable=SC2086
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" --instr-atstart=no $cmd \
    >"$work/fusebox.log" 2>&1 &
else
  BENCH_LISTEN="127.0.0.1:$px_port" BENCH_UPSTREAM="127.0.0.1:$up_port" BENCH_ADMIN_PORT="$admin_port" \
  FUSEBOX_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
    --instr-atstart=no ${VG_ARGS:-} "$bin" run --config "$cfg" >"$work/fusebox.log" 2>&1 &
fi
pids+=($!)
vg=$!
for _ in $(seq 600); do
  curl -s -o /dev/null "http://127.0.0.1:$px_port/small" && break
  sleep 0.1
done
# Warm: pools filled, first-use paths taken.
# shellcheck disable=SC2086
oha -n 2000 -c 8 --no-tui ${OHA_ARGS:-} "http://127.0.0.1:$px_port/small" >/dev/null
callgrind_control -i on "$vg" >/dev/null
# shellcheck disable=SC2086
oha -n "$n" -c 8 --no-tui ${OHA_ARGS:-} "http://127.0.0.1:$px_port/small" >"$work/oha.txt"
callgrind_control -i off "$vg" >/dev/null
callgrind_control -d "$vg" >/dev/null
grep -E "Success rate|Requests/sec" "$work/oha.txt" || true

out="$(ls "$work"/cg.out* | sort | tail -1)"
cp "$out" "${CG_KEEP:-/tmp/cg-last.out}"
total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !t {gsub(",","",$1); t=$1} END {print t}')
echo "instructions per request: $(( total / n ))  (total $total over $n requests)"
echo "--- top functions (inclusive) ---"
callgrind_annotate --inclusive=yes "$out" 2>/dev/null | sed -n '/^-\+$/,$p' | grep -v "^-" | head -45 || true
echo "--- top functions (self) ---"
callgrind_annotate "$out" 2>/dev/null | sed -n '/^-\+$/,$p' | grep -v "^-" | head -40 || true
