#!/usr/bin/env python3
"""A do-nothing OTLP/HTTP collector for benchmarks: answers every POST /v1/traces with
200 and an empty ExportTraceServiceResponse, counts exports and bytes, prints them on
SIGTERM / Ctrl-C.

  bench/otlp-sink.py [PORT]      # default 14318
"""
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

exports = 0
received = 0


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 (http.server's naming)
        global exports, received
        n = int(self.headers.get("content-length") or 0)
        self.rfile.read(n)
        exports += 1
        received += n
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 14318
    server = ThreadingHTTPServer(("127.0.0.1", port), Sink)

    def stop(*_):
        print(f"otlp-sink: {exports} exports, {received} bytes", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
