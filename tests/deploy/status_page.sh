#!/usr/bin/env bash
# The admin status page (GET / on the admin listener, src/admin_status.html) in a real
# browser: starts the demo stack on loopback (tests/deploy/lib.sh) plus an `ocr` upstream
# whose endpoint starts with nothing listening, forces the breaker of one endpoint open
# through the admin API, loads http://127.0.0.1:ADMIN/ in headless Chromium, and checks
# that the rendered DOM shows that endpoint with data-state="open" and the text "open"
# while the other endpoints are not open. Then resets that breaker while the page is open
# and checks that the page lists the change (open -> closed) under "Recent state changes".
# Then the charts: ocr's breaker opens on connect failures, its upstream starts, the
# breaker half-opens after its 1 s recovery timeout and closes on a probe; once
# /stats/timeline holds the open and the closed seconds, the page is rendered again and
# the check counts the points each chart drew (<path data-points>) and the breaker
# timeline's bands (<rect data-state>: closed, then open, then closed), and the
# route-level breakers in the table. The screenshot of that page is kept as the CI
# artifact (default target/ci-artifacts/status-page.png; the path is printed).
#
# Usage: tests/deploy/status_page.sh [--screenshot FILE.png]
#   FUSEBOX_BIN picks the binary (default target/release/fusebox, else target/debug);
#   CHROMIUM the browser (default: chromium); KEEP_TMP=1 keeps logs and the dumped DOM.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/deploy/lib.sh
trap deploy_cleanup EXIT

SHOT=""
while (($#)); do
    case "$1" in
    --screenshot) SHOT="$2"; shift 2 ;;
    *) echo "usage: $0 [--screenshot FILE.png]" >&2; exit 2 ;;
    esac
done
CHROMIUM="${CHROMIUM:-chromium}"
need curl python3 "$CHROMIUM"
find_fusebox

# ocr: one endpoint, nothing listening there yet (connect refused). A short recovery
# timeout so its breaker closes again within the test; the route ocr_batch has a
# breaker table of its own (shown under "routes" by /circuit_breakers).
OCR_PORT="$(free_port)"
STACK_EXTRA_TOML="$(cat <<EOF
# added by tests/deploy/status_page.sh
[upstreams.ocr]
endpoints = ["127.0.0.1:$OCR_PORT"]

[upstreams.ocr.timeouts]
connect = "300ms"

[upstreams.ocr.retry]
max_retries = 0

[upstreams.ocr.circuit_breaker]
failure_threshold = 3
recovery_timeout = "1s"
success_threshold = 1
jitter = false

[[routes]]
name = "ocr"
path_prefix = "/ocr"
upstream = "ocr"
timeout = "2s"

[[routes]]
name = "ocr_batch"
path_prefix = "/ocr/batch"
upstream = "ocr"
timeout = "2s"

[routes.circuit_breaker]
failure_threshold = 50
EOF
)"
start_stack
ADMIN="http://127.0.0.1:$ADMIN_PORT"
OCR_EP="127.0.0.1:$OCR_PORT"
echo "fusebox admin on $ADMIN; forcing yolo's endpoint 127.0.0.1:$UP_B_PORT open"

# The page is what the binary serves at GET /.
ctype="$(curl -s -m 5 -o "$DEPLOY_TMP/served.html" -w '%{http_code} %{content_type}' "$ADMIN/")"
case "$ctype" in
"200 text/html"*) ;;
*) echo "GET $ADMIN/ answered '$ctype', expected 200 text/html" >&2; exit 1 ;;
esac
cmp -s "$DEPLOY_TMP/served.html" src/admin_status.html \
    || { echo "GET / does not serve src/admin_status.html (stale binary?)" >&2; exit 1; }
echo "  ok   GET / serves src/admin_status.html as text/html"

admin_post "/circuit_breakers/yolo/127.0.0.1:$UP_B_PORT/open" >/dev/null
curl -s -m 5 "$ADMIN/circuit_breakers" | python3 -c '
import json, sys
ep = sys.argv[1]
state = json.load(sys.stdin)["yolo"]["endpoints"][ep]["state"]
assert state == "open", f"admin API shows {ep} {state}"
print(f"  ok   /circuit_breakers shows yolo {ep} open")' "127.0.0.1:$UP_B_PORT"

# A little traffic so the rates have something to show.
for _ in $(seq 20); do
    curl -s -o /dev/null -m 5 "http://127.0.0.1:$DATA_PORT/detect" || true
done

BUDGET_MS=5000 # virtual time: the page's 2 s refresh timer fires without real waiting
chrome() {
    # Bounded: a hung browser must not hang CI. Flags keep it off the network and quiet.
    timeout 60 "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
        --disable-quic --no-first-run --disable-background-networking --disable-component-update \
        --disable-sync --disable-extensions --user-data-dir="$(mktemp -d "$DEPLOY_TMP/chrome.XXXXXX")" \
        --virtual-time-budget="$BUDGET_MS" "$@" 2>>"$DEPLOY_TMP/chromium.log"
}

chrome --dump-dom "$ADMIN/" >"$DEPLOY_TMP/dom.html"
python3 tests/deploy/checks.py dom "$DEPLOY_TMP/dom.html" yolo "127.0.0.1:$UP_B_PORT" open

SHOT="${SHOT:-target/ci-artifacts/status-page.png}"
mkdir -p "$(dirname "$SHOT")"

# A change while the page is open: once the browser holds a connection to the admin port
# (the page is refreshing), reset the breaker. A long virtual-time budget keeps the page
# refreshing (a few seconds of real time) until it has seen the change.
if command -v ss >/dev/null; then
    (
        deadline=$((SECONDS + 30))
        until ss -Htn state established "( dport = :$ADMIN_PORT )" | grep -q .; do
            ((SECONDS < deadline)) || { echo "the browser never connected to $ADMIN" >&2; exit 1; }
            sleep 0.05
        done
        sleep 0.3
        admin_post "/circuit_breakers/yolo/127.0.0.1:$UP_B_PORT/reset" >/dev/null
    ) &
    DEPLOY_PIDS+=($!)
    resetter=$!
    BUDGET_MS=600000 chrome --dump-dom "$ADMIN/" >"$DEPLOY_TMP/dom2.html"
    wait "$resetter"
    python3 tests/deploy/checks.py change "$DEPLOY_TMP/dom2.html" yolo "127.0.0.1:$UP_B_PORT" open closed
else
    echo "  skip the state-change check: no ss (iproute2) to see when the page is open"
fi

# The charts. ocr's breaker opens: 3 connect failures (502), then fusebox answers 503.
ocr_state() {
    curl -s -m 5 "$ADMIN/circuit_breakers" \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["ocr"]["endpoints"][sys.argv[1]]["state"])' "$OCR_EP"
}
# wait_state STATE SECONDS [URL]: poll ocr's breaker (sending a request to URL each time).
wait_state() {
    local want="$1" deadline=$((SECONDS + $2)) got=""
    while ((SECONDS < deadline)); do
        if [[ -n "${3:-}" ]]; then curl -s -o /dev/null -m 5 "$3" || true; fi
        got="$(ocr_state)"
        [[ "$got" == "$want" ]] && return 0
        sleep 0.1
    done
    echo "ocr $OCR_EP never reached $want (last: $got)" >&2
    return 1
}
for _ in 1 2 3 4 5; do curl -s -o /dev/null -m 5 "http://127.0.0.1:$DATA_PORT/ocr/read" || true; done
curl -s -o /dev/null -m 5 "http://127.0.0.1:$DATA_PORT/ocr/batch/1" || true
[[ "$(ocr_state)" == open ]] || { echo "ocr's breaker did not open: $(ocr_state)" >&2; exit 1; }
echo "  ok   ocr $OCR_EP opened after connect failures"
"$FUSEBOX_BIN" demo-upstream --listen "$OCR_EP" --name ocr >"$DEPLOY_TMP/ocr.log" 2>&1 &
DEPLOY_PIDS+=($!)
wait_http "http://$OCR_EP/health" 15
wait_state half_open 10
wait_state closed 10 "http://127.0.0.1:$DATA_PORT/ocr/read"
echo "  ok   ocr $OCR_EP half-opened after 1 s and closed on a probe"
for _ in $(seq 10); do
    curl -s -o /dev/null -m 5 "http://127.0.0.1:$DATA_PORT/ocr/read" || true
    curl -s -o /dev/null -m 5 "http://127.0.0.1:$DATA_PORT/ocr/batch/1" || true
    curl -s -o /dev/null -m 5 "http://127.0.0.1:$DATA_PORT/detect" || true
done
# Until the timeline holds a closed second after the open ones (the sampler runs each second).
python3 tests/deploy/checks.py timeline "$ADMIN" ocr "$OCR_EP"

chrome --dump-dom "$ADMIN/" >"$DEPLOY_TMP/dom3.html"
python3 tests/deploy/checks.py charts "$DEPLOY_TMP/dom3.html" ocr "$OCR_EP" ocr_batch
chrome --window-size=1400,2400 --hide-scrollbars --screenshot="$SHOT" "$ADMIN/" >/dev/null
[[ -s "$SHOT" ]] || { echo "no screenshot written to $SHOT" >&2; exit 1; }
echo "  ok   screenshot (CI artifact): $SHOT"
echo "status page check: passed"
