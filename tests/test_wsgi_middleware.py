from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from llm_metrics_middleware import LLMMetricsWSGIMiddleware, PrometheusExporter
from llm_metrics_middleware.testing import InMemoryExporter, SimulatedLLM

from .drive import request_json, run_wsgi, wsgi_chunk_app
from .samples import OPENAI_STREAM

SSE = [("Content-Type", "text/event-stream")]


def wrap(app: Any, **options: Any) -> tuple[LLMMetricsWSGIMiddleware, InMemoryExporter]:
    exporter = InMemoryExporter()
    options.setdefault("dimensions", ["User ID", "Model"])
    return LLMMetricsWSGIMiddleware(app, exporters=[exporter], **options), exporter


@pytest.mark.parametrize("size", [1, 3, 50, 100_000])
@pytest.mark.parametrize("use_write", [False, True])
def test_blocks_pass_one_for_one_and_count(size: int, use_write: bool) -> None:
    chunks = [OPENAI_STREAM[i : i + size] for i in range(0, len(OPENAI_STREAM), size)]
    bare = run_wsgi(wsgi_chunk_app("200 OK", SSE, chunks, use_write), body=request_json(model="m", user="w1"))
    app, exporter = wrap(wsgi_chunk_app("200 OK", SSE, chunks, use_write))
    assert run_wsgi(app, body=request_json(model="m", user="w1")) == bare
    [call] = exporter.calls
    assert (call.usage.prompt_tokens, call.usage.completion_tokens, call.usage.total_tokens) == (9, 2, 11)
    assert call.outcome == "completed"
    assert exporter.dimensions(call) == {"User ID": "w1", "Model": "gpt-4o-mini"}


def test_close_before_exhausted_is_a_disconnect() -> None:
    chunks = [OPENAI_STREAM[i : i + 40] for i in range(0, len(OPENAI_STREAM), 40)]
    closed = []

    class Body:
        def __iter__(self) -> Any:
            return iter(chunks)

        def close(self) -> None:
            closed.append(True)

    def app(environ: Any, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", SSE)
        return Body()

    wrapped, exporter = wrap(app)
    run_wsgi(wrapped, body=request_json(model="m"), stop_after=8)
    assert closed == [True]  # the app's own close() is always called
    [call] = exporter.calls
    assert call.outcome == "disconnected" and call.usage_source == "estimated"


def test_closed_before_first_next_still_finishes() -> None:
    def app(environ: Any, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", SSE)
        yield OPENAI_STREAM

    wrapped, exporter = wrap(app)
    iterable = wrapped({"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/chat/completions", "wsgi.input": None}, lambda s, h, e=None: None)
    iterable.close()  # type: ignore[attr-defined]
    assert [c.outcome for c in exporter.calls] == ["disconnected"]


def test_app_raising_is_error() -> None:
    def app(environ: Any, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", SSE)
        yield OPENAI_STREAM[:100]
        raise RuntimeError("boom")

    wrapped, exporter = wrap(app)
    with pytest.raises(RuntimeError):
        run_wsgi(wrapped, body=request_json(model="m"))
    assert [c.outcome for c in exporter.calls] == ["error"]


def test_flask_streaming_with_metrics_path() -> None:
    flask = pytest.importorskip("flask")
    sim = SimulatedLLM()
    app = flask.Flask("t")

    @app.post("/v1/chat/completions")
    def chat() -> Any:
        body = flask.request.get_data()
        response = sim.respond("POST", "/v1/chat/completions", body)
        return flask.Response(flask.stream_with_context(response.chunks), status=response.status, headers=response.headers)

    registry = CollectorRegistry()
    app.wsgi_app = LLMMetricsWSGIMiddleware(app.wsgi_app, exporters=[PrometheusExporter(registry)], dimensions=["User ID"], metrics_path="/metrics")  # type: ignore[method-assign]
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as client:
        for stream in (False, True):
            client.post("/v1/chat/completions", json={"model": "m", "user": "fl", "stream": stream,
                                                       "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": "x y"}]})
        text = client.get("/metrics").text
    # Each call: prompt 2 words + 3 = 5, completion 16.
    assert 'llm_prompt_tokens_total{user_id="fl"} 10.0' in text
    assert 'llm_completion_tokens_total{user_id="fl"} 32.0' in text
    assert 'llm_requests_total{outcome="completed",status="200",usage="reported",user_id="fl"} 2.0' in text


def test_a_generator_that_set_a_context_variable_in_the_view_resets_it_while_streaming() -> None:
    """The body generator runs in the server's context, as without us: a token made while
    the view ran (Flask 2.2's ``stream_with_context`` pushed its request context so) is
    reset by a later block without "created in a different Context". Running each block in
    a context of the response's own would be cheaper and would break this."""
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("view_var", default="unset")
    chunks = [e + b"\n\n" for e in OPENAI_STREAM.split(b"\n\n") if e]

    def app(environ: Any, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/event-stream")])

        def body() -> Iterable[bytes]:
            token = var.set("set in the view")
            yield chunks[0]  # the first block is made in the view, as stream_with_context does
            assert var.get() == "set in the view"
            yield from chunks[1:]
            var.reset(token)

        generator = body()
        first = next(generator)

        def rest() -> Iterable[bytes]:
            yield first
            yield from generator

        return rest()

    bare = run_wsgi(app, body=request_json(stream=True))
    assert var.get() == "unset"
    exporter = InMemoryExporter()
    status, _, blocks = run_wsgi(LLMMetricsWSGIMiddleware(app, exporters=[exporter]), body=request_json(stream=True))
    assert (status, blocks) == (bare[0], bare[2]) and var.get() == "unset"
    assert [c.outcome for c in exporter.calls] == ["completed"]
