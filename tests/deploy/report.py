"""Reporting and small parsers shared by the deployment checks (tests/deploy/checks.py)."""

import re
import sys

FAILURES = []

def fail(msg):
    FAILURES.append(msg)
    print(f"  FAIL {msg}")


def ok(msg):
    print(f"  ok   {msg}")


def finish():
    if FAILURES:
        print(f"{len(FAILURES)} problem(s)", file=sys.stderr)
        sys.exit(1)


def parse_duration(text):
    """Seconds of a fusebox duration ("20s", "500ms", "1m 30s", 30)."""
    if isinstance(text, (int, float)):
        return float(text)
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}
    total, pos = 0.0, 0
    for m in re.finditer(r"\s*([0-9.]+)\s*([a-z]+)", text):
        if m.group(2) not in units:
            raise ValueError(f"unit of {text!r} not understood by this check")
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise ValueError(f"duration {text!r} not understood by this check")
    return total


def port_of(address):
    return int(address.rsplit(":", 1)[1])
