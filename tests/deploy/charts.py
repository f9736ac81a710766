"""Checks of the status page's charts: the /stats/timeline answer of a live fusebox, and
the chart elements in a status page DOM dumped by Chromium (each chart line is a
<path data-series data-points="N">, each breaker-timeline band a <rect data-state>).
Called through tests/deploy/checks.py."""

import json
import time
import urllib.request
from html.parser import HTMLParser

from report import fail, finish, ok

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def runs(states):
    """The states with repeats (and nulls) collapsed: closed, closed, open -> closed, open."""
    out = []
    for s in states:
        if s and (not out or out[-1] != s):
            out.append(s)
    return out


def reopened_and_closed(seq):
    """Whether the run list holds closed, then (later) open, then (later) closed."""
    try:
        first_open = seq.index("open", seq.index("closed"))
        seq.index("closed", first_open)
        return True
    except ValueError:
        return False


def check_timeline(admin, upstream, endpoint, timeout=30):
    """Polls ADMIN/stats/timeline until ENDPOINT's own breaker row shows closed -> open ->
    closed and UPSTREAM's series hold requests and latencies."""
    print(f"/stats/timeline of {admin} ({upstream} {endpoint})")
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{admin}/stats/timeline", timeout=5) as r:
            t = json.load(r)
        up = t["upstreams"].get(upstream, {})
        ep = up.get("endpoints", {}).get(endpoint, {})
        own = [b for b in ep.get("breakers", []) if b["route"] == ""]
        last = runs(own[0]["states"]) if own else None
        series = up.get("series", {})
        traffic = any(v for v in series.get("rps", []) if v) and any(v is not None for v in series.get("p99_ms", []))
        if last and reopened_and_closed(last) and traffic:
            ok(f"{endpoint}'s breaker over {t['seconds']} s: {' -> '.join(last)}; {upstream} has requests and latencies")
            return
        time.sleep(0.2)
    fail(f"no closed -> open -> closed seconds for {endpoint} within {timeout}s (last: {last})")
    finish()


class Tree(HTMLParser):
    """The dumped DOM as nested dicts: {"tag", "attrs", "children", "text"}."""

    def __init__(self):
        super().__init__()
        self.root = {"tag": "#root", "attrs": {}, "children": [], "text": ""}
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = {"tag": tag, "attrs": dict(attrs), "children": [], "text": ""}
        self.stack[-1]["children"].append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1]["children"].append({"tag": tag, "attrs": dict(attrs), "children": [], "text": ""})

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i]["tag"] == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        self.stack[-1]["text"] += data


def walk(node):
    yield node
    for c in node["children"]:
        yield from walk(c)


def find(node, tag=None, **attrs):
    """Descendants with that tag (any when None) and those attribute values (True: present)."""
    for n in walk(node):
        if tag and n["tag"] != tag:
            continue
        if all((k.replace("_", "-") in n["attrs"]) if v is True else n["attrs"].get(k.replace("_", "-")) == v
               for k, v in attrs.items()):
            yield n


def text(node):
    return " ".join(" ".join(n["text"] for n in walk(node)).split())


def check_charts(path, upstream, endpoint, route):
    print(f"status page charts ({path})")
    tree = Tree()
    tree.feed(open(path, encoding="utf-8", errors="replace").read())
    root = tree.root
    charts = next(find(root, "div", id="charts"), None)
    if charts is None:
        fail("no #charts in the page")
        finish()
    total = int(charts["attrs"].get("data-points", "0"))
    paths = list(find(charts, "path", data_points=True))
    drawn = sum(int(p["attrs"]["data-points"]) for p in paths)
    (ok if total > 0 and drawn == total else fail)(
        f"#charts data-points={total}, {len(paths)} chart lines drawing {drawn} points in all")

    section = next(find(root, "section", data_upstream=upstream), None)
    if section is None:
        fail(f"no chart section for {upstream}")
        finish()
    lines = {}
    for p in find(section, "path", data_series=True):
        lines.setdefault(p["attrs"]["data-series"], []).append(int(p["attrs"]["data-points"]))
    for series in ("requests/s", "attempts/s", "error", "p50", "p99"):
        counts = lines.get(series, [])
        (ok if counts and all(c > 0 for c in counts) else fail)(
            f"{upstream}: every {series!r} line drew points ({counts})")

    block = next(find(section, "div", data_endpoint=endpoint), None)
    if block is None:
        fail(f"no chart block for {upstream} {endpoint}")
        finish()
    bands = next(find(block, "div", **{"class": "bands"}), None)
    rows = {}
    label = None
    for child in (bands or {"children": []})["children"]:
        if child["tag"] == "span":
            label = text(child)
        elif child["tag"] == "svg":
            rows[label] = [r["attrs"]["data-state"] for r in find(child, "rect", data_state=True)]
    for name, states in rows.items():
        print(f"       breaker timeline row {name!r}: {' -> '.join(states)}")
    own = rows.get("upstream breaker", [])
    (ok if reopened_and_closed(own) else fail)(
        f"{endpoint}'s upstream breaker row has closed, then open, then closed bands")
    (ok if rows.get(f"route {route} breaker") else fail)(f"{endpoint} has a band row for route {route}'s own breaker")

    heads = [r for r in find(root, "tr", data_upstream=upstream, data_route=route) if "route-breakers" in r["attrs"].get("class", "")]
    eps = [r for r in find(root, "tr", data_upstream=upstream, data_route=route, data_endpoint=endpoint)]
    (ok if heads and eps else fail)(
        f"the breaker table lists route {route}'s own breakers ({len(heads)} header, {len(eps)} endpoint rows)")
    finish()
