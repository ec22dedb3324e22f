"""Bad input, compression, disconnects, cardinality, concurrency, secrets."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import random
import threading
import zlib
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from llm_metrics_middleware import Dimension, LLMMetricsMiddleware, LLMMetricsWSGIMiddleware, PrometheusExporter
from llm_metrics_middleware._core.usage import MAX_TOKENS
from llm_metrics_middleware.testing import InMemoryExporter, SimulatedLLM

from .drive import body_of, chunk_app, request_json, run_asgi, run_wsgi, split, wsgi_chunk_app
from .test_asgi_middleware import OPENAI_STREAM

JSON_BODY = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there " * 50}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 100, "total_tokens": 112},
}).encode()


def wrapped_asgi(status: int, headers: list[tuple[str, str]], chunks: list[bytes]) -> tuple[Any, InMemoryExporter]:
    exporter = InMemoryExporter()
    return LLMMetricsMiddleware(chunk_app(status, headers, chunks), exporters=[exporter], dimensions=["User ID"]), exporter


# -- compression ------------------------------------------------------------------------


def _deflate_raw(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(
    "encoding,compress",
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", _deflate_raw), ("x-gzip", gzip.compress)],
)
@pytest.mark.parametrize("size", [1, 13, 4096])
def test_compressed_json_and_sse_are_counted(encoding: str, compress: Any, size: int) -> None:
    for body, content_type, expected in ((JSON_BODY, "application/json", 112), (OPENAI_STREAM, "text/event-stream", 11)):
        compressed = compress(body)
        chunks = split(compressed, size)
        headers = [("content-type", content_type), ("content-encoding", encoding)]
        app, exporter = wrapped_asgi(200, headers, chunks)
        sent = run_asgi(app, body=request_json(model="gpt-4o"))
        assert body_of(sent)[:-1] == chunks  # still compressed, chunk for chunk
        assert exporter.calls[0].usage.total_tokens == expected
        wsgi_exporter = InMemoryExporter()
        wsgi = LLMMetricsWSGIMiddleware(wsgi_chunk_app("200 OK", headers, chunks), exporters=[wsgi_exporter])
        assert run_wsgi(wsgi, body=request_json(model="gpt-4o"))[2] == chunks
        assert wsgi_exporter.calls[0].usage.total_tokens == expected


def test_decompression_bomb_is_refused_and_response_untouched() -> None:
    payload = b'{"pad": "' + b"a" * 60_000_000 + b'", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}'
    bomb = gzip.compress(payload, compresslevel=9)
    assert len(payload) / len(bomb) > 200
    chunks = split(bomb, 16384)
    app, exporter = wrapped_asgi(200, [("content-type", "application/json"), ("content-encoding", "gzip")], chunks)
    sent = run_asgi(app, body=request_json(model="m"))
    assert body_of(sent)[:-1] == chunks
    [call] = exporter.calls
    assert call.usage is None and call.parse_error == "decompression_bomb"
    assert "decompression_bomb" in exporter.errors


def test_corrupt_gzip_is_passed_on_unread() -> None:
    garbage = gzip.compress(JSON_BODY)[:20] + b"\xff" * 100
    app, exporter = wrapped_asgi(200, [("content-type", "application/json"), ("content-encoding", "gzip")], [garbage])
    sent = run_asgi(app, body=request_json(model="m"))
    assert body_of(sent)[:-1] == [garbage]
    assert exporter.calls[0].usage is None and exporter.calls[0].parse_error == "bad_compression"


# -- bad input ----------------------------------------------------------------------------


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


# -- cardinality ------------------------------------------------------------------------


def test_many_distinct_users_are_capped() -> None:
    registry = CollectorRegistry()
    exporter = PrometheusExporter(registry)
    app = LLMMetricsMiddleware(
        chunk_app(200, [("content-type", "application/json")], [JSON_BODY]),
        exporters=[exporter], dimensions=["User ID"], max_series=100,
    )
    n = 3000
    for i in range(n):
        run_asgi(app, body=request_json(model="m", user=f"user-{i}"))
    text = generate_latest(registry).decode()
    series = [line for line in text.splitlines() if line.startswith("llm_tokens_total{")]
    assert len(series) == 101  # 100 users and the overflow series
    assert f'llm_tokens_total{{user_id="__overflow__"}} {float(112 * (n - 100))}' in text
    assert app.metering.limiter.overflowed == n - 100
    assert f'llm_metering_errors_total{{kind="series_overflow"}} {float(n - 100)}' in text


def test_label_values_are_sanitised() -> None:
    exporter = InMemoryExporter()
    app = LLMMetricsMiddleware(chunk_app(200, [("content-type", "application/json")], [JSON_BODY]), exporters=[exporter], dimensions=["User ID"])
    run_asgi(app, body=request_json(model="m", user="evil\n\x00\x1b[31m" + "u" * 1000))
    value = exporter.dimensions(exporter.calls[0])["User ID"]
    assert "\n" not in value and "\x00" not in value and "\x1b" not in value
    assert len(value) <= 128


# -- concurrency --------------------------------------------------------------------------


def test_thousand_concurrent_asgi_streams_exact() -> None:
    registry = CollectorRegistry()
    sim = SimulatedLLM(chunk_delay=0.0005)
    app = LLMMetricsMiddleware(sim.asgi, exporters=[PrometheusExporter(registry)], dimensions=["User ID"])
    n = 1000

    async def main() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as client:
            async def one(i: int) -> int:
                r = await client.post("/v1/chat/completions", json={
                    "model": "m", "user": f"u{i % 10}", "stream": True, "max_tokens": 5 + i % 7,
                    "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": "w " * (i % 5)}]})
                last = [line for line in r.text.split("\n\n") if '"usage":{' in line][-1]
                return int(json.loads(last[6:])["usage"]["total_tokens"])

            return sum(await asyncio.gather(*(one(i) for i in range(n))))

    expected = asyncio.run(main())
    total = sum(
        s.value for m in registry.collect() if m.name == "llm_tokens" for s in m.samples if s.name == "llm_tokens_total"
    )
    requests = sum(
        s.value for m in registry.collect() if m.name == "llm_requests" for s in m.samples if s.name == "llm_requests_total"
    )
    assert requests == n and total == expected


def test_threaded_wsgi_exact() -> None:
    registry = CollectorRegistry()
    sim = SimulatedLLM()
    app = LLMMetricsWSGIMiddleware(sim.wsgi, exporters=[PrometheusExporter(registry)], dimensions=["User ID"])
    totals: list[int] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        rng = random.Random(k)
        for i in range(100):
            stream = rng.random() < 0.5
            body = request_json(model="m", user=f"t{k}", stream=stream, max_tokens=rng.randint(1, 30),
                                stream_options={"include_usage": True}, messages=[{"role": "user", "content": "a b"}])
            _, _, blocks = run_wsgi(app, body=body)
            text = b"".join(blocks)
            if stream:
                usage = json.loads([e for e in text.split(b"\n\n") if b'"usage":{' in e][-1][6:])["usage"]
            else:
                usage = json.loads(text)["usage"]
            with lock:
                totals.append(usage["total_tokens"])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = generate_latest(registry).decode()
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("llm_tokens_total{"))
    assert len(totals) == 1600 and counted == sum(totals)


# -- secrets ------------------------------------------------------------------------------


def test_no_secret_or_text_in_labels_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="llm_metrics_middleware")
    registry = CollectorRegistry()
    secret = "sk-proj-SECRETKEY1234567890"
    prompt = "my confidential prompt words"
    exporter = PrometheusExporter(registry)
    app = LLMMetricsMiddleware(
        SimulatedLLM().asgi, exporters=[exporter], subscription_secret="k",
        dimensions=["API ID", "Operation ID", "Product ID", "User ID", "Subscription ID", "Location", "Gateway ID", "Model",
                    Dimension("team", lambda r: r.headers.get("x-team"))],
    )

    async def main() -> str:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            for stream in (False, True):
                await client.post("/v1/chat/completions", headers={"authorization": f"Bearer {secret}", "x-team": "a"},
                                  json={"model": "m", "stream": stream, "messages": [{"role": "user", "content": prompt}]})
            await client.post("/v1/chat/completions", headers={"authorization": f"Bearer {secret}"}, content=b'{"broken')
        return generate_latest(registry).decode()

    text = asyncio.run(main())
    logs = "\n".join(r.getMessage() + str(r.args) for r in caplog.records)
    for needle in (secret, "SECRETKEY", prompt, "confidential", "Bearer"):
        assert needle not in text and needle not in logs
    import hashlib
    import hmac

    digest = hmac.new(b"k", secret.encode(), hashlib.sha256).hexdigest()[:16]
    assert f'subscription_id="{digest}"' in text


@pytest.mark.parametrize("encoding,module", [("br", "brotli"), ("zstd", "zstandard")])
@pytest.mark.parametrize("size", [1, 100, 8192])
def test_brotli_and_zstd_when_installed(encoding: str, module: str, size: int) -> None:
    lib = pytest.importorskip(module)
    compress = lib.compress if module == "brotli" else lib.ZstdCompressor().compress
    for body, content_type, expected in ((JSON_BODY, "application/json", 112), (OPENAI_STREAM, "text/event-stream", 11)):
        chunks = split(compress(body), size)
        app, exporter = wrapped_asgi(200, [("content-type", content_type), ("content-encoding", encoding)], chunks)
        sent = run_asgi(app, body=request_json(model="gpt-4o"))
        assert body_of(sent)[:-1] == chunks
        assert exporter.calls[0].usage.total_tokens == expected


@pytest.mark.parametrize("encoding,module", [("br", "brotli"), ("zstd", "zstandard")])
def test_brotli_and_zstd_bombs_are_refused(encoding: str, module: str) -> None:
    lib = pytest.importorskip(module)
    payload = b'{"pad": "' + b"a" * 60_000_000 + b'", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}'
    bomb = lib.compress(payload) if module == "brotli" else lib.ZstdCompressor().compress(payload)
    chunks = split(bomb, 16384)
    app, exporter = wrapped_asgi(200, [("content-type", "application/json"), ("content-encoding", encoding)], chunks)
    sent = run_asgi(app, body=request_json(model="m"))
    assert body_of(sent)[:-1] == chunks
    assert exporter.calls[0].usage is None and exporter.calls[0].parse_error == "decompression_bomb"


@pytest.mark.slow
def test_a_million_distinct_users_make_a_bounded_number_of_series() -> None:
    registry = CollectorRegistry()
    app = LLMMetricsMiddleware(
        chunk_app(200, [("content-type", "application/json")], [JSON_BODY]),
        exporters=[PrometheusExporter(registry)], dimensions=["User ID"],
    )
    n = 1_000_000
    bodies = [request_json(model="m", user=f"user-{i}") for i in range(1000)]

    async def main() -> None:
        for i in range(n):
            body = bodies[i % 1000] if i < 1000 else b'{"model": "m", "user": "user-%d"}' % i
            messages = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive() -> Any:
                return messages.pop() if messages else {"type": "http.disconnect"}

            async def send(message: Any) -> None:
                pass

            scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
                     "root_path": "", "headers": [(b"content-type", b"application/json")]}
            await app(scope, receive, send)

    asyncio.run(main())
    text = generate_latest(registry).decode()
    series = [line for line in text.splitlines() if line.startswith("llm_tokens_total{")]
    assert len(series) == 2001  # the default max_series and the overflow series
    assert app.metering.limiter.overflowed == n - 2000
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in series)
    assert counted == 112 * n  # nothing lost to the cap
