"""A local stand-in for a 3scale backend's Service Management API (report), for tests.

``POST /transactions.xml`` with a form body: ``service_token``, ``service_id`` and
``transactions[i][user_key]`` (or ``[app_id]`` / ``[app_key]``), ``[usage][metric]``,
``[timestamp]``. Like the real backend it answers ``202 Accepted`` with an empty body, and
``403`` with an XML ``<error code="...">`` for a bad service token or credential (``409``
for an application over its limits). It can be switched at runtime to refuse (503), to
hang (read the request, never answer, record nothing), or to block (hold every answer
until released, then accept), so tests watch the exporter against a real socket.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

OK = "ok"
REFUSE = "refuse"  # 503, nothing recorded
HANG = "hang"  # no answer until released, nothing recorded
BLOCK = "block"  # answer held until released, then accepted
TRICKLE = "trickle"  # a status line, then one header byte every 50 ms, never finishing

_FIELD = re.compile(r"^transactions\[(\d+)\]\[(\w+)\](?:\[([^\]]+)\])?$")


def _error(code: str, message: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?><error code="{code}">{message}</error>'.encode()


@dataclass
class Transaction:
    credential: tuple[str, ...]
    usage: dict[str, int]
    timestamp: str | None = None


@dataclass
class Post:
    content_type: str
    fields: list[tuple[str, str]]
    transactions: list[Transaction] = field(default_factory=list)


def parse(body: bytes) -> tuple[dict[str, str], list[Transaction]]:
    top: dict[str, str] = {}
    by_index: dict[int, dict[str, Any]] = {}
    for name, value in parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=True):
        m = _FIELD.match(name)
        if m is None:
            top[name] = value
            continue
        entry = by_index.setdefault(int(m.group(1)), {"usage": {}})
        if m.group(2) == "usage":
            entry["usage"][m.group(3)] = int(value)
        else:
            entry[m.group(2)] = value
    out = []
    for i in sorted(by_index):
        entry = by_index[i]
        if "user_key" in entry:
            credential: tuple[str, ...] = ("user_key", entry["user_key"])
        else:
            credential = ("app_id", entry["app_id"], entry.get("app_key", ""))
        out.append(Transaction(credential, entry["usage"], entry.get("timestamp")))
    return top, out


class CaptureServer:
    def __init__(self, *, service_id: str = "svc-1", service_token: str = "token-1", port: int = 0) -> None:
        self.service_id = service_id
        self.service_token = service_token
        self.mode = OK
        #: Credentials 3scale does not know (403 user_key_invalid / application_not_found).
        self.invalid: set[str] = set()
        #: Credentials over their plan's limits (409 limits_exceeded).
        self.over_limits: set[str] = set()
        self.accepted: list[Post] = []
        self.statuses: list[int] = []
        self.release = threading.Event()
        #: Set when a POST arrives while the mode is BLOCK or HANG (the exporter is waiting on us).
        self.holding = threading.Event()
        self._lock = threading.Lock()
        capture = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if capture.mode == TRICKLE:
                    capture.holding.set()
                    try:
                        self.wfile.write(b"HTTP/1.1 202 Accepted\r\nX-Slow: ")
                        while not capture.release.wait(0.05):
                            self.wfile.write(b"z")
                            self.wfile.flush()
                    except OSError:
                        pass  # the client gave up
                    self.close_connection = True
                    return
                status, payload = capture._handle(self.path, self.headers.get("Content-Type", ""), body)
                if status == 0:
                    self.close_connection = True
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.3scale-v2.0+xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="3scale-capture", daemon=True)

    def start(self) -> CaptureServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def _handle(self, path: str, content_type: str, body: bytes) -> tuple[int, bytes]:
        mode = self.mode
        if mode in (HANG, BLOCK):
            self.holding.set()
            self.release.wait(30)
            if mode == HANG:
                return 0, b""  # hung up without an answer: nothing was applied
        status, payload = self._answer(path, content_type, body)
        with self._lock:
            self.statuses.append(status)
        return status, payload

    def _answer(self, path: str, content_type: str, body: bytes) -> tuple[int, bytes]:
        if self.mode == REFUSE:
            return 503, b""
        if path != "/transactions.xml":
            return 404, b""
        top, transactions = parse(body)
        if top.get("service_token") != self.service_token or top.get("service_id") != self.service_id:
            return 403, _error("service_token_invalid", f'service token "{top.get("service_token")}" is invalid')
        if not transactions:
            return 400, _error("bad_request", "transactions are missing")
        for t in transactions:
            if t.credential[1] in self.invalid:
                code = "user_key_invalid" if t.credential[0] == "user_key" else "application_not_found"
                return 403, _error(code, f'"{t.credential[1]}" is invalid')
            if t.credential[1] in self.over_limits:
                return 409, _error("limits_exceeded", "usage limits are exceeded")
        with self._lock:
            self.accepted.append(Post(content_type, parse_qsl(body.decode("ascii")), transactions))
        return 202, b""

    def sums(self) -> dict[tuple[str, ...], Counter[str]]:
        """Accepted usage per credential."""
        out: dict[tuple[str, ...], Counter[str]] = {}
        with self._lock:
            for post in self.accepted:
                for t in post.transactions:
                    out.setdefault(t.credential, Counter()).update(t.usage)
        return out


@contextmanager
def capture_server(**options: Any) -> Iterator[CaptureServer]:
    server = CaptureServer(**options).start()
    try:
        yield server
    finally:
        server.stop()
