#!/usr/bin/env bash
# Scrapes fusebox's /metrics once a second for $1 seconds (default 600), as Prometheus
# would during a benchmark run; stops by itself. Usage: bench/scrape.sh [seconds] [admin-port]
secs=${1:-600}; port=${2:-19901}
end=$(( $(date +%s) + secs ))
n=0
while [ "$(date +%s)" -lt "$end" ]; do
  curl -s -o /dev/null --max-time 1 "http://127.0.0.1:${port}/metrics" && n=$((n+1))
  sleep 1
done
echo "scraped $n times" >&2
