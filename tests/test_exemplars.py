"""Exemplars: the Prometheus token counters and duration histogram point to the trace of
their latest call, when the call was made inside a sampled OpenTelemetry span.

Real servers throughout: uvicorn (ASGI), werkzeug's threaded server (WSGI), the simulated
upstream behind uvicorn for outgoing calls, and a real Prometheus with exemplar storage.
The spans come from a real OpenTelemetry SDK ``TracerProvider``: a small tracing
middleware outside ours starts the server span, as opentelemetry-instrumentation-asgi and
-wsgi do (the WSGI one detaches its context when the app returns, before the body is
iterated, so the span is not current when the call is recorded).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import aiohttp
import httpx
import pytest
import requests
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.samples import Sample

from llm_metrics_middleware import (
    CallRecord,
    LLMMetricsAdapter,
    LLMMetricsMiddleware,
    LLMMetricsTransport,
    LLMMetricsWSGIMiddleware,
    PrometheusExporter,
    Usage,
    instrument_aiohttp,
    uninstrument_aiohttp,
)
from llm_metrics_middleware._metering.dimensions import build_schema
from llm_metrics_middleware._metering.trace import current_trace
from llm_metrics_middleware.testing import SimulatedLLM
from tests.servers import ROOT, prometheus_server, python_env, uvicorn_server
from tests.test_metrics_endpoint import wsgi_server

CHAT_SPAN = "POST /v1/chat/completions"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
CHAT = {"model": "sim-gpt-1", "user": "ada", "messages": [{"role": "user", "content": "hi there"}]}


class Tracing:
    """A tracer with its finished spans in memory (not the global provider: set once per process)."""

    def __init__(self, sampled: bool = True) -> None:
        self.spans = InMemorySpanExporter()
        self.provider = TracerProvider(shutdown_on_exit=False, **({} if sampled else {"sampler": ALWAYS_OFF}))
        self.provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.tracer = self.provider.get_tracer("tests.test_exemplars")

    def finished(self, name: str, count: int = 1) -> list[ReadableSpan]:
        """The spans called ``name`` once ``count`` of them ended (a server span ends a moment
        after the client has the response)."""
        def ended() -> list[ReadableSpan]:
            spans = [span for span in self.spans.get_finished_spans() if span.name == name]
            return spans if len(spans) >= count else []

        spans: list[ReadableSpan] = wait_for(ended, f"{count} {name!r} spans")
        return spans

    def asgi(self, app: Any) -> Any:
        """A server span around every HTTP request, outside ``app``."""

        async def traced(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            name = f"{scope['method']} {scope['path']}"
            with self.tracer.start_as_current_span(name, kind=trace.SpanKind.SERVER):
                await app(scope, receive, send)

        return traced

    def wsgi(self, app: Any) -> Any:
        """A server span current only while ``app`` is called, ended when the body is closed."""
        tracer = self.tracer

        def traced(environ: Any, start_response: Any) -> Iterable[bytes]:
            span = tracer.start_span(f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}", kind=trace.SpanKind.SERVER)
            with trace.use_span(span, end_on_exit=False):
                body = app(environ, start_response)
            return _EndSpan(body, span)

        return traced


class _EndSpan:
    def __init__(self, body: Iterable[bytes], span: Any) -> None:
        self._body, self._span = body, span

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._span.end()


def ids(span: ReadableSpan) -> dict[str, str]:
    context = span.get_span_context()
    assert context is not None
    return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}


def openmetrics_samples(text: str) -> list[Sample]:
    return [sample for family in parse_openmetrics(text) for sample in family.samples]


def scrape_openmetrics(client: httpx.Client) -> tuple[list[Sample], httpx.Response]:
    response = client.get("/metrics", headers={"Accept": OPENMETRICS})
    response.raise_for_status()
    assert response.headers["content-type"].startswith("application/openmetrics-text"), response.headers
    return openmetrics_samples(response.text), response


def one(samples: list[Sample], name: str, **labels: str) -> Sample:
    found = [s for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def wait_for(condition: Any, what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def token_counts(response: httpx.Response) -> tuple[int, int, int]:
    usage = response.json()["usage"]
    return usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]


def check_exemplars(samples: list[Sample], span: ReadableSpan, tokens: tuple[int, int, int], **labels: str) -> None:
    """Each token counter's exemplar is the span's, valued at that call's tokens; one
    duration bucket carries it too."""
    expected = ids(span)
    for name, value in zip(("llm_prompt_tokens_total", "llm_completion_tokens_total", "llm_tokens_total"),
                           tokens, strict=True):
        exemplar = one(samples, name, **labels).exemplar
        assert exemplar is not None, name
        assert exemplar.labels == expected, name
        assert exemplar.value == value, name
        assert exemplar.timestamp is not None and abs(float(exemplar.timestamp) - time.time()) < 60
    buckets = [s for s in samples if s.name == "llm_request_duration_seconds_bucket"
               and all(s.labels.get(k) == v for k, v in labels.items()) and s.exemplar is not None]
    assert len(buckets) == 1, buckets
    assert buckets[0].exemplar is not None and buckets[0].exemplar.labels == expected


# -- reading the span ------------------------------------------------------------------------


def test_current_trace_is_the_sampled_current_span_in_hex() -> None:
    assert current_trace() is None  # no span
    tracing = Tracing()
    with tracing.tracer.start_as_current_span("x") as span:
        context = span.get_span_context()
        assert current_trace() == (format(context.trace_id, "032x"), format(context.span_id, "016x"))
    assert current_trace() is None
    unsampled = Tracing(sampled=False)
    with unsampled.tracer.start_as_current_span("x"):
        assert current_trace() is None  # a trace no backend keeps: no exemplar points to it


def test_without_opentelemetry_imported_nothing_is_imported_and_no_trace_is_read() -> None:
    code = (
        "import sys\n"
        "import llm_metrics_middleware\n"
        "from llm_metrics_middleware._metering.trace import current_trace\n"
        "assert current_trace() is None\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], sorted(sys.modules)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env=python_env(), cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


# -- the exporter alone ----------------------------------------------------------------------


def test_the_duration_exemplar_sits_on_the_bucket_its_call_fell_in_and_untraced_calls_keep_it() -> None:
    registry = CollectorRegistry()
    sink = PrometheusExporter(registry).bind(build_schema("llm", ["User ID"]))
    trace_ids = {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}
    sink.record(record(duration_s=0.3, usage=Usage(10, 5, 15), **trace_ids))
    sink.record(record(duration_s=7.0, usage=Usage(1, 1, 2)))  # untraced: the exemplar stays
    samples = openmetrics_samples(openmetrics_latest(registry).decode())
    (bucket,) = [s for s in samples if s.name == "llm_request_duration_seconds_bucket" and s.exemplar]
    assert bucket.labels["le"] == "0.5" and bucket.exemplar is not None
    assert bucket.exemplar.labels == trace_ids and bucket.exemplar.value == 0.3
    tokens = one(samples, "llm_tokens_total").exemplar
    assert tokens is not None and tokens.labels == trace_ids and tokens.value == 15
    assert one(samples, "llm_tokens_total").value == 17
    # The other counters carry none.
    assert not [s for s in samples if s.exemplar and not s.name.startswith(("llm_prompt", "llm_completion", "llm_tokens",
                                                                            "llm_request_duration"))]


def record(**fields: Any) -> CallRecord:
    base: dict[str, Any] = dict(
        dimensions=("ada",), usage=None, usage_source="reported", provider="openai", operation="chat.completions",
        request_model="m", response_model="m", status=200, outcome="completed", streamed=False, duration_s=0.1,
        time_to_first_chunk_s=None,
    )
    base.update(fields)
    return CallRecord(**base)


# -- ASGI under uvicorn ---------------------------------------------------------------------


def traced_asgi(tracing: Tracing, **exporter_options: Any) -> Any:
    return tracing.asgi(LLMMetricsMiddleware(
        SimulatedLLM().asgi, exporters=[PrometheusExporter(CollectorRegistry(), **exporter_options)],
        dimensions=["User ID"], metrics_path="/metrics",
    ))


@pytest.mark.timeout(60)
def test_asgi_exemplars_point_to_the_latest_calls_server_span() -> None:
    tracing = Tracing()
    with uvicorn_server(traced_asgi(tracing)) as url, httpx.Client(base_url=url, timeout=10) as client:
        first = client.post("/v1/chat/completions", json=CHAT)
        streamed = client.post("/v1/chat/completions", json={**CHAT, "user": "bob", "stream": True,
                                                              "stream_options": {"include_usage": True}})
        assert first.status_code == 200 and streamed.status_code == 200
        samples, _ = scrape_openmetrics(client)
        spans = tracing.finished(CHAT_SPAN, 2)
        check_exemplars(samples, spans[0], token_counts(first), user_id="ada")
        # The streamed call's usage came in its last event: its exemplar is its own span's.
        ada, bob = (one(samples, "llm_tokens_total", user_id=u).exemplar for u in ("ada", "bob"))
        assert ada is not None and bob is not None and bob.labels == ids(spans[1])

        # A second call of the same series replaces the exemplar: one per series, the latest.
        second = client.post("/v1/chat/completions", json=CHAT)
        samples, _ = scrape_openmetrics(client)
        latest = tracing.finished(CHAT_SPAN, 3)[-1]
        assert latest.get_span_context() != spans[0].get_span_context()
        check_exemplars(samples, latest, token_counts(second), user_id="ada")
        assert one(samples, "llm_tokens_total", user_id="ada").value == 2 * token_counts(first)[2]

        # The plain text format has no exemplars.
        plain = client.get("/metrics", headers={"Accept": "text/plain"})
        assert plain.headers["content-type"].startswith("text/plain")
        assert "llm_tokens_total{" in plain.text and "trace_id" not in plain.text
        assert "trace_id" not in client.get("/metrics").text  # no Accept: plain text


@pytest.mark.timeout(60)
def test_asgi_a_span_the_app_starts_itself_is_read_when_the_response_starts() -> None:
    tracing = Tracing()
    upstream = SimulatedLLM().asgi

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await upstream(scope, receive, send)
            return
        with tracing.tracer.start_as_current_span("endpoint"):
            await upstream(scope, receive, send)

    metered = LLMMetricsMiddleware(app, exporters=[PrometheusExporter(CollectorRegistry())],
                                   dimensions=["User ID"], metrics_path="/metrics")
    with uvicorn_server(metered) as url, httpx.Client(base_url=url, timeout=10) as client:
        response = client.post("/v1/chat/completions", json=CHAT)
        samples, _ = scrape_openmetrics(client)
        (span,) = tracing.finished("endpoint")
        check_exemplars(samples, span, token_counts(response), user_id="ada")


@pytest.mark.timeout(60)
def test_no_exemplars_without_a_sampled_span_or_with_exemplars_off() -> None:
    untraced = LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[PrometheusExporter(CollectorRegistry())],
                                    metrics_path="/metrics")
    unsampled = traced_asgi(Tracing(sampled=False))
    off = traced_asgi(Tracing(), exemplars=False)
    for app in (untraced, unsampled, off):
        with uvicorn_server(app) as url, httpx.Client(base_url=url, timeout=10) as client:
            assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
            samples, response = scrape_openmetrics(client)
            assert one(samples, "llm_tokens_total").value > 0
            assert all(s.exemplar is None for s in samples), [s for s in samples if s.exemplar]
            assert "trace_id" not in response.text


# -- WSGI under werkzeug's server ----------------------------------------------------------


@pytest.mark.timeout(60)
def test_wsgi_exemplar_is_the_span_of_the_request_although_it_ended_before_the_body_did() -> None:
    tracing = Tracing()
    registry = CollectorRegistry()
    app = tracing.wsgi(LLMMetricsWSGIMiddleware(SimulatedLLM().wsgi, exporters=[PrometheusExporter(registry)],
                                                dimensions=["User ID"], metrics_path="/metrics"))
    with wsgi_server(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        # Streamed: the usage is read, and the call recorded, as the server iterates the body,
        # after the tracing middleware detached the span's context.
        body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            events = [line for line in response.iter_lines() if line.startswith("data: {")]
        usage = json.loads(events[-1].removeprefix("data: "))["usage"]
        tokens = (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"])
        samples = wait_for(
            lambda: (s := scrape_openmetrics(client)[0]) and any(x.name == "llm_tokens_total" for x in s) and s,
            "the call to be recorded",
        )
        spans = tracing.finished(CHAT_SPAN)
        check_exemplars(samples, spans[0], tokens, user_id="ada")


# -- outgoing calls --------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_outgoing_call_exemplar_is_the_span_current_when_the_call_started() -> None:
    tracing = Tracing()
    registry = CollectorRegistry()
    with uvicorn_server(SimulatedLLM()) as upstream:
        transport = LLMMetricsTransport(exporters=[PrometheusExporter(registry)], dimensions=["User ID"])
        with httpx.Client(base_url=upstream, transport=transport, timeout=10) as client:
            with tracing.tracer.start_as_current_span("job") as job:
                with tracing.tracer.start_as_current_span("ask") as ask:
                    request = client.build_request("POST", "/v1/chat/completions", json={**CHAT, "stream": True})
                    response = client.send(request, stream=True)
                # Read, and recorded, after "ask" ended, in "job": the call belongs to "ask".
                try:
                    lines = list(response.iter_lines())
                finally:
                    response.close()
                assert any(line.startswith("data: ") for line in lines)  # no include_usage: estimated
            ask_ids, job_ids = ids(ask), ids(job)  # type: ignore[arg-type]
            assert ask_ids != job_ids
            untraced = client.post("/v1/chat/completions", json={**CHAT, "user": "bob"})
            assert untraced.status_code == 200
    samples = openmetrics_samples(openmetrics_latest(registry).decode())
    exemplar = one(samples, "llm_tokens_total", user_id="ada").exemplar
    assert exemplar is not None and exemplar.labels == ask_ids
    assert exemplar.value == one(samples, "llm_tokens_total", user_id="ada").value  # its one call
    assert one(samples, "llm_tokens_total", user_id="bob").exemplar is None  # made outside any span


@pytest.mark.timeout(60)
def test_outgoing_call_inside_a_request_points_to_the_apps_span_around_the_call() -> None:
    tracing = Tracing()
    with uvicorn_server(SimulatedLLM()) as upstream_url:

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await SimulatedLLM().asgi(scope, receive, send)  # the lifespan
                return
            async with httpx.AsyncClient(transport=LLMMetricsTransport(), timeout=10) as llm:
                with tracing.tracer.start_as_current_span("ask-llm"):
                    answer = await llm.post(upstream_url + "/v1/chat/completions", json=CHAT)
            body = json.dumps({"read": answer.json()["usage"]}).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})

        metered = tracing.asgi(LLMMetricsMiddleware(app, exporters=[PrometheusExporter(CollectorRegistry())],
                                                    dimensions=["User ID"], metrics_path="/metrics"))
        with uvicorn_server(metered) as url, httpx.Client(base_url=url, timeout=10) as client:
            read = client.post("/ask", json={"user": "ada"}).json()["read"]
            samples, _ = scrape_openmetrics(client)
    (server,) = tracing.finished("POST /ask")
    (ask,) = tracing.finished("ask-llm")
    tokens = (read["prompt_tokens"], read["completion_tokens"], read["total_tokens"])
    check_exemplars(samples, ask, tokens)
    assert ids(ask)["trace_id"] == ids(server)["trace_id"]  # the request's trace, the call's span


@pytest.mark.timeout(60)
def test_outgoing_call_in_a_wsgi_body_after_the_span_was_detached_takes_the_requests_trace() -> None:
    tracing = Tracing()
    registry = CollectorRegistry()
    with uvicorn_server(SimulatedLLM()) as upstream_url:

        def app(environ: Any, start_response: Any) -> Iterator[bytes]:
            start_response("200 OK", [("content-type", "application/json")])
            # Runs as the server iterates the body: the tracing middleware's span is no
            # longer current (its context was detached when the app returned).
            assert trace.get_current_span() is trace.INVALID_SPAN
            with requests.Session() as session:
                session.mount("http://", LLMMetricsAdapter())
                answer = session.post(upstream_url + "/v1/chat/completions", json=CHAT, timeout=10)
            yield json.dumps({"read": answer.json()["usage"]}).encode()

        metered = tracing.wsgi(LLMMetricsWSGIMiddleware(app, exporters=[PrometheusExporter(registry)],
                                                        metrics_path="/metrics"))
        with wsgi_server(metered) as url, httpx.Client(base_url=url, timeout=10) as client:
            read = client.post("/ask", json={"user": "ada"}).json()["read"]
            samples = wait_for(
                lambda: (s := scrape_openmetrics(client)[0]) and any(x.name == "llm_tokens_total" for x in s) and s,
                "the call to be recorded",
            )
    (server,) = tracing.finished("POST /ask")
    check_exemplars(samples, server, (read["prompt_tokens"], read["completion_tokens"], read["total_tokens"]))


@pytest.mark.timeout(60)
def test_outgoing_aiohttp_call_exemplar_is_the_span_it_started_in() -> None:
    tracing = Tracing()
    registry = CollectorRegistry()

    async def ask(url: str) -> tuple[dict[str, str], int]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            with tracing.tracer.start_as_current_span("ask") as span:
                response = await session.post(url + "/v1/chat/completions", json=CHAT)
            async with response:  # read after "ask" ended: the call still belongs to it
                total = (await response.json())["usage"]["total_tokens"]
            return ids(span), total  # type: ignore[arg-type]

    uninstrument_aiohttp()
    instrument_aiohttp(exporters=[PrometheusExporter(registry)])
    try:
        with uvicorn_server(SimulatedLLM()) as upstream_url:
            span_ids, total = asyncio.run(asyncio.wait_for(ask(upstream_url), 30))
    finally:
        uninstrument_aiohttp()
    sample = one(openmetrics_samples(openmetrics_latest(registry).decode()), "llm_tokens_total")
    assert sample.exemplar is not None and sample.exemplar.labels == span_ids and sample.exemplar.value == total


# -- a real Prometheus ---------------------------------------------------------------------


@pytest.mark.prometheus
@pytest.mark.timeout(120)
def test_prometheus_stores_the_exemplars(tmp_path: Any) -> None:
    import shutil

    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("no `prometheus` binary on PATH (Debian package `prometheus`)")
    tracing = Tracing()
    with uvicorn_server(traced_asgi(tracing)) as url, httpx.Client(base_url=url, timeout=10) as app_client:
        response = app_client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 200
        (span,) = tracing.finished(CHAT_SPAN)
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n"
            "scrape_configs:\n  - job_name: llm-app\n    scrape_timeout: 1s\n"
            f"    static_configs:\n      - targets: [{json.dumps(url.removeprefix('http://'))}]\n"
        )
        with prometheus_server(prometheus, config, tmp_path / "data", "--enable-feature=exemplar-storage") as server, \
                httpx.Client(base_url=server.url, timeout=10) as client:

            def exemplars() -> list[dict[str, Any]]:
                now = time.time()
                answer = client.get("/api/v1/query_exemplars",
                                    params={"query": "llm_tokens_total", "start": now - 300, "end": now + 60}).json()
                assert answer["status"] == "success", answer
                return [e for series in answer["data"] for e in series["exemplars"]]

            stored = wait_for(exemplars, f"Prometheus to store an exemplar:\n{server.log}", timeout=30)
    assert stored[0]["labels"] == ids(span)
    assert float(stored[0]["value"]) == token_counts(response)[2]
