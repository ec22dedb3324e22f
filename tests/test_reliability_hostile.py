"""Hostile request and response bodies through both middlewares (issue 16, "done when").

Whatever the bodies (deep nesting, lone surrogates, huge key counts, garbage) and however
they are chunked, through the ASGI and WSGI middlewares and the outgoing transport: no exception escapes, the response's bytes are unchanged, the call is
recorded, no internal error is counted, and ``/metrics`` still parses.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llm_metrics_middleware import (
    LLMMetricsMiddleware,
    LLMMetricsTransport,
    LLMMetricsWSGIMiddleware,
    PrometheusExporter,
)
from llm_metrics_middleware.testing import InMemoryExporter

from .drive import chunk_app, run_asgi, run_wsgi, split, wsgi_chunk_app

# Raw JSON texts, so that lone-surrogate escapes and depths json.dumps would refuse can be
# written as an attacker would.
SURROGATES = st.sampled_from(['"\\ud800"', '"x\\udfff"', '"\\udc80\\ud800y"', '"ok"', '"\\u0000\\u009f"'])


def deep(depth: int, inner: str) -> str:
    return "[" * depth + inner + "]" * depth


@st.composite
def hostile_json(draw: Any) -> str:
    """One hostile JSON value, as text."""
    kind = draw(st.sampled_from(["deep", "surrogate", "keys", "strings", "plain"]))
    if kind == "deep":
        return deep(draw(st.sampled_from([10, 900, 1500, 5000])), draw(SURROGATES))
    if kind == "surrogate":
        return draw(SURROGATES)
    if kind == "keys":
        n = draw(st.sampled_from([10, 3000]))
        return "{" + ",".join(f'"k{i}":{i}' for i in range(n)) + "}"
    if kind == "strings":
        return "[" + ",".join(['"ab"'] * draw(st.sampled_from([10, 20_000]))) + "]"
    return json.dumps(draw(st.text(max_size=40)))


@st.composite
def request_bodies(draw: Any) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))  # not JSON at all
    fields = [
        f'"model": {draw(SURROGATES)}',
        f'"user": {draw(SURROGATES)}',
        f'"messages": [{{"role": "user", "content": {draw(hostile_json())}}}]',
        f'"metadata": {{"user_id": {draw(SURROGATES)}, "x": {draw(hostile_json())}}}',
        f'"extra": {draw(hostile_json())}',
    ]
    if draw(st.booleans()):
        fields.append('"stream": true, "stream_options": {"include_usage": true}')
    return ("{" + ", ".join(draw(st.permutations(fields))) + "}").encode()


USAGE = '"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}'


@st.composite
def responses(draw: Any) -> tuple[list[tuple[str, str]], bytes]:
    model = draw(SURROGATES)
    if draw(st.booleans()):
        events = []
        for _ in range(draw(st.integers(0, 6))):
            events.append(draw(st.sampled_from([
                f'{{"model": {model}, "choices": [{{"delta": {{"content": {draw(SURROGATES)}}}}}]}}',
                deep(draw(st.sampled_from([50, 2000, 9000])), "1"),
                f'{{"model": {model}, "choices": [], {USAGE}}}',
                f'{{"model": {model}, "choices": [], "usage":\ndata: {{"prompt_tokens": 1, "completion_tokens": 2}}}}',
                '{"done": true, "prompt_eval_count": 5, "eval_count": 6}',
                draw(hostile_json()),
                "[DONE]",
                "not json {",
            ])))
        body = "".join(f"data: {e}\n\n" for e in events).encode()
        headers = [("content-type", "text/event-stream")]
    else:
        body = f'{{"model": {model}, "choices": [{{"message": {{"content": {draw(hostile_json())}}}}}], {USAGE}}}'.encode()
        headers = [("content-type", draw(st.sampled_from(["application/json", "text/plain", "application/x-ndjson"])))]
    if draw(st.booleans()):
        body = gzip.compress(body)
        headers.append(("content-encoding", "gzip"))
    return headers, body


def _metrics_parse(registry: CollectorRegistry) -> None:
    text = generate_latest(registry).decode("utf-8")  # raises on a label that cannot be encoded
    assert list(text_string_to_metric_families(text))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(request=request_bodies(), response=responses(), sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=5),
       body_chunks=st.integers(1, 7))
def test_hostile_bodies_through_both_middlewares(
    request: bytes, response: tuple[list[tuple[str, str]], bytes], sizes: list[int], body_chunks: int
) -> None:
    headers, body = response
    chunks = split(body, sizes) or [b""]
    dimensions = ["User ID", "Model", "Provider", "Operation ID", "Product ID"]

    bare = run_asgi(chunk_app(200, headers, chunks), body=request, body_chunks=body_chunks)
    registry, exporter = CollectorRegistry(), InMemoryExporter()
    app = LLMMetricsMiddleware(chunk_app(200, headers, chunks), exporters=[exporter, PrometheusExporter(registry)],
                               dimensions=dimensions)
    assert run_asgi(app, body=request, body_chunks=body_chunks) == bare  # every message, byte for byte
    assert len(exporter.calls) == 1 and "internal" not in exporter.errors, exporter.errors
    _metrics_parse(registry)

    registry, exporter = CollectorRegistry(), InMemoryExporter()
    wsgi = LLMMetricsWSGIMiddleware(wsgi_chunk_app("200 OK", headers, chunks),
                                    exporters=[exporter, PrometheusExporter(registry)], dimensions=dimensions)
    assert run_wsgi(wsgi, body=request)[2] == chunks
    assert len(exporter.calls) == 1 and "internal" not in exporter.errors, exporter.errors
    _metrics_parse(registry)

    # The outgoing transport: an app calling the hostile upstream itself.
    registry, exporter = CollectorRegistry(), InMemoryExporter()

    def upstream(request: httpx.Request) -> httpx.Response:
        request.read()
        return httpx.Response(200, headers=headers, content=iter(chunks))

    transport = LLMMetricsTransport(httpx.MockTransport(upstream), exporters=[exporter, PrometheusExporter(registry)],
                                    dimensions=dimensions)
    with httpx.Client(transport=transport) as client, client.stream(
        "POST", "http://upstream.test/v1/chat/completions", content=request,
        headers={"content-type": "application/json"},
    ) as answer:
        assert [piece for piece in answer.iter_raw() if piece] == [c for c in chunks if c]
    assert len(exporter.calls) == 1 and "internal" not in exporter.errors, exporter.errors
    _metrics_parse(registry)
