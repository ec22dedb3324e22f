"""The demo: real HTTP traffic through the middleware to a simulated LLM, metrics shown.

``python -m llm_metrics_middleware`` starts the built-in simulated upstream (OpenAI- and
Anthropic-compatible) behind :class:`LLMMetricsWSGIMiddleware` on a stdlib HTTP server on
127.0.0.1, sends calls from two users (streamed and not, one stream with no usage so it
is estimated), then prints the Prometheus metrics the calls produced. Nothing is needed
beyond the package itself; ``--serve`` keeps the server up afterwards.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socketserver
import sys
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry

from ._drivers.wsgi import LLMMetricsWSGIMiddleware
from ._exporters.prometheus import PrometheusExporter
from .testing import SimulatedLLM


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


_CALLS: list[tuple[str, str, dict[str, Any], dict[str, str]]] = [
    ("alice", "/v1/chat/completions", {"model": "gpt-4o-mini", "user": "alice", "max_tokens": 12,
                                       "messages": [{"role": "user", "content": "What does a token cost?"}]}, {}),
    ("alice", "/v1/chat/completions", {"model": "gpt-4o-mini", "user": "alice", "stream": True,
                                       "stream_options": {"include_usage": True},
                                       "messages": [{"role": "user", "content": "Stream me an answer"}]}, {}),
    ("bob", "/v1/messages", {"model": "claude-sonnet-4", "max_tokens": 20, "metadata": {"user_id": "bob"},
                             "messages": [{"role": "user", "content": "Hello from Bob"}]}, {"x-api-key": "sk-demo-bob"}),
    ("bob", "/v1/messages", {"model": "claude-sonnet-4", "max_tokens": 8, "stream": True,
                             "metadata": {"user_id": "bob"},
                             "messages": [{"role": "user", "content": "Stream for Bob"}]}, {"x-api-key": "sk-demo-bob"}),
    ("bob", "/v1/chat/completions", {"model": "gpt-4o-mini", "user": "bob", "stream": True, "max_tokens": 10,
                                     "messages": [{"role": "user", "content": "A stream with no usage in it"}]}, {}),
]


def _post(port: int, path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json", **headers})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_metrics_middleware", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    parser.add_argument("--serve", action="store_true", help="keep serving after the demo traffic")
    parser.add_argument("--all", action="store_true", help="print every metric, not only the token counters")
    args = parser.parse_args(argv)

    registry = CollectorRegistry()
    upstream = SimulatedLLM()
    app = LLMMetricsWSGIMiddleware(
        upstream.wsgi,
        exporters=[PrometheusExporter(registry)],
        dimensions=["API ID", "Operation ID", "User ID", "Model"],
        gateway_id="demo",
        metrics_path="/metrics",
    )
    server = make_server("127.0.0.1", args.port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    port = server.server_port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    print(f"simulated LLM upstream with the middleware on http://127.0.0.1:{port}\n")
    for user, path, body, headers in _CALLS:
        status, payload = _post(port, path, body, headers)
        kind = "stream" if body.get("stream") else "json"
        extra = " (no usage in stream: estimated)" if body.get("stream") and "stream_options" not in body and path.endswith("/chat/completions") else ""
        print(f"  {user:5} POST {path:22} {kind:6} -> {status}, {len(payload)} bytes{extra}")

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    metrics = conn.getresponse().read().decode()
    conn.close()
    print("\nGET /metrics:\n")
    for line in metrics.splitlines():
        if args.all:
            print(line)
        elif line.startswith("llm_") and "_created" not in line and "_bucket" not in line:
            print("  " + line)
    if args.serve:
        print(f"\nserving on http://127.0.0.1:{port} (Ctrl+C to stop)")
        try:
            thread.join()
        except KeyboardInterrupt:
            pass
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
