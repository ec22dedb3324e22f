"""The one memory measurement: a large body through a middleware in a fresh process.

Each case (body kind, ASGI or WSGI, variant) runs in its own subprocess
(``bench.py --large-child``) so nothing of an earlier case is in its memory: the peak
resident set is reset to the current one just before the request (``/proc/self/clear_refs``),
and the growth is the peak (VmHWM) minus the resident set (VmRSS) then. Bodies are
generated from one reused piece, so only what the middleware keeps can grow. The same run
gives the throughput (MB/s through the middleware). :func:`core_scan` measures the sans-IO
extractor alone, in the parent.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import time
from typing import Any

from common import CHAT_PATH
from drivers import asgi_scope, wsgi_environ
from variants import BufferThenParse, ours_asgi, ours_wsgi, prom_sum
from workloads import large_chunks, request_body

#: What each server runs: ``buffer`` (a buffering gateway policy) exists for ASGI only.
LARGE_VARIANTS = {"asgi": ("bare", "ours", "buffer"), "wsgi": ("bare", "ours")}


def _proc_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _request_of(kind: str) -> tuple[str, bytes, bytes]:
    """Path, response Content-Type and request body of a large-body case."""
    if kind == "embeddings":
        return "/v1/embeddings", b"application/json", json.dumps({"model": "text-embedding-3-small", "input": ["x"]}).encode()
    if kind == "text":
        return CHAT_PATH, b"application/json", request_body()
    return CHAT_PATH, b"text/event-stream; charset=utf-8", request_body(stream=True, include_usage=True)


def _reset_peak() -> int:
    gc.collect()
    try:  # reset the peak to the current RSS, so imports and setup do not count
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _proc_status("VmRSS")


def run_large_child(kind: str, server: str, variant: str, size: int) -> dict[str, Any]:
    """One large-body case in this (fresh) process: MB/s and VmHWM growth."""
    path, content_type, req = _request_of(kind)
    registry = None
    buffering: BufferThenParse | None = None
    nbytes = 0
    if server == "asgi":

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
            for chunk in large_chunks(kind, size):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        wrapped: Any = app
        if variant == "ours":
            wrapped, registry = ours_asgi(app)
        elif variant == "buffer":
            wrapped = buffering = BufferThenParse(app)
        scope = asgi_scope(path, req)
        request = {"type": "http.request", "body": req, "more_body": False}

        async def receive() -> Any:
            return request

        async def send(message: Any) -> None:
            nonlocal nbytes
            nbytes += len(message.get("body", b""))

        loop = asyncio.new_event_loop()
        before = _reset_peak()
        start = time.perf_counter()
        loop.run_until_complete(wrapped(scope, receive, send))
        elapsed = time.perf_counter() - start
    elif server == "wsgi":
        headers = [("Content-Type", content_type.decode())]

        def wsgi_app(environ: Any, start_response: Any) -> Any:
            environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
            start_response("200 OK", headers)
            return large_chunks(kind, size)

        wsgi: Any = wsgi_app
        if variant == "ours":
            wsgi, registry = ours_wsgi(wsgi_app)
        elif variant != "bare":
            raise ValueError(f"no WSGI variant {variant!r}")
        environ = wsgi_environ(path, req)
        environ["wsgi.input"] = io.BytesIO(req)
        before = _reset_peak()
        start = time.perf_counter()
        iterable = wsgi(environ, lambda status, headers, exc_info=None: None)
        try:
            for chunk in iterable:
                nbytes += len(chunk)
        finally:
            getattr(iterable, "close", lambda: None)()
        elapsed = time.perf_counter() - start
    else:
        raise ValueError(f"server is asgi or wsgi, got {server!r}")
    peak = _proc_status("VmHWM")
    counted: float | None = None
    if registry is not None:
        counted = prom_sum(registry, "llm_tokens_total")
    elif buffering is not None:
        counted = buffering.tokens
    return {"growth": peak - before, "bytes": nbytes, "seconds": elapsed, "counted": counted}


def core_scan(kind: str, size: int) -> tuple[float, int, Any]:
    """Seconds and bytes for the sans-IO extractor alone on a large body, and its result."""
    from llm_metrics_middleware._core.extractor import JSON, SSE, UsageExtractor

    extractor = UsageExtractor(SSE if kind == "sse" else JSON)
    nbytes = 0
    gc.collect()
    start = time.perf_counter()
    for chunk in large_chunks(kind, size):
        extractor.feed(chunk)
        nbytes += len(chunk)
    result = extractor.close()
    elapsed = time.perf_counter() - start
    return elapsed, nbytes, result
