"""What a token limit adds per request: in memory and in a real Redis, ASGI and WSGI.

Each variant wraps the simulated LLM (a non-streamed ~1 KB chat completion) in the
middleware with one Prometheus exporter; the variants differ only in ``limits=``:

- ``no limit``: the middleware without limits (the baseline);
- ``memory``: one ``TokenLimit`` per user, ``limit_storage="memory://"``;
- ``redis``: the same in a ``redis-server`` this script starts on 127.0.0.1 (skipped when
  ``redis-server`` is not installed); per request one ``GET`` before the app and one
  ``INCRBY`` (a Lua script) when the call is counted, over loopback;
- ``refused``: every request refused with 429 by the memory store (the app is not called).

Rounds interleave the variants in a shuffled order, so noise on a shared machine hits
them alike; each round sends ``--requests`` requests per variant in process (no HTTP
server: the cost measured is the middleware's and the store's, not a server's). Figures
are medians over rounds of µs per request; "added" is the median of the per-round
differences to ``no limit``; "ratio" the median of the per-round ratios. ASGI charges are
tasks on the loop: each batch waits for them, so their cost is included.

    python bench/limits.py                 # 15 rounds of 300 requests
    python bench/limits.py --quick         # 5 rounds of 100
    python bench/limits.py --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path, and this file would shadow
# the `limits` library it measures.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry  # noqa: E402

from llm_metrics_middleware import (  # noqa: E402
    LLMMetricsMiddleware,
    LLMMetricsWSGIMiddleware,
    PrometheusExporter,
    TokenLimit,
)
from llm_metrics_middleware.testing import SimulatedLLM  # noqa: E402

BODY = json.dumps({
    "model": "gpt-sim",
    "messages": [{"role": "user", "content": "hello there, how are you today? " * 4}],
}).encode()
USERS = [f"user-{i}" for i in range(50)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Redis:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.port = free_port()
        self.popen = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self.dir,
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or self.popen.poll() is not None:
                self.stop()
                raise RuntimeError("redis-server did not start within 10 s")
            time.sleep(0.02)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def options(variant: str, redis: Redis | None) -> dict[str, Any]:
    out: dict[str, Any] = {"exporters": [PrometheusExporter(CollectorRegistry())]}
    if variant == "no limit":
        return out
    tokens = 1 if variant == "refused" else 10**12
    out["limits"] = [TokenLimit("per-user", tokens=tokens, per="minute", key=lambda r: r.headers.get("x-user-id"))]
    if variant == "redis":
        assert redis is not None
        out["limit_storage"] = redis.url
    return out


# -- ASGI ------------------------------------------------------------------------------------


def asgi_runner(variant: str, redis: Redis | None, loop: asyncio.AbstractEventLoop) -> Callable[[int], float]:
    app = LLMMetricsMiddleware(SimulatedLLM().asgi, **options(variant, redis))

    async def one(user: str) -> None:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
            "query_string": b"", "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"x-user-id", user.encode()),
                        (b"content-length", str(len(BODY)).encode())],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        }
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            pass

        await app(scope, receive, send)

    async def batch(n: int) -> float:
        start = time.perf_counter()
        for i in range(n):
            await one(USERS[i % len(USERS)])
        if app.metering.limits is not None:
            await app.metering.limits.drain()
        return (time.perf_counter() - start) / n * 1e6

    if variant == "refused":  # spend the budget of every user first
        loop.run_until_complete(batch(len(USERS)))
    return lambda n: loop.run_until_complete(batch(n))


# -- WSGI ------------------------------------------------------------------------------------


def wsgi_runner(variant: str, redis: Redis | None) -> Callable[[int], float]:
    import io

    app = LLMMetricsWSGIMiddleware(SimulatedLLM().wsgi, **options(variant, redis))

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        return lambda data: None

    def one(user: str) -> None:
        environ = {
            "REQUEST_METHOD": "POST", "PATH_INFO": "/v1/chat/completions", "SCRIPT_NAME": "", "QUERY_STRING": "",
            "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(BODY)), "HTTP_X_USER_ID": user,
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.input": io.BytesIO(BODY), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
            "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False, "wsgi.version": (1, 0),
        }
        body = app(environ, start_response)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()

    def batch(n: int) -> float:
        start = time.perf_counter()
        for i in range(n):
            one(USERS[i % len(USERS)])
        return (time.perf_counter() - start) / n * 1e6

    if variant == "refused":
        batch(len(USERS))
    return batch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="5 rounds of 100 requests")
    parser.add_argument("--json", type=Path, help="write every sample here")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.requests = 5, 100
    variants = ["no limit", "memory", "refused"]
    redis: Redis | None = None
    if shutil.which("redis-server"):
        redis = Redis()
        variants.insert(2, "redis")
    else:
        print("redis-server not found: the redis variant is skipped", file=sys.stderr)
    loop = asyncio.new_event_loop()
    samples: dict[str, dict[str, list[float]]] = {}
    try:
        runners: dict[str, dict[str, Callable[[int], float]]] = {
            "ASGI": {v: asgi_runner(v, redis, loop) for v in variants},
            "WSGI": {v: wsgi_runner(v, redis) for v in variants},
        }
        for driver, by_variant in runners.items():
            for run in by_variant.values():
                run(max(20, args.requests // 5))  # warm up: imports, caches, connections
            samples[driver] = {v: [] for v in variants}
            for r in range(args.rounds):
                order = list(variants)
                random.shuffle(order)
                for v in order:
                    samples[driver][v].append(by_variant[v](args.requests))
                print(f"{driver} round {r + 1}/{args.rounds}", file=sys.stderr)
        ping_us: float | None = None
        if redis is not None:  # one round trip to this Redis, for scale: a limit costs two per request
            import redis as redis_py

            client = redis_py.Redis.from_url(redis.url)
            timings = []
            for _ in range(500):
                start = time.perf_counter()
                client.ping()
                timings.append((time.perf_counter() - start) * 1e6)
            client.close()
            ping_us = statistics.median(timings)
    finally:
        loop.close()
        if redis is not None:
            redis.stop()

    print(f"## What a token limit adds per request ({args.rounds} rounds x {args.requests} requests, medians)\n")
    print("| driver | variant | µs per request | added vs no limit, µs | ratio to no limit |")
    print("| --- | --- | --- | --- | --- |")
    for driver, by_variant in samples.items():
        base = by_variant["no limit"]
        for v, values in by_variant.items():
            added = statistics.median(x - b for x, b in zip(values, base, strict=True))
            ratio = statistics.median(x / b for x, b in zip(values, base, strict=True))
            shown_added = "" if v == "no limit" else f"{added:+.1f}"
            shown_ratio = "" if v == "no limit" else f"{ratio:.2f}"
            print(f"| {driver} | {v} | {statistics.median(values):.1f} | {shown_added} | {shown_ratio} |")
    if ping_us is not None:
        print(f"\nOne Redis round trip (redis-py PING, median of 500): {ping_us:.0f} µs; a limited request makes two "
              "(GET before the app, INCRBY when counted).")
    print(
        "\n`refused` is the whole cost of a refused request (no app, no LLM call): compare it with "
        "`no limit`, which includes the simulated upstream."
    )
    if args.json:
        args.json.write_text(json.dumps(samples, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
