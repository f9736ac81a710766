#!/usr/bin/env python3
"""Per-request latency on the wire, split by position on the connection.

Reads a loopback capture (tcpdump) of a proxy's listening port and, for each client
connection, measures each request from its first byte on the wire to the last byte of
its answer. Prints the median and p99 of all requests, the slowest ones with their
index on their connection (0 = the connection's first request), and the first requests
apart from the rest: a cost paid once per new connection shows there and nowhere else.
Assumes one request at a time per connection (HTTP/1.1 without pipelining).

    tcpdump -i lo -s 128 -w /tmp/cap.pcap 'tcp port 18480' &   # then run the load
    bench/conn_latency.py /tmp/cap.pcap 18480

Needs tcpdump (Debian's package of that name).
"""
import collections
import re
import subprocess
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    cap, port = sys.argv[1], sys.argv[2]
    out = subprocess.run(["tcpdump", "-r", cap, "-tt", "-n"], capture_output=True, text=True, check=True).stdout
    line = re.compile(r"(\S+) IP6? (\S+)\.(\d+) > (\S+)\.(\d+): Flags \[\S+\].* length (\d+)")
    events = collections.defaultdict(list)  # client port -> [(time, "req"|"resp")]
    for text in out.splitlines():
        m = line.match(text)
        if not m or int(m[6]) == 0:
            continue
        t = float(m[1])
        if m[5] == port:
            events[m[3]].append((t, "req"))
        elif m[3] == port:
            events[m[5]].append((t, "resp"))
    reqs = []  # (latency ms, index on its connection)
    for evs in events.values():
        index, start, last = 0, None, None
        for t, kind in evs:
            if kind == "req":
                if start is None or last is not None:  # a new request begins
                    if start is not None:
                        reqs.append(((last - start) * 1e3, index))
                        index += 1
                    start, last = t, None
            else:
                last = t
        if start is not None and last is not None:
            reqs.append(((last - start) * 1e3, index))
    if not reqs:
        sys.exit("no request/answer pairs on port " + port)
    reqs.sort()
    pct = lambda xs, q: xs[min(len(xs) - 1, int(len(xs) * q))]
    print(f"{len(reqs)} requests on {len(events)} connections: p50 {pct(reqs, 0.5)[0]:.3f} ms, "
          f"p99 {pct(reqs, 0.99)[0]:.3f} ms")
    print("slowest (ms, index on its connection):", [(round(l, 3), i) for l, i in reqs[-10:]])
    first = sorted(l for l, i in reqs if i == 0)
    rest = sorted(l for l, i in reqs if i > 0)
    if first:
        print(f"first request of a connection: n={len(first)}, median {pct(first, 0.5):.3f} ms")
    if rest:
        print(f"later requests: n={len(rest)}, median {pct(rest, 0.5):.3f} ms, p99 {pct(rest, 0.99):.3f} ms")


if __name__ == "__main__":
    main()
