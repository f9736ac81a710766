"""Checks of the deployment files themselves: Dockerfile, docs, dashboard structure,
compose file, Kubernetes manifests. Called through tests/deploy/checks.py."""

import fnmatch
import glob
import json
import os
import re
import shlex
import tomllib

import yaml

from report import fail, finish, ok, parse_duration, port_of


# ---------------------------------------------------------------------------------------
# Dockerfile


def logical_lines(text):
    """Dockerfile instructions with their continuation lines joined, comments dropped."""
    out, cur = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not cur and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        out.append(cur + line)
        cur = ""
    if cur:
        out.append(cur)
    return out


def check_dockerfile():
    print("Dockerfile")
    lines = logical_lines(open("Dockerfile").read())
    builds = []
    for line in lines:
        if not line.upper().startswith("RUN "):
            continue
        # Split the shell command at && / ; and drop the RUN --mount=... flags.
        for part in re.split(r"&&|;", line[4:]):
            words = [w for w in shlex.split(part) if not w.startswith("--mount=")]
            if words[:2] == ["cargo", "build"]:
                builds.append(" ".join(words))
    if builds == ["cargo build --release --locked"]:
        ok("the one build command is `cargo build --release --locked`, as CI builds")
    else:
        fail(f"build commands {builds!r}, expected exactly ['cargo build --release --locked']")

    instr = {}
    for line in lines:
        key, _, rest = line.partition(" ")
        instr.setdefault(key.upper(), []).append(rest.strip())
    stages = instr.get("FROM", [])
    if len(stages) >= 2:
        ok(f"multi-stage: {', '.join(stages)}")
    else:
        fail("the Dockerfile is not multi-stage")
    expect = {
        "USER": lambda v: v[-1].split(":")[0] == "65532",
        "ENTRYPOINT": lambda v: json.loads(v[-1]) == ["/usr/local/bin/fusebox"],
        "CMD": lambda v: json.loads(v[-1]) == ["run"],
        "STOPSIGNAL": lambda v: v[-1] == "SIGTERM",
        "EXPOSE": lambda v: set(" ".join(v).split()) >= {"8080", "9901"},
        "ENV": lambda v: any(re.search(r"FUSEBOX_CONFIG[= ]/etc/fusebox/fusebox\.toml", e) for e in v),
        "COPY": lambda v: "config/fusebox.toml /etc/fusebox/fusebox.toml" in v,
    }
    for key, pred in expect.items():
        vals = instr.get(key, [])
        if vals and pred(vals):
            ok(f"{key} {vals[-1] if key != 'COPY' else 'config/fusebox.toml /etc/fusebox/fusebox.toml'}")
        else:
            fail(f"{key} is {vals!r}")

    # Every file the build reads must be in the build context: not left out by .dockerignore
    # (top-level names and globs, as written there) and copied into the build stage.
    ignored = [l.strip() for l in open(".dockerignore") if l.strip() and not l.startswith("#")]
    if any(p.startswith("!") or "/" in p.strip("/") for p in ignored):
        fail(".dockerignore uses patterns this check does not model (! or nested paths)")
    needed = {"Cargo.toml", "Cargo.lock", "config/fusebox.toml"}
    needed |= {p for p in ("build.rs",) if os.path.exists(p)}
    for rs in glob.glob("src/**/*.rs", recursive=True) + glob.glob("benches/**/*.rs", recursive=True):
        for m in re.finditer(r'include_(?:str|bytes)!\(\s*"([^"]+)"', open(rs).read()):
            needed.add(os.path.normpath(os.path.join(os.path.dirname(rs), m.group(1))))
    copied = instr.get("COPY", [])
    copies_all = any(c.split()[:1] == ["."] for c in copied)
    for path in sorted(needed):
        top = path.split("/")[0]
        if not os.path.exists(path):
            fail(f"{path} (read by the build) does not exist")
        elif any(fnmatch.fnmatch(top, p.strip("/")) or fnmatch.fnmatch(path, p.strip("/")) for p in ignored):
            fail(f"{path} is read by the build but .dockerignore leaves it out of the build context")
        elif not copies_all and not any(c.split()[0] in (path, top) for c in copied):
            fail(f"{path} is read by the build but the Dockerfile does not COPY it")
    ok(f"build context and COPY cover {len(needed)} files the build reads: {', '.join(sorted(needed))}")
    finish()


def check_docs():
    print("docs/migration.md")
    doc = open("docs/migration.md").read()
    part = doc.split("## The complete example", 1)
    blocks = re.findall(r"```toml\n(.*?)```", part[1], re.S) if len(part) == 2 else []
    example = open("config/migration-example.toml").read()
    if blocks and blocks[0] == example:
        ok("the complete example is config/migration-example.toml, verbatim")
    else:
        fail("docs/migration.md's complete example differs from config/migration-example.toml")
    finish()


def check_dashboard():
    """What Grafana would reject or render badly, checked without Grafana."""
    print("docker/grafana/fusebox.json (structure)")
    dash = json.load(open("docker/grafana/fusebox.json"))
    panels = dash.get("panels", [])
    ids = [p.get("id") for p in panels]
    (ok if len(ids) == len(set(ids)) and None not in ids else fail)(f"{len(ids)} panels with unique ids")
    cells = {}
    for p in panels:
        g = p.get("gridPos", {})
        if g.get("x", 0) + g.get("w", 0) > 24:
            fail(f"panel {p.get('title')!r} is wider than the 24-column grid")
        for x in range(g.get("x", 0), g.get("x", 0) + g.get("w", 0)):
            for y in range(g.get("y", 0), g.get("y", 0) + g.get("h", 0)):
                if (x, y) in cells:
                    fail(f"panels {cells[(x, y)]!r} and {p.get('title')!r} overlap")
                cells[(x, y)] = p.get("title")
    ok("no panels overlap")
    names = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    for p in panels:
        if p.get("type") == "row":
            continue
        uid = (p.get("datasource") or {}).get("uid", "")
        if uid != "${datasource}" or "datasource" not in names:
            fail(f"panel {p.get('title')!r} uses data source {uid!r}, not the $datasource variable")
        if not p.get("targets"):
            fail(f"panel {p.get('title')!r} has no query")
    ok("every panel queries the $datasource variable")
    exprs = " ".join(t.get("expr", "") for p in panels for t in p.get("targets", []))
    for metric in ("gateway_circuit_breaker_state", "gateway_proxy_requests_total",
                   "gateway_proxy_retries_total", "gateway_proxy_fallbacks_total",
                   "gateway_proxy_rejected_total", "gateway_proxy_request_duration_seconds_bucket"):
        (ok if metric in exprs else fail)(f"a panel shows {metric}")
    for q in ("0.5", "0.95", "0.99"):
        (ok if f"histogram_quantile({q}," in exprs else fail)(f"latency quantile {q}")
    finish()


# ---------------------------------------------------------------------------------------
# docker-compose


def check_compose(rendered):
    print("docker/docker-compose.yml")
    spec = yaml.safe_load(open(rendered))
    services = spec.get("services", {})
    conf = tomllib.load(open("docker/fusebox.toml", "rb"))
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol["source"] if isinstance(vol, dict) else vol.split(":")[0]
            if src.startswith("/") and not os.path.exists(src):
                fail(f"service {name} mounts {src}, which does not exist")
    ok("every bind-mounted file exists")

    fb = services.get("fusebox")
    if not fb:
        fail("no fusebox service")
        finish()
    cmd = fb.get("command", [])
    cfg_path = cmd[cmd.index("--config") + 1] if "--config" in cmd else fb.get("environment", {}).get("FUSEBOX_CONFIG")
    mounted = None
    for vol in fb.get("volumes", []):
        src, dst = (vol["source"], vol["target"]) if isinstance(vol, dict) else vol.split(":")[:2]
        if cfg_path and (cfg_path == dst or cfg_path.startswith(dst.rstrip("/") + "/")):
            mounted = os.path.join(src, os.path.relpath(cfg_path, dst)) if cfg_path != dst else src
    if mounted and os.path.samefile(mounted, "docker/fusebox.toml"):
        ok(f"fusebox reads {cfg_path}, which is docker/fusebox.toml")
    else:
        fail(f"fusebox's config {cfg_path} is not docker/fusebox.toml (mounted: {mounted})")
    token_env = conf.get("admin", {}).get("token_env")
    if token_env and token_env in (fb.get("environment") or {}):
        ok(f"fusebox gets {token_env}")
    else:
        fail(f"[admin] token_env {token_env!r} is not set in the fusebox service's environment")
    published = {str(p.get("target")) if isinstance(p, dict) else p.rsplit(":", 1)[-1].split("/")[0]
                 for p in fb.get("ports", [])}
    for key in ("listener", "admin"):
        port = str(port_of(conf[key]["address"]))
        (ok if port in published else fail)(f"[{key}] port {port} is published")

    # Each endpoint host:port of docker/fusebox.toml is a demo upstream service listening there.
    fail_rates = {}
    for up, u in conf.get("upstreams", {}).items():
        for ep in u["endpoints"]:
            addr = ep if isinstance(ep, str) else ep["address"]
            host, port = addr.rsplit(":", 1)
            svc = services.get(host)
            if not svc:
                fail(f"upstream {up} endpoint {addr}: no compose service named {host}")
                continue
            c = svc.get("command", [])
            if c[:1] != ["demo-upstream"] or f"0.0.0.0:{port}" not in c:
                fail(f"service {host} does not run `demo-upstream --listen 0.0.0.0:{port}` ({c})")
            else:
                fail_rates[host] = float(c[c.index("--fail-rate") + 1])
    if sorted(fail_rates.values()) == [0.0, 0.3]:
        ok(f"demo upstreams and their fail rates: {fail_rates}")
    else:
        fail(f"expected demo upstreams with fail rates 0.0 and 0.3, got {fail_rates}")
    for name in ("prometheus", "grafana"):
        (ok if name in services else fail)(f"service {name}")
    finish()


# ---------------------------------------------------------------------------------------
# Kubernetes


def load_docs(path):
    return [d for d in yaml.safe_load_all(open(path)) if d]


def check_k8s():
    print("docker/k8s")
    cms = [d for d in load_docs("docker/k8s/configmap.yaml") if d.get("kind") == "ConfigMap"]
    if len(cms) != 1:
        fail(f"configmap.yaml holds {len(cms)} ConfigMaps, expected 1")
        finish()
    cm = cms[0]
    text = cm.get("data", {}).get("fusebox.toml")
    plain = open("docker/k8s/fusebox.toml").read()
    if text == plain:
        ok("ConfigMap data.\"fusebox.toml\" is identical to docker/k8s/fusebox.toml")
    else:
        fail("ConfigMap data.\"fusebox.toml\" differs from docker/k8s/fusebox.toml")
    conf = tomllib.loads(text or plain)
    admin = conf.get("admin", {})
    admin_addr = admin.get("address", "127.0.0.1:9901")
    admin_port = port_of(admin_addr)
    if admin_addr.startswith(("127.", "[::1]", "localhost")):
        fail(f"[admin] address {admin_addr} is loopback: the kubelet's probes and Prometheus use the pod IP")
    shutdown = parse_duration(conf.get("listener", {}).get("shutdown_timeout", "30s"))

    deps = [d for d in load_docs("docker/k8s/deployment.yaml") if d.get("kind") == "Deployment"]
    if len(deps) != 1:
        fail(f"deployment.yaml holds {len(deps)} Deployments, expected 1")
        finish()
    pod = deps[0]["spec"]["template"]
    spec = pod["spec"]
    containers = spec.get("initContainers", []) + spec.get("containers", [])
    fbs = [c for c in containers if "fusebox" in c.get("image", "")]
    apps = [c for c in spec.get("containers", []) if "fusebox" not in c.get("image", "")]
    if len(fbs) != 1 or not apps:
        fail(f"expected one fusebox sidecar and an application container, got {[c['name'] for c in containers]}")
        finish()
    fb = fbs[0]
    ok(f"fusebox sidecar {fb['name']!r} beside {[c['name'] for c in apps]}")
    named = {p["name"]: p["containerPort"] for p in fb.get("ports", []) if "name" in p}

    def resolve(port):
        return named.get(port) if isinstance(port, str) else port

    want = {"livenessProbe": "/health/live", "readinessProbe": "/health/ready", "startupProbe": "/health/ready"}
    for probe, path in want.items():
        p = fb.get(probe)
        if p is None:
            if probe == "startupProbe":
                continue
            fail(f"fusebox has no {probe}")
            continue
        get = p.get("httpGet", {})
        port = resolve(get.get("port"))
        if get.get("path") == path and port == admin_port:
            ok(f"{probe} GET {path} on port {get.get('port')} = admin port {admin_port}")
        else:
            fail(f"{probe} is GET {get.get('path')} on {get.get('port')} ({port}); expected {path} on {admin_port}")

    ann = pod.get("metadata", {}).get("annotations", {})
    if (ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(admin_port)
            and ann.get("prometheus.io/path", "/metrics") == "/metrics"):
        ok(f"Prometheus annotations scrape :{admin_port}/metrics")
    else:
        fail(f"Prometheus annotations {ann} do not point at :{admin_port}/metrics")

    # Config path: a ConfigMap volume mounted as a directory (no subPath) holding the file.
    args = fb.get("args", []) + fb.get("command", [])
    env = {e["name"]: e for e in fb.get("env", [])}
    cfg = args[args.index("--config") + 1] if "--config" in args else env.get("FUSEBOX_CONFIG", {}).get("value")
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    good = False
    for m in fb.get("volumeMounts", []):
        vol = vols.get(m["name"], {})
        if "subPath" in m or "subPathExpr" in m:
            fail(f"volumeMount {m['name']} uses subPath: ConfigMap updates never reach it")
        if (vol.get("configMap", {}).get("name") == cm["metadata"]["name"] and cfg
                and os.path.dirname(cfg) == m["mountPath"].rstrip("/")
                and os.path.basename(cfg) in cm["data"]):
            good = True
    (ok if good else fail)(f"--config {cfg} is the ConfigMap {cm['metadata']['name']} mounted as a directory")
    token_env = admin.get("token_env")
    if token_env and token_env in env:
        ok(f"{token_env} ([admin] token_env) is set from {list(env[token_env].get('valueFrom', {'value': 0}))[0]}")
    else:
        fail(f"[admin] token_env {token_env!r} is not in the sidecar's env")

    grace = spec.get("terminationGracePeriodSeconds", 30)
    pre = fb.get("lifecycle", {}).get("preStop")
    if not pre:
        fail("fusebox has no preStop hook")
        pre_s = 0
    elif "sleep" in pre:
        pre_s = pre["sleep"]["seconds"]
    else:
        cmd = pre.get("exec", {}).get("command", [])
        pre_s = float(cmd[-1]) if cmd and cmd[0].endswith("sleep") else 0
    if pre_s + shutdown <= grace:
        ok(f"terminationGracePeriodSeconds {grace} >= preStop {pre_s:g}s + shutdown_timeout {shutdown:g}s")
    else:
        fail(f"terminationGracePeriodSeconds {grace} < preStop {pre_s}s + shutdown_timeout {shutdown}s")

    for c in [fb] + apps:
        sc = {**spec.get("securityContext", {}), **c.get("securityContext", {})}
        if sc.get("runAsNonRoot") and sc.get("readOnlyRootFilesystem"):
            ok(f"{c['name']}: runAsNonRoot, readOnlyRootFilesystem")
        else:
            fail(f"{c['name']}: securityContext lacks runAsNonRoot or readOnlyRootFilesystem")
        res = c.get("resources", {})
        (ok if res.get("requests") and res.get("limits") else fail)(f"{c['name']}: resource requests and limits")
    finish()
