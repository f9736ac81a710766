#!/usr/bin/env bash
# The admin status page (GET / on the admin listener, src/admin_status.html) in a real
# browser: starts the demo stack on loopback (tests/deploy/lib.sh), forces the breaker of
# one endpoint open through the admin API, loads http://127.0.0.1:ADMIN/ in headless
# Chromium, and checks that the rendered DOM shows that endpoint with data-state="open"
# and the text "open" while the other endpoints are not open, and takes a screenshot. Then
# resets that breaker while the page is open and checks that the page lists the change
# (open -> closed) under "Recent state changes".
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

start_stack
ADMIN="http://127.0.0.1:$ADMIN_PORT"
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

SHOT="${SHOT:-$DEPLOY_TMP/status_page.png}"
chrome --window-size=1400,1000 --hide-scrollbars --screenshot="$SHOT" "$ADMIN/" >/dev/null
[[ -s "$SHOT" ]] || { echo "no screenshot written to $SHOT" >&2; exit 1; }
echo "  ok   screenshot $SHOT"

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
echo "status page check: passed"
