"""Issue 16: one hostile request must never poison the metrics, dodge metering or stall the server.

Each test here failed before its fix; those whose defect needs a real server use one.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from llm_metrics_middleware import Dimension, LLMMetricsMiddleware, LLMMetricsWSGIMiddleware, PrometheusExporter
from llm_metrics_middleware.testing import InMemoryExporter, SimulatedLLM
from tests.reliability_apps import ONE
from tests.servers import (
    free_port,
    gunicorn_server,
    metric_samples,
    metric_sum,
    python_env,
    scrape_until_counted,
    server_process,
    uvicorn_server,
)

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


# -- 6. an app's own OSError is an error, not a disconnect -------------------------------


def _wait_for_calls(exporter: InMemoryExporter, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(exporter.calls) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n} calls not recorded within {timeout} s: {exporter.calls}")
        time.sleep(0.01)


@pytest.mark.parametrize("error", [TimeoutError, ConnectionRefusedError, ConnectionResetError])
def test_an_app_raising_an_oserror_is_recorded_as_error_under_uvicorn(error: type[OSError]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        if scope["path"].startswith("/late"):
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
            await send({"type": "http.response.body", "body": b'data: {"choices":[]}\n\n', "more_body": True})
        raise error("upstream failed")

    exporter = InMemoryExporter()
    wrapped = LLMMetricsMiddleware(app, exporters=[exporter], dimensions=["User ID"])
    with uvicorn_server(wrapped) as url, httpx.Client(base_url=url, timeout=10) as client:
        assert client.post("/v1/chat/completions", json={"model": "m"}).status_code == 500
        with pytest.raises(httpx.RemoteProtocolError):
            client.post("/late/v1/chat/completions", json={"model": "m"}).read()
        _wait_for_calls(exporter, 2)
    assert [c.outcome for c in exporter.calls] == ["error", "error"]


def test_a_client_that_leaves_is_still_disconnected() -> None:
    for fails in (OSError, RuntimeError):  # uvicorn's OSError, or any other failed send

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b"{}", "more_body": False})

        async def send(message: Any, fails: type[Exception] = fails) -> None:
            raise fails("client went away")

        exporter = InMemoryExporter()
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "query_string": b""}

        async def receive() -> Any:
            return {"type": "http.request", "body": b"", "more_body": False}

        with pytest.raises(fails):
            asyncio.run(LLMMetricsMiddleware(app, exporters=[exporter])(scope, receive, send))
        assert [c.outcome for c in exporter.calls] == ["disconnected"]


@pytest.mark.parametrize("ends_with_done", [True, False], ids=["left-after-DONE", "left-before-DONE"])
def test_a_client_that_leaves_after_the_end_mark_has_a_completed_call_under_uvicorn(ends_with_done: bool) -> None:
    """The OpenAI SDK closes at ``[DONE]``, before the chunked terminator; Starlette's
    StreamingResponse then sees ``http.disconnect`` and returns without its final empty
    message. The client had every byte of the stream: a completed call. Without the mark
    the same close is a disconnect."""
    events = [b'data: {"model":"m","choices":[{"index":0,"delta":{"content":"w%d"}}]}\n\n' % i for i in range(3)]
    events.append(b'data: {"model":"m","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":3,"total_tokens":7}}\n\n')
    if ends_with_done:
        events.append(b"data: [DONE]\n\n")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for event in events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        while (await receive())["type"] != "http.disconnect":  # as StreamingResponse listens
            pass

    exporter = InMemoryExporter()
    wrapped = LLMMetricsMiddleware(app, exporters=[exporter])
    body = json.dumps({"model": "m", "stream": True, "stream_options": {"include_usage": True}}).encode()
    with uvicorn_server(wrapped) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            seen = b""
            while events[-1].rstrip() not in seen:  # read up to the last event, then leave
                data = sock.recv(65536)
                assert data, seen
                seen += data
        _wait_for_calls(exporter, 1)
    (call,) = exporter.calls
    assert call.usage is not None and call.usage.total_tokens == 7
    assert call.outcome == ("completed" if ends_with_done else "disconnected")


def test_zerocopysend_completes_the_call(tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_bytes(b'{"usage": {"prompt_tokens": 1, "completion_tokens": 1}}')

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        with open(body, "rb") as f:
            await send({"type": "http.response.zerocopysend", "file": f.fileno(), "more_body": False})

    exporter = InMemoryExporter()
    sent = run_asgi(LLMMetricsMiddleware(app, exporters=[exporter]), body=b"{}")
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.zerocopysend"]
    assert [(c.outcome, c.usage_source) for c in exporter.calls] == [("completed", "none")]


# -- 7. the server's Content-Length and file-wrapper paths are kept ----------------------


@pytest.mark.parametrize("app", ["bare_files", "metered_files"])
def test_waitress_keeps_content_length_of_a_list_and_a_file_wrapper(app: str, tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", "--call", f"tests.reliability_apps:{app}"]
    env = python_env(LLM_METRICS_TEST_DIR=str(tmp_path))
    with server_process(command, port=port, log_path=tmp_path / "waitress.log", env=env) as server, \
            httpx.Client(base_url=server.url, timeout=10) as client:
        for path in ("/v1/chat/completions", "/file/v1/chat/completions"):
            response = client.post(path, json={"model": "m"})
            assert response.content == ONE
            assert response.headers.get("content-length") == str(len(ONE)), (path, response.headers)
            assert "transfer-encoding" not in response.headers
        if app == "metered_files":
            samples = scrape_until_counted(server.url, 2)
            assert metric_sum(samples, "llm_requests_total", outcome="completed", usage="reported") == 1  # the list
            assert metric_sum(samples, "llm_requests_total", outcome="completed", usage="none") == 1  # the file


def test_gunicorn_gets_its_own_file_wrapper_back_for_sendfile(tmp_path: Path) -> None:
    from gunicorn.http.wsgi import FileWrapper

    path = tmp_path / "body.json"
    path.write_bytes(ONE)
    opened: list[Any] = []

    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "application/json")])
        opened.append(open(path, "rb"))  # noqa: SIM115
        return environ["wsgi.file_wrapper"](opened[-1])

    exporter = InMemoryExporter()
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/chat/completions", "wsgi.file_wrapper": FileWrapper,
               "wsgi.input": io.BytesIO(b"{}"), "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": "2"}
    response = LLMMetricsWSGIMiddleware(app, exporters=[exporter])(environ, lambda status, headers, exc=None: None)
    assert isinstance(response, FileWrapper)  # gunicorn's sync worker sends these with sendfile
    assert exporter.calls == []
    response.close()  # as gunicorn does after sending
    assert opened[0].closed
    assert [c.outcome for c in exporter.calls] == ["completed"]


# -- the teed wsgi.input ------------------------------------------------------------------


def test_teed_input_supports_next_and_a_reread_after_seek_counts_once() -> None:
    body = json.dumps({"model": "m", "user": "ada", "messages": [{"role": "user", "content": "x" * 4000}]}).encode()

    def app(environ: Any, start_response: Any) -> Any:
        stream = environ["wsgi.input"]
        first = next(stream)  # one line: the whole body
        stream.seek(0)
        again = stream.read()
        assert first == again == body
        stream.seek(0)
        assert b"".join(stream) == body
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"model": "m", "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}}']

    exporter = InMemoryExporter()
    wrapped = LLMMetricsWSGIMiddleware(app, exporters=[exporter], dimensions=["User ID"])
    run_wsgi(wrapped, body=body)
    [call] = exporter.calls
    assert exporter.dimensions(call) == {"User ID": "ada"}
    assert call.request.prompt_bytes == 4000 + len("roleusercontent")  # each byte seen once


# -- 5. max_series holds across gunicorn workers and restarts ----------------------------


def _series_users(samples: Any) -> set[str]:
    return {s.labels["user_id"] for s in samples if s.name == "llm_requests_total"}


def test_max_series_holds_across_recycled_gunicorn_workers_and_restarts(tmp_path: Path) -> None:
    multiproc_dir = tmp_path / "multiproc"
    multiproc_dir.mkdir()
    env = python_env(PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir), LLM_TEST_MAX_SERIES="10")
    # Every worker serves 3 requests, then gunicorn replaces it with a fresh process.
    config = "workers = 2\nworker_class = 'sync'\nmax_requests = 3\nmax_requests_jitter = 0\n"
    sent = 0
    for run in range(2):  # the second run is a restart that keeps the directory
        with gunicorn_server("tests.reliability_apps:simulated()", workdir=tmp_path, env=env, config=config) as server, \
                httpx.Client(base_url=server.url, timeout=10) as client:
            for i in range(40):
                body = {"model": "m", "user": f"user-{run}-{i}", "messages": [{"role": "user", "content": "hi"}]}
                assert client.post("/v1/chat/completions", json=body).status_code == 200
                sent += 1
            samples = scrape_until_counted(server.url, sent)
            assert metric_sum(samples, "llm_requests_total") == sent  # sums stay exact
            users = _series_users(samples)
            assert len(users - {"__overflow__"}) == 10, sorted(users)
            assert "__overflow__" in users
            assert "Booting worker" in server.log and server.log.count("Autorestarting worker") >= 5, server.log


def test_shared_series_limiters_agree_and_a_full_file_is_not_read_again(tmp_path: Path) -> None:
    from llm_metrics_middleware._metering.series import SharedSeriesLimiter

    path = str(tmp_path / "llm_series_x.admitted")
    first, second = SharedSeriesLimiter(3, path), SharedSeriesLimiter(3, path)
    assert [first.admit((u,))[1] for u in "abc"] == [False] * 3
    assert second.admit(("d",)) == (("__overflow__",), True)
    assert second.admit(("b",)) == (("b",), False)  # admitted by the other process
    assert os.path.getsize(path) == 3 * 17
    os.unlink(path)  # a full file is never read again: the limiter knows it is full
    assert second.admit(("e",))[1] and first.admit(("a",)) == (("a",), False)
    assert not os.path.exists(path)


# -- SimulatedLLM on a deep prompt --------------------------------------------------------


@pytest.mark.parametrize("depth,status", [(800, 200), (50_000, 400)])
def test_simulated_llm_answers_a_deeply_nested_prompt(depth: int, status: int) -> None:
    content = "[" * depth + '"two words"' + "]" * depth
    body = ('{"model": "m", "messages": [{"role": "user", "content": ' + content + "}]}").encode()
    response = SimulatedLLM().respond("POST", "/v1/chat/completions", body)
    assert response.status == status
    if status == 200:
        assert json.loads(b"".join(response.chunks))["usage"]["prompt_tokens"] == 2 + 3
