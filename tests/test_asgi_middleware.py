from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from llm_metrics_middleware import Dimension, LLMMetricsMiddleware, PrometheusExporter
from llm_metrics_middleware.testing import InMemoryExporter, SimulatedLLM

from .drive import body_of, chunk_app, request_json, run_asgi
from .samples import OPENAI_STREAM, BrokenExporter

SSE_HEADERS = [("content-type", "text/event-stream")]


def wrap(app: Any, **options: Any) -> tuple[LLMMetricsMiddleware, InMemoryExporter]:
    exporter = InMemoryExporter()
    options.setdefault("dimensions", ["User ID", "Model"])
    return LLMMetricsMiddleware(app, exporters=[exporter], **options), exporter


@pytest.mark.parametrize("size", [1, 2, 7, 64, 10_000])
def test_stream_passes_chunk_for_chunk_and_counts(size: int) -> None:
    chunks = [OPENAI_STREAM[i : i + size] for i in range(0, len(OPENAI_STREAM), size)]
    bare = run_asgi(chunk_app(200, SSE_HEADERS, chunks), body=request_json(model="gpt-4o-mini", user="u1"))
    app, exporter = wrap(chunk_app(200, SSE_HEADERS, chunks))
    sent = run_asgi(app, body=request_json(model="gpt-4o-mini", user="u1"))
    assert sent == bare  # same messages, same order, same bytes, nothing added
    [call] = exporter.calls
    assert (call.usage.prompt_tokens, call.usage.completion_tokens, call.usage.total_tokens) == (9, 2, 11)
    assert call.usage_source == "reported" and call.outcome == "completed" and call.streamed
    assert exporter.dimensions(call) == {"User ID": "u1", "Model": "gpt-4o-mini"}


def test_request_body_reaches_app_unchanged() -> None:
    seen = bytearray()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            seen.extend(message.get("body", b""))
            if not message.get("more_body"):
                break
        await chunk_app(200, [("content-type", "application/json")], [b'{"usage":{"prompt_tokens":1,"completion_tokens":1}}'], read_body=False)(scope, receive, send)

    body = request_json(model="m", user="ü" * 100, messages=[{"role": "user", "content": "x" * 5000}])
    wrapped, exporter = wrap(app)
    run_asgi(wrapped, body=body, body_chunks=17)
    assert bytes(seen) == body
    assert exporter.dimensions(exporter.calls[0])["User ID"] == "ü" * 100


def test_error_status_counts_request_but_no_tokens() -> None:
    body = b'{"error":{"message":"Rate limit","type":"rate_limit_error"},"usage":{"prompt_tokens":5,"completion_tokens":5}}'
    app, exporter = wrap(chunk_app(429, [("content-type", "application/json")], [body]))
    run_asgi(app, body=request_json(model="m"))
    [call] = exporter.calls
    assert call.status == 429 and call.usage is None and call.usage_source == "none"


def test_non_llm_paths_are_not_counted() -> None:
    app, exporter = wrap(chunk_app(200, [("content-type", "application/json")], [b'{"model": "car", "items": []}']))
    run_asgi(app, method="GET", path="/api/cars")
    run_asgi(app, method="GET", path="/")
    assert exporter.calls == []


USAGE_SHAPED = [b'{"answer": "hi", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}']


def test_usage_shaped_json_on_other_paths_is_not_counted_by_default() -> None:
    app, exporter = wrap(chunk_app(200, [("content-type", "application/json")], USAGE_SHAPED))
    run_asgi(app, path="/chat")
    run_asgi(app, method="GET", path="/me/usage")
    assert exporter.calls == []


@pytest.mark.parametrize("include", ["/chat", ["/api", "/chat"], re.compile(r"^/ch"), "/"])
def test_include_paths_reads_usage_on_paths_of_your_own(include: Any) -> None:
    app, exporter = wrap(chunk_app(200, [("content-type", "application/json")], USAGE_SHAPED), include_paths=include)
    run_asgi(app, path="/chat")
    run_asgi(app, method="GET", path="/chatter")  # a prefix matches whole segments only
    [call] = exporter.calls[:1] if include in ("/", re.compile(r"^/ch")) else exporter.calls
    assert call.usage.total_tokens == 7 and call.operation is None
    assert len(exporter.calls) == (2 if include in ("/", re.compile(r"^/ch")) else 1)


def test_exclude_paths_wins_even_over_llm_paths() -> None:
    app, exporter = wrap(chunk_app(200, SSE_HEADERS, [OPENAI_STREAM]), exclude_paths=["/internal"], include_paths="/")
    run_asgi(app, path="/internal/v1/chat/completions", body=request_json(model="m"))
    assert exporter.calls == []
    run_asgi(app, path="/v1/chat/completions", body=request_json(model="m"))
    assert len(exporter.calls) == 1


@pytest.mark.parametrize("bad", ["chat", 3, [b"/x"]])
def test_path_options_say_what_they_take(bad: Any) -> None:
    with pytest.raises(ValueError, match="include_paths= takes path prefixes starting with '/'"):
        wrap(chunk_app(200, [], []), include_paths=bad)


def test_stream_without_usage_is_estimated() -> None:
    stream = b"".join(
        b'data: {"model":"gpt-4o","choices":[{"delta":{"content":"' + word + b'"}}]}\n\n'
        for word in [b"one ", b"two ", b"three ", b"four"]
    ) + b"data: [DONE]\n\n"
    app, exporter = wrap(chunk_app(200, SSE_HEADERS, [stream]))
    run_asgi(app, body=request_json(model="gpt-4o", stream=True, messages=[{"role": "user", "content": "count to four please"}]))
    [call] = exporter.calls
    assert call.usage_source == "estimated" and call.usage.estimated
    assert call.usage.completion_tokens == 5  # 18 bytes of text at 4 bytes a token
    assert call.usage.prompt_tokens > 0
    assert call.usage.total_tokens == call.usage.prompt_tokens + call.usage.completion_tokens


def test_estimates_can_be_turned_off() -> None:
    stream = b'data: {"model":"gpt-4o","choices":[{"delta":{"content":"hello"}}]}\n\n'
    app, exporter = wrap(chunk_app(200, SSE_HEADERS, [stream]), estimate=False)
    run_asgi(app, body=request_json(model="gpt-4o", stream=True))
    [call] = exporter.calls
    assert call.usage is None and call.usage_source == "none"


def test_client_disconnect_mid_stream() -> None:
    chunks = [OPENAI_STREAM[i : i + 40] for i in range(0, len(OPENAI_STREAM), 40)]
    app, exporter = wrap(chunk_app(200, SSE_HEADERS, chunks))
    with pytest.raises(OSError):
        run_asgi(app, body=request_json(model="gpt-4o-mini"), disconnect_after=9)
    [call] = exporter.calls
    assert call.outcome == "disconnected"
    assert call.usage_source == "estimated"  # the usage chunk never went out; the text did


def test_app_raising_mid_stream_is_counted_as_error_and_reraised() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": OPENAI_STREAM[:200], "more_body": True})
        raise RuntimeError("upstream broke")

    wrapped, exporter = wrap(app)
    with pytest.raises(RuntimeError, match="upstream broke"):
        run_asgi(wrapped, body=request_json(model="gpt-4o-mini"))
    [call] = exporter.calls
    assert call.outcome == "error"


def test_cancelled_request_is_counted_once() -> None:
    started = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": OPENAI_STREAM[:150], "more_body": True})
        started.set()
        await asyncio.sleep(3600)

    wrapped, exporter = wrap(app)

    async def main() -> None:
        async def receive() -> Any:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            pass

        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "query_string": b""}
        task = asyncio.create_task(wrapped(scope, receive, send))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    [call] = exporter.calls
    assert call.outcome == "disconnected"


def test_stacked_copies_count_once() -> None:
    exporter = InMemoryExporter()
    inner = LLMMetricsMiddleware(chunk_app(200, SSE_HEADERS, [OPENAI_STREAM]), exporters=[exporter])
    outer = LLMMetricsMiddleware(inner, exporters=[exporter])
    run_asgi(outer, body=request_json(model="m"))
    assert len(exporter.calls) == 1


def test_non_http_scopes_pass_untouched() -> None:
    seen = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    wrapped, exporter = wrap(app)
    asyncio.run(wrapped({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    assert seen == ["lifespan"] and exporter.calls == []


def test_exporter_failure_never_reaches_the_app() -> None:
    good = InMemoryExporter()
    app = LLMMetricsMiddleware(chunk_app(200, SSE_HEADERS, [OPENAI_STREAM]), exporters=[BrokenExporter(), good])
    sent = run_asgi(app, body=request_json(model="m"))
    assert b"".join(body_of(sent)) == OPENAI_STREAM
    assert len(good.calls) == 1
    assert app.metering.errors["export"] == 1


def test_compressed_or_binary_bodies_pass_without_reading() -> None:
    app, exporter = wrap(chunk_app(200, [("content-type", "application/json"), ("content-encoding", "br")], [b"\x00\x01garbage"]))
    sent = run_asgi(app, body=request_json(model="m"))
    assert b"".join(body_of(sent)) == b"\x00\x01garbage"
    [call] = exporter.calls
    assert call.usage is None


def test_with_starlette_add_middleware_and_metrics_path() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    sim = SimulatedLLM()
    registry = CollectorRegistry()
    starlette_app = Starlette(routes=[Mount("/", app=sim.asgi)])
    starlette_app.add_middleware(
        LLMMetricsMiddleware, exporters=[PrometheusExporter(registry)],
        dimensions=["User ID", Dimension("tier", lambda r: r.headers.get("x-tier"))], metrics_path="/metrics",
    )

    async def main() -> tuple[dict[str, Any], str]:
        transport = httpx.ASGITransport(app=starlette_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            r = await client.post("/v1/chat/completions", json={"model": "m", "user": "bob", "messages": [{"role": "user", "content": "a b c"}]}, headers={"x-tier": "gold"})
            usage = r.json()["usage"]
            metrics = (await client.get("/metrics")).text
        return usage, metrics

    usage, metrics = asyncio.run(main())
    assert f'llm_tokens_total{{tier="gold",user_id="bob"}} {float(usage["total_tokens"])}' in metrics
    assert f'llm_prompt_tokens_total{{tier="gold",user_id="bob"}} {float(usage["prompt_tokens"])}' in metrics
    assert 'llm_requests_total{outcome="completed",status="200",tier="gold",usage="reported",user_id="bob"} 1.0' in metrics


def test_json_body_held_nowhere() -> None:
    # A 20 MB body in 64 KB chunks: every chunk is forwarded as is, usage at the very end.
    piece = b'{"embedding":[' + b"0.1234," * 9000 + b'0.5]},'
    chunks = [b'{"object":"list","data":['] + [piece] * 300 + [b'{}],"model":"e","usage":{"prompt_tokens":8,"total_tokens":8}}']
    app, exporter = wrap(chunk_app(200, [("content-type", "application/json")], chunks))
    sent = run_asgi(app, path="/v1/embeddings", body=request_json(model="e", input="x"))
    assert body_of(sent)[:-1] == chunks
    assert exporter.calls[0].usage.prompt_tokens == 8


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="at least one exporter"):
        LLMMetricsMiddleware(chunk_app(200, [], []), exporters=[])
    with pytest.raises(TypeError, match="list of exporters"):
        LLMMetricsMiddleware(chunk_app(200, [], []), exporters=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="PrometheusExporter"):
        LLMMetricsMiddleware(chunk_app(200, [], []), exporters=[InMemoryExporter()], metrics_path="/metrics")
    with pytest.raises(TypeError):
        LLMMetricsMiddleware(chunk_app(200, [], []), [InMemoryExporter()])  # type: ignore[misc]
    assert json  # keep import used


@pytest.mark.parametrize("spell", ["bytes", "upper-case", "bytearray"])
def test_response_headers_are_read_however_the_app_spells_them(spell: str) -> None:
    # Bedrock's usage headers: counts only the headers give (the body says 14 and 10).
    body = b'{"type":"message","model":"claude-2.0","content":[],"usage":{"input_tokens":14,"output_tokens":10}}'
    pairs = [(b"content-type", b"application/json"), (b"x-amzn-bedrock-input-token-count", b"20"),
             (b"x-amzn-bedrock-output-token-count", b"30")]

    def spelt(raw: bytes) -> Any:
        return {"bytes": raw, "upper-case": raw.upper(), "bytearray": bytearray(raw)}[spell]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(spelt(k), spelt(v)) for k, v in pairs]})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    wrapped, exporter = wrap(app)
    run_asgi(wrapped, path="/model/anthropic.claude-v2/invoke", body=b"{}")
    [call] = exporter.calls
    assert call.usage_source == "reported"
    assert (call.usage.prompt_tokens, call.usage.completion_tokens) == (20, 30)


def test_response_headers_that_are_not_pairs_leave_the_call_unread() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [b"content-type: text/event-stream"]})
        await send({"type": "http.response.body", "body": OPENAI_STREAM, "more_body": False})

    wrapped, exporter = wrap(app)
    sent = run_asgi(wrapped, body=request_json(model="gpt-4o-mini"))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    [call] = exporter.calls
    assert call.outcome == "completed" and call.usage is None
