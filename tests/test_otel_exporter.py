"""OpenTelemetryExporter against the real SDK: an SDK MeterProvider with an InMemoryMetricReader."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader

from llm_metrics_middleware import Dimension, LLMMetricsMiddleware, OpenTelemetryExporter
from llm_metrics_middleware._exporters.otel import (
    DURATION_BUCKETS,
    SCHEMA_URL,
    SEMCONV_VERSION,
    TOKEN_USAGE_BUCKETS,
    instrument_prefix,
    operation_name,
)
from llm_metrics_middleware.testing import InMemoryExporter, SimulatedLLM, prompt_tokens_of

DIMENSIONS = ["API ID", "User ID", "Model", Dimension("tier", "gold")]


def sdk() -> tuple[MeterProvider, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return MeterProvider(metric_readers=[reader], shutdown_on_exit=False), reader


def points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    """metric name -> [(attributes, data point)], with the scope name under '_scope'."""
    out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    data = reader.get_metrics_data()
    if data is None:
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    attrs = dict(point.attributes or {})
                    attrs["_scope"] = sm.scope.name
                    attrs["_schema_url"] = sm.scope.schema_url
                    out.setdefault(metric.name, []).append((attrs, point))
    return out


def total(found: dict[str, list[tuple[dict[str, Any], Any]]], name: str, **where: Any) -> float:
    value = 0.0
    for attrs, point in found.get(name, []):
        if all(attrs.get(k) == v for k, v in where.items()):
            value += point.sum if hasattr(point, "bucket_counts") else point.value
    return value


def chat(user: str, *, stream: bool = False, include_usage: bool = True, words: str = "hello there world") -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-sim", "user": user, "messages": [{"role": "user", "content": words}]}
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    return body


async def drive(app: Any, calls: list[tuple[str, Any]]) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for path, body in calls:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            response = await client.post(path, content=content, headers={"content-type": "application/json"})
            await response.aread()


def test_dimensioned_counters_and_semconv_instruments() -> None:
    provider, reader = sdk()
    memory = InMemoryExporter()
    app = LLMMetricsMiddleware(
        SimulatedLLM().asgi, exporters=[OpenTelemetryExporter(provider), memory], dimensions=DIMENSIONS
    )
    calls: list[tuple[str, Any]] = [
        ("/v1/chat/completions", chat("alice")),
        ("/v1/chat/completions", chat("alice", stream=True)),
        ("/v1/chat/completions", chat("bob", words="one two three four five six")),
        ("/v1/messages", {"model": "claude-sim", "max_tokens": 8, "stream": True,
                          "metadata": {"user_id": "carol"}, "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/embeddings", {"model": "emb-sim", "input": "some text to embed", "user": "bob"}),
        ("/v1/completions", {"model": "gpt-sim", "prompt": "say something", "user": "bob", "max_tokens": 4}),
        ("/v1/chat/completions", b"not json"),  # the simulator answers 400
    ]
    asyncio.run(drive(app, calls))
    sent = memory.totals()
    found = points(reader)

    # Dimensioned counters: one attribute per dimension, keyed by its label.
    assert total(found, "llm.prompt_tokens") == sent["prompt"]
    assert total(found, "llm.completion_tokens") == sent["completion"]
    assert total(found, "llm.total_tokens") == sent["total"]
    alice_prompt = 2 * prompt_tokens_of(chat("alice"))
    assert total(found, "llm.prompt_tokens", user_id="alice") == alice_prompt
    for attrs, _ in found["llm.prompt_tokens"]:
        assert set(attrs) - {"_scope", "_schema_url"} == {"api_id", "user_id", "model", "tier"}
        assert attrs["tier"] == "gold" and attrs["_scope"] == "llm" and attrs["_schema_url"] == SCHEMA_URL
    assert total(found, "llm.requests") == len(calls)
    assert total(found, "llm.requests", status="400", outcome="completed", usage="none") == 1
    assert total(found, "llm.requests", user_id="alice", status="200", usage="reported") == 2
    assert "llm.estimated_tokens" not in found  # every response reported usage

    # gen_ai.client.token.usage: one point per call and token type, semconv attributes only.
    usage = found["gen_ai.client.token.usage"]
    assert total(found, "gen_ai.client.token.usage", **{"gen_ai.token.type": "input"}) == sent["prompt"]
    assert total(found, "gen_ai.client.token.usage", **{"gen_ai.token.type": "output"}) == sent["completion"]
    for attrs, point in usage:
        assert "user_id" not in attrs
        assert list(point.explicit_bounds) == list(TOKEN_USAGE_BUCKETS)
    ops = {(a["gen_ai.operation.name"], a["gen_ai.provider.name"]) for a, _ in usage}
    assert ops == {("chat", "openai"), ("chat", "anthropic"), ("embeddings", "openai"), ("text_completion", "openai")}
    chat_points = [a for a, _ in usage if a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai"]
    assert all(a["gen_ai.request.model"] == "gpt-sim" and a["gen_ai.response.model"] == "gpt-sim" for a in chat_points)

    # Operation duration: every call, error.type on the failed one; recommended buckets.
    durations = found["gen_ai.client.operation.duration"]
    assert sum(p.count for _, p in durations) == len(calls)
    assert [a.get("error.type") for a, _ in durations if a.get("error.type")] == ["400"]
    assert all(list(p.explicit_bounds) == list(DURATION_BUCKETS) for _, p in durations)

    # Time to first chunk: the two streamed calls only.
    first = found["gen_ai.client.operation.time_to_first_chunk"]
    assert sum(p.count for _, p in first) == 2
    assert {a["gen_ai.provider.name"] for a, _ in first} == {"openai", "anthropic"}


def test_estimated_tokens_and_metering_errors() -> None:
    provider, reader = sdk()
    memory = InMemoryExporter()
    app = LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[OpenTelemetryExporter(provider), memory],
                               dimensions=["User ID"])
    # A stream without include_usage reports no usage: the middleware estimates it.
    asyncio.run(drive(app, [("/v1/chat/completions", chat("dave", stream=True, include_usage=False))]))
    sink = app.metering.sinks[0]
    sink.on_error("malformed")  # type: ignore[attr-defined]
    [call] = memory.calls
    assert call.usage is not None and call.usage.estimated
    found = points(reader)
    assert total(found, "llm.estimated_tokens", type="prompt") == call.usage.prompt_tokens
    assert total(found, "llm.estimated_tokens", type="completion") == call.usage.completion_tokens
    assert total(found, "llm.prompt_tokens", user_id="dave") == call.usage.prompt_tokens
    assert total(found, "llm.requests", usage="estimated") == 1
    assert total(found, "llm.metering_errors", kind="malformed") == 1


def test_counters_are_cumulative_or_delta_as_the_reader_asks() -> None:
    reader = InMemoryMetricReader(preferred_temporality={
        cls: AggregationTemporality.DELTA for cls in _instrument_classes()
    })
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    app = LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[OpenTelemetryExporter(provider)], dimensions=["User ID"])
    one = prompt_tokens_of(chat("erin"))
    asyncio.run(drive(app, [("/v1/chat/completions", chat("erin"))]))
    assert total(points(reader), "llm.prompt_tokens") == one
    asyncio.run(drive(app, [("/v1/chat/completions", chat("erin"))] * 2))
    assert total(points(reader), "llm.prompt_tokens") == 2 * one  # the delta, not the running total
    assert total(points(reader), "llm.prompt_tokens") == 0  # nothing new: no points


def _instrument_classes() -> list[type]:
    from opentelemetry.sdk.metrics import (
        Counter,
        Histogram,
        ObservableCounter,
        ObservableGauge,
        ObservableUpDownCounter,
        UpDownCounter,
    )

    return [Counter, Histogram, ObservableCounter, ObservableGauge, ObservableUpDownCounter, UpDownCounter]


def test_two_namespaces_two_meters_and_semconv_off() -> None:
    provider, reader = sdk()
    exporter = OpenTelemetryExporter(provider, semconv=False, server_address="llm.internal", server_port=443)
    a = LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[exporter], dimensions=["User ID"], namespace="team a")
    b = LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[exporter], dimensions=["Model"], namespace="team-b")
    asyncio.run(drive(a, [("/v1/chat/completions", chat("frank"))]))
    asyncio.run(drive(b, [("/v1/chat/completions", chat("grace"))]))
    found = points(reader)
    assert {attrs["_scope"] for attrs, _ in found["team_a.prompt_tokens"]} == {"team a"}
    assert {attrs["_scope"] for attrs, _ in found["team-b.prompt_tokens"]} == {"team-b"}
    assert [a.get("user_id") for a, _ in found["team_a.prompt_tokens"]] == ["frank"]
    assert [a.get("model") for a, _ in found["team-b.prompt_tokens"]] == ["gpt-sim"]
    assert not [name for name in found if name.startswith("gen_ai.")]


def test_server_address_on_semconv_instruments() -> None:
    provider, reader = sdk()
    exporter = OpenTelemetryExporter(provider, server_address="llm.internal", server_port=443)
    app = LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[exporter], dimensions=["User ID"])
    asyncio.run(drive(app, [("/v1/chat/completions", chat("heidi"))]))
    for attrs, _ in points(reader)["gen_ai.client.operation.duration"]:
        assert attrs["server.address"] == "llm.internal" and attrs["server.port"] == 443


def test_bind_rules() -> None:
    provider, _ = sdk()
    exporter = OpenTelemetryExporter(provider)
    LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[exporter], dimensions=["User ID"])
    LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[exporter], dimensions=["User ID"])  # same: shared
    with pytest.raises(ValueError, match="already bound"):
        LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[exporter], dimensions=["Model"])
    with pytest.raises(ValueError, match="clashes"):
        LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[exporter], dimensions=[Dimension("status", "x")],
                             namespace="other")
    with pytest.raises(TypeError, match="server_port"):
        OpenTelemetryExporter(provider, server_port="443")  # type: ignore[arg-type]


def test_record_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    provider, _ = sdk()
    memory = InMemoryExporter()
    app = LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[OpenTelemetryExporter(provider), memory],
                               dimensions=["User ID"])
    asyncio.run(drive(app, [("/v1/chat/completions", chat("ivan"))]))
    bad = dataclasses.replace(memory.calls[0], dimensions=("too", "many"))
    with caplog.at_level("ERROR", logger="llm_metrics_middleware"):
        app.metering.sinks[0].record(bad)
    assert "failed to record a call" in caplog.text


def test_flush_and_shutdown_delegate() -> None:
    provider, reader = sdk()
    exporter = OpenTelemetryExporter(provider)
    assert exporter.force_flush() is True
    exporter.shutdown()
    exporter.shutdown()  # idempotent
    assert provider._shutdown  # type: ignore[attr-defined]


def test_global_provider_by_default() -> None:
    from opentelemetry.metrics import get_meter_provider

    exporter = OpenTelemetryExporter()
    assert exporter.meter_provider is get_meter_provider()
    assert exporter.force_flush() is True  # the API's proxy provider has nothing to flush


def test_operation_names_and_prefix() -> None:
    assert SEMCONV_VERSION and SCHEMA_URL.endswith(SEMCONV_VERSION)
    assert operation_name("chat.completions") == "chat"
    assert operation_name("messages") == "chat"
    assert operation_name("responses") == "chat"
    assert operation_name("completions") == "text_completion"
    assert operation_name("embeddings") == "embeddings"
    assert operation_name("generateContent") == operation_name("streamGenerateContent") == "generate_content"
    assert operation_name("countTokens") == "countTokens"
    assert operation_name(None) == "unknown"
    assert instrument_prefix("llm") == "llm"
    assert instrument_prefix("LLM gateway") == "LLM_gateway"
    assert instrument_prefix("2fast") == "ns_2fast"
    with pytest.raises(ValueError, match="namespace"):
        instrument_prefix("  ")


def test_cost_counter_per_dimension_set() -> None:
    from llm_metrics_middleware import Price

    provider, reader = sdk()
    memory = InMemoryExporter()
    app = LLMMetricsMiddleware(
        SimulatedLLM().asgi,
        exporters=[OpenTelemetryExporter(provider), memory],
        dimensions=["User ID"],
        pricing={"gpt-sim": Price(2.0, 8.0)},
    )
    asyncio.run(drive(app, [("/v1/chat/completions", chat("alice")), ("/v1/chat/completions", chat("bob", words="a b c d e"))]))
    found = points(reader)
    for record in memory.calls:
        assert record.usage is not None and record.cost_usd is not None
        expected = (record.usage.prompt_tokens * 2.0 + record.usage.completion_tokens * 8.0) / 1e6
        user = memory.dimensions(record)["User ID"]
        assert abs(total(found, "llm.cost", user_id=user) - expected) < 1e-9
    [metric] = [m for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics for m in sm.metrics if m.name == "llm.cost"]
    assert metric.unit == "USD"
