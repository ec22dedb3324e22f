"""``bench.py --profile``: where our time goes, per request and per chunk.

Step timings without a profiler first (each step of a MeteredCall timed on its own, the
cost of ``perf_counter`` taken off), then the uvicorn section's short stream in-process
(what a stream costs once), then cProfile's top entries for the same workloads.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from common import CHAT_PATH, HERE, ROOT
from drivers import asgi_json_app, asgi_scope, asgi_stream_app, drive_asgi
from load import UVICORN_MAX_TOKENS
from variants import ours_asgi
from workloads import COMPLETION_BODY, chat_chunks, request_body

if TYPE_CHECKING:
    from common import Config

def profile(cfg: Config) -> None:
    """Where our time goes: step timings without a profiler, then cProfile's top entries."""
    import cProfile
    import pstats

    from llm_metrics_middleware._core.extractor import JSON, SSE, UsageExtractor
    from llm_metrics_middleware._metering.call import COMPLETED
    from llm_metrics_middleware._metering.metered_call import MeteredCall
    from llm_metrics_middleware._metering.request import RequestView

    n, streams, chunks_n = cfg.json_requests, cfg.streams, cfg.stream_chunks
    pc = time.perf_counter
    loop = asyncio.new_event_loop()
    body = request_body()
    scope = asgi_scope(CHAT_PATH, body)
    base = asgi_json_app(COMPLETION_BODY)
    ours, _ = ours_asgi(base)
    meter = ours.metering

    def best(fn: Callable[[], float], repeat: int = 5) -> float:
        fn()
        return min(fn() for _ in range(repeat))

    def whole(app: Any, s: dict[str, Any], req: bytes, count: int) -> float:
        return best(lambda: loop.run_until_complete(drive_asgi(app, s, req, count)))

    # perf_counter's own cost, taken off each step below.
    def empty() -> float:
        t = 0.0
        for _ in range(n):
            t0 = pc()
            t += pc() - t0
        return t

    tick = best(empty) / n
    steps = ("RequestView.from_scope + MeteredCall(...) (route_of, start_peek)",
             "MeteredCall.request_body (the peek keeps the bytes)",
             "MeteredCall.response_start (request json.loads, UsageExtractor)",
             "MeteredCall.body (1 KB, kept for json.loads)",
             "MeteredCall.finish (extract, dimensions, Prometheus)")

    def sequential() -> list[float]:
        acc = [0.0] * len(steps)
        gc.collect()
        for _ in range(n):
            s = dict(scope)
            t0 = pc()
            call = MeteredCall(meter, RequestView.from_scope(s))  # type: ignore[arg-type]
            t1 = pc()
            call.request_body(body)
            t2 = pc()
            call.response_start(200, "application/json", None)
            t3 = pc()
            call.body(COMPLETION_BODY)
            t4 = pc()
            call.finish(COMPLETED)
            t5 = pc()
            acc[0] += t1 - t0
            acc[1] += t2 - t1
            acc[2] += t3 - t2
            acc[3] += t4 - t3
            acc[4] += t5 - t4
        return acc

    runs = [sequential() for _ in range(5)]
    per_step = [min(r[i] for r in runs) / n - tick for i in range(len(steps))]

    def extract_only() -> float:
        gc.collect()
        start = pc()
        for _ in range(n):
            e = UsageExtractor(JSON, want_text=True)
            e.feed(COMPLETION_BODY)
            e.close()
        return pc() - start

    bare_us = whole(base, scope, body, n) / n * 1e6
    ours_us = whole(ours, scope, body, n) / n * 1e6
    print("#### Where our time goes: non-streamed request (in-process ASGI, best of 5, no profiler)\n")
    print("| Step | µs / request |\n| --- | ---: |")
    print(f"| bare app, whole request | {bare_us:.2f} |")
    print(f"| ours, whole request | {ours_us:.2f} |")
    print(f"| **added by ours** | **{ours_us - bare_us:.2f}** |")
    for label, t in zip(steps, per_step):
        print(f"| {label} | {t * 1e6:.2f} |")
    print(f"| ASGI glue (scope marker, metered_receive/send, header loop): the rest | "
          f"{ours_us - bare_us - sum(per_step) * 1e6:.2f} |")
    print(f"| for comparison: UsageExtractor(JSON, want_text=True) feed + close alone | {best(extract_only) / n * 1e6:.2f} |")
    print()

    print(f"#### Where our time goes: per SSE chunk ({chunks_n:,}-chunk stream, best of 5, no profiler)\n")
    print("| Request | Step | µs / chunk |\n| --- | --- | ---: |")
    units = streams * chunks_n
    for case, include in (("include_usage", True), ("no usage (estimate)", False)):
        chunks, _ = chat_chunks(chunks_n, include)
        req = request_body(stream=True, include_usage=include)
        app = asgi_stream_app(chunks)
        wrapped, _ = ours_asgi(app)
        sscope = asgi_scope(CHAT_PATH, req)
        bare_c = whole(app, sscope, req, streams) / units * 1e6
        ours_c = whole(wrapped, sscope, req, streams) / units * 1e6

        def feed_only(include: bool = include, chunks: list[bytes] = chunks) -> float:
            gc.collect()
            start = pc()
            for _ in range(streams):
                e = UsageExtractor(SSE, want_text=not include)
                for c in chunks:
                    e.feed(c)
                e.close()
            return pc() - start

        def body_only(req: bytes = req, chunks: list[bytes] = chunks, sscope: dict[str, Any] = sscope) -> float:
            gc.collect()
            total = 0.0
            for _ in range(streams):
                call = MeteredCall(wrapped.metering, RequestView.from_scope(dict(sscope)))  # type: ignore[arg-type]
                call.request_body(req)
                call.response_start(200, "text/event-stream; charset=utf-8", None)
                start = pc()
                for c in chunks:
                    call.body(c)
                total += pc() - start
                call.finish(COMPLETED)
            return total

        feed = best(feed_only) / units * 1e6
        meter_body = best(body_only) / units * 1e6
        print(f"| {case} | bare app, whole stream | {bare_c:.2f} |")
        print(f"| {case} | ours, whole stream | {ours_c:.2f} |")
        print(f"| {case} | **added by ours** | **{ours_c - bare_c:.2f}** |")
        print(f"| {case} | UsageExtractor(SSE).feed alone (incl. per-stream setup and close) | {feed:.2f} |")
        print(f"| {case} | MeteredCall.body (feed + first-chunk time check) | {meter_body:.2f} |")
        print(f"| {case} | ASGI glue (metered_send: await, type checks, message.get): the rest | "
              f"{ours_c - bare_c - meter_body:.2f} |")
    print()

    short_stream(loop, best, tick)

    def top(label: str, fn: Callable[[], Any], per: int, unit: str) -> None:
        profiler = cProfile.Profile()
        gc.collect()
        profiler.enable()
        fn()
        profiler.disable()
        stats = pstats.Stats(profiler)
        rows = []
        for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            if filename.startswith(str(HERE)) or func == "<built-in method gc.collect>":
                continue
            if filename.startswith(str(ROOT)):
                where = f"{os.path.relpath(filename, ROOT)}:{line}:{func}"
            elif filename.startswith("~"):
                where = func
            else:
                where = f"{filename.split('site-packages/')[-1].split('lib/python3')[-1]}:{func}"
            rows.append((tottime, cumtime, ncalls, where))
        rows.sort(reverse=True)
        print(f"#### cProfile, {label} (µs {unit}; cProfile inflates small calls about 2x: read the order, not the sum)\n")
        print("| own time | cumulative | calls | function |\n| ---: | ---: | ---: | --- |")
        for tottime, cumtime, ncalls, where in rows[:25]:
            print(f"| {tottime / per * 1e6:.2f} | {cumtime / per * 1e6:.2f} | {ncalls / per:.2f} | `{where}` |")
        print()

    top("ours, non-streamed request", lambda: loop.run_until_complete(drive_asgi(ours, scope, body, n)),
        n, "per request")
    for case, include in (("include_usage", True), ("no usage (estimate)", False)):
        chunks, _ = chat_chunks(chunks_n, include)
        req = request_body(stream=True, include_usage=include)
        wrapped, _ = ours_asgi(asgi_stream_app(chunks))
        sscope = asgi_scope(CHAT_PATH, req)
        top(f"ours, SSE {case}", lambda w=wrapped, s=sscope, q=req: loop.run_until_complete(drive_asgi(w, s, q, streams)),
            units, "per chunk")
    loop.close()


def short_stream(loop: asyncio.AbstractEventLoop, best: Callable[[Callable[[], float]], float], tick: float) -> None:
    """The uvicorn section's stream, in-process: per request, then per phase of its extractor.

    A 2,000-chunk stream hides what a stream costs once (the extractor, its first events,
    the usage event, close, the call's start and finish); a 68-event stream, the one
    section 5 serves, does not, which is why per-chunk figures times 68 undershoot it.
    """
    from llm_metrics_middleware._core.extractor import SSE, UsageExtractor
    from llm_metrics_middleware._metering.call import COMPLETED
    from llm_metrics_middleware._metering.metered_call import MeteredCall
    from llm_metrics_middleware._metering.request import RequestView
    from llm_metrics_middleware.testing import SimulatedLLM

    pc = time.perf_counter
    req = request_body(stream=True, include_usage=True, max_tokens=UVICORN_MAX_TOKENS)
    scope = asgi_scope(CHAT_PATH, req)
    bare = SimulatedLLM().asgi
    ours, _ = ours_asgi(SimulatedLLM().asgi)
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": req, "more_body": False}

    async def keep(message: Any) -> None:
        sent.append(message)

    loop.run_until_complete(bare(dict(scope), receive, keep))
    chunks = [m["body"] for m in sent if m["type"] == "http.response.body"]
    n = 300
    bare_us = best(lambda: loop.run_until_complete(drive_asgi(bare, scope, req, n))) / n * 1e6
    ours_us = best(lambda: loop.run_until_complete(drive_asgi(ours, scope, req, n))) / n * 1e6
    meter = ours.metering
    steps = [0.0] * 4

    def metered() -> None:
        gc.collect()
        for _ in range(n):
            t0 = pc()
            call = MeteredCall(meter, RequestView.from_scope(dict(scope)))  # type: ignore[arg-type]
            call.request_body(req)
            t1 = pc()
            call.response_start(200, "text/event-stream; charset=utf-8", None)
            t2 = pc()
            for c in chunks:
                call.feed(c)
            t3 = pc()
            call.finish(COMPLETED)
            t4 = pc()
            for i, d in enumerate((t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                steps[i] += d

    metered()
    steps[:] = [0.0] * 4
    metered()
    per = [s / n * 1e6 for s in steps]
    print(f"#### Where our time goes: the uvicorn section's stream in-process ({len(chunks)} body messages, "
          "SimulatedLLM, include_usage; whole requests best of 5, steps one run of 300 after one of warm-up; no "
          "profiler)\n")
    print("| Step | µs / request |\n| --- | ---: |")
    print(f"| bare app, whole request | {bare_us:.1f} |")
    print(f"| ours, whole request | {ours_us:.1f} |")
    print(f"| **added by ours** | **{ours_us - bare_us:.1f}** |")
    for label, t in zip(("begin + request_body", "response_start", f"feed x {len(chunks)} (the extractor)", "finish"), per):
        print(f"| {label} | {t:.1f} |")
    print(f"| ASGI glue (metered_send per message, metered_receive): the rest | {ours_us - bare_us - sum(per):.1f} |")
    print()

    phases = [0.0] * (len(chunks) + 2)
    for _ in range(n * 10):
        t0 = pc()
        extractor = UsageExtractor(SSE, want_text=True, operation="chat")
        phases[0] += pc() - t0
        for i, c in enumerate(chunks):
            t0 = pc()
            extractor.feed(c)
            phases[i + 1] += pc() - t0
        t0 = pc()
        extractor.close()
        phases[-1] += pc() - t0
    us = [(t / (n * 10) - tick) * 1e6 for t in phases]
    usage_at = next(i for i, c in enumerate(chunks) if b'"usage":{' in c) + 1
    middle = [us[i] for i in range(3, len(chunks) + 1) if chunks[i - 1].endswith(b"null}\n\n") and i < usage_at - 1]
    mid = sum(middle) / len(middle)
    print("| UsageExtractor(SSE) phase | µs |\n| --- | ---: |")
    print(f"| construct | {us[0]:.2f} |")
    print(f"| first event (read in full) | {us[1]:.2f} |")
    print(f"| second event (the template is learnt) | {us[2]:.2f} |")
    print(f"| a content event, mean of {len(middle)} (the template) | {mid:.2f} |")
    print(f"| finish event | {us[usage_at - 1]:.2f} |")
    print(f"| usage event | {us[usage_at]:.2f} |")
    print(f"| the rest ([DONE], the empty last message) | {sum(us[usage_at + 1:-1]):.2f} |")
    print(f"| close | {us[-1]:.2f} |")
    print(f"| **once per stream** (the whole stream minus {len(chunks)} events at the content-event rate) | **{sum(us) - mid * len(chunks):.1f}** |")
    print()
