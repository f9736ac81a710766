# Shared by tests/deploy/check.sh and tests/deploy/status_page.sh (sourced, not run).
# Starts the compose demo's processes on loopback: the two demo upstreams and fusebox
# with docker/fusebox.toml, its addresses rewritten to free 127.0.0.1 ports. Every child
# is recorded in DEPLOY_PIDS and ended by deploy_cleanup (set as the EXIT trap).

DEPLOY_PIDS=()
DEPLOY_TMP="$(mktemp -d "${TMPDIR:-/tmp}/fusebox-deploy.XXXXXX")"
ADMIN_TOKEN="deploy-check-token"

deploy_cleanup() {
    local pid
    for pid in "${DEPLOY_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${DEPLOY_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n "${KEEP_TMP:-}" ]]; then
        echo "kept $DEPLOY_TMP" >&2
    else
        rm -rf "$DEPLOY_TMP"
    fi
}

# The fusebox binary: $FUSEBOX_BIN, else target/release/fusebox, else target/debug/fusebox.
find_fusebox() {
    if [[ -n "${FUSEBOX_BIN:-}" ]]; then
        [[ -x "$FUSEBOX_BIN" ]] || { echo "FUSEBOX_BIN=$FUSEBOX_BIN is not an executable" >&2; return 1; }
    elif [[ -x target/release/fusebox ]]; then
        FUSEBOX_BIN=target/release/fusebox
    elif [[ -x target/debug/fusebox ]]; then
        FUSEBOX_BIN=target/debug/fusebox
    else
        echo "no fusebox binary: build it (cargo build --release --locked) or set FUSEBOX_BIN" >&2
        return 1
    fi
    FUSEBOX_BIN="$(cd "$(dirname "$FUSEBOX_BIN")" && pwd)/$(basename "$FUSEBOX_BIN")"
    export FUSEBOX_BIN
}

need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "missing tool: $tool (see tests/deploy/README.md)" >&2; return 1; }
    done
}

# A free TCP port on 127.0.0.1 (the kernel picks it; a later bind could still race).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_http URL SECONDS [EXPECTED_STATUS]: poll until URL answers (200 by default).
wait_http() {
    local url="$1" secs="$2" want="${3:-200}" got deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        got="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" || true)"
        [[ "$got" == "$want" ]] && return 0
        sleep 0.2
    done
    echo "timed out after ${secs}s waiting for $url to answer $want (last: ${got:-none})" >&2
    return 1
}

# Starts yolo-a (fail rate 0.0) and yolo-b (0.3) as the compose file does, and fusebox on
# $DEPLOY_TMP/fusebox/fusebox.toml (docker/fusebox.toml on loopback ports, then
# $STACK_EXTRA_TOML when set: more upstreams and routes a script needs). Sets
# DATA_PORT ADMIN_PORT UP_A_PORT UP_B_PORT FUSEBOX_PID FUSEBOX_TOML.
start_stack() {
    DATA_PORT="$(free_port)"
    ADMIN_PORT="$(free_port)"
    UP_A_PORT="$(free_port)"
    UP_B_PORT="$(free_port)"
    mkdir -p "$DEPLOY_TMP/fusebox"
    FUSEBOX_TOML="$DEPLOY_TMP/fusebox/fusebox.toml"
    sed -e "s/0\.0\.0\.0:8080/127.0.0.1:$DATA_PORT/g" \
        -e "s/0\.0\.0\.0:9901/127.0.0.1:$ADMIN_PORT/g" \
        -e "s/yolo-a:9001/127.0.0.1:$UP_A_PORT/g" \
        -e "s/yolo-b:9001/127.0.0.1:$UP_B_PORT/g" \
        docker/fusebox.toml >"$FUSEBOX_TOML"
    if grep -nE '0\.0\.0\.0|yolo-[ab]:' "$FUSEBOX_TOML"; then
        echo "docker/fusebox.toml has addresses tests/deploy/lib.sh does not rewrite" >&2
        return 1
    fi
    if [[ -n "${STACK_EXTRA_TOML:-}" ]]; then
        printf '\n%s\n' "$STACK_EXTRA_TOML" >>"$FUSEBOX_TOML"
    fi

    "$FUSEBOX_BIN" demo-upstream --listen "127.0.0.1:$UP_A_PORT" --fail-rate 0.0 --name yolo-a \
        >"$DEPLOY_TMP/yolo-a.log" 2>&1 &
    DEPLOY_PIDS+=($!)
    "$FUSEBOX_BIN" demo-upstream --listen "127.0.0.1:$UP_B_PORT" --fail-rate 0.3 --name yolo-b \
        >"$DEPLOY_TMP/yolo-b.log" 2>&1 &
    DEPLOY_PIDS+=($!)
    FUSEBOX_ADMIN_TOKEN="$ADMIN_TOKEN" "$FUSEBOX_BIN" run --config "$FUSEBOX_TOML" \
        >"$DEPLOY_TMP/fusebox.log" 2>&1 &
    FUSEBOX_PID=$!
    DEPLOY_PIDS+=("$FUSEBOX_PID")

    wait_http "http://127.0.0.1:$UP_A_PORT/health" 15
    wait_http "http://127.0.0.1:$UP_B_PORT/health" 15
    if ! wait_http "http://127.0.0.1:$ADMIN_PORT/health/ready" 20; then
        tail -n 20 "$DEPLOY_TMP/fusebox.log" >&2
        return 1
    fi
}

# admin_post PATH: an authorized POST to the admin API; prints the body, fails unless 200.
admin_post() {
    curl -sS -f -m 5 -X POST -H "Authorization: Bearer $ADMIN_TOKEN" "http://127.0.0.1:$ADMIN_PORT$1"
}
