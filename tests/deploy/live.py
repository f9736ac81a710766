"""Checks against running processes: Prometheus scraping a live fusebox (dashboard
queries, alert rules) and the status page DOM dumped by Chromium. Called through
tests/deploy/checks.py."""

import json
import os
import re
import sys
import time
import tomllib
import urllib.parse
import urllib.request
from html.parser import HTMLParser

import yaml

from report import fail, finish, ok, port_of


# ---------------------------------------------------------------------------------------
# Prometheus


def prom_config(out, addr):
    """docker/prometheus.yml for the test: 1 s scrapes, fusebox targets at ADDR, rules from
    docker/alerts.yml. The shipped target's port must be docker/fusebox.toml's admin port."""
    cfg = yaml.safe_load(open("docker/prometheus.yml"))
    admin_port = port_of(tomllib.load(open("docker/fusebox.toml", "rb"))["admin"]["address"])
    cfg.setdefault("global", {}).update(scrape_interval="1s", evaluation_interval="1s")
    cfg["rule_files"] = [os.path.abspath("docker/alerts.yml")] if cfg.get("rule_files") else []
    jobs = [j for j in cfg["scrape_configs"] if j["job_name"] == "fusebox"]
    if len(jobs) != 1:
        sys.exit("docker/prometheus.yml has no job 'fusebox'")
    job = jobs[0]
    if job.get("metrics_path", "/metrics") != "/metrics":
        sys.exit(f"job fusebox scrapes {job['metrics_path']}, not /metrics")
    for sc in job["static_configs"]:
        for t in sc["targets"]:
            if port_of(t) != admin_port:
                sys.exit(f"scrape target {t} is not on the admin port {admin_port} of docker/fusebox.toml")
        sc["targets"] = [addr]
    job["scrape_interval"] = "1s"
    yaml.safe_dump(cfg, open(out, "w"), sort_keys=False)
    print(f"  ok   scrape target fusebox:{admin_port}/metrics -> {addr} every 1s")


def prom_query(base, expr):
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{body.get('errorType')}: {body.get('error')}")
    return body["data"]["result"]


GRAFANA_VARS = {
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "5m",
}


def substitute(expr, variables):
    def rep(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in GRAFANA_VARS:
            return GRAFANA_VARS[name]
        if name in variables:
            return variables[name]
        raise ValueError(f"unknown Grafana variable ${name} in {expr}")
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", rep, expr)


def dashboard_queries(path):
    dash = json.load(open(path))
    variables, exprs = {}, []
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", q or "")
            if not m:
                raise ValueError(f"variable {v['name']}: query {q!r} not understood by this check")
            exprs.append((f"variable ${v['name']}", f"group by ({m.group(2)}) ({m.group(1)})"))
            variables[v["name"]] = v.get("allValue") or ".*"
        elif v.get("type") in ("datasource", "interval", "custom", "constant", "textbox"):
            variables[v["name"]] = v.get("query") or ".*"

    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))

    for p in walk(dash.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                exprs.append((f"panel {p.get('title')!r} {t.get('refId')}", t["expr"]))
    return [(where, substitute(e, variables)) for where, e in exprs]


def check_queries(base, timeout=60):
    print("docker/grafana/fusebox.json")
    queries = dashboard_queries("docker/grafana/fusebox.json")
    pending = dict(enumerate(queries))
    results = {}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for i, (where, expr) in list(pending.items()):
            try:
                res = prom_query(base, expr)
            except Exception as e:  # a syntax error does not heal: report it now
                results[i] = e
                del pending[i]
                continue
            if res:
                results[i] = res
                del pending[i]
        if pending:
            time.sleep(1)
    for i, (where, expr) in enumerate(queries):
        res = results.get(i)
        if isinstance(res, Exception):
            fail(f"{where}: {expr}\n         error: {res}")
        elif not res:
            fail(f"{where}: no series within {timeout}s: {expr}")
        else:
            sample = ", ".join(
                "{" + ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())) + "} " + r["value"][1]
                for r in res[:2])
            ok(f"{where}: {len(res)} series, e.g. {sample}")
    good = sum(1 for r in results.values() if r and not isinstance(r, Exception))
    print(f"  {good} of {len(queries)} expressions return series")
    finish()


def check_alerts(base, timeout=30):
    print("docker/alerts.yml")
    rules = [r for g in yaml.safe_load(open("docker/alerts.yml"))["groups"] for r in g["rules"]]
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(base + "/api/v1/rules", timeout=10) as r:
            groups = json.load(r)["data"]["groups"]
        loaded = {r["name"]: r for g in groups for r in g["rules"]}
        evaluated = [r for r in loaded.values() if not r.get("lastEvaluation", "").startswith("0001")]
        if len(evaluated) >= len(rules) or time.monotonic() > deadline:
            break
        time.sleep(1)
    for rule in rules:
        got = loaded.get(rule["alert"])
        if not got:
            fail(f"alert {rule['alert']} not loaded by Prometheus")
        elif got.get("health") != "ok":
            fail(f"alert {rule['alert']}: health {got.get('health')}: {got.get('lastError')}")
        else:
            ok(f"alert {rule['alert']} evaluates ({got.get('state')})")
    present = {r["metric"]["__name__"] for r in prom_query(base, 'count by (__name__) ({job="fusebox"})')}
    for rule in rules:
        names = set(re.findall(r"\bgateway_[a-z_]+", rule["expr"]))
        if re.search(r"\bup\s*\{", rule["expr"]):
            names.add("up")
        for name in sorted(names):
            (ok if name in present else fail)(f"alert {rule['alert']}: metric {name} is scraped")
    finish()


# ---------------------------------------------------------------------------------------
# Status page DOM


class Rows(HTMLParser):
    """Collects <tr> elements with their attributes and text (cells separated by spaces)."""

    def __init__(self):
        super().__init__()
        self.rows, self.cur = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.cur = {"attrs": dict(attrs), "text": ""}
            self.rows.append(self.cur)
        elif tag in ("td", "th") and self.cur is not None:
            self.cur["text"] += " "

    def handle_endtag(self, tag):
        if tag == "tr":
            self.cur = None

    def handle_data(self, data):
        if self.cur is not None:
            self.cur["text"] += data


def check_dom(path, upstream, endpoint, state):
    print(f"status page DOM ({path})")
    parser = Rows()
    parser.feed(open(path, encoding="utf-8", errors="replace").read())
    # Endpoint rows of the upstreams' own breakers (route-level rows carry data-route).
    eps = [r for r in parser.rows if "data-endpoint" in r["attrs"] and "data-route" not in r["attrs"]]
    for r in eps:
        a = r["attrs"]
        print(f"       row {a.get('data-upstream')} {a.get('data-endpoint')} state={a.get('data-state')}")
    if not eps:
        fail("no endpoint rows (data-endpoint) in the page: did its script run and reach the admin API?")
        finish()
    match = [r for r in eps if r["attrs"].get("data-upstream") == upstream
             and r["attrs"].get("data-endpoint") == endpoint and "change" not in r["attrs"].get("class", "")]
    if len(match) != 1:
        fail(f"expected one row for {upstream} {endpoint}, found {len(match)}")
        finish()
    row = match[0]
    if row["attrs"].get("data-state") == state and state in row["text"].split():
        ok(f"{upstream} {endpoint} shows data-state={state!r} and the text {state!r}")
    else:
        fail(f"{upstream} {endpoint}: data-state={row['attrs'].get('data-state')!r}, text {row['text']!r}")
    others = [r for r in eps if r is not row and "change" not in r["attrs"].get("class", "")]
    if any(r["attrs"].get("data-state") == state for r in others):
        fail(f"other endpoints are {state} too: the forced one is not distinguished")
    elif others:
        ok(f"{len(others)} other endpoint rows, none {state}")
    finish()


def check_change(path, upstream, endpoint, before, after):
    print(f"status page DOM after a state change ({path})")
    parser = Rows()
    parser.feed(open(path, encoding="utf-8", errors="replace").read())
    changes = [r for r in parser.rows if "change" in r["attrs"].get("class", "").split()]
    for r in changes:
        print(f"       change {' '.join(r['text'].split())}")
    want = [r for r in changes if r["attrs"].get("data-upstream") == upstream
            and r["attrs"].get("data-endpoint") == endpoint and r["attrs"].get("data-to") == after
            and r["text"].split()[-2:] == [before, after]]
    (ok if want else fail)(f"recent state changes list {upstream} {endpoint} {before} -> {after}")
    rows = [r for r in parser.rows if "endpoint" in r["attrs"].get("class", "").split()
            and r["attrs"].get("data-upstream") == upstream and r["attrs"].get("data-endpoint") == endpoint
            and "data-route" not in r["attrs"]]
    if rows and rows[0]["attrs"].get("data-state") == after:
        ok(f"{upstream} {endpoint} now shows data-state={after!r}")
    else:
        fail(f"{upstream} {endpoint} row: {rows[0]['attrs'] if rows else 'missing'}")
    finish()
