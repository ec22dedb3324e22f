"""The middlewares compared: ours, prometheus-fastapi-instrumentator, OpenTelemetry, a buffering one.

Each factory wraps an app and returns the wrapped app (ours: with its Prometheus registry,
which :func:`check_counted` reads to prove the run counted what it measured).
"""

from __future__ import annotations

import json
from typing import Any

from common import DIMENSIONS, log


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
