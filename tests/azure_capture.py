"""A local stand-in for Application Insights' ingestion endpoint ("Breeze"), for tests.

The Azure Monitor exporter POSTs a JSON array of telemetry envelopes to
``{IngestionEndpoint}/v2.1/track`` and expects ``{"itemsReceived": n, "itemsAccepted": n,
"errors": []}`` back. :class:`CaptureServer` accepts those POSTs on 127.0.0.1, stores the
envelopes it accepted, and can be switched at runtime to fail (500, 503, 429...) or to hang,
so tests can watch the exporter's retries and offline storage against a real socket.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OK = "ok"
HANG = "hang"
TRACK_PATH = "/v2.1/track"
ZERO_IKEY = "00000000-0000-0000-0000-000000000000"


def parse_envelopes(body: bytes, content_encoding: str | None) -> list[dict[str, Any]]:
    """The envelopes of one POST: a JSON array, or newline-delimited JSON, maybe gzipped."""
    encoding = (content_encoding or "").lower()
    if encoding == "gzip" or body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    elif encoding == "deflate":
        body = zlib.decompress(body)
    text = body.decode("utf-8").strip()
    if not text:
        return []
    if text.startswith("["):
        items = json.loads(text)
        return [item for item in items if isinstance(item, dict)]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class CaptureServer:
    """A threaded HTTP server that records what the exporter sends.

    ``mode`` is :data:`OK` (accept and store), an HTTP status such as ``500``, ``503`` or
    ``429`` (reject, store nothing), or :data:`HANG` (hold the request ``hang_seconds``
    without answering). Switch it at any time with :meth:`set_mode`.
    """

    def __init__(self, mode: str | int = OK, *, hang_seconds: float = 30.0) -> None:
        self.mode: str | int = mode
        self.hang_seconds = hang_seconds
        self.envelopes: list[dict[str, Any]] = []
        #: (mode, number of envelopes in the POST) for every POST, accepted or not.
        self.posts: list[tuple[str | int, int]] = []
        self.other_requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="azure-capture", daemon=True
        )

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> CaptureServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()  # let hanging handlers go
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> CaptureServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def connection_string(self) -> str:
        return f"InstrumentationKey={ZERO_IKEY};IngestionEndpoint=http://127.0.0.1:{self.port}/"

    # -- control ---------------------------------------------------------------------------

    def set_mode(self, mode: str | int) -> None:
        with self._lock:
            self.mode = mode
            if mode == HANG:
                self._release.clear()
            else:
                self._release.set()  # answer requests that are still hanging (with the new mode)

    def clear(self) -> None:
        with self._lock:
            self.envelopes.clear()
            self.posts.clear()

    # -- what arrived ----------------------------------------------------------------------

    def metrics(self) -> list[dict[str, Any]]:
        """One dict per metric data point: name, namespace, value, count, properties."""
        with self._lock:
            envelopes = list(self.envelopes)
        out = []
        for envelope in envelopes:
            base = envelope.get("data", {}).get("baseData", {})
            if envelope.get("data", {}).get("baseType") != "MetricData":
                continue
            for point in base.get("metrics", []):
                out.append({
                    "name": point.get("name"),
                    "namespace": point.get("ns"),
                    "value": point.get("value"),
                    "count": point.get("count"),
                    "min": point.get("min"),
                    "max": point.get("max"),
                    "properties": dict(base.get("properties") or {}),
                    "tags": dict(envelope.get("tags") or {}),
                    "time": envelope.get("time"),
                })
        return out

    def sums(self, name: str, **where: str) -> float:
        """Sum of a metric's values over the points whose properties match ``where``."""
        total = 0.0
        for point in self.metrics():
            if point["name"] == name and all(point["properties"].get(k) == v for k, v in where.items()):
                total += point["value"]
        return total

    def wait_for(self, predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        return bool(predicate())

    # -- the handler -----------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        capture = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.path.split("?")[0] != TRACK_PATH:
                    with capture._lock:
                        capture.other_requests.append(("POST", self.path))
                    self._answer(404, {"error": "not found"})
                    return
                with capture._lock:
                    mode = capture.mode
                if mode == HANG:
                    # Hold the request, then drop the connection unanswered. Nothing is stored
                    # even if the mode changed meanwhile: the client has timed out by then and
                    # keeps the batch for a retry, so storing it here would count it twice.
                    with capture._lock:
                        capture.posts.append((HANG, -1))
                    capture._release.wait(capture.hang_seconds)
                    self.close_connection = True
                    return
                try:
                    envelopes = parse_envelopes(body, self.headers.get("Content-Encoding"))
                except ValueError:
                    self._answer(400, {"itemsReceived": 0, "itemsAccepted": 0, "errors": []})
                    return
                with capture._lock:
                    capture.posts.append((mode, len(envelopes)))
                    if mode == OK:
                        capture.envelopes.extend(envelopes)
                if mode == OK:
                    n = len(envelopes)
                    self._answer(200, {"itemsReceived": n, "itemsAccepted": n, "errors": []})
                else:
                    status = int(mode)
                    headers = {"Retry-After": "1"} if status == 429 else {}
                    self._answer(status, {"itemsReceived": len(envelopes), "itemsAccepted": 0, "errors": []}, headers)

            def do_GET(self) -> None:
                with capture._lock:
                    capture.other_requests.append(("GET", self.path))
                self._answer(404, {"error": "not found"})

            def _answer(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (read timeout)

        return Handler


@contextmanager
def capture_server(mode: str | int = OK, *, hang_seconds: float = 30.0) -> Iterator[CaptureServer]:
    server = CaptureServer(mode, hang_seconds=hang_seconds).start()
    try:
        yield server
    finally:
        server.stop()
