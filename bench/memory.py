"""Memory growth of the middleware on a 200 MB JSON body and a 1,000,000-event SSE stream.

Each case runs in a fresh subprocess, once bare and once wrapped (ASGI and WSGI), with the
body generated on the fly from one reused chunk, so the only memory that can grow is what
the server side (here: a sink that drops every chunk) and the middleware keep. Growth is
the process's peak resident set (VmHWM) minus its resident set just before the request.

    python bench/memory.py            # all cases
    python bench/memory.py --quick    # 20 MB and 100,000 events

Exits non-zero if the middleware's growth over bare exceeds 5 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

LIMIT_MB = 5.0


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def json_chunks(total: int) -> Iterator[bytes]:
    piece = b'{"object":"embedding","index":0,"embedding":[' + b"0.0123456789," * 5000 + b'0.5]},'
    yield b'{"object":"list","model":"text-embedding-3-small","data":['
    sent = 0
    while sent < total:
        yield piece
        sent += len(piece)
    yield b'{}],"usage":{"prompt_tokens":123,"total_tokens":123}}'


def sse_chunks(events: int) -> Iterator[bytes]:
    event = (
        b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
        b'"choices":[{"index":0,"delta":{"content":"token "},"finish_reason":null}]}\n\n'
    )
    for _ in range(events):
        yield event
    yield b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":%d,"total_tokens":%d}}\n\n' % (events, events + 9)
    yield b"data: [DONE]\n\n"


def run_case(kind: str, server: str, wrapped: bool, size: int) -> dict[str, Any]:
    from llm_metrics_middleware import LLMMetricsMiddleware, LLMMetricsWSGIMiddleware
    from llm_metrics_middleware.testing import InMemoryExporter

    exporter = InMemoryExporter()
    if kind == "json":
        path, content_type, make = "/v1/embeddings", "application/json", lambda: json_chunks(size)
        request = {"model": "text-embedding-3-small", "input": "x"}
    else:
        path, content_type, make = "/v1/chat/completions", "text/event-stream", lambda: sse_chunks(size)
        request = {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True}}
    body = json.dumps(request).encode()
    nbytes = 0
    before = _status("VmRSS")
    start = time.perf_counter()
    if server == "asgi":

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type.encode())]})
            for chunk in make():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        asgi = LLMMetricsMiddleware(app, exporters=[exporter]) if wrapped else app
        scope = {"type": "http", "method": "POST", "path": path, "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"application/json")]}

        async def receive() -> Any:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Any) -> None:
            nonlocal nbytes
            nbytes += len(message.get("body", b""))

        asyncio.run(asgi(scope, receive, send))  # type: ignore[arg-type]
    else:
        import io

        def wsgi_app(environ: Any, start_response: Any) -> Iterator[bytes]:
            environ["wsgi.input"].read()
            start_response("200 OK", [("Content-Type", content_type)])
            return make()

        wsgi = LLMMetricsWSGIMiddleware(wsgi_app, exporters=[exporter]) if wrapped else wsgi_app
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": path, "QUERY_STRING": "", "CONTENT_TYPE": "application/json",
                   "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
        iterable = wsgi(environ, lambda status, headers, exc_info=None: None)
        try:
            for chunk in iterable:
                nbytes += len(chunk)
        finally:
            getattr(iterable, "close", lambda: None)()
    elapsed = time.perf_counter() - start
    peak = _status("VmHWM")
    counted = None
    if exporter.calls and exporter.calls[0].usage is not None:
        counted = exporter.calls[0].usage.total_tokens
    return {"growth": peak - before, "bytes": nbytes, "seconds": elapsed, "counted": counted}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=4, metavar=("KIND", "SERVER", "WRAPPED", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, server, wrapped, size = args.child
        print(json.dumps(run_case(kind, server, wrapped == "1", int(size))))
        return 0
    json_size = 20_000_000 if args.quick else 200_000_000
    events = 100_000 if args.quick else 1_000_000
    failed = False
    print(f"{'case':28} {'bare MB':>8} {'ours MB':>8} {'growth MB':>9} {'MB/s bare':>10} {'MB/s ours':>10} counted")
    for kind, size, label in (("json", json_size, f"{json_size // 1_000_000} MB JSON"), ("sse", events, f"{events:,} SSE events")):
        for server in ("asgi", "wsgi"):
            results = {}
            for wrapped in ("0", "1"):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", kind, server, wrapped, str(size)],
                    check=True, capture_output=True, text=True,
                )
                results[wrapped] = json.loads(out.stdout)
            bare, ours = results["0"], results["1"]
            growth = (ours["growth"] - bare["growth"]) / 1e6
            failed |= growth > LIMIT_MB
            print(
                f"{label + ' ' + server:28} {bare['growth'] / 1e6:8.2f} {ours['growth'] / 1e6:8.2f} {growth:9.2f} "
                f"{bare['bytes'] / 1e6 / bare['seconds']:10.0f} {ours['bytes'] / 1e6 / ours['seconds']:10.0f} {ours['counted']}"
            )
    print(f"\nlimit: {LIMIT_MB} MB growth over bare -> {'FAIL' if failed else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
