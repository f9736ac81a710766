#!/usr/bin/env python3
"""Checks of the deployment files that need parsing; run by tests/deploy/check.sh and
tests/deploy/status_page.sh.

Subcommands (run from the repository root):
  dockerfile               the Dockerfile's build command, runtime settings, build context
  docs                     docs/migration.md's complete example == config/migration-example.toml
  dashboard                docker/grafana/fusebox.json: panel ids, layout, data sources, panels asked for
  compose RENDERED         `docker-compose config` output against docker/fusebox.toml
  k8s                      docker/k8s: ConfigMap == fusebox.toml, probes, ports, shutdown budget
  prom-config OUT ADDR     docker/prometheus.yml with its fusebox targets pointed at ADDR
  queries PROM_URL         every PromQL expression of docker/grafana/fusebox.json has series
  alerts PROM_URL          docker/alerts.yml loaded and evaluated; every metric it names exists
  dom FILE UPSTREAM ENDPOINT STATE
                           a dumped status page DOM shows that endpoint in that state
  change FILE UPSTREAM ENDPOINT FROM TO
                           ...and lists its change FROM -> TO under recent state changes
  timeline ADMIN_URL UPSTREAM ENDPOINT
                           /stats/timeline shows ENDPOINT's breaker closed -> open -> closed
  charts FILE UPSTREAM ENDPOINT ROUTE
                           a dumped status page DOM has charts with drawn points, the breaker
                           timeline bands, and ROUTE's own breakers in the table

The checks live in files.py (the files themselves), live.py (against running
processes) and charts.py (the status page's charts); report.py prints the verdicts. Needs Python 3.11+ (tomllib) and PyYAML. Each
check prints what it verified and exits 1 with the reasons when something does not hold.
"""

import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the work tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from charts import check_charts, check_timeline  # noqa: E402
from files import check_compose, check_dashboard, check_docs, check_dockerfile, check_k8s  # noqa: E402
from live import check_alerts, check_change, check_dom, check_queries, prom_config  # noqa: E402


def main(argv):
    if not argv:
        sys.exit(__doc__)
    cmd, args = argv[0], argv[1:]
    if cmd == "dockerfile":
        check_dockerfile()
    elif cmd == "dashboard":
        check_dashboard()
    elif cmd == "docs":
        check_docs()
    elif cmd == "compose":
        check_compose(*args)
    elif cmd == "k8s":
        check_k8s()
    elif cmd == "prom-config":
        prom_config(*args)
    elif cmd == "queries":
        check_queries(*args)
    elif cmd == "alerts":
        check_alerts(*args)
    elif cmd == "dom":
        check_dom(*args)
    elif cmd == "change":
        check_change(*args)
    elif cmd == "timeline":
        check_timeline(*args)
    elif cmd == "charts":
        check_charts(*args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
