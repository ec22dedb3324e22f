"""Side-by-side benchmark of llm-metrics-middleware and the usual HTTP metrics middlewares.

One run measures every variant of a case in interleaved rounds (each round runs every
variant once, in a shuffled order), so drift and noise on a shared machine hit all of
them alike; figures are medians over rounds, and "added" costs are medians of the
per-round differences to the bare app of the same round.

1. ASGI, non-streamed ~1 KB chat completion, in-process: bare app, ours,
   prometheus-fastapi-instrumentator, OpenTelemetry ASGI.
2. ASGI, a 2,000-chunk SSE stream, with and without ``stream_options.include_usage``.
3. WSGI, the same two, bare, ours and OpenTelemetry WSGI.
4. Large bodies (200 MB JSON of numbers, 200 MB JSON of text, 1,000,000 SSE events):
   MB/s and peak memory growth per variant, each in a fresh subprocess; plus the scan
   rate of the sans-IO core alone.
5. uvicorn on 127.0.0.1 serving the simulated LLM, bare and wrapped, under 50 concurrent
   streaming clients (wrk if installed, else a raw-socket asyncio client).

    bench/run                          # installs the peers, then runs this
    python bench/bench.py              # full run, 6 to 10 minutes
    python bench/bench.py --quick      # smoke run, under a minute
    python bench/bench.py --json out.json --sections 1,2
    python bench/bench.py --profile    # where our time goes, per request and per chunk

Markdown goes to stdout, progress to stderr. Targets are printed with pass/FAIL next to
the figure; the exit status is 0 whatever they say (a failed run exits non-zero).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import os
import platform
import random
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DIMENSIONS = ["API ID", "Operation ID", "User ID", "Model"]
CHAT_PATH = "/v1/chat/completions"

# Targets from the issue.
TARGET_JSON_RATIO = 0.5  # ours added <= 0.5 x instrumentator's added, per non-streamed request
TARGET_CHUNK_USAGE_US = 1.0  # us added per SSE chunk, include_usage
TARGET_CHUNK_ESTIMATE_US = 3.0  # us added per SSE chunk, estimating
TARGET_SCAN_GBPS = 1.0  # core scan of a 200 MB JSON body
TARGET_UVICORN_RATIO = 0.95  # wrapped >= 95 % of bare requests/s


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def verdict(ok: bool) -> str:
    return "pass" if ok else "**FAIL**"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def version_of(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


# -- payloads ---------------------------------------------------------------------------

_ANSWER = (
    "Tokens are the unit of cost for a language model, so a gateway that fronts one wants to "
    "count every token per user, per API and per model as the responses go by. Counting them "
    "after the fact from the provider's invoice is too late to enforce a quota, and counting "
    "them by re-parsing every response body in full costs memory and time that a proxy does "
    "not have to spare. Reading the usage object as the bytes pass is the cheap way: one scan, "
    "no copy, and the client sees no delay at all."
)

COMPLETION = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": _ANSWER, "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 52,
        "completion_tokens": 128,
        "total_tokens": 180,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_06737a9306",
}
COMPLETION_BODY = json.dumps(COMPLETION, separators=(",", ":")).encode()
COMPLETION_TOKENS = 180

_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Explain in one paragraph why a gateway should count LLM tokens per user."},
]


def request_body(stream: bool = False, include_usage: bool = False, max_tokens: int | None = None) -> bytes:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "user": "u1", "messages": _MESSAGES}
    if stream:
        body["stream"] = True
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return json.dumps(body, separators=(",", ":")).encode()


_WORDS = _ANSWER.split(" ")
_CHUNK_HEAD = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion.chunk",
    "created": 1741570283,
    "model": "gpt-4o-mini-2024-07-18",
    "system_fingerprint": "fp_06737a9306",
}


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def chat_chunks(n: int, include_usage: bool) -> tuple[list[bytes], int]:
    """``n`` SSE events of an OpenAI chat stream, one per element, and the usage total.

    With ``include_usage`` every chunk carries ``"usage":null`` and the last but one the
    usage object, as OpenAI sends them; the last is ``[DONE]``.
    """
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    content = n - 3 - (1 if include_usage else 0)
    events = [_event({**_CHUNK_HEAD, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None},
                                                    "logprobs": None, "finish_reason": None}], **extra})]
    for i in range(content):
        word = " " + _WORDS[i % len(_WORDS)]
        events.append(_event({**_CHUNK_HEAD, "choices": [{"index": 0, "delta": {"content": word}, "logprobs": None,
                                                            "finish_reason": None}], **extra}))
    events.append(_event({**_CHUNK_HEAD, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
                          **extra}))
    total = 52 + content
    if include_usage:
        events.append(_event({**_CHUNK_HEAD, "choices": [], "usage": {
            "prompt_tokens": 52, "completion_tokens": content, "total_tokens": total,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}}))
    events.append(b"data: [DONE]\n\n")
    assert len(events) == n
    return events, total


# -- ASGI in-process --------------------------------------------------------------------

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


def ours_asgi(app: Any) -> tuple[Any, Any]:
    from prometheus_client import CollectorRegistry

    from llm_metrics_middleware import LLMMetricsMiddleware, PrometheusExporter

    registry = CollectorRegistry()
    return LLMMetricsMiddleware(app, exporters=[PrometheusExporter(registry)], dimensions=DIMENSIONS), registry


def ours_wsgi(app: Any) -> tuple[Any, Any]:
    from prometheus_client import CollectorRegistry

    from llm_metrics_middleware import LLMMetricsWSGIMiddleware, PrometheusExporter

    registry = CollectorRegistry()
    return LLMMetricsWSGIMiddleware(app, exporters=[PrometheusExporter(registry)], dimensions=DIMENSIONS), registry


def instrumentator_asgi(app: Any) -> Any:
    from prometheus_client import CollectorRegistry
    from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware

    # Its defaults, as Instrumentator().instrument(app) sets them, with a registry of its own.
    return PrometheusInstrumentatorMiddleware(app, registry=CollectorRegistry())


def _otel_providers() -> tuple[Any, Any]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    # SDK providers: spans are created and ended (no span processor, so none is exported);
    # metrics are aggregated for an in-memory reader that is never collected.
    return TracerProvider(), MeterProvider(metric_readers=[InMemoryMetricReader()])


OTEL_SETUP = "SDK TracerProvider (no span processor) + MeterProvider with an InMemoryMetricReader"


def otel_asgi(app: Any) -> Any:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    tracer_provider, meter_provider = _otel_providers()
    return OpenTelemetryMiddleware(app, tracer_provider=tracer_provider, meter_provider=meter_provider)


def otel_wsgi(app: Any) -> Any:
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    tracer_provider, meter_provider = _otel_providers()
    return OpenTelemetryMiddleware(app, tracer_provider=tracer_provider, meter_provider=meter_provider)


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


# -- WSGI in-process --------------------------------------------------------------------

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


def drive_wsgi(app: Any, environ: dict[str, Any], body: bytes, n: int) -> float:
    """Seconds for ``n`` calls: call, iterate, close, as a WSGI server does."""

    def write(data: bytes) -> None:
        pass

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return write

    gc.collect()
    start = time.perf_counter()
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
    return time.perf_counter() - start


# -- rounds -----------------------------------------------------------------------------

def interleave(variants: dict[str, Callable[[], float]], rounds: int, rng: random.Random) -> dict[str, list[float]]:
    """Seconds per variant per round; every round runs every variant once, shuffled."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        rng.shuffle(names)
        for name in names:
            samples[name].append(variants[name]())
        log(f"    round {r + 1}/{rounds}: " + ", ".join(f"{n} {samples[n][-1]:.3f}s" for n in variants))
    return samples


def paired_added(samples: dict[str, list[float]], name: str, bare: str, per: int) -> float:
    """Median over rounds of (variant - bare) in microseconds per unit."""
    return median([(a - b) / per * 1e6 for a, b in zip(samples[name], samples[bare])])


def prom_sum(registry: Any, sample_name: str, **match: str) -> float:
    total = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in match.items()):
                total += sample.value
    return total


def check_counted(label: str, registry: Any, calls: int, tokens_per_call: int | None, usage: str) -> str:
    """Whether ours counted every call (and the tokens, when they are known)."""
    requests = prom_sum(registry, "llm_requests_total", usage=usage)
    tokens = prom_sum(registry, "llm_tokens_total")
    ok = requests == calls and (tokens_per_call is None or tokens == calls * tokens_per_call) and tokens > 0
    note = f"{label}: {int(requests):,} of {calls:,} calls counted as usage={usage}, {int(tokens):,} tokens"
    if not ok:
        log(f"  WARNING: {note}")
        return "NOT OK: " + note
    return "ok: " + note


# -- section 1: ASGI JSON ---------------------------------------------------------------

def section_asgi_json(cfg: Config, out: dict[str, Any], md: list[str], targets: list[Any]) -> None:
    n, rounds = cfg.json_requests, cfg.rounds
    log(f"[1] ASGI non-streamed: {n:,} requests x {rounds} rounds")
    body = request_body()
    scope = asgi_scope(CHAT_PATH, body)
    base = asgi_json_app(COMPLETION_BODY)
    ours, registry = ours_asgi(base)
    apps = {
        "bare": base,
        "ours": ours,
        "instrumentator": instrumentator_asgi(base),
        "otel": otel_asgi(base),
    }
    loop = asyncio.new_event_loop()
    calls = {name: 0 for name in apps}

    def runner(name: str, count: int) -> Callable[[], float]:
        def run() -> float:
            calls[name] += count
            return loop.run_until_complete(drive_asgi(apps[name], scope, body, count))

        return run

    for name in apps:  # warm-up, not recorded
        runner(name, max(200, n // 20))()
    samples = interleave({name: runner(name, n) for name in apps}, rounds, cfg.rng)
    loop.close()
    counted = check_counted("ASGI JSON", registry, calls["ours"], COMPLETION_TOKENS, "reported")

    per = {name: median(s) / n * 1e6 for name, s in samples.items()}
    added = {name: paired_added(samples, name, "bare", n) for name in apps if name != "bare"}
    ratio_instr = added["ours"] / added["instrumentator"]
    ratio_otel = added["ours"] / added["otel"]
    out["asgi_json"] = {"requests_per_round": n, "rounds": rounds, "samples_s": samples, "us_per_request": per,
                        "us_added": added, "ours_added_over_instrumentator_added": ratio_instr,
                        "ours_added_over_otel_added": ratio_otel, "counted": counted}
    ok = ratio_instr <= TARGET_JSON_RATIO
    targets.append(("ASGI non-streamed: ours added / instrumentator added", f"{ratio_instr:.2f}", f"<= {TARGET_JSON_RATIO}", ok))
    md += [
        "### 1. ASGI, non-streamed chat completion (in-process)",
        "",
        f"`POST {CHAT_PATH}` with a JSON body naming model and user; a {len(COMPLETION_BODY):,}-byte chat completion "
        f"with a usage object, in one body message. {n:,} requests per variant per round, {rounds} interleaved rounds, "
        "one event loop; medians.",
        "",
        "| Variant | µs / request | µs added over bare | ours added ÷ this added |",
        "| --- | ---: | ---: | ---: |",
        f"| bare ASGI app | {per['bare']:.1f} | — | — |",
        f"| **llm-metrics-middleware** (Prometheus, 4 dimensions) | {per['ours']:.1f} | {added['ours']:.1f} | — |",
        f"| prometheus-fastapi-instrumentator {version_of('prometheus-fastapi-instrumentator')} "
        f"| {per['instrumentator']:.1f} | {added['instrumentator']:.1f} | {ratio_instr:.2f} (target ≤ {TARGET_JSON_RATIO}: {verdict(ok)}) |",
        f"| opentelemetry-instrumentation-asgi {version_of('opentelemetry-instrumentation-asgi')} "
        f"| {per['otel']:.1f} | {added['otel']:.1f} | {ratio_otel:.2f} |",
        "",
        f"Counting check: {counted}.",
        "",
    ]


# -- section 2: ASGI SSE ----------------------------------------------------------------

def section_asgi_sse(cfg: Config, out: dict[str, Any], md: list[str], targets: list[Any]) -> None:
    chunks_n, streams, rounds = cfg.stream_chunks, cfg.streams, cfg.rounds
    log(f"[2] ASGI SSE: {streams} streams x {chunks_n:,} chunks x {rounds} rounds")
    usage_chunks, usage_total = chat_chunks(chunks_n, include_usage=True)
    plain_chunks, _ = chat_chunks(chunks_n, include_usage=False)
    usage_req = request_body(stream=True, include_usage=True)
    plain_req = request_body(stream=True)
    usage_app = asgi_stream_app(usage_chunks)
    plain_app = asgi_stream_app(plain_chunks)
    ours_u, reg_u = ours_asgi(usage_app)
    ours_p, reg_p = ours_asgi(plain_app)
    cases: dict[str, tuple[Any, bytes]] = {
        "usage/bare": (usage_app, usage_req),
        "usage/ours": (ours_u, usage_req),
        "usage/instrumentator": (instrumentator_asgi(usage_app), usage_req),
        "usage/otel": (otel_asgi(usage_app), usage_req),
        "estimate/bare": (plain_app, plain_req),
        "estimate/ours": (ours_p, plain_req),
    }
    loop = asyncio.new_event_loop()
    calls = {name: 0 for name in cases}

    def runner(name: str, count: int) -> Callable[[], float]:
        app, req = cases[name]
        scope = asgi_scope(CHAT_PATH, req)

        def run() -> float:
            calls[name] += count
            return loop.run_until_complete(drive_asgi(app, scope, req, count))

        return run

    for name in cases:
        runner(name, 1)()
    samples = interleave({name: runner(name, streams) for name in cases}, rounds, cfg.rng)
    loop.close()
    counted_u = check_counted("ASGI SSE include_usage", reg_u, calls["usage/ours"], usage_total, "reported")
    counted_p = check_counted("ASGI SSE estimating", reg_p, calls["estimate/ours"], None, "estimated")
    _stream_report("asgi_sse", "2. ASGI, 2,000-chunk SSE stream (in-process)", "ASGI", samples, streams, chunks_n,
                   usage_chunks, plain_chunks, out, md, targets, [counted_u, counted_p],
                   {"instrumentator": f"prometheus-fastapi-instrumentator {version_of('prometheus-fastapi-instrumentator')}",
                    "otel": f"opentelemetry-instrumentation-asgi {version_of('opentelemetry-instrumentation-asgi')}"})


def _stream_report(key: str, title: str, kind: str, samples: dict[str, list[float]], streams: int, chunks_n: int,
                   usage_chunks: list[bytes], plain_chunks: list[bytes], out: dict[str, Any], md: list[str],
                   targets: list[Any], counted: list[str], peers: dict[str, str]) -> None:
    units = streams * chunks_n
    per = {name: median(s) / units * 1e6 for name, s in samples.items()}
    added: dict[str, float] = {}
    throughput: dict[str, float] = {}
    for name, s in samples.items():
        case, variant = name.split("/")
        if variant != "bare":
            added[name] = paired_added(samples, name, f"{case}/bare", units)
            throughput[name] = median([b / a for a, b in zip(s, samples[f"{case}/bare"])])
    out[key] = {"streams_per_round": streams, "chunks_per_stream": chunks_n, "samples_s": samples,
                "us_per_chunk": per, "us_added_per_chunk": added, "throughput_vs_bare": throughput, "counted": counted}
    ok_u = added["usage/ours"] <= TARGET_CHUNK_USAGE_US
    ok_e = added["estimate/ours"] <= TARGET_CHUNK_ESTIMATE_US
    targets.append((f"{kind} SSE include_usage: µs added per chunk", f"{added['usage/ours']:.2f}", f"<= {TARGET_CHUNK_USAGE_US}", ok_u))
    targets.append((f"{kind} SSE estimating: µs added per chunk", f"{added['estimate/ours']:.2f}", f"<= {TARGET_CHUNK_ESTIMATE_US}", ok_e))
    avg_u = sum(map(len, usage_chunks)) / len(usage_chunks)
    avg_p = sum(map(len, plain_chunks)) / len(plain_chunks)
    md += [
        f"### {title}",
        "",
        f"One SSE event per body message/block: OpenAI chat chunks of {avg_u:.0f} bytes with `\"usage\":null` and a usage "
        f"chunk at the end when the request asks `stream_options.include_usage`; {avg_p:.0f} bytes and no usage otherwise "
        f"(we estimate from the text). {streams} streams per variant per round, {len(next(iter(samples.values())))} "
        "interleaved rounds; medians.",
        "",
        "| Request | Variant | µs / chunk | µs added / chunk | throughput vs bare | target |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    labels = {"bare": f"bare {kind} app", "ours": "**llm-metrics-middleware**", **peers}
    for name in samples:
        case, variant = name.split("/")
        req = "include_usage" if case == "usage" else "no usage (estimate)"
        if variant == "bare":
            md.append(f"| {req} | {labels[variant]} | {per[name]:.2f} | — | 1.00 | |")
            continue
        target = ""
        if variant == "ours":
            limit, ok = (TARGET_CHUNK_USAGE_US, ok_u) if case == "usage" else (TARGET_CHUNK_ESTIMATE_US, ok_e)
            target = f"≤ {limit} µs: {verdict(ok)}"
        md.append(f"| {req} | {labels[variant]} | {per[name]:.2f} | {added[name]:.2f} | {throughput[name]:.2f} | {target} |")
    md += ["", "Counting check: " + "; ".join(counted) + ".", ""]


# -- section 3: WSGI --------------------------------------------------------------------

def section_wsgi(cfg: Config, out: dict[str, Any], md: list[str], targets: list[Any]) -> None:
    n, chunks_n, streams, rounds = cfg.json_requests, cfg.stream_chunks, cfg.streams, cfg.rounds
    log(f"[3] WSGI: {n:,} non-streamed requests; {streams} streams x {chunks_n:,} chunks; {rounds} rounds")
    body = request_body()
    environ = wsgi_environ(CHAT_PATH, body)
    base = wsgi_json_app(COMPLETION_BODY)
    ours, registry = ours_wsgi(base)
    apps = {"bare": base, "ours": ours, "otel": otel_wsgi(base)}
    calls = {name: 0 for name in apps}

    def runner(name: str, count: int) -> Callable[[], float]:
        def run() -> float:
            calls[name] += count
            return drive_wsgi(apps[name], environ, body, count)

        return run

    for name in apps:
        runner(name, max(200, n // 20))()
    samples = interleave({name: runner(name, n) for name in apps}, rounds, cfg.rng)
    counted = check_counted("WSGI JSON", registry, calls["ours"], COMPLETION_TOKENS, "reported")
    per = {name: median(s) / n * 1e6 for name, s in samples.items()}
    added = {name: paired_added(samples, name, "bare", n) for name in apps if name != "bare"}
    ratio_otel = added["ours"] / added["otel"]
    out["wsgi_json"] = {"requests_per_round": n, "samples_s": samples, "us_per_request": per, "us_added": added,
                        "ours_added_over_otel_added": ratio_otel, "counted": counted}
    md += [
        "### 3. WSGI (in-process: call the app, iterate, close)",
        "",
        f"Non-streamed: the same request and {len(COMPLETION_BODY):,}-byte completion as section 1, one block; "
        f"{n:,} requests per variant per round, {rounds} interleaved rounds; medians.",
        "",
        "| Variant | µs / request | µs added over bare | ours added ÷ this added |",
        "| --- | ---: | ---: | ---: |",
        f"| bare WSGI app | {per['bare']:.1f} | — | — |",
        f"| **llm-metrics-middleware** (Prometheus, 4 dimensions) | {per['ours']:.1f} | {added['ours']:.1f} | — |",
        f"| opentelemetry-instrumentation-wsgi {version_of('opentelemetry-instrumentation-wsgi')} "
        f"| {per['otel']:.1f} | {added['otel']:.1f} | {ratio_otel:.2f} |",
        "",
        f"Counting check: {counted}.",
        "",
    ]

    usage_chunks, usage_total = chat_chunks(chunks_n, include_usage=True)
    plain_chunks, _ = chat_chunks(chunks_n, include_usage=False)
    usage_req = request_body(stream=True, include_usage=True)
    plain_req = request_body(stream=True)
    usage_app = wsgi_stream_app(usage_chunks)
    plain_app = wsgi_stream_app(plain_chunks)
    ours_u, reg_u = ours_wsgi(usage_app)
    ours_p, reg_p = ours_wsgi(plain_app)
    cases: dict[str, tuple[Any, bytes]] = {
        "usage/bare": (usage_app, usage_req),
        "usage/ours": (ours_u, usage_req),
        "usage/otel": (otel_wsgi(usage_app), usage_req),
        "estimate/bare": (plain_app, plain_req),
        "estimate/ours": (ours_p, plain_req),
    }
    scalls = {name: 0 for name in cases}

    def srunner(name: str, count: int) -> Callable[[], float]:
        app, req = cases[name]
        env = wsgi_environ(CHAT_PATH, req)

        def run() -> float:
            scalls[name] += count
            return drive_wsgi(app, env, req, count)

        return run

    for name in cases:
        srunner(name, 1)()
    ssamples = interleave({name: srunner(name, streams) for name in cases}, rounds, cfg.rng)
    counted_u = check_counted("WSGI SSE include_usage", reg_u, scalls["usage/ours"], usage_total, "reported")
    counted_p = check_counted("WSGI SSE estimating", reg_p, scalls["estimate/ours"], None, "estimated")
    _stream_report("wsgi_sse", "3b. WSGI, 2,000-chunk SSE stream (in-process)", "WSGI", ssamples, streams, chunks_n,
                   usage_chunks, plain_chunks, out, md, targets, [counted_u, counted_p],
                   {"otel": f"opentelemetry-instrumentation-wsgi {version_of('opentelemetry-instrumentation-wsgi')}"})


# -- section 4: large bodies ------------------------------------------------------------

_EMBED_PIECE = b'{"object":"embedding","index":0,"embedding":[' + b"0.0123456789," * 5000 + b"0.5]},"
# A paragraph of generated text as it sits inside a JSON string: a "\\n" escape per line,
# a quoted phrase (two "\\"" escapes) per paragraph.
_PARAGRAPH = (
    b"Counting tokens as the bytes pass costs one scan of the body and no copy of it.\\n"
    b"A gateway that buffers the body first needs memory for all of it, and its client\\n"
    b"waits for the last byte before it sees the first one, which defeats streaming.\\n"
    b'As one operator put it, \\"we only noticed when the invoice arrived\\".\\n\\n'
)
_TEXT_PIECE = _PARAGRAPH * (65536 // len(_PARAGRAPH))
_BIG_SSE_EVENT = _event({**_CHUNK_HEAD, "choices": [{"index": 0, "delta": {"content": " token"}, "logprobs": None,
                                                     "finish_reason": None}], "usage": None})

LARGE_KINDS = ("embeddings", "text", "sse")


def large_chunks(kind: str, size: int) -> Iterator[bytes]:
    """The body of a large-body case, generated on the fly from one reused piece.

    ``size`` is bytes for the JSON kinds and events for ``sse``.
    """
    if kind == "embeddings":
        yield b'{"object":"list","model":"text-embedding-3-small","data":['
        sent = 0
        while sent < size:
            yield _EMBED_PIECE
            sent += len(_EMBED_PIECE)
        yield b'{"object":"embedding","index":1,"embedding":[0.5]}],"usage":{"prompt_tokens":123,"total_tokens":123}}'
    elif kind == "text":
        yield (b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini-2024-07-18",'
               b'"choices":[{"index":0,"message":{"role":"assistant","content":"')
        sent = 0
        while sent < size:
            yield _TEXT_PIECE
            sent += len(_TEXT_PIECE)
        yield (b'"},"logprobs":null,"finish_reason":"stop"}],'
               b'"usage":{"prompt_tokens":12,"completion_tokens":40000000,"total_tokens":40000012}}')
    else:
        for _ in range(size):
            yield _BIG_SSE_EVENT
        yield _event({**_CHUNK_HEAD, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": size,
                                                             "total_tokens": size + 9}})
        yield b"data: [DONE]\n\n"


def large_expected(kind: str, size: int) -> int:
    return {"embeddings": 123, "text": 40000012}.get(kind, size + 9)


class BufferThenParse:
    """What a buffering gateway policy does (3scale APIcast's token counting, for one).

    Holds the whole response body in a bytearray, parses it with ``json.loads`` (for
    SSE: every event's data) to read the usage, then forwards it in one message.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.tokens = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        buffer = bytearray()
        start: Any = None

        async def buffering_send(message: Any) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            buffer.extend(message.get("body", b""))
            if message.get("more_body", False):
                return
            content_type = dict(start["headers"]).get(b"content-type", b"")
            if content_type.startswith(b"text/event-stream"):
                for event in bytes(buffer).split(b"\n\n"):
                    if event.startswith(b"data: {"):
                        usage = json.loads(event[6:]).get("usage")
                        if usage:
                            self.tokens += usage["total_tokens"]
            else:
                self.tokens += json.loads(buffer)["usage"]["total_tokens"]
            await send(start)
            await send({"type": "http.response.body", "body": buffer, "more_body": False})

        await self.app(scope, receive, buffering_send)


def _proc_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def run_large_child(kind: str, variant: str, size: int) -> dict[str, Any]:
    """One large-body case in this (fresh) process: MB/s and VmHWM growth."""
    if kind == "embeddings":
        path, content_type = "/v1/embeddings", b"application/json"
        req = json.dumps({"model": "text-embedding-3-small", "input": ["x"]}).encode()
    elif kind == "text":
        path, content_type = CHAT_PATH, b"application/json"
        req = request_body()
    else:
        path, content_type = CHAT_PATH, b"text/event-stream; charset=utf-8"
        req = request_body(stream=True, include_usage=True)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
        for chunk in large_chunks(kind, size):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    registry = None
    wrapped: Any = app
    if variant == "ours":
        wrapped, registry = ours_asgi(app)
    elif variant == "buffer":
        wrapped = BufferThenParse(app)
    nbytes = 0
    scope = asgi_scope(path, req)
    request = {"type": "http.request", "body": req, "more_body": False}

    async def receive() -> Any:
        return request

    async def send(message: Any) -> None:
        nonlocal nbytes
        nbytes += len(message.get("body", b""))

    loop = asyncio.new_event_loop()
    gc.collect()
    try:  # reset the peak to the current RSS, so imports and setup do not count
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = _proc_status("VmRSS")
    start = time.perf_counter()
    loop.run_until_complete(wrapped(scope, receive, send))
    elapsed = time.perf_counter() - start
    peak = _proc_status("VmHWM")
    counted: float | None = None
    if registry is not None:
        counted = prom_sum(registry, "llm_tokens_total")
    elif isinstance(wrapped, BufferThenParse):
        counted = wrapped.tokens
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


def section_large(cfg: Config, out: dict[str, Any], md: list[str], targets: list[Any]) -> None:
    rounds = cfg.large_rounds
    sizes = {"embeddings": cfg.large_json, "text": cfg.large_json, "sse": cfg.large_events}
    variants = ("bare", "ours", "buffer")
    log(f"[4] large bodies: {cfg.large_json / 1e6:.0f} MB JSON x2, {cfg.large_events:,} SSE events; "
        f"{rounds} rounds of fresh subprocesses")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {k: {v: [] for v in variants} for k in LARGE_KINDS}
    core: dict[str, list[float]] = {k: [] for k in LARGE_KINDS}
    core_ok: dict[str, Any] = {}
    for r in range(rounds):
        jobs = [(k, v) for k in LARGE_KINDS for v in (*variants, "core")]
        cfg.rng.shuffle(jobs)
        for kind, variant in jobs:
            if variant == "core":
                seconds, nbytes, result = core_scan(kind, sizes[kind])
                core[kind].append(nbytes / seconds / 1e6)
                usage = result.usage
                core_ok[kind] = usage.total_tokens if usage is not None else None
                continue
            proc = subprocess.run(
                [sys.executable, __file__, "--large-child", kind, variant, str(sizes[kind])],
                capture_output=True, text=True, timeout=600,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"large-body child {kind} {variant} failed:\n{proc.stderr[-2000:]}")
            results[kind][variant].append(json.loads(proc.stdout))
        log(f"    round {r + 1}/{rounds}: " + ", ".join(
            f"{k} core {core[k][-1]:.0f} MB/s" for k in LARGE_KINDS))
    summary: dict[str, Any] = {}
    md += [
        "### 4. Large bodies (in-process ASGI, each variant in a fresh subprocess)",
        "",
        "Bodies are generated on the fly from one reused piece (JSON in 65 KB chunks, SSE one event per message), so "
        "the only memory that can grow is what the middleware keeps. *Bare* passes the chunks by reference: its MB/s is "
        "the cost of the ASGI calls alone. *Buffer + json.loads* holds the whole body, parses it "
        "(every event's data, for SSE) and forwards it in one message, as a buffering gateway policy does. "
        "*Core scan* feeds the same chunks to `UsageExtractor(JSON)` / `UsageExtractor(SSE)` and calls `close()`. "
        f"Peak memory growth is VmHWM minus VmRSS before the request. Medians of {rounds} interleaved rounds.",
        "",
        "| Body | Variant | MB/s | peak memory growth (MB) | tokens counted |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    titles = {"embeddings": f"{cfg.large_json / 1e6:.0f} MB JSON, number arrays (embeddings)",
              "text": f"{cfg.large_json / 1e6:.0f} MB JSON, one huge content string",
              "sse": f"{cfg.large_events:,}-event SSE stream"}
    names = {"bare": "bare passthrough", "ours": "**llm-metrics-middleware**", "buffer": "buffer + json.loads"}
    for kind in LARGE_KINDS:
        expected = large_expected(kind, sizes[kind])
        summary[kind] = {}
        for variant in variants:
            runs = results[kind][variant]
            mbps = median([x["bytes"] / x["seconds"] / 1e6 for x in runs])
            growth = median([x["growth"] / 1e6 for x in runs])
            counted = runs[-1]["counted"]
            summary[kind][variant] = {"mb_per_s": mbps, "growth_mb": growth, "counted": counted, "runs": runs}
            shown = "—" if counted is None else f"{int(counted):,}" + ("" if counted == expected else f" (expected {expected:,})")
            md.append(f"| {titles[kind]} | {names[variant]} | {mbps:,.0f} | {growth:,.2f} | {shown} |")
        core_mbps = median(core[kind])
        summary[kind]["core_scan_mb_per_s"] = core_mbps
        summary[kind]["core_samples"] = core[kind]
        shown = "—" if core_ok.get(kind) is None else f"{core_ok[kind]:,}"
        target = ""
        if kind == "embeddings":
            ok = core_mbps >= TARGET_SCAN_GBPS * 1000
            targets.append(("core scan of large JSON (numbers), GB/s", f"{core_mbps / 1000:.2f}", f">= {TARGET_SCAN_GBPS}", ok))
            target = f" (target ≥ {TARGET_SCAN_GBPS:g} GB/s: {verdict(ok)})"
        elif kind == "text":
            ok = core_mbps >= TARGET_SCAN_GBPS * 1000
            targets.append(("core scan of large JSON (text), GB/s", f"{core_mbps / 1000:.2f}", f">= {TARGET_SCAN_GBPS}", ok))
            target = f" (target ≥ {TARGET_SCAN_GBPS:g} GB/s: {verdict(ok)})"
        md.append(f"| {titles[kind]} | core scan only{target} | {core_mbps:,.0f} | | {shown} |")
    out["large"] = {"sizes": sizes, "rounds": rounds, "results": summary}
    md.append("")


# -- section 5: uvicorn -----------------------------------------------------------------

def http_impl() -> str:
    try:
        import httptools  # noqa: F401

        return "httptools"
    except ImportError:
        return "h11"


def loop_impl() -> str:
    try:
        import uvloop  # noqa: F401

        return "uvloop"
    except ImportError:
        return "asyncio"


def serve(variant: str, port: int) -> None:
    """The server of section 5, run in its own process."""
    import uvicorn

    from llm_metrics_middleware.testing import SimulatedLLM

    app: Any = SimulatedLLM().asgi
    if variant == "ours":
        app, _ = ours_asgi(app)
    # interface="asgi3": uvicorn's guess takes a bound method (the bare simulator) for ASGI 2.
    uvicorn.run(app, host="127.0.0.1", port=port, http=http_impl(), loop=loop_impl(), lifespan="off",
                interface="asgi3", access_log=False, log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


UVICORN_MAX_TOKENS = 64


def _client_request(port: int) -> bytes:
    body = request_body(stream=True, include_usage=True, max_tokens=UVICORN_MAX_TOKENS)
    head = (f"POST {CHAT_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def python_client(port: int, connections: int, seconds: float) -> dict[str, Any]:
    """Fallback load client: keep-alive HTTP/1.1 over raw sockets, no parsing beyond framing.

    A response ends with the chunked terminator; the simulator's SSE bodies use only LF, so
    ``\\r\\n0\\r\\n\\r\\n`` at the end of the bytes read so far is that terminator.
    """
    request = _client_request(port)
    end = b"\r\n0\r\n\r\n"
    done = errors = 0

    async def worker(deadline: float) -> None:
        nonlocal done, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline:
                writer.write(request)
                first = True
                tail = b""
                while True:
                    data = await reader.read(65536)
                    if not data:
                        raise ConnectionError("server closed the connection")
                    if first:
                        first = False
                        if not data.startswith(b"HTTP/1.1 200"):
                            errors += 1
                    tail = (tail + data[-7:])[-7:]
                    if tail == end:
                        break
                done += 1
        finally:
            writer.close()

    async def main() -> float:
        deadline = time.monotonic() + seconds
        start = time.perf_counter()
        await asyncio.gather(*(worker(deadline) for _ in range(connections)))
        return time.perf_counter() - start

    elapsed = asyncio.run(main())
    return {"requests": done, "seconds": elapsed, "errors": errors}


_WRK_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _wrk_seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * _WRK_UNITS[m.group(2)] if m else float("nan")


def run_load(client: str, port: int, connections: int, seconds: float, lua: str) -> dict[str, Any]:
    """One bounded load run; returns requests, seconds, errors, latency when known."""
    if client == "wrk":
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", lua,
               f"http://127.0.0.1:{port}{CHAT_PATH}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        text = proc.stdout
        m = re.search(r"(\d+) requests in ([\d.]+\w+),", text)
        if proc.returncode != 0 or m is None:
            raise RuntimeError(f"wrk failed: {proc.stdout}\n{proc.stderr}")
        errors = 0
        for pattern in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"):
            e = re.search(pattern, text)
            if e:
                errors += sum(int(g) for g in e.groups())
        latency = {}
        for pct in ("50", "99"):
            lm = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", text, re.M)
            if lm:
                latency[f"p{pct}_ms"] = _wrk_seconds(lm.group(1)) * 1e3
        return {"requests": int(m.group(1)), "seconds": _wrk_seconds(m.group(2)), "errors": errors, **latency}
    proc = subprocess.run([sys.executable, __file__, "--load-client", str(port), str(connections), str(seconds)],
                          capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"python client failed: {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout))


def wait_for_port(port: int, proc: subprocess.Popen[Any], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def section_uvicorn(cfg: Config, out: dict[str, Any], md: list[str], targets: list[Any]) -> None:
    title = "### 5. uvicorn on 127.0.0.1, 50 concurrent streaming clients"
    try:
        import uvicorn  # noqa: F401
    except ImportError as exc:
        reason = f"uvicorn cannot be imported ({exc})"
        log(f"[5] skipped: {reason}")
        md += [title, "", f"Skipped: {reason}.", ""]
        out["uvicorn"] = {"skipped": reason}
        return
    client = cfg.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    elif client == "wrk" and not shutil.which("wrk"):
        client = "python"
    rounds, seconds, conns = cfg.uvicorn_rounds, cfg.uvicorn_seconds, 50
    log(f"[5] uvicorn ({http_impl()}, {loop_impl()}): {rounds} rounds x {seconds:g} s per variant, {conns} connections, "
        f"client {client}")
    section_deadline = time.monotonic() + cfg.uvicorn_budget
    tmp = tempfile.mkdtemp(prefix="llm-bench-")
    lua = os.path.join(tmp, "post.lua")
    body = request_body(stream=True, include_usage=True, max_tokens=UVICORN_MAX_TOKENS)
    with open(lua, "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                f"wrk.body = [[{body.decode()}]]\n")
    servers: dict[str, tuple[subprocess.Popen[Any], int]] = {}
    results: dict[str, list[dict[str, Any]]] = {"bare": [], "ours": []}
    try:
        for variant in ("bare", "ours"):
            port = free_port()
            # stderr to a file: asyncio logs a line per connection the client drops
            # mid-stream, and an undrained pipe would block the server.
            errlog = open(os.path.join(tmp, f"{variant}.stderr"), "w+b")  # noqa: SIM115
            proc = subprocess.Popen([sys.executable, __file__, "--serve", variant, str(port)],
                                    stdout=subprocess.DEVNULL, stderr=errlog)
            errlog.close()
            servers[variant] = (proc, port)
            if not wait_for_port(port, proc):
                with open(os.path.join(tmp, f"{variant}.stderr"), "rb") as f:
                    err = f.read().decode(errors="replace")[-1000:]
                reason = f"uvicorn did not start ({variant}): {err.strip() or 'no answer on its port within 20 s'}"
                log(f"[5] skipped: {reason}")
                md += [title, "", f"Skipped: {reason}.", ""]
                out["uvicorn"] = {"skipped": reason}
                return
        for variant, (proc, port) in servers.items():  # warm-up
            run_load(client, port, conns, min(2.0, seconds), lua)
        for r in range(rounds):
            order = list(servers)
            cfg.rng.shuffle(order)
            for variant in order:
                if time.monotonic() > section_deadline:
                    log("    section time budget spent; stopping early")
                    break
                proc, port = servers[variant]
                server_before, client_before, wall_before = cpu_seconds(proc.pid), children_cpu(), time.perf_counter()
                load = run_load(client, port, conns, seconds, lua)
                wall = time.perf_counter() - wall_before
                server_cpu = cpu_seconds(proc.pid) - server_before
                client_cpu = children_cpu() - client_before
                load.update(wall=wall, server_cpu=server_cpu, client_cpu=client_cpu,
                            rps=load["requests"] / load["seconds"])
                results[variant].append(load)
            log(f"    round {r + 1}/{rounds}: " + ", ".join(
                f"{v} {results[v][-1]['rps']:.0f} req/s" for v in results if results[v]))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    n = min(len(results["bare"]), len(results["ours"]))
    if any(x["requests"] == 0 for runs in results.values() for x in runs):
        reason = "a load run completed no request: " + json.dumps(results)[:1000]
        log(f"[5] failed: {reason}")
        md += [title, "", f"Failed: {reason}.", ""]
        out["uvicorn"] = {"failed": reason}
        return
    if n == 0:
        md += [title, "", "Skipped: no complete round within the time budget.", ""]
        out["uvicorn"] = {"skipped": "no complete round"}
        return
    summary: dict[str, dict[str, float]] = {}
    for variant, runs in results.items():
        summary[variant] = {
            "rps": median([x["rps"] for x in runs]),
            "server_cpu_us_per_request": median([x["server_cpu"] / max(x["requests"], 1) * 1e6 for x in runs]),
            "server_cpu_pct": median([x["server_cpu"] / x["wall"] * 100 for x in runs]),
            "client_cpu_pct": median([x["client_cpu"] / x["wall"] * 100 for x in runs]),
            "errors": sum(x["errors"] for x in runs),
            "p50_ms": median([x["p50_ms"] for x in runs if "p50_ms" in x]),
            "p99_ms": median([x["p99_ms"] for x in runs if "p99_ms" in x]),
        }
    ratio = median([o["rps"] / b["rps"] for o, b in zip(results["ours"], results["bare"])])
    cpu_added = summary["ours"]["server_cpu_us_per_request"] - summary["bare"]["server_cpu_us_per_request"]
    ok = ratio >= TARGET_UVICORN_RATIO
    targets.append(("uvicorn streaming: wrapped req/s ÷ bare req/s", f"{ratio:.3f}", f">= {TARGET_UVICORN_RATIO}", ok))
    out["uvicorn"] = {"client": client, "http": http_impl(), "loop": loop_impl(), "uvicorn": version_of("uvicorn"),
                      "connections": conns, "seconds_per_run": seconds, "rounds": n, "runs": results,
                      "summary": summary, "ratio": ratio, "server_cpu_us_added_per_request": cpu_added}
    client_desc = ("wrk 1 thread (C, `-t1 -c50`, a Lua script for the POST body)" if client == "wrk"
                   else "a raw-socket asyncio HTTP/1.1 keep-alive client in its own process"
                   + ("" if shutil.which("wrk") else " (wrk not found)"))
    md += [
        title,
        "",
        f"uvicorn {version_of('uvicorn')}, one worker, `--http {http_impl()}`, loop {loop_impl()}, no access log, serving "
        f"`SimulatedLLM().asgi`: `POST {CHAT_PATH}` streamed with include_usage, {UVICORN_MAX_TOKENS} content chunks "
        f"(68 SSE events). Client: {client_desc}. {seconds:g} s per variant per round, {n} interleaved rounds; medians. "
        "CPU from /proc/PID/stat (server) and the client process's rusage; % is of one core.",
        "",
        "| Variant | requests/s | vs bare | server CPU µs / request | server CPU % | client CPU % | p50 / p99 latency ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant, label in (("bare", "bare simulator"), ("ours", "**llm-metrics-middleware**")):
        s = summary[variant]
        vs = "1.00" if variant == "bare" else f"{ratio:.3f} (target ≥ {TARGET_UVICORN_RATIO}: {verdict(ok)})"
        latency = "—" if s["p50_ms"] != s["p50_ms"] else f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f}"  # nan: no wrk
        md.append(f"| {label} | {s['rps']:,.0f} | {vs} | {s['server_cpu_us_per_request']:,.0f} | {s['server_cpu_pct']:.0f} "
                  f"| {s['client_cpu_pct']:.0f} | {latency} | {int(s['errors'])} |")
    cpu_ratio = summary["bare"]["server_cpu_us_per_request"] / summary["ours"]["server_cpu_us_per_request"]
    out["uvicorn"]["cpu_capacity_ratio"] = cpu_ratio
    md += ["", f"Server CPU added by the middleware: {cpu_added:,.0f} µs per streamed request; capacity of one "
           f"saturated core, wrapped ÷ bare (server CPU per request, bare ÷ wrapped): {cpu_ratio:.3f}. On a shared "
           "machine the CPU figure is the steadier one: requests/s also moves with whatever else runs.", ""]


# -- profile ----------------------------------------------------------------------------

def profile(cfg: Config) -> None:
    """Where our time goes: step timings without a profiler, then cProfile's top entries."""
    import cProfile
    import pstats

    from llm_metrics_middleware._core.extractor import JSON, SSE, UsageExtractor
    from llm_metrics_middleware._metering.call import COMPLETED
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
    steps = ("RequestView.from_scope + Meter.begin (route_of, start_peek)",
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
            call = meter.begin(RequestView.from_scope(s))  # type: ignore[arg-type]
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
                call = wrapped.metering.begin(RequestView.from_scope(dict(sscope)))  # type: ignore[arg-type]
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

    def top(label: str, fn: Callable[[], Any], per: int, unit: str) -> None:
        profiler = cProfile.Profile()
        gc.collect()
        profiler.enable()
        fn()
        profiler.disable()
        stats = pstats.Stats(profiler)
        rows = []
        for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            if "bench.py" in filename or func == "<built-in method gc.collect>":
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


# -- main -------------------------------------------------------------------------------

class Config:
    def __init__(self, args: argparse.Namespace) -> None:
        quick = args.quick
        self.rng = random.Random(args.seed)
        self.rounds = args.rounds or (3 if quick else 7)
        self.json_requests = 2_000 if quick else 20_000
        self.stream_chunks = 2_000
        self.streams = 2 if quick else 10
        self.large_json = 20_000_000 if quick else 200_000_000
        self.large_events = 100_000 if quick else 1_000_000
        self.large_rounds = 1 if quick else 3
        self.uvicorn_rounds = 1 if quick else 5
        self.uvicorn_seconds = args.seconds or (2.0 if quick else 10.0)
        self.uvicorn_budget = 40.0 if quick else 150.0
        self.client = args.client


SECTIONS: dict[str, Callable[[Config, dict[str, Any], list[str], list[Any]], None]] = {
    "1": section_asgi_json,
    "2": section_asgi_sse,
    "3": section_wsgi,
    "4": section_large,
    "5": section_uvicorn,
}


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": {d: version_of(d) for d in (
            "llm-metrics-middleware", "prometheus-client", "prometheus-fastapi-instrumentator", "opentelemetry-sdk",
            "opentelemetry-instrumentation-asgi", "opentelemetry-instrumentation-wsgi", "uvicorn", "starlette", "h11")},
        "otel_setup": OTEL_SETUP,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, under a minute")
    parser.add_argument("--json", metavar="PATH", help="write every sample and median as JSON")
    parser.add_argument("--sections", default="1,2,3,4,5", help="comma-separated sections to run (default all)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds for sections 1-3 (default 7, quick 3)")
    parser.add_argument("--seconds", type=float, help="seconds per uvicorn load run (default 10, quick 2)")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto", help="uvicorn load client")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="print where our time goes instead of benchmarking")
    parser.add_argument("--large-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--load-client", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.large_child:
        kind, variant, size = args.large_child
        print(json.dumps(run_large_child(kind, variant, int(size))))
        return 0
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return 0
    if args.load_client:
        port, conns, seconds = args.load_client
        print(json.dumps(python_client(int(port), int(conns), float(seconds))))
        return 0

    cfg = Config(args)
    if args.profile:
        profile(cfg)
        return 0

    started = time.perf_counter()
    out: dict[str, Any] = {"environment": environment(), "quick": args.quick, "seed": args.seed}
    md: list[str] = []
    targets: list[tuple[str, str, str, bool]] = []
    for key in args.sections.split(","):
        key = key.strip()
        if key not in SECTIONS:
            parser.error(f"--sections takes numbers 1 to 5, got {key!r}")
        t0 = time.perf_counter()
        SECTIONS[key](cfg, out, md, targets)
        log(f"    section {key}: {time.perf_counter() - t0:.0f} s")
    elapsed = time.perf_counter() - started
    env = out["environment"]
    versions = env["versions"]
    head = [
        f"## Benchmark{' (quick smoke run: too short to quote)' if args.quick else ''}",
        "",
        f"`bench/run{' --quick' if args.quick else ''}` on Python {env['python']}, {env['cpus']} CPUs "
        f"({env['platform']}), {elapsed:.0f} s. llm-metrics-middleware from this tree with a PrometheusExporter on "
        f"its own registry and dimensions {', '.join(DIMENSIONS)}; prometheus-client {versions['prometheus-client']}. "
        f"OpenTelemetry peers: opentelemetry-sdk {versions['opentelemetry-sdk']}, {OTEL_SETUP}. "
        "Rounds are interleaved (every variant once per round, shuffled); figures are medians.",
        "",
    ]
    if targets:
        head += ["| Target | Figure | Required | Result |", "| --- | ---: | ---: | --- |"]
        head += [f"| {name} | {figure} | {required} | {verdict(ok)} |" for name, figure, required, ok in targets]
        head.append("")
    out["targets"] = [{"target": n, "figure": f, "required": r, "pass": ok} for n, f, r, ok in targets]
    out["seconds"] = elapsed
    print("\n".join(head + md))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
        log(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
