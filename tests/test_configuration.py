"""Configuration from the environment (``LLM_METRICS_*``) and a second ``PrometheusExporter``
on one registry, through both middlewares and real requests."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from llm_metrics_middleware import Dimension, LLMMetricsMiddleware, LLMMetricsWSGIMiddleware, PrometheusExporter
from llm_metrics_middleware._drivers.environment import read
from llm_metrics_middleware.testing import InMemoryExporter, SimulatedLLM
from tests.servers import ROOT, python_env

CHAT = {"model": "sim-gpt-1", "user": "ada", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}


def asgi_post(app: Any, path: str = "/v1/chat/completions", **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            if path == "/metrics":
                return await client.get(path)
            return await client.post(path, json=CHAT, **kwargs)

    import asyncio

    return asyncio.run(go())


def wsgi_post(app: Any, path: str = "/v1/chat/completions") -> httpx.Response:
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://test") as client:
        return client.get(path) if path == "/metrics" else client.post(path, json=CHAT)


@pytest.mark.parametrize("value", ["false", "0", "no", "OFF"])
def test_disabled_by_the_environment_meters_nothing_and_still_serves_metrics(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_METRICS_ENABLED", value)
    memory = InMemoryExporter()
    registry = CollectorRegistry()
    asgi = LLMMetricsMiddleware(SimulatedLLM(), exporters=[memory, PrometheusExporter(registry)],
                                metrics_path="/metrics")
    wsgi = LLMMetricsWSGIMiddleware(SimulatedLLM().wsgi, exporters=[memory], metrics_path=None)
    answer = asgi_post(asgi)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 3
    assert wsgi_post(wsgi).status_code == 200
    assert memory.calls == []
    metrics = asgi_post(asgi, "/metrics")
    assert metrics.status_code == 200 and "# TYPE llm_tokens_total counter" in metrics.text
    assert not [line for line in metrics.text.splitlines() if line.startswith("llm_tokens_total")]


@pytest.mark.parametrize("value", ["", "true", "1", "yes", "on"])
def test_enabled_by_default_and_by_the_environment(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_METRICS_ENABLED", value)
    memory = InMemoryExporter()
    asgi_post(LLMMetricsMiddleware(SimulatedLLM(), exporters=[memory]))
    wsgi_post(LLMMetricsWSGIMiddleware(SimulatedLLM().wsgi, exporters=[memory]))
    assert len(memory.calls) == 2


def test_an_unreadable_switch_is_an_error_that_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_METRICS_ENABLED", "maybe")
    with pytest.raises(ValueError, match="LLM_METRICS_ENABLED='maybe': use true or false"):
        LLMMetricsMiddleware(SimulatedLLM(), exporters=[InMemoryExporter()])


def test_an_unreadable_no_extensions_switch_is_an_error_that_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read at import (where an unreadable value runs the Python references, the safe
    reading), and refused when the middleware is built, as every other switch of ours."""
    from llm_metrics_middleware._core.extensions import extensions_enabled

    monkeypatch.setenv("LLM_METRICS_NO_EXTENSIONS", "perhaps")
    assert extensions_enabled() is False
    with pytest.raises(ValueError, match="LLM_METRICS_NO_EXTENSIONS='perhaps': use true or false"):
        LLMMetricsMiddleware(SimulatedLLM(), exporters=[InMemoryExporter()])
    for value, enabled in [("", True), ("0", True), ("false", True), (" Off ", True), ("1", False), ("TRUE", False)]:
        monkeypatch.setenv("LLM_METRICS_NO_EXTENSIONS", value)
        assert extensions_enabled() is enabled, value
        LLMMetricsMiddleware(SimulatedLLM(), exporters=[InMemoryExporter()])


def test_dimensions_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_METRICS_DIMENSIONS", " User ID, Model ,region=eu-west ")
    memory = InMemoryExporter()
    asgi_post(LLMMetricsMiddleware(SimulatedLLM(), exporters=[memory]))
    (call,) = memory.calls
    assert memory.dimensions(call) == {"User ID": "ada", "Model": "sim-gpt-1", "region": "eu-west"}
    # Code wins over the environment.
    memory.clear()
    wsgi_post(LLMMetricsWSGIMiddleware(SimulatedLLM().wsgi, exporters=[memory], dimensions=["API ID"]))
    assert memory.dimensions(memory.calls[0]) == {"API ID": "/v1"}


@pytest.mark.parametrize("value, message", [(" , ", "names no dimension"), ("tier=", "must be 'name=value'"),
                                            ("Nonsense ID", "Nonsense ID")])
def test_bad_dimensions_in_the_environment_are_errors(value: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_METRICS_DIMENSIONS", value)
    with pytest.raises(ValueError, match=message):
        LLMMetricsMiddleware(SimulatedLLM(), exporters=[InMemoryExporter()])


def test_namespace_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_METRICS_NAMESPACE", "gateway")
    registry = CollectorRegistry()
    asgi_post(LLMMetricsMiddleware(SimulatedLLM(), exporters=[PrometheusExporter(registry)], dimensions=["User ID"]))
    text = generate_latest(registry).decode()
    assert 'gateway_tokens_total{user_id="ada"} 7.0' in text
    other = CollectorRegistry()
    asgi_post(LLMMetricsMiddleware(SimulatedLLM(), exporters=[PrometheusExporter(other)], namespace="team"))
    assert "team_tokens_total" in generate_latest(other).decode()


def test_read_without_variables_gives_the_defaults() -> None:
    settings = read(dimensions=None, namespace=None, environ={})
    assert settings.enabled and settings.dimensions is None and settings.namespace == "llm"
    given = [Dimension("tier", "gold")]
    assert read(dimensions=given, namespace="x", environ={"LLM_METRICS_DIMENSIONS": "User ID",
                                                           "LLM_METRICS_NAMESPACE": "y"}).dimensions is given


def test_a_second_exporter_on_one_registry_reuses_its_metrics() -> None:
    registry = CollectorRegistry()
    first = LLMMetricsMiddleware(SimulatedLLM(), exporters=[PrometheusExporter(registry)], dimensions=["User ID"])
    # An app factory called again: a new exporter, the same registry, no "Duplicated timeseries".
    second = LLMMetricsWSGIMiddleware(SimulatedLLM().wsgi, exporters=[PrometheusExporter(registry)],
                                      dimensions=["User ID"])
    asgi_post(first)
    wsgi_post(second)
    assert 'llm_requests_total{outcome="completed",status="200",usage="reported",user_id="ada"} 2.0' in (
        generate_latest(registry).decode())


def test_a_second_exporter_with_other_dimensions_gets_an_error_that_says_what_to_do() -> None:
    registry = CollectorRegistry()
    LLMMetricsMiddleware(SimulatedLLM(), exporters=[PrometheusExporter(registry)], dimensions=["User ID"])
    with pytest.raises(ValueError, match=r"another namespace=, the same dimensions, or its own PrometheusExporter"):
        LLMMetricsMiddleware(SimulatedLLM(), exporters=[PrometheusExporter(registry)], dimensions=["API ID"])


def test_two_default_exporters_in_one_process() -> None:
    """On the global default registry, in a process of its own (the registry is global)."""
    code = (
        "from llm_metrics_middleware import LLMMetricsMiddleware, PrometheusExporter\n"
        "from llm_metrics_middleware.testing import SimulatedLLM\n"
        "for _ in range(3):\n"
        "    LLMMetricsMiddleware(SimulatedLLM(), exporters=[PrometheusExporter()], metrics_path='/metrics')\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env=python_env())
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr


def test_path_patterns_from_the_environment() -> None:
    import re

    settings = read(dimensions=None, namespace=None,
                    environ={"LLM_METRICS_EXCLUDE_PATHS": " /health, ,^/admin/.*/usage$ ",
                             "LLM_METRICS_INCLUDE_PATHS": "/chat"})
    assert settings.exclude_paths == ["/health", re.compile("^/admin/.*/usage$")]
    assert settings.include_paths == ["/chat"]
    given = ["/mine"]
    assert read(dimensions=None, namespace=None, exclude_paths=given,
                environ={"LLM_METRICS_EXCLUDE_PATHS": "/health"}).exclude_paths is given
    with pytest.raises(ValueError, match=r"LLM_METRICS_EXCLUDE_PATHS: '\(unclosed' is neither a path prefix"):
        read(dimensions=None, namespace=None, environ={"LLM_METRICS_EXCLUDE_PATHS": "(unclosed"})


@pytest.mark.parametrize("driver", ["asgi", "wsgi"])
def test_excluded_and_included_paths_from_the_environment(driver: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A known LLM path excluded by a regular expression; an app path of its own included.
    monkeypatch.setenv("LLM_METRICS_EXCLUDE_PATHS", "/health, ^/v1/chat/")
    monkeypatch.setenv("LLM_METRICS_INCLUDE_PATHS", "/my-chat")
    memory = InMemoryExporter()
    llm = SimulatedLLM()

    def answer(path: str) -> bytes:
        return b"".join(llm.respond("POST", "/v1/completions", b'{"prompt": "one two", "max_tokens": 2}').chunks)

    if driver == "asgi":
        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            await receive()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": answer(scope["path"])})

        middleware: Any = LLMMetricsMiddleware(app, exporters=[memory])
        for path in ("/v1/chat/completions", "/my-chat", "/other"):
            assert asgi_post(middleware, path).status_code == 200
    else:
        def wsgi_app(environ: Any, start_response: Any) -> Any:
            start_response("200 OK", [("Content-Type", "application/json")])
            return [answer(environ["PATH_INFO"])]

        middleware = LLMMetricsWSGIMiddleware(wsgi_app, exporters=[memory])
        with httpx.Client(transport=httpx.WSGITransport(app=middleware), base_url="http://test") as client:
            for path in ("/v1/chat/completions", "/my-chat", "/other"):
                assert client.post(path, json=CHAT).status_code == 200
    # Only /my-chat was read: /v1/chat/ is excluded, /other is no LLM path and not included.
    assert [c.usage.total_tokens if c.usage else None for c in memory.calls] == [4]
