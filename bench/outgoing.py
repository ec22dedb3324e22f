"""What metering an outgoing LLM call costs: an httpx2 client, bare and metered.

Each case sends the same call through four clients in interleaved rounds (every round
runs every variant once, in a shuffled order, so noise on a shared machine hits all of them
alike): the bare client; ``instrument_httpx()`` with a call outside any request (counted by
its exporter); ``instrument_httpx()`` with the call inside a request of an
``LLMMetricsMiddleware`` (the contextvar set, counted by the middleware); and a
``LLMMetricsTransport``. The transport is in-process (``httpx2.MockTransport`` serving the
simulator's bodies; the stream case hands each SSE event over as its own chunk) so the
figure is our cost, not the network's. Figures are medians over rounds of the per-call
time, "added" the median of the per-round differences to the bare client, and the ratio
the median of per-round ratios.

    python bench/outgoing.py                 # about a minute
    python bench/outgoing.py --quick         # a few seconds
    python bench/outgoing.py --json out.json

Markdown goes to stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx2  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from llm_metrics_middleware import (  # noqa: E402
    LLMMetricsTransport,
    PrometheusExporter,
    instrument_httpx,
    uninstrument_httpx,
)
from llm_metrics_middleware._metering import context  # noqa: E402
from llm_metrics_middleware._metering.metered_call import MeteredCall  # noqa: E402
from llm_metrics_middleware._metering.metering import Metering  # noqa: E402
from llm_metrics_middleware._metering.request import RequestView  # noqa: E402
from llm_metrics_middleware.testing import SimulatedLLM  # noqa: E402

DIMENSIONS = ["API ID", "Operation ID", "User ID", "Model"]
REQUEST = {"model": "sim-gpt-1", "messages": [{"role": "user", "content": "What is a token, in a few words?"}],
           "user": "bench", "max_tokens": 40}


class Chunks(httpx2.SyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks


class BareMock(httpx2.MockTransport):
    """A MockTransport whose handle_request instrument_httpx does not patch (a subclass's own)."""

    handle_request = httpx2.MockTransport.handle_request


def handler_of(chunks: list[bytes], content_type: str) -> Callable[[httpx2.Request], httpx2.Response]:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": content_type}, stream=Chunks(chunks))

    return handler


def body_of(stream: bool) -> tuple[list[bytes], str]:
    request = {**REQUEST, **({"stream": True, "stream_options": {"include_usage": True}} if stream else {})}
    response = SimulatedLLM().respond("POST", "/v1/chat/completions", json.dumps(request).encode())
    return list(response.chunks), dict(response.headers)["content-type"]


def variants(stream: bool) -> dict[str, Callable[[], None]]:
    """The four clients; instrument_httpx() is on for the whole measurement."""
    chunks, content_type = body_of(stream)
    handler = handler_of(chunks, content_type)
    payload = {**REQUEST, **({"stream": True, "stream_options": {"include_usage": True}} if stream else {})}
    bare = httpx2.Client(base_url="http://llm", transport=BareMock(handler))
    transport = httpx2.Client(base_url="http://llm", transport=LLMMetricsTransport(
        BareMock(handler), exporters=[PrometheusExporter(CollectorRegistry())], dimensions=DIMENSIONS))
    instrumented = httpx2.Client(base_url="http://llm", transport=httpx2.MockTransport(handler))
    instrument_httpx(exporters=[PrometheusExporter(CollectorRegistry())], dimensions=DIMENSIONS)
    middleware = Metering(exporters=[PrometheusExporter(CollectorRegistry())], dimensions=DIMENSIONS)
    incoming_body = json.dumps({"message": "hi", "user": "bench"}).encode()

    def call(client: httpx2.Client) -> None:
        if stream:
            with client.stream("POST", "/v1/chat/completions", json=payload) as response:
                for _ in response.iter_bytes():
                    pass
        else:
            client.post("/v1/chat/completions", json=payload).read()

    def inside() -> None:
        # What a middleware does around the app: the incoming call current for the request
        # (its own finish costs nothing more: counted_elsewhere).
        view = RequestView("POST", "/chat", "", "", raw_headers=[(b"content-type", b"application/json")])
        incoming = MeteredCall(middleware, view)
        incoming.request_body(incoming_body)
        token = context.enter(incoming)
        try:
            call(instrumented)
        finally:
            context.leave(token)
        incoming.finish("completed")

    return {
        "bare httpx2 client": lambda: call(bare),
        "instrument_httpx, outside requests": lambda: call(instrumented),
        "instrument_httpx, inside a request": inside,
        "LLMMetricsTransport": lambda: call(transport),
    }


def measure(stream: bool, rounds: int, calls: int) -> dict[str, Any]:
    runs = variants(stream)
    for fn in runs.values():  # warm up
        for _ in range(20):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for _ in range(rounds):
        random.shuffle(order)
        for name in order:
            fn = runs[name]
            gc.collect()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].append((time.perf_counter() - start) / calls * 1e6)
    uninstrument_httpx()
    bare = samples["bare httpx2 client"]
    out: dict[str, Any] = {}
    for name, values in samples.items():
        out[name] = {
            "us_per_call": statistics.median(values),
            "added_us": statistics.median(v - b for v, b in zip(values, bare)),
            "ratio": statistics.median(v / b for v, b in zip(values, bare)),
            "samples": values,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, for a smoke run")
    parser.add_argument("--json", type=Path, help="also write every sample here")
    args = parser.parse_args()
    rounds, calls = (5, 50) if args.quick else (21, 200)
    results = {}
    for label, stream in (("non-streamed chat completion", False), ("SSE stream, include_usage (44 events)", True)):
        print(f"measuring: {label}", file=sys.stderr)
        results[label] = measure(stream, rounds, calls)
    print(f"Python {sys.version.split()[0]}, httpx2 {httpx2.__version__}, {rounds} rounds of {calls} calls, "
          "Prometheus exporter with 4 dimensions, in-process transport\n")
    print("| case | variant | µs per call | µs added | ratio to bare |")
    print("| --- | --- | ---: | ---: | ---: |")
    for label, by_variant in results.items():
        for name, r in by_variant.items():
            print(f"| {label} | {name} | {r['us_per_call']:.1f} | {r['added_us']:.1f} | {r['ratio']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
