"""pricing=: the cost of every call, exact to 1e-9 USD.

Prices are checked two ways: against numbers worked out by hand from the providers'
published prices, and against ``genai_prices.calc_price`` fed with the usage that
genai-prices' own extractor reads from the raw provider JSON (so our usage normalisation
and our mapping back to genai-prices' units are checked too). The streams go through a real
uvicorn server and the official OpenAI and Anthropic SDKs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import genai_prices
import openai
import pytest
from prometheus_client import CollectorRegistry

from llm_metrics_middleware import LLMMetricsMiddleware, LLMMetricsWSGIMiddleware, Price, PrometheusExporter, Usage
from llm_metrics_middleware._metering.pricing import GENAI_PROVIDER_IDS, build_pricing
from llm_metrics_middleware.testing import InMemoryExporter, SimulatedLLM

from .drive import chunk_app, receive_body, run_asgi, run_wsgi, wsgi_chunk_app
from .servers import uvicorn_server
from .wire.cases import BODIES

EPS = 1e-9

OPENAI_MODEL = "gpt-4o-2024-08-06"
OPENAI_USAGE = {
    "prompt_tokens": 2012,
    "completion_tokens": 300,
    "total_tokens": 2312,
    "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 128, "audio_tokens": 0},
}


def _openai_stream() -> bytes:
    """An OpenAI chat stream with stream_options.include_usage, its usage with cache reads."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1730000000, "model": OPENAI_MODEL, "system_fingerprint": "fp_1"}
    events = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello"}, "logprobs": None, "finish_reason": None}], "usage": None},
        {**base, "choices": [{"index": 0, "delta": {"content": " there"}, "logprobs": None, "finish_reason": None}], "usage": None},
        {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}], "usage": None},
        {**base, "choices": [], "usage": OPENAI_USAGE},
    ]
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


ANTHROPIC_STREAM = (BODIES / "anthropic-messages-stream-cache.sse").read_bytes()
ANTHROPIC_JSON = (BODIES / "anthropic-messages-json-cache.json").read_bytes()


def _replay_app() -> Any:
    """OpenAI chat and Anthropic messages, answered with recorded bodies, in 40-byte chunks."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await receive_body(receive)
        request = json.loads(body)
        if scope["path"].endswith("/chat/completions"):
            payload, content_type = _openai_stream(), "text/event-stream"
        elif request.get("stream"):
            payload, content_type = ANTHROPIC_STREAM, "text/event-stream; charset=utf-8"
        else:
            payload, content_type = ANTHROPIC_JSON, "application/json"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type.encode())]})
        for i in range(0, len(payload), 40):
            await send({"type": "http.response.body", "body": payload[i:i + 40], "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def _genai_reference(provider_id: str, response: dict[str, Any], flavor: str = "default") -> float:
    """What genai-prices itself makes of the raw provider response."""
    extracted = genai_prices.extract_usage(response, provider_id=provider_id, api_flavor=flavor)
    return float(extracted.calc_price().total_price)


def _anthropic_stream_usage() -> dict[str, Any]:
    """The final usage of the recorded Anthropic stream (message_delta repeats it all)."""
    usage: dict[str, Any] = {}
    for line in ANTHROPIC_STREAM.decode().splitlines():
        if line.startswith("data: "):
            event = json.loads(line[6:])
            usage.update(event.get("message", {}).get("usage", {}))
            usage.update(event.get("usage", {}))
    usage.pop("iterations", None)
    return usage


def wait_for_calls(memory: InMemoryExporter, n: int) -> None:
    """A client can read a response's last byte before the middleware has recorded it."""
    deadline = time.monotonic() + 10
    while len(memory.calls) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(memory.calls) == n, memory.calls


# -- Price ------------------------------------------------------------------------------


def test_price_parts_by_hand() -> None:
    gpt4o = Price(2.5, 10, cached_input=1.25)
    usage = Usage(prompt_tokens=2012, completion_tokens=300, total_tokens=2312, cached_tokens=1920, reasoning_tokens=128)
    # 92 uncached at $2.50, 1920 cached at $1.25, 300 out (reasoning included) at $10, per million
    assert abs(gpt4o.cost(usage) - (92 * 2.5 + 1920 * 1.25 + 300 * 10) / 1e6) < EPS
    assert abs(gpt4o.cost(usage) - 0.00563) < EPS
    opus = Price(5, 25, cached_input=0.5, cache_write_input=6.25, cache_write_1h_input=10)
    usage = Usage(5 + 9165 + 6025, 15, 5 + 9165 + 6025 + 15, cached_tokens=6025, cache_write_tokens=9165, cache_write_1h_tokens=9165)
    assert abs(opus.cost(usage) - (5 * 5 + 6025 * 0.5 + 9165 * 10 + 15 * 25) / 1e6) < EPS
    # Unset parts fall back: cache reads and writes at input, 1h writes at the write price, reasoning at output.
    flat = Price(3, 15)
    usage = Usage(1000, 200, 1200, cached_tokens=300, cache_write_tokens=100, cache_write_1h_tokens=50, reasoning_tokens=20)
    assert abs(flat.cost(usage) - (1000 * 3 + 200 * 15) / 1e6) < EPS
    split = Price(3, 15, cache_write_input=4, reasoning=30, per_call=0.001)
    assert abs(split.cost(usage) - ((1000 - 100) * 3 + 100 * 4 + 180 * 15 + 20 * 30) / 1e6 - 0.001) < EPS


def test_gravitee_configuration() -> None:
    price = Price.from_gravitee({"inputPriceValue": 0.4, "inputPriceUnit": 1000000, "outputPriceValue": 0.8, "outputPriceUnit": 1000000})
    assert (price.input, price.output) == (0.4, 0.8)
    per_thousand = Price.per_tokens(0.002, 1000, 0.004, 1000)
    assert abs(per_thousand.input - 2.0) < EPS and abs(per_thousand.output - 4.0) < EPS
    with pytest.raises(ValueError, match="outputPriceUnit"):
        Price.from_gravitee({"inputPriceValue": 0.4, "inputPriceUnit": 1000000, "outputPriceValue": 0.8})
    with pytest.raises(ValueError, match="input_unit"):
        Price.per_tokens(1, 0, 1, 1)


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "2.5", True])
def test_price_refuses_bad_rates(bad: Any) -> None:
    with pytest.raises(ValueError, match="USD per million"):
        Price(bad, 1)


@pytest.mark.parametrize(
    "pricing,error,match",
    [
        ("litellm", ValueError, "genai-prices"),
        ({"gpt-4o": 2.5}, TypeError, "Price"),
        ({}, ValueError, "empty"),
        (2.5, TypeError, "pricing="),
    ],
)
def test_bad_pricing_options(pricing: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[InMemoryExporter()], pricing=pricing)


def test_mapping_matches_exactly_else_the_longest_prefix() -> None:
    table = {"gpt-4o": Price(2.5, 10), "gpt-4o-mini": Price(0.15, 0.6), "claude": Price(3, 15)}
    pricing = build_pricing(table, lambda model: None)
    assert pricing is not None
    matcher = pricing._pricer
    assert matcher.match("gpt-4o") is table["gpt-4o"]  # type: ignore[attr-defined]
    assert matcher.match("gpt-4o-2024-08-06") is table["gpt-4o"]  # type: ignore[attr-defined]
    assert matcher.match("gpt-4o-mini-2024-07-18") is table["gpt-4o-mini"]  # type: ignore[attr-defined]
    assert matcher.match("claude-sonnet-4-5") is table["claude"]  # type: ignore[attr-defined]
    assert matcher.match("o3-mini") is None  # type: ignore[attr-defined]
    gemini = {"gemini-2.5-flash": Price(0.3, 2.5)}
    pricing = build_pricing(gemini, lambda model: None)
    assert pricing is not None
    assert pricing._pricer.match("models/gemini-2.5-flash-preview-05-20") is gemini["gemini-2.5-flash"]  # type: ignore[attr-defined]


def test_every_mapped_provider_is_known_to_genai_prices() -> None:
    from genai_prices.data_snapshot import find_provider_by_id, get_snapshot

    providers = get_snapshot().providers
    for ours, theirs in GENAI_PROVIDER_IDS.items():
        assert theirs is None or find_provider_by_id(providers, theirs) is not None, ours


# -- through the middleware --------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[str, InMemoryExporter, CollectorRegistry]]:
    memory = InMemoryExporter()
    registry = CollectorRegistry()
    app = LLMMetricsMiddleware(
        _replay_app(),
        exporters=[memory, PrometheusExporter(registry)],
        dimensions=["User ID", "Model"],
        pricing="genai-prices",
    )
    with uvicorn_server(app) as url:
        yield url, memory, registry


def test_openai_stream_with_cached_tokens_through_the_sdk(served: tuple[str, InMemoryExporter, CollectorRegistry]) -> None:
    url, memory, registry = served
    with openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0, timeout=10) as client:
        stream = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True}, user="alice",
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "Hello there"
    wait_for_calls(memory, 1)
    [call] = memory.calls
    assert call.usage is not None and call.usage.cached_tokens == 1920 and call.usage.reasoning_tokens == 128
    assert call.cost_usd is not None
    hand = (92 * 2.5 + 1920 * 1.25 + 300 * 10) / 1e6  # gpt-4o: $2.50 in, $1.25 cached, $10 out per million
    assert abs(call.cost_usd - hand) < EPS
    reference = _genai_reference("openai", {"model": OPENAI_MODEL, "usage": OPENAI_USAGE}, "chat")
    assert abs(call.cost_usd - reference) < EPS
    assert abs(registry.get_sample_value("llm_cost_usd_total", {"user_id": "alice", "model": OPENAI_MODEL}) - hand) < EPS  # type: ignore[operator]


def test_anthropic_stream_and_json_with_cache_writes_through_the_sdk(
    served: tuple[str, InMemoryExporter, CollectorRegistry],
) -> None:
    url, memory, registry = served
    with anthropic.Anthropic(base_url=url, api_key="sk-ant-test", max_retries=0, timeout=10) as client:
        with client.messages.stream(model="claude-opus-4-7", max_tokens=256, messages=[{"role": "user", "content": "Summarise the notes."}]) as stream:
            final = stream.get_final_message()
        assert final.usage.cache_creation_input_tokens == 9165
        message = client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "Summarise."}])
    assert message.usage.cache_read_input_tokens == 1111
    wait_for_calls(memory, 2)
    [streamed] = [c for c in memory.calls if c.streamed]
    [plain] = [c for c in memory.calls if not c.streamed]
    assert streamed.cost_usd is not None and plain.cost_usd is not None
    # claude-opus-4-7: $5 in, $0.50 cache read, $10 per million 1h cache writes, $25 out
    stream_hand = (5 * 5 + 6025 * 0.5 + 9165 * 10 + 15 * 25) / 1e6
    # claude-sonnet-4-5: $3 in, $0.30 cache read, $3.75 per million 5m cache writes, $15 out
    json_hand = (3 * 3 + 1111 * 0.3 + 418 * 3.75 + 33 * 15) / 1e6
    assert abs(streamed.cost_usd - stream_hand) < EPS
    assert abs(plain.cost_usd - json_hand) < EPS
    stream_reference = _genai_reference("anthropic", {"model": "claude-opus-4-7", "usage": _anthropic_stream_usage()})
    json_reference = _genai_reference("anthropic", json.loads(ANTHROPIC_JSON))
    assert abs(streamed.cost_usd - stream_reference) < EPS
    assert abs(plain.cost_usd - json_reference) < EPS
    total = sum(s.value for f in registry.collect() if f.name == "llm_cost_usd" for s in f.samples if s.name == "llm_cost_usd_total")
    assert abs(total - stream_hand - json_hand) < EPS


def test_a_mapping_prices_the_wsgi_middleware_too() -> None:
    memory = InMemoryExporter()
    chunks = [_openai_stream()]
    app = LLMMetricsWSGIMiddleware(
        wsgi_chunk_app("200 OK", [("Content-Type", "text/event-stream")], chunks),
        exporters=[memory],
        pricing={"gpt-4o": Price(2.5, 10, cached_input=1.25), "gpt-4o-mini": Price(0.15, 0.6)},
    )
    body = json.dumps({"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True}}).encode()
    run_wsgi(app, path="/v1/chat/completions", body=body)
    [call] = memory.calls
    assert call.cost_usd is not None and abs(call.cost_usd - 0.00563) < EPS


# -- unpriced models -----------------------------------------------------------------------


def _chat_json(model: str, prompt: int = 10, completion: int = 5) -> bytes:
    return json.dumps({
        "id": "c", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }).encode()


def _model_echo_app() -> Any:
    """Answers a chat request with usage, naming the model the request asked for."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = await receive_body(receive)
        payload = _chat_json(json.loads(body)["model"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    return app


@pytest.mark.parametrize("pricing", ["genai-prices", {"gpt-4o": Price(2.5, 10)}])
def test_an_unpriced_model_adds_no_cost_and_is_counted_once(pricing: Any, caplog: pytest.LogCaptureFixture) -> None:
    memory = InMemoryExporter()
    registry = CollectorRegistry()
    app = LLMMetricsMiddleware(_model_echo_app(), exporters=[memory, PrometheusExporter(registry)], dimensions=["Model"], pricing=pricing)
    with caplog.at_level(logging.WARNING, logger="llm_metrics_middleware"):
        for model in ["my-finetune-7b"] * 3 + ["gpt-4o"] + ["another-local-model"] * 2:
            run_asgi(app, path="/v1/chat/completions", body=json.dumps({"model": model}).encode())
    assert len(memory.calls) == 6
    priced = [call for call in memory.calls if call.response_model == "gpt-4o"]
    unpriced = [call for call in memory.calls if call.response_model != "gpt-4o"]
    assert len(priced) == 1 and priced[0].cost_usd is not None and abs(priced[0].cost_usd - (10 * 2.5 + 5 * 10) / 1e6) < EPS
    assert all(call.cost_usd is None and call.usage is not None for call in unpriced)
    assert memory.errors == ["unpriced_model", "unpriced_model"]  # once per model
    warnings = [r.getMessage() for r in caplog.records if "no price for model" in r.getMessage()]
    assert len(warnings) == 2 and "'my-finetune-7b'" in warnings[0] and "'another-local-model'" in warnings[1]
    assert registry.get_sample_value("llm_metering_errors_total", {"kind": "unpriced_model"}) == 2
    # Their tokens are still counted; only the priced model has a cost series.
    assert registry.get_sample_value("llm_tokens_total", {"model": "my-finetune-7b"}) == 45
    assert registry.get_sample_value("llm_cost_usd_total", {"model": "my-finetune-7b"}) is None
    assert registry.get_sample_value("llm_cost_usd_total", {"model": "gpt-4o"}) is not None


def test_no_pricing_leaves_cost_unset() -> None:
    memory = InMemoryExporter()
    app = LLMMetricsMiddleware(chunk_app(200, [("content-type", "application/json")], [_chat_json("gpt-4o")]), exporters=[memory])
    run_asgi(app, path="/v1/chat/completions", body=b'{"model": "gpt-4o"}')
    [call] = memory.calls
    assert call.cost_usd is None


def test_ollama_is_never_priced_by_genai_prices() -> None:
    memory = InMemoryExporter()
    body = json.dumps({"model": "llama3.2", "done": True, "prompt_eval_count": 10, "eval_count": 20}).encode()
    app = LLMMetricsMiddleware(chunk_app(200, [("content-type", "application/json")], [body]), exporters=[memory], pricing="genai-prices")
    run_asgi(app, path="/api/chat", body=b'{"model": "llama3.2"}')
    [call] = memory.calls
    assert call.usage is not None and call.cost_usd is None and memory.errors == ["unpriced_model"]


def test_a_price_source_that_fails_counts_the_model_once(caplog: pytest.LogCaptureFixture) -> None:
    memory = InMemoryExporter()
    app = LLMMetricsMiddleware(_model_echo_app(), exporters=[memory], pricing="genai-prices")
    pricer = app.metering.pricing._pricer  # type: ignore[union-attr]

    def broken(*args: Any) -> float:
        raise ValueError("Invalid usage data")

    pricer.price = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="llm_metrics_middleware"):
        for _ in range(3):
            run_asgi(app, path="/v1/chat/completions", body=b'{"model": "gpt-4o"}')
    assert len(memory.calls) == 3 and all(call.cost_usd is None for call in memory.calls)
    assert memory.errors == ["unpriced_model"]
    [warning] = [r for r in caplog.records if "no price for model" in r.getMessage()]
    assert "Invalid usage data" in warning.getMessage() and warning.exc_info is None


def test_genai_prices_never_reaches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Models looked up for the first time, with every socket connection refused, still price."""
    import socket
    import threading

    from genai_prices import data_snapshot

    memory = InMemoryExporter()
    app = LLMMetricsMiddleware(_model_echo_app(), exporters=[memory], pricing="genai-prices")
    threads_before = {t.name for t in threading.enumerate()}

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("pricing tried to open a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for model in ("gpt-4.1-mini", "o3-mini", "gpt-4o-mini"):
        run_asgi(app, path="/v1/chat/completions", body=json.dumps({"model": model}).encode())
    assert all(call.cost_usd is not None and call.cost_usd > 0 for call in memory.calls), memory.calls
    assert data_snapshot._custom_snapshot is None  # the bundled data, not an auto-updated copy
    assert {t.name for t in threading.enumerate()} <= threads_before  # no updater thread started


def test_openai_compatible_servers_are_priced_by_the_model_s_own_provider() -> None:
    """Mistral behind /v1/chat/completions is detected as "openai"; its model names its provider."""
    memory = InMemoryExporter()
    app = LLMMetricsMiddleware(_model_echo_app(), exporters=[memory], pricing="genai-prices")
    for model in ("mistral-small-latest", "meta-llama/Meta-Llama-3.1-70B-Instruct"):
        run_asgi(app, path="/v1/chat/completions", body=json.dumps({"model": model}).encode())
    mistral, llama = memory.calls
    reference = genai_prices.calc_price(genai_prices.Usage(input_tokens=10, output_tokens=5), "mistral-small-latest", provider_id="mistral")
    assert mistral.provider == "openai" and mistral.cost_usd is not None
    assert abs(mistral.cost_usd - float(reference.total_price)) < EPS
    assert llama.cost_usd is None and memory.errors == ["unpriced_model"]  # self-hosted: no price invented


def test_pricing_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_METRICS_PRICING", "genai-prices")
    memory = InMemoryExporter()
    app = LLMMetricsMiddleware(_model_echo_app(), exporters=[memory])
    run_asgi(app, path="/v1/chat/completions", body=b'{"model": "gpt-4o"}')
    assert memory.calls[0].cost_usd is not None
    flat = LLMMetricsMiddleware(_model_echo_app(), exporters=[memory], pricing=Price(1, 1))  # code wins
    run_asgi(flat, path="/v1/chat/completions", body=b'{"model": "gpt-4o"}')
    assert memory.calls[1].cost_usd is not None and abs(memory.calls[1].cost_usd - 15 / 1e6) < EPS
    monkeypatch.setenv("LLM_METRICS_PRICING", "litellm")
    with pytest.raises(ValueError, match="LLM_METRICS_PRICING"):
        LLMMetricsMiddleware(_model_echo_app(), exporters=[memory])
