"""No API key, prompt or answer text ever reaches a label or a log line."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from llm_metrics_middleware import Dimension, LLMMetricsMiddleware, PrometheusExporter
from llm_metrics_middleware.testing import SimulatedLLM


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
