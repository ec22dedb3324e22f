"""Issue 16: one hostile request must never poison the metrics, dodge metering or stall the server.

Each test here failed before its fix; those whose defect needs a real server use one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from llm_metrics_middleware import Dimension, LLMMetricsMiddleware, LLMMetricsWSGIMiddleware, PrometheusExporter
from llm_metrics_middleware.testing import InMemoryExporter, SimulatedLLM
from tests.servers import gunicorn_server, metric_samples, metric_sum, python_env, scrape_until_counted, uvicorn_server

from .drive import run_asgi, run_wsgi

# -- 1. label values that cannot be encoded ----------------------------------------------

# A JSON body may spell a lone surrogate as an escape; json.loads gives a str that no
# UTF-8 encoder accepts.
POISON = b'{"model": "sim\\udfff", "user": "eve\\ud800", "messages": [{"role": "user", "content": "hi"}]}'


def _encodable(call: Any) -> None:
    for text in (*call.dimensions, call.request_model, call.response_model, call.provider):
        if text is not None:
            text.encode("utf-8")


def test_lone_surrogates_never_reach_an_exporter_in_process() -> None:
    for drive, wrap in ((run_asgi, LLMMetricsMiddleware), (run_wsgi, LLMMetricsWSGIMiddleware)):
        exporter = InMemoryExporter()
        registry = CollectorRegistry()
        upstream = SimulatedLLM()
        app = wrap(
            upstream.asgi if wrap is LLMMetricsMiddleware else upstream.wsgi,
            exporters=[exporter, PrometheusExporter(registry)],
            dimensions=["User ID", "Model", Dimension("team", lambda r: "t\udc80")],
        )
        drive(app, body=POISON)
        [call] = exporter.calls
        _encodable(call)
        assert exporter.dimensions(call) == {"User ID": "eve\ufffd", "Model": "sim\ufffd", "team": "t\ufffd"}
        assert call.request_model == call.response_model == "sim\ufffd"
        samples = metric_samples(generate_latest(registry).decode("utf-8"))
        assert metric_sum(samples, "llm_requests_total", user_id="eve\ufffd") == 1


def test_a_surrogate_in_a_request_does_not_break_scrapes_under_uvicorn() -> None:
    registry = CollectorRegistry()
    app = LLMMetricsMiddleware(
        SimulatedLLM().asgi, exporters=[PrometheusExporter(registry)], dimensions=["User ID", "Model"],
        metrics_path="/metrics",
    )
    with uvicorn_server(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        for body in (POISON, POISON.replace(b'{"model"', b'{"stream": true, "model"', 1)):
            response = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
            assert response.status_code == 200
        scraped = client.get("/metrics")
        assert scraped.status_code == 200, scraped.text
        samples = metric_samples(scraped.text)
        assert metric_sum(samples, "llm_requests_total", user_id="eve\ufffd", model="sim\ufffd") == 2


def test_the_multiprocess_files_never_hold_a_surrogate(tmp_path: Path) -> None:
    multiproc_dir = tmp_path / "multiproc"
    multiproc_dir.mkdir()
    env = python_env(PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir))
    with gunicorn_server("tests.reliability_apps:simulated()", workdir=tmp_path, env=env,
                         config="workers = 2\nworker_class = 'sync'\n") as server, \
            httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(4):
            response = client.post("/v1/chat/completions", content=POISON, headers={"content-type": "application/json"})
            assert response.status_code == 200
        samples = scrape_until_counted(server.url, 4)
        assert metric_sum(samples, "llm_requests_total", user_id="eve\ufffd") == 4
    # What every later worker (or a restarted server) reads back: encodable.
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(multiproc_dir))  # type: ignore[no-untyped-call]
    assert "eve\ufffd" in generate_latest(registry).decode("utf-8")
