"""What the README promises about failures and the Subscription ID secret, checked:

- an exporter that fails and a dimension callable that raises are counted in
  ``llm_metering_errors_total`` (``kind="export"``, ``kind="dimension"``) and logged once,
  not once per request;
- without a configured secret the Subscription ID uses one random secret per process:
  every middleware of the process agrees, a forked worker draws its own.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from llm_metrics_middleware import Dimension, LLMMetricsMiddleware, LLMMetricsWSGIMiddleware, PrometheusExporter
from llm_metrics_middleware.testing import InMemoryExporter, SimulatedLLM

from .samples import BrokenExporter

CHAT = {"model": "sim-gpt-1", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}


def post_asgi(app: Any, n: int = 1, headers: dict[str, str] | None = None) -> None:
    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            for _ in range(n):
                assert (await client.post("/v1/chat/completions", json=CHAT, headers=headers)).status_code == 200

    asyncio.run(go())


def post_wsgi(app: Any, n: int = 1, headers: dict[str, str] | None = None) -> None:
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://test") as client:
        for _ in range(n):
            assert client.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200


def errors_of(registry: CollectorRegistry, kind: str) -> float:
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(f'llm_metering_errors_total{{kind="{kind}"}}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("driver", ["asgi", "wsgi"])
def test_a_failing_exporter_is_counted_and_logged_once(driver: str, caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    prometheus, memory = PrometheusExporter(registry), InMemoryExporter()
    exporters = [BrokenExporter(), prometheus, memory]
    with caplog.at_level(logging.WARNING, logger="llm_metrics_middleware"):
        if driver == "asgi":
            post_asgi(LLMMetricsMiddleware(SimulatedLLM(), exporters=exporters, dimensions=["User ID"]), n=3)
        else:
            post_wsgi(LLMMetricsWSGIMiddleware(SimulatedLLM().wsgi, exporters=exporters, dimensions=["User ID"]), n=3)
    assert len(memory.calls) == 3  # the other exporters still got every call
    assert errors_of(registry, "export") == 3
    assert memory.errors == ["export"] * 3
    failures = [r for r in caplog.records if "failed to record a call" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None


@pytest.mark.parametrize("driver", ["asgi", "wsgi"])
def test_a_raising_dimension_is_counted_and_logged_once(driver: str, caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    memory = InMemoryExporter()

    def team(request: Any) -> str:
        raise KeyError("x-team")

    options: dict[str, Any] = {"exporters": [PrometheusExporter(registry), memory],
                               "dimensions": ["User ID", Dimension("team", team)]}
    with caplog.at_level(logging.WARNING, logger="llm_metrics_middleware"):
        if driver == "asgi":
            post_asgi(LLMMetricsMiddleware(SimulatedLLM(), **options), n=4)
        else:
            post_wsgi(LLMMetricsWSGIMiddleware(SimulatedLLM().wsgi, **options), n=4)
    assert [memory.dimensions(c)["team"] for c in memory.calls] == ["unknown"] * 4
    assert errors_of(registry, "dimension") == 4
    logged = [r for r in caplog.records if "dimension 'team' failed" in r.getMessage()]
    assert len(logged) == 1


def subscription_ids(n_middlewares: int) -> list[str]:
    """The Subscription ID of one API key through ``n_middlewares`` separate middlewares."""
    ids = []
    for _ in range(n_middlewares):
        memory = InMemoryExporter()
        post_wsgi(LLMMetricsWSGIMiddleware(SimulatedLLM().wsgi, exporters=[memory], dimensions=["Subscription ID"]),
                  headers={"Authorization": "Bearer sk-same-key"})
        ids.append(memory.dimensions(memory.calls[0])["Subscription ID"])
    return ids


def _child(queue: Any) -> None:
    queue.put(subscription_ids(2))


def subscription_ids_in_a_forked_worker() -> list[str]:
    """What :func:`subscription_ids` gives in a forked child of this process, for two middlewares."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child, args=(queue,))
    child.start()
    try:
        ids: list[str] = queue.get(timeout=30)
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    return ids


def test_without_a_secret_one_random_secret_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLM_METRICS_SUBSCRIPTION_SECRET", raising=False)
    here = subscription_ids(3)
    assert len(set(here)) == 1 and len(here[0]) == 16  # every middleware of this process agrees
    there = subscription_ids_in_a_forked_worker()
    assert len(set(there)) == 1
    assert there[0] != here[0]  # a forked worker drew its own


def test_with_a_secret_every_process_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_METRICS_SUBSCRIPTION_SECRET", "shared")
    here = subscription_ids(1)
    there = subscription_ids_in_a_forked_worker()
    assert there == here * 2
