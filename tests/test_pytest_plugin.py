"""The pytest plugin (``pytest11`` entry point) and the testing helpers it serves.

The fixtures are used here as a user's test suite would use them (the plugin is loaded
because the package is installed); a slow test builds a fresh virtual environment with
only the package and pytest, and checks that ``pytest --fixtures`` lists them there and
that a test using them passes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from flask import Flask, Response, request

from llm_metrics_middleware import LLMMetricsMiddleware, LLMMetricsWSGIMiddleware
from llm_metrics_middleware import testing as testing_module
from llm_metrics_middleware.testing import InMemoryExporter, SimulatedLLM
from tests.servers import ROOT, free_port, python_env, server_process, uvicorn_server

FIXTURES = ("llm_metrics_exporter", "simulated_llm", "simulated_llm_url")
CHAT = {"model": "sim-gpt-1", "messages": [{"role": "user", "content": "count these five words"}], "max_tokens": 4}


def test_fixtures_give_fresh_objects(llm_metrics_exporter: InMemoryExporter, simulated_llm: SimulatedLLM) -> None:
    assert isinstance(llm_metrics_exporter, InMemoryExporter) and llm_metrics_exporter.calls == []
    assert isinstance(simulated_llm, SimulatedLLM) and simulated_llm.requests == 0


def test_served_simulator_answers_the_official_sdk(simulated_llm_url: str, simulated_llm: SimulatedLLM) -> None:
    assert simulated_llm_url.startswith("http://127.0.0.1:")
    # Closed here: an SDK client left open leaks its pooled socket into a later test's warning.
    with openai.OpenAI(base_url=simulated_llm_url + "/v1", api_key="sk-test", max_retries=0, timeout=10) as client:
        completion = client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert completion.usage.completion_tokens == 4
    assert simulated_llm.requests == 1  # the fixture served this very object


def test_simulator_is_an_asgi3_app_the_middleware_wraps(
    llm_metrics_exporter: InMemoryExporter, simulated_llm: SimulatedLLM
) -> None:
    app = LLMMetricsMiddleware(simulated_llm, exporters=[llm_metrics_exporter], dimensions=["User ID"])
    with uvicorn_server(app) as url:
        response = httpx.post(url + "/v1/chat/completions", json={**CHAT, "user": "ada"}, timeout=10)
    assert response.status_code == 200
    (call,) = llm_metrics_exporter.calls
    assert call.usage is not None and call.usage.completion_tokens == 4
    assert llm_metrics_exporter.dimensions(call) == {"User ID": "ada"}


def test_uvicorn_serves_the_simulator_object_as_it_is(tmp_path: Path) -> None:
    """``uvicorn module:upstream`` with ``upstream = SimulatedLLM(...)``: no wrapper needed."""
    (tmp_path / "upstream_app.py").write_text(
        "from llm_metrics_middleware.testing import SimulatedLLM\nupstream = SimulatedLLM(chunk_delay=0.01)\n"
    )
    port = free_port()
    env = python_env(PYTHONPATH=f"{tmp_path}:{ROOT}")
    command = [sys.executable, "-m", "uvicorn", "upstream_app:upstream", "--host", "127.0.0.1", "--port", str(port)]
    with server_process(command, port=port, log_path=tmp_path / "uvicorn.log", env=env, cwd=tmp_path) as server:
        streamed = httpx.post(server.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=10)
        assert streamed.status_code == 200, server.log
        assert streamed.text.endswith("data: [DONE]\n\n")
        assert "ASGI 2" not in server.log and "error" not in server.log.lower(), server.log


def test_asgi_delays_await_and_never_block_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    def blocking_sleep(seconds: float) -> None:
        raise AssertionError(f"time.sleep({seconds}) on the event loop")

    monkeypatch.setattr(testing_module.time, "sleep", blocking_sleep)
    awaited: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(seconds: float) -> None:
        awaited.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(testing_module.asyncio, "sleep", recording_sleep)
    llm = SimulatedLLM(chunk_delay=0.25)
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        body = json.dumps({**CHAT, "stream": True}).encode()
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> Any:
            return messages.pop(0)

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
        await llm(scope, receive, send)

    asyncio.run(run())
    chunks = [m for m in sent if m["type"] == "http.response.body" and m["body"]]
    assert len(chunks) == 4 + 3  # role, 4 words, stop, [DONE]
    assert awaited == [0.25] * (len(chunks) - 1)  # between chunks, awaited


def test_wsgi_delays_sleep_between_chunks_only(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(testing_module.time, "sleep", slept.append)
    llm = SimulatedLLM(chunk_delay=0.1)
    body = json.dumps({**CHAT, "stream": True}).encode()
    import io

    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/chat/completions", "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body)}
    chunks = list(llm.wsgi(environ, lambda status, headers, exc_info=None: lambda data: None))
    assert len(chunks) == 7 and slept == [0.1] * 6


def test_simulator_reports_cached_and_reasoning_tokens() -> None:
    llm = SimulatedLLM(cached_tokens=3, reasoning_tokens=2)
    openai_body = json.loads(b"".join(llm.respond("POST", "/v1/chat/completions", json.dumps(CHAT).encode()).chunks))
    usage = openai_body["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 3}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 2}
    anthropic = {"model": "sim-claude-1", "max_tokens": 4, "messages": CHAT["messages"]}
    message = json.loads(b"".join(llm.respond("POST", "/v1/messages", json.dumps(anthropic).encode()).chunks))
    # Anthropic leaves cache reads out of input_tokens: the two add up to the same prompt.
    assert message["usage"]["cache_read_input_tokens"] == 3
    assert message["usage"]["input_tokens"] + 3 == usage["prompt_tokens"]


def flask_app(exporter: InMemoryExporter, llm: SimulatedLLM) -> Flask:
    app = Flask(__name__)

    @app.post("/v1/chat/completions")
    def chat() -> Response:
        answer = llm.respond("POST", request.path, request.get_data())
        return Response(answer.chunks, status=answer.status, headers=answer.headers)

    app.wsgi_app = LLMMetricsWSGIMiddleware(app.wsgi_app, exporters=[exporter])  # type: ignore[method-assign]
    return app


def test_flask_test_client_records_the_call_when_the_response_is_closed(
    llm_metrics_exporter: InMemoryExporter, simulated_llm: SimulatedLLM
) -> None:
    """The documented detail: a WSGI middleware finishes a call in the body's ``close()``
    (PEP 3333), and Flask's test client closes it only on ``response.close()``, at the end
    of ``with client.post(...)``, or at once with ``buffered=True``."""
    client = flask_app(llm_metrics_exporter, simulated_llm).test_client()
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.json["usage"]["total_tokens"] > 0  # type: ignore[index]
    assert llm_metrics_exporter.calls == []  # read, but not closed yet
    response.close()
    assert len(llm_metrics_exporter.calls) == 1

    with client.post("/v1/chat/completions", json={**CHAT, "stream": True}) as streamed:
        assert streamed.get_data().endswith(b"data: [DONE]\n\n")
    assert len(llm_metrics_exporter.calls) == 2

    client.post("/v1/chat/completions", json=CHAT, buffered=True)
    assert len(llm_metrics_exporter.calls) == 3


@pytest.mark.slow
def test_a_fresh_venv_with_only_the_package_lists_and_runs_the_fixtures(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "-q", str(ROOT), "pytest"], capture_output=True,
                             text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    project = tmp_path / "project"
    project.mkdir()
    # A user's test: the fixtures, no conftest.py, no uvicorn (werkzeug serves the simulator).
    (project / "test_user.py").write_text(textwrap.dedent("""
        import importlib.util, json, urllib.request

        def test_fixtures(llm_metrics_exporter, simulated_llm, simulated_llm_url):
            assert importlib.util.find_spec("uvicorn") is None
            body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
            req = urllib.request.Request(simulated_llm_url + "/v1/chat/completions", data=body,
                                         headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as response:
                assert json.load(response)["usage"]["completion_tokens"] == 16
            assert simulated_llm.requests == 1 and llm_metrics_exporter.calls == []
    """))
    env = {"PATH": str(venv / "bin"), "HOME": str(tmp_path)}
    listed = subprocess.run([python, "-m", "pytest", "--fixtures", "-q", "-p", "no:cacheprovider"], cwd=project,
                            capture_output=True, text=True, timeout=120, env=env)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    for name in FIXTURES:
        assert f"{name} -- " in listed.stdout, listed.stdout
    assert "fixtures defined from llm_metrics_middleware.pytest_plugin" in listed.stdout
    ran = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
                         capture_output=True, text=True, timeout=120, env=env)
    assert ran.returncode == 0 and "1 passed" in ran.stdout, ran.stdout + ran.stderr
    # The README's demo, with only the package installed.
    demo = subprocess.run([python, "-m", "llm_metrics_middleware"], cwd=project, capture_output=True, text=True,
                          timeout=120, env=env)
    assert demo.returncode == 0 and "llm_tokens_total" in demo.stdout, demo.stdout + demo.stderr
