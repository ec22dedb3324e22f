"""In-process ASGI and WSGI: the apps under test and the loops that call them, as a server does.

No sockets: a request is a scope (or environ) and a body; the ASGI driver awaits the app
with a ``receive`` that returns the body and a ``send`` that drops every message, the WSGI
driver calls the app, iterates its response and closes it.
"""

from __future__ import annotations

import gc
import io
import sys
import time
from collections.abc import Callable
from typing import Any

from workloads import COMPLETION_BODY


def asgi_scope(path: str, body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"OpenAI/Python 1.66.3"),
            (b"accept", b"application/json"),
            (b"content-type", b"application/json"),
            (b"authorization", b"Bearer sk-bench"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


_JSON_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(COMPLETION_BODY)).encode())]
_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


def asgi_json_app(body: bytes) -> Callable[..., Any]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": _JSON_HEADERS})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return app


def asgi_stream_app(chunks: list[bytes]) -> Callable[..., Any]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


async def drive_asgi(app: Any, scope: dict[str, Any], body: bytes, n: int) -> float:
    """Seconds for ``n`` calls of ``app``; a fresh scope each call (middlewares mark it)."""
    request = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict[str, Any]:
        return request

    async def send(message: Any) -> None:
        pass

    gc.collect()
    start = time.perf_counter()
    for _ in range(n):
        await app(dict(scope), receive, send)
    return time.perf_counter() - start


def wsgi_environ(path: str, body: bytes) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "OpenAI/Python 1.66.3",
        "HTTP_ACCEPT": "application/json",
        "HTTP_AUTHORIZATION": "Bearer sk-bench",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def wsgi_json_app(body: bytes) -> Callable[..., Any]:
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]

    def app(environ: Any, start_response: Any) -> Any:
        environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        start_response("200 OK", headers)
        return [body]

    return app


def wsgi_stream_app(chunks: list[bytes]) -> Callable[..., Any]:
    headers = [("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache")]

    def app(environ: Any, start_response: Any) -> Any:
        environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        start_response("200 OK", headers)
        return iter(chunks)

    return app


def serve_wsgi(app: Any, environ: dict[str, Any], body: bytes, n: int) -> None:
    """``n`` calls as a WSGI server makes them: call, iterate, close (no clock, so that
    bench/instructions.py counts this loop alone)."""

    def write(data: bytes) -> None:
        pass

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return write

    for _ in range(n):
        env = dict(environ)
        env["wsgi.input"] = io.BytesIO(body)
        iterable = app(env, start_response)
        try:
            for _chunk in iterable:
                pass
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()


def drive_wsgi(app: Any, environ: dict[str, Any], body: bytes, n: int) -> float:
    """Seconds for ``n`` calls: call, iterate, close, as a WSGI server does."""
    gc.collect()
    start = time.perf_counter()
    serve_wsgi(app, environ, body, n)
    return time.perf_counter() - start
