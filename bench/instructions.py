"""Instructions per non-streamed request under callgrind: bare app, ours, the instrumentator.

Wall time on a shared 2-core machine moves by a tenth from run to run; the instructions a
request executes barely move, so this is the figure to compare two versions of the
per-call path with (section 1 of ``bench.py`` is the one the README quotes, in time).

One child runs under ``valgrind --tool=callgrind --dump-before=os_getppid``: it sets up
what section 1 sets up (the four apps, OpenTelemetry's included, so that a current-span
look-up costs what it costs there), warms every app, then serves ``--requests`` requests
through each variant in turn, calling ``os.getppid()`` before and after each. Each call
makes callgrind write the counts since the previous one to a file of its own, so every
variant's figure is its requests alone: no start-up, no import, no warm-up, no garbage
collection of the set-up (a full collection runs before each variant, in a dump of its own). The
child runs with a fixed ``PYTHONHASHSEED``. Figures move by well under 1 % between runs.

    python bench/instructions.py                  # ASGI: bare, ours, instrumentator, otel (~1 min)
    python bench/instructions.py --wsgi           # also WSGI: bare and ours
    python bench/instructions.py --steps          # also each step of a MeteredCall, driven by hand
    python bench/instructions.py --streams        # also SSE streams: per stream and per chunk
    python bench/instructions.py --keep DIR       # keep the callgrind files (callgrind_annotate)

Prints Markdown: instructions per request, added over bare, and ours added divided by the
instrumentator's added (the issue's target: at most 0.5).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import CHAT_PATH, TARGET_JSON_RATIO, log  # noqa: E402

WARM_UP = 300
ASGI_VARIANTS = ("bare", "ours", "instrumentator", "otel")
WSGI_VARIANTS = ("wsgi-bare", "wsgi-ours")
#: ``--steps``: a MeteredCall driven by hand, through the first k of these steps.
STEPS = (
    "RequestView.from_scope + MeteredCall()",
    "MeteredCall.request_body",
    "MeteredCall.response_start",
    "MeteredCall.feed (the one body chunk)",
    "MeteredCall.finish (extraction, dimensions, delivery)",
)
#: ``--streams``: OpenAI chat streams with include_usage through the ASGI middleware, of
#: the uvicorn section's length (64 content chunks, 68 events) and of 1,000 chunks; the two
#: give the added cost per stream (what a short stream pays once) and per chunk.
STREAM_CHUNKS = {"stream68": 64, "stream1000": 1000}
#: Streams are long: each of these variants runs one stream per this many requests.
STREAM_DIVISOR = {"stream68": 20, "stream1000": 200}


def _runs(variant: str, requests: int) -> int:
    """How many times the child runs ``variant`` (a request, or a whole stream)."""
    return max(1, requests // STREAM_DIVISOR.get(variant.split("-")[0], 1))


#: The C function whose every call makes callgrind dump its counts (``os.getppid``).
MARKER = "os_getppid"


def _steps(meter: Any, scope: dict[str, Any], body: bytes, response: bytes, k: int, n: int) -> None:
    from llm_metrics_middleware._metering.call import COMPLETED
    from llm_metrics_middleware._metering.metered_call import MeteredCall
    from llm_metrics_middleware._metering.request import RequestView

    for _ in range(n):
        call = MeteredCall(meter, RequestView.from_scope(dict(scope)))  # type: ignore[arg-type]
        if k > 1:
            call.request_body(body)
        if k > 2:
            call.response_start(200, "application/json", None)
        if k > 3:
            call.feed(response)
        if k > 4:
            call.finish(COMPLETED)


def _child(variants: list[str], requests: int) -> None:
    """Set every app up and warm it, then ``requests`` requests per variant, a marker between."""
    from drivers import asgi_json_app, asgi_scope, asgi_stream_app, serve_wsgi, wsgi_environ, wsgi_json_app
    from variants import instrumentator_asgi, otel_asgi, ours_asgi, ours_wsgi
    from workloads import COMPLETION_BODY, chat_chunks, request_body

    body = request_body()
    scope = asgi_scope(CHAT_PATH, body)
    environ = wsgi_environ(CHAT_PATH, body)
    base = asgi_json_app(COMPLETION_BODY)
    wsgi_base = wsgi_json_app(COMPLETION_BODY)
    asgi_apps: dict[str, Any] = {
        "bare": base, "ours": ours_asgi(base)[0], "instrumentator": instrumentator_asgi(base), "otel": otel_asgi(base),
    }
    wsgi_apps: dict[str, Any] = {"wsgi-bare": wsgi_base, "wsgi-ours": ours_wsgi(wsgi_base)[0]}
    meter = asgi_apps["ours"].metering
    request = {"type": "http.request", "body": body, "more_body": False}
    stream_body = request_body(stream=True, include_usage=True, max_tokens=64)
    stream_scope = asgi_scope(CHAT_PATH, stream_body)
    stream_request = {"type": "http.request", "body": stream_body, "more_body": False}
    for name, chunks_n in STREAM_CHUNKS.items():
        if any(v.startswith(name + "-") for v in variants):
            stream_app = asgi_stream_app(chat_chunks(chunks_n, include_usage=True)[0])
            asgi_apps[name + "-bare"], asgi_apps[name + "-ours"] = stream_app, ours_asgi(stream_app)[0]

    async def receive() -> dict[str, Any]:
        return request

    async def stream_receive() -> dict[str, Any]:
        return stream_request

    async def send(message: Any) -> None:
        pass

    async def drive_asgi(app: Any, n: int) -> None:  # bench/drivers.py's loop, without its clock
        for _ in range(n):
            await app(dict(scope), receive, send)

    async def drive_streams(app: Any, n: int) -> None:
        for _ in range(n):
            await app(dict(stream_scope), stream_receive, send)

    def run(variant: str, n: int) -> None:
        if variant.startswith("step"):
            _steps(meter, scope, body, COMPLETION_BODY, int(variant[4:]), n)
        elif variant.startswith("stream"):
            loop.run_until_complete(drive_streams(asgi_apps[variant], _runs(variant, n)))
        elif variant in asgi_apps:
            loop.run_until_complete(drive_asgi(asgi_apps[variant], n))
        else:
            serve_wsgi(wsgi_apps[variant], environ, body, n)

    loop = asyncio.new_event_loop()
    for variant in variants:
        run(variant, WARM_UP)
    for variant in variants:
        gc.collect()
        os.getppid()  # the marker: callgrind dumps what came before (the collection included)
        run(variant, requests)
        os.getppid()  # and now the variant's requests alone
    loop.close()


_TOTALS = re.compile(rb"^totals:\s*(\d+)", re.MULTILINE)


def _measure(variants: list[str], requests: int, out_dir: str) -> dict[str, float]:
    """Instructions per request of each variant, from the dump after each marker."""
    out = os.path.join(out_dir, "callgrind.out")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--dump-before={MARKER}", f"--callgrind-out-file={out}",
         sys.executable, __file__, "--child", ",".join(variants), str(requests)],
        env=env, capture_output=True, timeout=1800, check=False,
    )
    if result.returncode != 0:
        sys.stderr.write(result.stderr.decode(errors="replace")[-3000:])
        raise SystemExit(f"the callgrind child failed with status {result.returncode}")
    per: dict[str, float] = {}
    # Dump k (out.k) holds what ran between marker k-1 and marker k: dump 1 is the set-up,
    # then every variant has two, its collection (odd) and its requests (even).
    for k, variant in zip(range(2, 2 * len(variants) + 2, 2), variants):
        with open(f"{out}.{k}", "rb") as f:
            found = _TOTALS.search(f.read())
        if found is None:
            raise SystemExit(f"no totals in {out}.{k}")
        per[variant] = int(found.group(1)) / _runs(variant, requests)
    return per


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per variant (default 2000)")
    parser.add_argument("--wsgi", action="store_true", help="also measure WSGI (bare and ours)")
    parser.add_argument("--steps", action="store_true", help="also each step of a MeteredCall, driven by hand")
    parser.add_argument("--streams", action="store_true", help="also SSE streams of 68 events and 1,000 chunks")
    parser.add_argument("--keep", metavar="DIR", help="keep the callgrind output files in DIR")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0].split(","), int(args.child[1]))
        return 0
    if shutil.which("valgrind") is None:
        parser.error("needs valgrind on the PATH (Debian: apt-get install valgrind)")
    n = args.requests
    steps = [f"step{k}" for k in range(1, len(STEPS) + 1)] if args.steps else []
    streams = [f"{name}-{kind}" for name in STREAM_CHUNKS for kind in ("bare", "ours")] if args.streams else []
    variants = [*ASGI_VARIANTS, *(WSGI_VARIANTS if args.wsgi else ()), *steps, *streams]
    out_dir = args.keep or tempfile.mkdtemp(prefix="llm-callgrind-")
    os.makedirs(out_dir, exist_ok=True)
    log(f"callgrind: {len(variants)} variants x {n:,} requests in one child")
    try:
        per = _measure(variants, n, out_dir)
    finally:
        if not args.keep:
            shutil.rmtree(out_dir, ignore_errors=True)
    added = {v: per[v] - per["bare"] for v in ASGI_VARIANTS if v != "bare"}
    ratio = added["ours"] / added["instrumentator"]
    print(f"#### Instructions per non-streamed request (callgrind, {n:,} requests per variant after "
          f"{WARM_UP} warm-up; `python bench/instructions.py`)\n")
    print("| Variant | instructions / request | added over bare |\n| --- | ---: | ---: |")
    print(f"| bare ASGI app | {per['bare']:,.0f} | — |")
    print(f"| llm-metrics-middleware (Prometheus, 4 dimensions) | {per['ours']:,.0f} | {added['ours']:,.0f} |")
    print(f"| prometheus-fastapi-instrumentator | {per['instrumentator']:,.0f} | {added['instrumentator']:,.0f} |")
    print(f"| opentelemetry-instrumentation-asgi | {per['otel']:,.0f} | {added['otel']:,.0f} |")
    if args.wsgi:
        print(f"| bare WSGI app | {per['wsgi-bare']:,.0f} | — |")
        print(f"| llm-metrics-middleware, WSGI | {per['wsgi-ours']:,.0f} | {per['wsgi-ours'] - per['wsgi-bare']:,.0f} |")
    if steps:
        print("\n| Step (a MeteredCall driven by hand, no ASGI) | instructions / request |\n| --- | ---: |")
        previous = 0.0
        for label, step in zip(STEPS, steps):
            print(f"| {label} | {per[step] - previous:,.0f} |")
            previous = per[step]
        print(f"| ASGI glue (ours added minus the steps) | {added['ours'] - previous:,.0f} |")
    if streams:
        short, long = (per[f"{name}-ours"] - per[f"{name}-bare"] for name in STREAM_CHUNKS)
        short_n, long_n = STREAM_CHUNKS.values()
        per_chunk = (long - short) / (long_n - short_n)
        print("\n| OpenAI chat stream with include_usage, through ASGI | bare / stream | ours / stream | added / stream |"
              "\n| --- | ---: | ---: | ---: |")
        for name, chunks_n in STREAM_CHUNKS.items():
            b, o = per[f"{name}-bare"], per[f"{name}-ours"]
            print(f"| {chunks_n:,} content chunks ({chunks_n + 4:,} events) | {b:,.0f} | {o:,.0f} | {o - b:,.0f} |")
        print(f"\nAdded per chunk (the difference of the two, per extra chunk): {per_chunk:,.0f} instructions; "
              f"once per stream (the 68-event stream's added, less 68 of those): {short - (short_n + 4) * per_chunk:,.0f}.")
    verdict = "pass" if ratio <= TARGET_JSON_RATIO else "FAIL"
    print(f"\nASGI: ours added / instrumentator added = {ratio:.3f} (target <= {TARGET_JSON_RATIO}: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
