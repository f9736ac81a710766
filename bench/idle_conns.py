#!/usr/bin/env python3
"""Memory per idle client connection, fusebox beside nginx and the hyper floor.

For each proxy (its own process, one core): open N client connections that send
nothing and read the proxy's RSS growth (silent); then send one small GET on each,
read the answers, keep the connections open and read RSS again (idle keep-alive after
one request). Prints KiB per connection for both, and writes JSON with --out.

  bench/idle_conns.py [--conns 10000] [--only fusebox,nginx,hyper-floor] [--out F]

FUSEBOX_BIN (default target/release/fusebox), FLOOR_BIN (default
target/hyper-floor/release/hyper-floor; skipped when missing). Needs nginx (the
upstream and a peer). The file descriptor limit must allow 2*N+100 (20,000 here).
"""

import argparse
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

UP_PORT = 18201
PX_PORT = 18280
ADMIN_PORT = 19982


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def wait_port(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening")


def nginx_conf(work, listen, upstream=None):
    body = (
        f"location / {{ proxy_pass http://up; proxy_http_version 1.1; "
        f"proxy_set_header Connection \"\"; }}"
        if upstream
        else "location / { return 200 'hello'; }"
    )
    ups = (
        f"upstream up {{ server 127.0.0.1:{upstream}; keepalive 32; }}" if upstream else ""
    )
    return f"""worker_processes 1;
daemon off;
pid {work}/nginx-{listen}.pid;
error_log {work}/err-{listen}.log warn;
worker_rlimit_nofile 30000;
events {{ worker_connections 25000; }}
http {{
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 100000;
  client_body_temp_path {work};
  proxy_temp_path {work};
  fastcgi_temp_path {work};
  uwsgi_temp_path {work};
  scgi_temp_path {work};
  {ups}
  server {{ listen 127.0.0.1:{listen} backlog=16384; {body} }}
}}
"""


def start_nginx(work, listen, upstream=None):
    conf = os.path.join(work, f"nginx-{listen}.conf")
    with open(conf, "w") as f:
        f.write(nginx_conf(work, listen, upstream))
    p = subprocess.Popen(["nginx", "-c", conf, "-p", work],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(listen)
    # The worker holds the connections: measure it, not the master.
    time.sleep(0.2)
    kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True)
    worker = int(kids.stdout.split()[0]) if kids.stdout.strip() else p.pid
    return p, worker


def start_fusebox(work, binary, conns):
    cfg = os.path.join(work, "fusebox.toml")
    with open(cfg, "w") as f:
        f.write(f"""[listener]
address = "127.0.0.1:{PX_PORT}"
max_connections = {conns + 100}
idle_timeout = "300s"
header_read_timeout = "300s"
[admin]
address = "127.0.0.1:{ADMIN_PORT}"
[logging]
level = "warn"
access_log = false
[upstreams.up]
endpoints = ["127.0.0.1:{UP_PORT}"]
[[routes]]
name = "all"
path_prefix = "/"
upstream = "up"
""")
    env = dict(os.environ, FUSEBOX_WORKER_THREADS="1")
    p = subprocess.Popen(["taskset", "-c", "0", binary, "run", "--config", cfg],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(PX_PORT)
    return p, p.pid


def start_floor(binary):
    p = subprocess.Popen(["taskset", "-c", "0", binary, f"127.0.0.1:{PX_PORT}",
                          f"127.0.0.1:{UP_PORT}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(PX_PORT)
    return p, p.pid


def settle(pid):
    """RSS once it stops changing (the proxy has accepted everything)."""
    last, same = -1, 0
    for _ in range(100):
        r = rss_kib(pid)
        same = same + 1 if r == last else 0
        if same >= 3:
            return r
        last = r
        time.sleep(0.1)
    return last


def open_conns(n, port):
    socks = []
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


def one_request_each(socks):
    req = b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n"
    sel = selectors.DefaultSelector()
    pending = {}
    for s in socks:
        s.sendall(req)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        pending[s.fileno()] = b""
    done = 0
    deadline = time.time() + 120
    while done < len(socks) and time.time() < deadline:
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj
            data = s.recv(65536)
            if not data:
                raise RuntimeError("proxy closed a connection")
            buf = pending[s.fileno()] + data
            pending[s.fileno()] = buf
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if not sep:
                continue
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip())
            if len(rest) >= length:
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"bad answer {head[:40]!r}")
                sel.unregister(s)
                done += 1
    if done < len(socks):
        raise RuntimeError(f"only {done}/{len(socks)} answered")


def measure(name, start, conns):
    proc, pid = start()
    try:
        base = settle(pid)
        socks = open_conns(conns, PX_PORT)
        silent = settle(pid)
        one_request_each(socks)
        after = settle(pid)
        for s in socks:
            s.close()
        return {
            "name": name,
            "conns": conns,
            "rss_base_kib": base,
            "silent_kib_per_conn": round((silent - base) / conns, 2),
            "keepalive_kib_per_conn": round((after - base) / conns, 2),
            "rss_silent_kib": silent,
            "rss_keepalive_kib": after,
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--only", default="fusebox,nginx,hyper-floor")
    ap.add_argument("--out")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * a.conns + 1000), hard))
    fusebox = os.environ.get("FUSEBOX_BIN", "target/release/fusebox")
    floor = os.environ.get("FLOOR_BIN", "target/hyper-floor/release/hyper-floor")
    work = tempfile.mkdtemp(prefix="idle-conns-")
    up, _ = start_nginx(work, UP_PORT)
    results = []
    try:
        for name in a.only.split(","):
            if name == "fusebox":
                starter = lambda: start_fusebox(work, fusebox, a.conns)
            elif name == "nginx":
                starter = lambda: start_nginx(work, PX_PORT, UP_PORT)
            elif name == "hyper-floor":
                if not os.path.exists(floor):
                    print(f"skipping hyper-floor: {floor} missing", file=sys.stderr)
                    continue
                starter = lambda: start_floor(floor)
            else:
                sys.exit(f"unknown proxy {name}")
            r = measure(name, starter, a.conns)
            results.append(r)
            print(f"{name:12} silent {r['silent_kib_per_conn']:6.2f} KiB/conn   "
                  f"idle keep-alive after one request {r['keepalive_kib_per_conn']:6.2f} KiB/conn   "
                  f"(RSS {r['rss_base_kib']} -> {r['rss_silent_kib']} -> {r['rss_keepalive_kib']} KiB, "
                  f"{a.conns} conns)", flush=True)
            # Let the kernel reclaim the closed sockets' ports before the next proxy.
            time.sleep(1)
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
