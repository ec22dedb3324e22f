"""Acceptance: the official OpenAI and Anthropic SDKs talk to the examples over real HTTP.

Two users call the wrapped FastAPI example (a real uvicorn on 127.0.0.1) and the Flask
example (a real gunicorn), streamed and not. The SDKs must read every answer exactly as
the simulated LLM produced it, and ``/metrics`` must count, per user, exactly the tokens
the SDKs reported, with the one stream that carried no usage exported as an estimate.

The Flask example is only ever imported by the gunicorn subprocess: its module-level app
registers its counters in prometheus_client's global registry at import.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.samples import Sample

from llm_metrics_middleware import uninstrument_httpx
from llm_metrics_middleware.testing import SimulatedLLM
from tests.servers import gunicorn_server, metric_sum, scrape_until_counted, uvicorn_server

OPENAI_MODEL = "sim-gpt-1"
ANTHROPIC_MODEL = "sim-claude-1"
#: Per user: the question and a base answer length, different so per-user sums differ.
USERS = {
    "alice": ("What is a token?", 5),
    "bob": ("Please count the tokens of this somewhat longer question for me", 11),
}
#: Calls per user whose usage the provider reports, and those (one stream) it does not.
REPORTED_CALLS = 5
ESTIMATED_CALLS = 1


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test here may reach a real provider or Application Insights, whatever the shell has set."""
    for name in ("LLM_UPSTREAM_URL", "LLM_UPSTREAM_API_KEY", "APPLICATIONINSIGHTS_CONNECTION_STRING"):
        monkeypatch.delenv(name, raising=False)


def fastapi_create_app() -> Callable[..., Any]:
    # Imported here, under the cleaned environment: the module-level app reads it at import.
    return importlib.import_module("examples.fastapi_app.app").create_app  # type: ignore[no-any-return]


def simulated(path: str, request: dict[str, Any]) -> dict[str, Any]:
    """The simulated LLM's non-streamed answer to ``request``: the expected text and usage."""
    body = {k: v for k, v in request.items() if k not in ("stream", "stream_options")}
    response = SimulatedLLM().respond("POST", path, json.dumps(body).encode())
    assert response.status == 200
    return json.loads(b"".join(response.chunks))  # type: ignore[no-any-return]


@dataclass
class Tally:
    """What the SDKs reported for one user, and what they saw of its unreported stream."""

    prompt: int = 0
    completion: int = 0
    total: int = 0
    reported_calls: int = 0
    estimated_calls: int = 0
    estimated_text_bytes: int = 0
    estimated_prompt_bytes: int = 0

    def add(self, prompt: int, completion: int, total: int) -> None:
        self.prompt += prompt
        self.completion += completion
        self.total += total
        self.reported_calls += 1


def openai_calls(client: openai.OpenAI, user: str, question: str, base: int, tally: Tally) -> None:
    messages = [{"role": "user", "content": question}]

    # Not streamed.
    request: dict[str, Any] = {"model": OPENAI_MODEL, "messages": messages, "max_tokens": base, "user": user}
    want = simulated("/v1/chat/completions", request)
    completion = client.chat.completions.create(**request)
    assert completion.choices[0].message.content == want["choices"][0]["message"]["content"]
    assert completion.model == OPENAI_MODEL
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        want["usage"]["prompt_tokens"], want["usage"]["completion_tokens"], want["usage"]["total_tokens"])
    tally.add(completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens)

    # Streamed, with usage in the last chunk (stream_options.include_usage).
    request = {"model": OPENAI_MODEL, "messages": messages, "max_tokens": base + 1, "user": user,
               "stream": True, "stream_options": {"include_usage": True}}
    want = simulated("/v1/chat/completions", request)
    with client.chat.completions.create(**request) as stream:
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want["choices"][0]["message"]["content"]
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    assert all(c.usage is None for c in chunks[:-1])
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        want["usage"]["prompt_tokens"], want["usage"]["completion_tokens"], want["usage"]["total_tokens"])
    tally.add(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)

    # Streamed without usage: what most clients send. The middleware has to estimate.
    request = {"model": OPENAI_MODEL, "messages": messages, "max_tokens": base + 2, "user": user, "stream": True}
    want = simulated("/v1/chat/completions", request)
    with client.chat.completions.create(**request) as stream:
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want["choices"][0]["message"]["content"]
    assert all(c.usage is None for c in chunks)
    tally.estimated_calls += 1
    tally.estimated_text_bytes += len(text.encode())
    tally.estimated_prompt_bytes += len(json.dumps(messages).encode())


def anthropic_calls(client: anthropic.Anthropic, user: str, question: str, base: int, tally: Tally) -> None:
    request: dict[str, Any] = {"model": ANTHROPIC_MODEL, "max_tokens": base + 3,
                               "messages": [{"role": "user", "content": question}], "metadata": {"user_id": user}}

    # Not streamed.
    want = simulated("/v1/messages", request)
    message = client.messages.create(**request)
    assert message.content[0].type == "text" and message.content[0].text == want["content"][0]["text"]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (
        want["usage"]["input_tokens"], want["usage"]["output_tokens"])
    tally.add(message.usage.input_tokens, message.usage.output_tokens,
              message.usage.input_tokens + message.usage.output_tokens)

    # messages.stream(): the SDK's accumulating helper.
    request = {**request, "max_tokens": base + 4}
    want = simulated("/v1/messages", request)
    with client.messages.stream(**request) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == want["content"][0]["text"]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        want["usage"]["input_tokens"], want["usage"]["output_tokens"])
    tally.add(final.usage.input_tokens, final.usage.output_tokens, final.usage.input_tokens + final.usage.output_tokens)

    # stream=True: raw events; output_tokens in message_delta is cumulative (last one wins).
    request = {**request, "max_tokens": base + 5}
    want = simulated("/v1/messages", request)
    parts: list[str] = []
    input_tokens = output_tokens = None
    with client.messages.create(**request, stream=True) as events:
        for event in events:
            if event.type == "message_start":
                input_tokens = event.message.usage.input_tokens
            elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                parts.append(event.delta.text)
            elif event.type == "message_delta":
                output_tokens = event.usage.output_tokens
    assert "".join(parts) == want["content"][0]["text"]
    assert (input_tokens, output_tokens) == (want["usage"]["input_tokens"], want["usage"]["output_tokens"])
    assert input_tokens is not None and output_tokens is not None
    tally.add(input_tokens, output_tokens, input_tokens + output_tokens)


def drive_sdks(base_url: str, *, with_anthropic: bool = True) -> dict[str, Tally]:
    """Both users, every call shape, through the official SDKs; what they reported."""
    tallies = {user: Tally() for user in USERS}
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-test-openai", max_retries=0, timeout=10) as oai, \
            anthropic.Anthropic(base_url=base_url, api_key="sk-test-anthropic", max_retries=0, timeout=10) as ant:
        for user, (question, base) in USERS.items():
            openai_calls(oai, user, question, base, tallies[user])
            if with_anthropic:
                anthropic_calls(ant, user, question, base, tallies[user])
    return tallies


def assert_counted(samples: list[Sample], tallies: dict[str, Tally], *, with_anthropic: bool = True) -> None:
    """Per user: the token counters minus their estimated part equal what the SDKs reported."""
    for user, tally in tallies.items():
        on = {"user_id": user, "api_id": "/v1"}
        est_prompt = metric_sum(samples, "llm_estimated_tokens_total", **on, type="prompt")
        est_completion = metric_sum(samples, "llm_estimated_tokens_total", **on, type="completion")
        # The unreported stream was estimated, and plausibly: at most a token per byte.
        assert 0 < est_completion <= tally.estimated_text_bytes, (user, est_completion)
        assert 0 < est_prompt <= tally.estimated_prompt_bytes, (user, est_prompt)

        prompt = metric_sum(samples, "llm_prompt_tokens_total", **on)
        completion = metric_sum(samples, "llm_completion_tokens_total", **on)
        total = metric_sum(samples, "llm_tokens_total", **on)
        assert (prompt - est_prompt, completion - est_completion, total - est_prompt - est_completion) == (
            tally.prompt, tally.completion, tally.total), user

        ok = {**on, "status": "200", "outcome": "completed"}
        assert metric_sum(samples, "llm_requests_total", **ok, usage="reported") == tally.reported_calls, user
        assert metric_sum(samples, "llm_requests_total", **ok, usage="estimated") == tally.estimated_calls, user
        assert metric_sum(samples, "llm_requests_total", user_id=user) == tally.reported_calls + tally.estimated_calls
        # The other dimensions: operation and model, as the calls were made.
        assert metric_sum(samples, "llm_requests_total", **on, operation_id="chat.completions", model=OPENAI_MODEL) == 3
        if with_anthropic:
            assert metric_sum(samples, "llm_requests_total", **on, operation_id="messages", model=ANTHROPIC_MODEL) == 3


def expected_calls(tallies: dict[str, Tally]) -> int:
    return sum(t.reported_calls + t.estimated_calls for t in tallies.values())


# -- FastAPI through uvicorn -------------------------------------------------------------------


@pytest.fixture
def fastapi_server() -> Iterator[str]:
    """The FastAPI example with a registry of its own, served by a real uvicorn."""
    app = fastapi_create_app()(upstream_app=SimulatedLLM().asgi, registry=CollectorRegistry())
    try:
        with uvicorn_server(app) as url:
            yield url
    finally:
        uninstrument_httpx()  # create_app() instrumented this process's httpx


def test_sdks_through_fastapi_example(fastapi_server: str) -> None:
    tallies = drive_sdks(fastapi_server)
    assert all(t.reported_calls == REPORTED_CALLS and t.estimated_calls == ESTIMATED_CALLS for t in tallies.values())
    samples = scrape_until_counted(fastapi_server, expected_calls(tallies))
    assert metric_sum(samples, "llm_requests_total") == expected_calls(tallies)
    assert_counted(samples, tallies)


def chat_and_agent(base_url: str, user: str) -> dict[str, int]:
    """``/chat`` twice and ``/agent`` once for ``user``; the usage the simulator gave those calls."""
    sums = {"prompt": 0, "completion": 0, "total": 0}

    def add(request: dict[str, Any]) -> None:
        usage = simulated("/v1/chat/completions", request)["usage"]
        sums["prompt"] += usage["prompt_tokens"]
        sums["completion"] += usage["completion_tokens"]
        sums["total"] += usage["total_tokens"]

    with httpx.Client(base_url=base_url, timeout=10) as client:
        for message, max_tokens in (("Say something short", 7), ("And now something a bit longer", 13)):
            response = client.post("/chat", json={"message": message, "user": user, "max_tokens": max_tokens})
            assert response.status_code == 200, response.text
            request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": message}], "max_tokens": max_tokens}
            want = simulated("/v1/chat/completions", request)
            # The app's own answer, without usage: counted all the same.
            assert response.json() == {"answer": want["choices"][0]["message"]["content"], "model": "gpt-4o-mini"}
            add(request)

        message = "Tell me about tokens"
        with client.stream("POST", "/agent", json={"message": message, "user": user, "max_tokens": 5}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
        plan = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Plan an answer to: {message}"}],
                "max_tokens": 5}
        answer = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": message}], "max_tokens": 5}
        assert events[0] == {"plan": simulated("/v1/chat/completions", plan)["choices"][0]["message"]["content"]}
        assert "".join(e["delta"] for e in events[1:-1]) == \
            simulated("/v1/chat/completions", answer)["choices"][0]["message"]["content"]
        assert events[-1] == {"end": True}
        add(plan)
    return sums


def assert_chat_and_agent_counted(samples: list[Sample], user: str, sums: dict[str, int]) -> None:
    """Three calls (two /chat, the /agent plan) reported; the /agent stream without usage estimated."""
    on = {"user_id": user, "operation_id": "chat.completions", "model": "gpt-4o-mini"}
    chat, agent = {**on, "api_id": "/chat"}, {**on, "api_id": "/agent"}
    assert metric_sum(samples, "llm_requests_total", **chat, usage="reported", status="200", outcome="completed") == 2
    assert metric_sum(samples, "llm_requests_total", **agent, usage="reported", status="200", outcome="completed") == 1
    assert metric_sum(samples, "llm_requests_total", **agent, usage="estimated", status="200", outcome="completed") == 1
    est = {t: metric_sum(samples, "llm_estimated_tokens_total", user_id=user, type=t) for t in ("prompt", "completion")}
    assert est["completion"] > 0
    assert metric_sum(samples, "llm_prompt_tokens_total", user_id=user) - est["prompt"] == sums["prompt"]
    assert metric_sum(samples, "llm_completion_tokens_total", user_id=user) - est["completion"] == sums["completion"]
    assert metric_sum(samples, "llm_tokens_total", user_id=user) - est["prompt"] - est["completion"] == sums["total"]
    assert metric_sum(samples, "llm_requests_total", user_id=user) == 4


def test_chat_and_agent_endpoints_of_fastapi_example_are_counted(fastapi_server: str) -> None:
    sums = chat_and_agent(fastapi_server, "carol")
    samples = scrape_until_counted(fastapi_server, 4)
    assert_chat_and_agent_counted(samples, "carol", sums)
    # Each call once: only the four outgoing calls, nothing for the incoming responses.
    assert metric_sum(samples, "llm_requests_total") == 4


def test_fastapi_proxy_passes_upstream_errors_through(fastapi_server: str) -> None:
    with openai.OpenAI(base_url=f"{fastapi_server}/v1", api_key="sk-test", max_retries=0, timeout=10) as client, \
            pytest.raises(openai.NotFoundError) as info:
        client.post("/no/such/endpoint", body={"model": OPENAI_MODEL}, cast_to=httpx.Response)
    assert info.value.status_code == 404
    assert info.value.body == {"message": "no such endpoint /v1/no/such/endpoint", "type": "not_found_error",
                               "param": None, "code": None}


def test_fastapi_example_streams_live_from_an_upstream_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """``LLM_UPSTREAM_URL`` (here a second local uvicorn, never the internet): chunks reach the
    SDK as the upstream sends them, the server key replaces the client's, and it is counted."""
    seen: list[dict[str, str]] = []
    upstream = SimulatedLLM(chunk_delay=0.05)

    async def recording_upstream(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append({k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]})
        await upstream.asgi(scope, receive, send)

    with uvicorn_server(recording_upstream) as upstream_url:
        monkeypatch.setenv("LLM_UPSTREAM_URL", f"{upstream_url}/v1")  # a trailing /v1 is tolerated
        monkeypatch.setenv("LLM_UPSTREAM_API_KEY", "sk-server-key")
        app = fastapi_create_app()(registry=CollectorRegistry())
        with uvicorn_server(app) as url, \
                openai.OpenAI(base_url=f"{url}/v1", api_key="sk-client", max_retries=0, timeout=10) as oai, \
                anthropic.Anthropic(base_url=url, api_key="sk-ant-client", max_retries=0, timeout=10) as ant:
            request: dict[str, Any] = {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "Stream slowly"}],
                                       "max_tokens": 20, "user": "dora", "stream": True,
                                       "stream_options": {"include_usage": True}}
            arrivals: list[float] = []
            start = time.monotonic()
            with oai.chat.completions.create(**request) as stream:
                chunks = []
                for chunk in stream:
                    arrivals.append(time.monotonic() - start)
                    chunks.append(chunk)
            usage = chunks[-1].usage
            assert usage is not None
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
                simulated("/v1/chat/completions", request)["choices"][0]["message"]["content"]
            message = ant.messages.create(model=ANTHROPIC_MODEL, max_tokens=3, metadata={"user_id": "dora"},
                                          messages=[{"role": "user", "content": "And quickly"}])
            samples = scrape_until_counted(url, 2)

    # 20 words 50 ms apart: the first ones arrived long before the last.
    assert arrivals[1] < arrivals[-1] / 2, arrivals
    assert arrivals[-1] >= 20 * 0.05 * 0.9, arrivals
    openai_headers, anthropic_headers = seen
    assert openai_headers["authorization"] == "Bearer sk-server-key"
    # The server key, in the header the SDK used (x-api-key, or a bearer token in newer SDKs).
    credentials = {k: v for k, v in anthropic_headers.items() if k in ("authorization", "x-api-key")}
    assert credentials in ({"x-api-key": "sk-server-key"}, {"authorization": "Bearer sk-server-key"}), credentials
    assert "anthropic-version" in anthropic_headers
    for headers in seen:
        assert not any("client" in value for value in headers.values()), headers  # the client's keys stay here
        assert not any(name.startswith("x-stainless") for name in headers), headers
    on = {"user_id": "dora", "api_id": "/v1"}
    assert metric_sum(samples, "llm_prompt_tokens_total", **on) == usage.prompt_tokens + message.usage.input_tokens
    assert metric_sum(samples, "llm_completion_tokens_total", **on) == usage.completion_tokens + message.usage.output_tokens
    assert metric_sum(samples, "llm_tokens_total", **on) == (
        usage.total_tokens + message.usage.input_tokens + message.usage.output_tokens)
    assert metric_sum(samples, "llm_requests_total", **on, usage="reported", status="200", outcome="completed") == 2


# -- Flask through gunicorn --------------------------------------------------------------------


@pytest.fixture
def flask_server(tmp_path: Path) -> Iterator[str]:
    """The Flask example under a real gunicorn: one process (no multiprocess dir), 4 threads."""
    with gunicorn_server("examples.flask_app.app:app", workdir=tmp_path,
                         config="workers = 1\nworker_class = 'gthread'\nthreads = 4\n") as server:
        yield server.url


def test_sdks_through_flask_example_under_gunicorn(flask_server: str) -> None:
    tallies = drive_sdks(flask_server)
    sums = chat_and_agent(flask_server, "carol")
    samples = scrape_until_counted(flask_server, expected_calls(tallies) + 4)
    assert metric_sum(samples, "llm_requests_total") == expected_calls(tallies) + 4
    assert_counted(samples, tallies)
    assert_chat_and_agent_counted(samples, "carol", sums)
