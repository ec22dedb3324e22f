"""Bounded label cardinality: distinct dimension values are capped, sums stay exact, values are
sanitised."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from llm_metrics_middleware import LLMMetricsMiddleware, PrometheusExporter
from llm_metrics_middleware.testing import InMemoryExporter

from .drive import chunk_app, request_json, run_asgi
from .samples import JSON_BODY


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
