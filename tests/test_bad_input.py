"""Bad input: absurd usage values, garbage bodies, endless lines. Nothing raises, nothing is
invented, every byte passes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_metrics_middleware import LLMMetricsWSGIMiddleware
from llm_metrics_middleware._core.usage import MAX_TOKENS
from llm_metrics_middleware.testing import InMemoryExporter

from .drive import body_of, request_json, run_asgi, run_wsgi, split, wsgi_chunk_app
from .samples import JSON_BODY, OPENAI_STREAM, wrapped_asgi


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -5, "completion_tokens": 3},
        {"prompt_tokens": "12", "completion_tokens": 3},
        {"prompt_tokens": 1.5, "completion_tokens": 3},
        {"prompt_tokens": 1e30, "completion_tokens": 3},
        {"prompt_tokens": MAX_TOKENS + 1, "completion_tokens": 3},
        {"prompt_tokens": True, "completion_tokens": 3},
        {"prompt_tokens": {"n": 1}, "completion_tokens": 3},
        {"prompt_tokens": [1], "completion_tokens": 3},
    ],
)
def test_absurd_usage_values_are_refused_and_counted(usage: dict[str, Any]) -> None:
    body = json.dumps({"model": "m", "usage": usage}).encode()
    app, exporter = wrapped_asgi(200, [("content-type", "application/json")], [body])
    run_asgi(app, body=request_json(model="m"))
    [call] = exporter.calls
    assert call.usage is None and call.parse_error == "invalid_usage"
    assert exporter.errors == ["invalid_usage"]


def test_float_counts_that_are_whole_are_accepted() -> None:
    body = b'{"model": "m", "usage": {"prompt_tokens": 12.0, "completion_tokens": 3, "total_tokens": 15}}'
    app, exporter = wrapped_asgi(200, [("content-type", "application/json")], [body])
    run_asgi(app, body=request_json(model="m"))
    assert exporter.calls[0].usage.prompt_tokens == 12


SAMPLES = [
    (JSON_BODY, "application/json"),
    (OPENAI_STREAM, "text/event-stream"),
    (OPENAI_STREAM.replace(b"\n", b"\r\n"), "text/event-stream"),
    (b'{"model":"llama3","message":{"content":"a"},"done":false}\n{"model":"llama3","done":true,"prompt_eval_count":5,"eval_count":7}\n', "application/x-ndjson"),
    (b'[{"candidates":[],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":4,"totalTokenCount":7},"modelVersion":"g"}]', "application/json"),
]


@st.composite
def mangled(draw: Any) -> tuple[bytes, str, list[bytes]]:
    body, content_type = draw(st.sampled_from(SAMPLES))
    body = bytearray(body)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "dup"]))
        if not body:
            break
        i = draw(st.integers(0, len(body) - 1))
        if op == "flip":
            body[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del body[i : i + draw(st.integers(1, 40))]
        elif op == "insert":
            body[i:i] = draw(st.sampled_from([b"\xff\xfe", b"{", b"}", b"]", b'"', b"\\", b"\n\n", b"\r", b"data: ", b"-1", b"1e30", b'"usage":{"prompt_tokens":-3}', b"\x00" * 5]))
        else:
            body[i:i] = body[i : i + draw(st.integers(1, 200))]
    raw = bytes(body)
    cuts = draw(st.lists(st.integers(1, 64), min_size=1, max_size=8))
    return raw, draw(st.sampled_from([content_type, "text/plain", "", "application/octet-stream"])), split(raw, cuts) or [b""]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mangled(), st.sampled_from(["/v1/chat/completions", "/api/chat", "/other"]), st.integers(200, 599))
def test_garbage_never_raises_and_passes_byte_for_byte(case: tuple[bytes, str, list[bytes]], path: str, status: int) -> None:
    body, content_type, chunks = case
    headers = [("content-type", content_type)] if content_type else []
    app, exporter = wrapped_asgi(status, headers, chunks)
    sent = run_asgi(app, path=path, body=request_json(model="m", stream=True))
    assert body_of(sent)[:-1] == chunks
    assert sent[0]["status"] == status
    wsgi_exporter = InMemoryExporter()
    wsgi = LLMMetricsWSGIMiddleware(wsgi_chunk_app(f"{status} X", headers, chunks), exporters=[wsgi_exporter])
    assert run_wsgi(wsgi, path=path, body=request_json(model="m"))[2] == chunks
    for call in exporter.calls + wsgi_exporter.calls:
        usage = call.usage
        if usage is not None:
            for value in (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.cached_tokens, usage.reasoning_tokens):
                assert isinstance(value, int) and 0 <= value <= 2 * MAX_TOKENS
            assert usage.total_tokens >= usage.prompt_tokens + usage.completion_tokens
            assert status < 400


def test_very_long_lines_and_events_cost_no_memory() -> None:
    line = b"data: " + b"x" * 5_000_000 + b"\n\n"
    app, exporter = wrapped_asgi(200, [("content-type", "text/event-stream")], split(line, 65536) + [OPENAI_STREAM])
    run_asgi(app, body=request_json(model="m"))
    assert exporter.calls[0].usage.total_tokens == 11
