#!/usr/bin/env bash
# HTTP/2 upstream connections: h2load through fusebox to an h2c upstream that allows
# few streams per connection and answers after a delay, at two stream concurrencies.
# With one connection per endpoint fusebox is capped at the upstream's stream limit;
# with connections added as the limit fills it is not.
#
#   bench/h2-streams.sh [FUSEBOX_BIN...]
#
# Each binary given is measured in turn (default: target/release/fusebox), e.g.
#   bench/h2-streams.sh /tmp/fusebox-before target/release/fusebox
# The upstream is `fusebox demo-upstream` of the last binary (it needs
# --h2-max-streams). Knobs (environment): STREAMS (upstream's
# SETTINGS_MAX_CONCURRENT_STREAMS, 16), DELAY_MS (10), DURATION (seconds per run, 8),
# WARMUP (2), LOADS ("64 256": concurrent streams, as 4 and 8 h2load connections),
# MAX_CONNS (max_connections_per_host, 100). fusebox is pinned to core 1, the
# upstream and h2load to core 0. Columns: h2load's req/s and time per request,
# failed+errored requests, upstream connections open at the end, fusebox's CPU (% of
# one core over warm-up and run). Everything is on 127.0.0.1; every process started
# is stopped by its PID on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=(target/release/fusebox)
STREAMS=${STREAMS:-16}
DELAY_MS=${DELAY_MS:-10}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
LOADS=${LOADS:-"64 256"}
MAX_CONNS=${MAX_CONNS:-100}
UP_PORT=${UP_PORT:-18111}
FB_PORT=${FB_PORT:-18181}
ADMIN_PORT=${ADMIN_PORT:-19981}
UPSTREAM_BIN=${BINS[${#BINS[@]}-1]}

command -v h2load >/dev/null || { echo "h2load missing: apt-get install -y nghttp2-client" >&2; exit 1; }
for b in "${BINS[@]}"; do [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 1; }; done

TMP=$(mktemp -d)
UP_PID=
FB_PID=
cleanup() {
    for p in $FB_PID $UP_PID; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

wait_port() { # bounded: 10 s
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on port $1" >&2
    exit 1
}

taskset -c 0 "$UPSTREAM_BIN" demo-upstream --listen "127.0.0.1:$UP_PORT" --name h2 \
    --delay-ms "$DELAY_MS" --h2-max-streams "$STREAMS" >"$TMP/upstream.log" 2>&1 &
UP_PID=$!
wait_port "$UP_PORT"

cat >"$TMP/fusebox.toml" <<EOF
[service]
name = "bench"

[listener]
address = "127.0.0.1:$FB_PORT"

[admin]
address = "127.0.0.1:$ADMIN_PORT"

[logging]
level = "warn"
access_log = false

[upstreams.up]
endpoints = ["127.0.0.1:$UP_PORT"]
protocol = "h2c"

[upstreams.up.pool]
max_connections_per_host = $MAX_CONNS

# A breaker that does not open: with one connection per endpoint (before), the streams
# hyper sends ahead of the upstream's first SETTINGS frame past its limit are refused
# (a few UPSTREAM_RESET at the start of a run at 256 streams), which with the default
# threshold opens the breaker and turns the run into fast 503s. Counted under "failed".
[upstreams.up.circuit_breaker]
failure_threshold = 1000000

[[routes]]
name = "all"
path_prefix = "/"
upstream = "up"
EOF

echo "upstream: h2c, $STREAMS streams per connection, ${DELAY_MS} ms per request; runs of ${DURATION}s after ${WARMUP}s warm-up"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
printf '%-32s %7s %9s %8s %8s %8s %9s %7s %8s\n' binary streams req/s mean_ms sd_ms max_ms failed upconns fb_cpu%
TICK=$(getconf CLK_TCK)
for bin in "${BINS[@]}"; do
    for load in $LOADS; do
        conns=$((load <= 64 ? 4 : 8))
        taskset -c 1 "$bin" run --config "$TMP/fusebox.toml" >"$TMP/fusebox.log" 2>&1 &
        FB_PID=$!
        wait_port "$FB_PORT"
        t0=$(cpu_ticks "$FB_PID")
        out=$(taskset -c 0 h2load -D "$DURATION" --warm-up-time "$WARMUP" -c "$conns" \
            -m $((load / conns)) "http://127.0.0.1:$FB_PORT/detect" 2>&1)
        cpu=$(( ($(cpu_ticks "$FB_PID") - t0) * 100 * 100 / TICK / (DURATION + WARMUP) ))
        rps=$(sed -n 's/.*finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
        # "time for request:  min  max  mean  sd  +/- sd"
        read -r _ _ _ tmin tmax tmean tsd _ <<<"$(grep 'time for request:' <<<"$out")"
        failed=$(sed -n 's/.* succeeded, \([0-9]*\) failed, \([0-9]*\) errored.*/\1+\2/p' <<<"$out")
        upconns=$(exec 3<>"/dev/tcp/127.0.0.1/$ADMIN_PORT"; printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
            awk '/^gateway_upstream_connections\{/ {s += $2} END {print s + 0}' <&3)
        ms() { awk -v v="$1" 'BEGIN { if (v ~ /ms$/) { sub(/ms$/, "", v); print v } else if (v ~ /us$/) { sub(/us$/, "", v); print v / 1000 } else { sub(/s$/, "", v); print v * 1000 } }'; }
        printf '%-32s %7s %9s %8s %8s %8s %9s %7s %8s\n' "$bin" "$load" "$rps" \
            "$(ms "$tmean")" "$(ms "$tsd")" "$(ms "$tmax")" "$failed" "$upconns" \
            "$((cpu / 100)).$(printf '%02d' $((cpu % 100)))"
        [ -n "$rps" ] || echo "$out" >&2
        kill "$FB_PID"
        wait "$FB_PID" 2>/dev/null || true
        FB_PID=
    done
done
