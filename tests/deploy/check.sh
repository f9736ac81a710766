#!/usr/bin/env bash
# Deployment checks that run without a Docker engine or a cluster, with the real tools:
#   1. every TOML in config/, docker/, docker/k8s/ passes `fusebox validate`, and the
#      example in docs/migration.md is config/migration-example.toml
#   2. the Dockerfile builds with `cargo build --release --locked` (as CI) and its runtime
#      settings and build context are complete
#   3. `docker-compose config` accepts docker/docker-compose.yml, which matches docker/fusebox.toml
#   4. the k8s manifests validate against the Kubernetes schemas (kubernetes-validate) and
#      their probes, ports, config mount and shutdown budget match the ConfigMap's TOML
#   5. a real Prometheus scrapes a live fusebox (docker/fusebox.toml on loopback, with the two
#      demo upstreams and traffic) using docker/prometheus.yml, and every PromQL expression of
#      docker/grafana/fusebox.json returns series; docker/alerts.yml loads and evaluates
#   6. fusebox exits 0 on SIGTERM
#
# Usage: tests/deploy/check.sh   (from anywhere; FUSEBOX_BIN picks the binary, default
# target/release/fusebox, else target/debug/fusebox; KEEP_TMP=1 keeps logs)
# Tools: docker-compose, prometheus, promtool (Debian), kubernetes-validate (PyPI), curl,
# python3 >= 3.11 with PyYAML.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/deploy/lib.sh
trap deploy_cleanup EXIT

need curl python3 docker-compose kubernetes-validate prometheus promtool
find_fusebox
python3 -c 'import yaml, tomllib' || { echo "python3 >= 3.11 with PyYAML is required" >&2; exit 1; }
CHECKS=tests/deploy/checks.py

echo "== 1. fusebox validate: config/, docker/, docker/k8s/ (binary $FUSEBOX_BIN)"
shopt -s nullglob
for dir in config docker docker/k8s; do
    files=("$dir"/*.toml)
    ((${#files[@]})) || { echo "no TOML file in $dir/" >&2; exit 1; }
    for f in "${files[@]}"; do
        # token_env configs need their variable set to validate.
        FUSEBOX_ADMIN_TOKEN=validate-token "$FUSEBOX_BIN" validate --config "$f"
    done
done
shopt -u nullglob
python3 "$CHECKS" docs

echo "== 2. Dockerfile"
python3 "$CHECKS" dockerfile

echo "== 3. docker-compose config"
docker-compose -f docker/docker-compose.yml config >"$DEPLOY_TMP/compose.yml"
echo "  ok   docker-compose $(docker-compose version --short) accepts docker/docker-compose.yml"
python3 "$CHECKS" compose "$DEPLOY_TMP/compose.yml"

echo "== 4. Kubernetes manifests"
# 1.30: the oldest version the manifests claim (native sidecar, preStop sleep action);
# no -k: the newest schema kubernetes-validate bundles.
kubernetes-validate --strict -k 1.30.0 docker/k8s/*.yaml
kubernetes-validate --strict docker/k8s/*.yaml
python3 "$CHECKS" k8s

echo "== 5. Prometheus scrapes a live fusebox; dashboard queries and alerts"
promtool check rules docker/alerts.yml
python3 "$CHECKS" dashboard
start_stack
echo "  fusebox on 127.0.0.1:$DATA_PORT (admin $ADMIN_PORT), yolo-a :$UP_A_PORT, yolo-b :$UP_B_PORT (fails 30%)"

# A reload, so gateway_config_reloads_total has a series (the dashboard shows it).
echo "# reloaded by tests/deploy/check.sh" >>"$FUSEBOX_TOML"
deadline=$((SECONDS + 15))
until curl -s -m 2 "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -q '^gateway_config_reloads_total{result="success"} [1-9]'; do
    ((SECONDS < deadline)) || { echo "the config reload was not counted within 15s" >&2; tail -n 5 "$DEPLOY_TMP/fusebox.log" >&2; exit 1; }
    sleep 0.2
done
echo "  ok   config reload counted"

# Traffic in the background for at most 90 s: /detect (both upstreams, retried) and
# /flaky (yolo-b alone: its breaker opens now and then, and the fallback answers).
(
    # Each curl runs in the background and is waited for, so the TERM from cleanup ends
    # the loop at once and takes the curl in flight with it.
    cpid=""
    trap 'kill $cpid 2>/dev/null; exit 0' TERM
    end=$((SECONDS + 90))
    while ((SECONDS < end)); do
        for path in detect flaky/detect; do
            curl -s -o /dev/null -m 5 -X POST -H 'Content-Type: application/json' -H 'X-Camera-ID: cam-1' \
                -d '{"image": "check"}' "http://127.0.0.1:$DATA_PORT/$path" &
            cpid=$!
            wait "$cpid" || true
        done
    done
) &
DEPLOY_PIDS+=($!)

PROM_PORT="$(free_port)"
PROM="http://127.0.0.1:$PROM_PORT"
python3 "$CHECKS" prom-config "$DEPLOY_TMP/prometheus.yml" "127.0.0.1:$ADMIN_PORT"
promtool check config "$DEPLOY_TMP/prometheus.yml"
prometheus --config.file="$DEPLOY_TMP/prometheus.yml" --storage.tsdb.path="$DEPLOY_TMP/prom-data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >"$DEPLOY_TMP/prometheus.log" 2>&1 &
DEPLOY_PIDS+=($!)
wait_http "$PROM/-/ready" 30 || { tail -n 20 "$DEPLOY_TMP/prometheus.log" >&2; exit 1; }
deadline=$((SECONDS + 30))
until curl -s -m 2 "$PROM/api/v1/targets" | grep -q '"health":"up"'; do
    ((SECONDS < deadline)) || { echo "Prometheus did not scrape fusebox within 30s" >&2; curl -s "$PROM/api/v1/targets" >&2; exit 1; }
    sleep 0.5
done
echo "  ok   Prometheus target fusebox (127.0.0.1:$ADMIN_PORT/metrics) is up"
sleep 5 # a few scrapes with traffic, so rate() has two samples

python3 "$CHECKS" queries "$PROM"
python3 "$CHECKS" alerts "$PROM"
opened="$(curl -s -m 2 "http://127.0.0.1:$ADMIN_PORT/metrics" \
    | awk '/^gateway_circuit_breaker_state_changes_total\{.*state="open"/ {n += $2} END {print n + 0}')"
echo "  breakers opened during the traffic: $opened"

echo "== 6. SIGTERM: fusebox drains and exits 0"
kill -TERM "$FUSEBOX_PID"
deadline=$((SECONDS + 30))
while kill -0 "$FUSEBOX_PID" 2>/dev/null; do
    ((SECONDS < deadline)) || { echo "fusebox still running 30s after SIGTERM" >&2; exit 1; }
    sleep 0.2
done
rc=0
wait "$FUSEBOX_PID" || rc=$?
[[ "$rc" == 0 ]] || { echo "fusebox exited $rc after SIGTERM" >&2; tail -n 5 "$DEPLOY_TMP/fusebox.log" >&2; exit 1; }
echo "  ok   exit status 0"

echo "deploy checks: all passed"
