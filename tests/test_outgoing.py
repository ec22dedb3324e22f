"""Apps that call LLMs: outgoing calls through httpx / httpx2 (and the official SDKs) are metered
under the incoming request that made them, once, over real HTTP on 127.0.0.1.

The upstream is tests/outgoing_apps.Upstream under uvicorn; the apps are a FastAPI app under
uvicorn (exporter in this process) and a Flask app under gunicorn (scraped at /metrics).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
import requests

from llm_metrics_middleware import (
    LLMMetricsAdapter,
    LLMMetricsTransport,
    PrometheusExporter,
    instrument_httpx,
    instrument_requests,
    metering_context,
    uninstrument_httpx,
    uninstrument_requests,
)
from llm_metrics_middleware._metering.call import CallRecord
from llm_metrics_middleware.testing import InMemoryExporter
from tests.outgoing_apps import (
    ANTHROPIC_MODEL,
    ME_USAGE,
    OPENAI_MODEL,
    Upstream,
    async_clients,
    call_async,
    call_requests,
    call_sync,
    create_fastapi_app,
    sync_clients,
)
from tests.servers import gunicorn_server, metric_sum, python_env, scrape_until_counted, uvicorn_server
from tests.wire.cases import CASES, NON_LLM_STATUS

DIMENSIONS = ["User ID", "API ID", "Operation ID", "Model", "Provider"]
#: Every call shape; openai_stream is the one whose usage the provider does not report.
KINDS = ["openai", "openai_stream_usage", "openai_stream", "anthropic", "anthropic_stream", "httpx"]
REPORTED_KINDS = [k for k in KINDS if k != "openai_stream"]
USERS = {"alice": 3, "bob": 5, "carol": 8, "dave": 2}


@pytest.fixture
def upstream() -> Iterator[tuple[str, Upstream]]:
    app = Upstream()
    with uvicorn_server(app) as url:
        yield url, app


@pytest.fixture(autouse=True)
def clean_instrumentation() -> Iterator[None]:
    """No test leaves httpx or requests instrumented for the next one."""
    uninstrument_httpx()
    uninstrument_requests()
    yield
    uninstrument_httpx()
    uninstrument_requests()


@pytest.fixture
def fastapi(upstream: tuple[str, Upstream]) -> Iterator[tuple[str, InMemoryExporter]]:
    """The FastAPI app (clients built first), then httpx instrumented; its base URL and exporter."""
    exporter = InMemoryExporter()
    app = create_fastapi_app(upstream[0], exporters=[exporter], dimensions=DIMENSIONS)
    instrument_httpx()
    with uvicorn_server(app) as url:
        yield url, exporter


def direct(upstream_url: str, kind: str, message: str, max_tokens: int) -> dict[str, Any]:
    """What the SDK reads calling the upstream itself, with nothing of ours in between."""
    assert not hasattr(httpx2.HTTPTransport.handle_request, "_llm_metrics_original")
    oai, ant, raw = sync_clients(upstream_url)
    with oai, ant, raw:
        return call_sync(oai, ant, raw, kind, message, max_tokens)


def ask(base_url: str, user: str, kind: str, max_tokens: int, path: str = "/ask", **extra: Any) -> httpx.Response:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        return client.post(path, json={"user": user, "kind": kind, "message": f"Hello from {user}",
                                       "max_tokens": max_tokens, **extra})


def calls_of(exporter: InMemoryExporter, user: str) -> list[CallRecord]:
    return [c for c in exporter.calls if exporter.dimensions(c)["User ID"] == user]


def assert_counted_for(exporter: InMemoryExporter, user: str, reads: dict[str, dict[str, Any]], api_id: str) -> None:
    """The user's calls: one per kind, reported usage exactly what the SDK read, the rest estimated."""
    calls = calls_of(exporter, user)
    assert len(calls) == len(reads), (user, calls)
    reported = [c for c in calls if c.usage_source == "reported"]
    assert sum(c.usage.prompt_tokens for c in reported) == sum(reads[k]["read"][0] for k in REPORTED_KINDS if k in reads)
    assert sum(c.usage.completion_tokens for c in reported) == sum(reads[k]["read"][1] for k in REPORTED_KINDS if k in reads)
    estimated = [c for c in calls if c.usage_source == "estimated"]
    assert len(estimated) == ("openai_stream" in reads)
    for call in calls:
        dims = exporter.dimensions(call)
        assert call.origin == "outgoing" and call.status == 200 and call.outcome == "completed", call
        assert dims["API ID"] == api_id  # the incoming request's
        assert call.request is not None and call.request.path.startswith(api_id)
        assert (dims["Operation ID"], dims["Provider"], dims["Model"]) in (
            ("chat.completions", "openai", OPENAI_MODEL), ("messages", "anthropic", ANTHROPIC_MODEL)), dims


# -- FastAPI under uvicorn -----------------------------------------------------------------------


def test_sdk_calls_inside_requests_count_for_the_incoming_user_concurrently(
    upstream: tuple[str, Upstream],
) -> None:
    # What the SDKs read without us, first (nothing instrumented yet).
    want = {(user, kind): direct(upstream[0], kind, f"Hello from {user}", n) for user, n in USERS.items() for kind in KINDS}
    exporter = InMemoryExporter()
    app = create_fastapi_app(upstream[0], exporters=[exporter], dimensions=DIMENSIONS)
    instrument_httpx()
    with uvicorn_server(app) as url, concurrent.futures.ThreadPoolExecutor(8) as pool:
        jobs = {key: pool.submit(ask, url, key[0], key[1], USERS[key[0]]) for key in want for _ in range(1)}
        got = {key: job.result() for key, job in jobs.items()}
    for key, response in got.items():
        assert response.status_code == 200, (key, response.text)
        assert response.json() == want[key], key  # the same text and usage as without us
    for user in USERS:
        assert_counted_for(exporter, user, {k: want[user, k] for k in KINDS}, "/ask")
    assert len(exporter.calls) == len(want)  # the incoming /ask responses add nothing


def test_sync_endpoint_to_thread_and_a_carried_pool_count_for_the_request(
    fastapi: tuple[str, InMemoryExporter], upstream: tuple[str, Upstream],
) -> None:
    url, exporter = fastapi
    for path, user in (("/ask-sync", "sync"), ("/ask-to-thread", "thread"), ("/ask-pool", "pool")):
        reads = {}
        for kind in ("openai", "openai_stream_usage", "anthropic_stream"):
            response = ask(url, user, kind, 4, path=path, carry=True)
            assert response.status_code == 200, response.text
            assert response.json() == direct_after(upstream[0], kind, f"Hello from {user}", 4)
            reads[kind] = response.json()
        assert_counted_for(exporter, user, reads, path)


def direct_after(upstream_url: str, kind: str, message: str, max_tokens: int) -> dict[str, Any]:
    """``direct``, while instrumented: outside any request and without exporters, not counted."""
    oai, ant, raw = sync_clients(upstream_url)
    with oai, ant, raw:
        return call_sync(oai, ant, raw, kind, message, max_tokens)


def test_plain_thread_pool_loses_the_request_and_counts_outside(upstream: tuple[str, Upstream]) -> None:
    exporter, outside = InMemoryExporter(), InMemoryExporter()
    app = create_fastapi_app(upstream[0], exporters=[exporter], dimensions=DIMENSIONS)
    instrument_httpx(exporters=[outside], dimensions=["User ID", "API ID"])
    with uvicorn_server(app) as url:
        assert ask(url, "erin", "openai", 3, path="/ask-pool").status_code == 200
        assert ask(url, "erin", "openai", 3, path="/ask-pool", carry=True).status_code == 200
    assert len(exporter.calls) == 1 and exporter.dimensions(exporter.calls[0])["User ID"] == "erin"
    [lost] = outside.calls
    # Evaluated on the outgoing request: no incoming user, the outgoing path's API ID.
    assert outside.dimensions(lost) == {"User ID": "unknown", "API ID": "/v1"} and lost.request is None


def test_a_streaming_response_that_calls_as_it_streams_counts_both_calls(fastapi: tuple[str, InMemoryExporter]) -> None:
    url, exporter = fastapi
    with httpx.Client(base_url=url, timeout=30) as client, \
            client.stream("POST", "/agent", json={"user": "frank", "message": "think", "max_tokens": 6}) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert len(events) == 2
    calls = calls_of(exporter, "frank")
    assert [c.usage_source for c in calls] == ["reported", "estimated"]
    assert calls[0].usage.prompt_tokens == events[0]["read"][0]
    assert all(exporter.dimensions(c)["API ID"] == "/agent" for c in calls)
    assert len(exporter.calls) == 2


def test_upstream_errors_count_as_requests_with_their_status(fastapi: tuple[str, InMemoryExporter]) -> None:
    url, exporter = fastapi
    for kind, status in (("openai", "429"), ("anthropic", "500"), ("openai_stream", "429")):
        response = ask(url, "gina", kind, 3, status=status)
        assert response.status_code == 502 and response.json() == {"upstream_status": int(status)}
    calls = calls_of(exporter, "gina")
    assert [(c.status, c.usage, c.usage_source) for c in calls] == [
        (429, None, "none"), (500, None, "none"), (429, None, "none")]
    assert len(exporter.calls) == 3


def test_usage_report_endpoint_counts_nothing(upstream: tuple[str, Upstream]) -> None:
    exporter = InMemoryExporter()
    app = create_fastapi_app(upstream[0], exporters=[exporter], dimensions=DIMENSIONS)
    sniffing = InMemoryExporter()
    old_behaviour = create_fastapi_app(upstream[0], exporters=[sniffing], dimensions=DIMENSIONS, include_paths=["/"])
    with uvicorn_server(app) as url, uvicorn_server(old_behaviour) as old_url:
        for base in (url, old_url):
            response = httpx.get(base + "/me/usage", headers={"x-user-id": "alice"}, timeout=10)
            assert response.json() == ME_USAGE
    assert exporter.calls == []
    # The opt-in keeps the old sniffing: then it is counted as a (150,000-token) call.
    [call] = sniffing.calls
    assert call.usage.total_tokens == 150_000 and call.origin == "incoming"


def test_a_metered_proxy_counts_each_call_once(fastapi: tuple[str, InMemoryExporter]) -> None:
    url, exporter = fastapi
    with openai.OpenAI(base_url=f"{url}/v1", api_key="sk", max_retries=0, timeout=20) as client:
        client.chat.completions.create(model=OPENAI_MODEL, messages=[{"role": "user", "content": "hi"}], user="hal")
        with client.chat.completions.create(model=OPENAI_MODEL, messages=[{"role": "user", "content": "hi"}], user="hal",
                                            stream=True, stream_options={"include_usage": True}) as stream:
            chunks = list(stream)
    assert chunks[-1].usage is not None
    # The client reads the stream's last byte before the proxy has recorded its call.
    deadline = time.monotonic() + 10
    while len(exporter.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    calls = calls_of(exporter, "hal")  # the user, from the incoming body the proxy relayed
    assert len(calls) == 2 and len(exporter.calls) == 2
    assert all(c.origin == "outgoing" and c.usage_source == "reported" for c in calls)
    assert calls[1].usage.total_tokens == chunks[-1].usage.total_tokens and calls[1].streamed


def test_calls_outside_requests_go_to_the_instrumentation_exporters(
    fastapi: tuple[str, InMemoryExporter], upstream: tuple[str, Upstream],
) -> None:
    url, exporter = fastapi
    outside = InMemoryExporter()
    instrument_httpx(exporters=[outside], dimensions=["User ID", "Model"])
    oai, ant, raw = sync_clients(upstream[0])
    with oai, ant, raw:
        with metering_context({"User ID": "nightly-job"}):
            call_sync(oai, ant, raw, "openai", "summarise", 4)
            with metering_context(user_id="inner"):
                call_sync(oai, ant, raw, "anthropic_stream", "summarise", 4)
        call_sync(oai, ant, raw, "httpx", "summarise", 4)
    assert ask(url, "ivan", "openai", 3).status_code == 200  # inside a request: the app's exporter
    assert [outside.dimensions(c) for c in outside.calls] == [
        {"User ID": "nightly-job", "Model": OPENAI_MODEL}, {"User ID": "inner", "Model": ANTHROPIC_MODEL},
        {"User ID": "unknown", "Model": OPENAI_MODEL}]
    assert all(c.request is None and c.origin == "outgoing" for c in outside.calls)
    assert [exporter.dimensions(c)["User ID"] for c in exporter.calls] == ["ivan"]


def test_background_task_async_outside_requests(upstream: tuple[str, Upstream]) -> None:
    outside = InMemoryExporter()
    oai, ant, raw = async_clients(upstream[0])
    instrument_httpx(exporters=[outside], dimensions=["User ID", "Operation ID"])

    async def job() -> None:
        async with oai, ant, raw:
            with metering_context({"User ID": "worker"}):
                await asyncio.gather(*(call_async(oai, ant, raw, kind, "batch", 3) for kind in KINDS))

    asyncio.run(job())
    assert len(outside.calls) == len(KINDS)
    assert {outside.dimensions(c)["User ID"] for c in outside.calls} == {"worker"}
    assert sorted(c.usage_source for c in outside.calls) == ["estimated"] + ["reported"] * 5


def test_uninstrument_stops_counting(fastapi: tuple[str, InMemoryExporter]) -> None:
    url, exporter = fastapi
    assert ask(url, "judy", "openai", 3).status_code == 200
    assert len(exporter.calls) == 1
    uninstrument_httpx()
    for cls in (httpx.HTTPTransport, httpx2.HTTPTransport, httpx2.AsyncHTTPTransport, httpx.MockTransport):
        assert not hasattr(cls.handle_request if hasattr(cls, "handle_request") else cls.handle_async_request,
                           "_llm_metrics_original")
    assert ask(url, "judy", "openai_stream_usage", 3).status_code == 200
    assert ask(url, "judy", "anthropic", 3).status_code == 200
    assert len(exporter.calls) == 1


# -- the stream is not buffered --------------------------------------------------------------------


def test_outgoing_stream_reaches_the_sdk_unbuffered(upstream: tuple[str, Upstream]) -> None:
    url, sim = upstream
    outside = InMemoryExporter()
    instrument_httpx(exporters=[outside])
    with openai.OpenAI(base_url=f"{url}/v1", api_key="sk", max_retries=0, timeout=30) as client:
        text = ""
        with client.chat.completions.create(model=OPENAI_MODEL, messages=[{"role": "user", "content": "go"}],
                                            max_tokens=5, stream=True, stream_options={"include_usage": True},
                                            extra_headers={"x-gate": "1"}) as stream:
            for chunk in stream:
                sim.gate.set()  # the upstream is paused until we have seen a chunk
                text += "".join(c.delta.content or "" for c in chunk.choices)
    # The SDK saw a chunk while the upstream was paused: the pause ended by our signal.
    assert sim.gate_results == [True]
    [call] = outside.calls
    assert call.usage is not None and call.usage.completion_tokens == 5 and call.streamed
    assert call.time_to_first_chunk_s is not None and call.time_to_first_chunk_s <= call.duration_s


def test_async_outgoing_stream_reaches_the_sdk_unbuffered(upstream: tuple[str, Upstream]) -> None:
    url, sim = upstream
    outside = InMemoryExporter()
    instrument_httpx(exporters=[outside])

    async def run() -> None:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="sk", max_retries=0, timeout=30)
        async with client, client.messages.stream(model=ANTHROPIC_MODEL, max_tokens=5, extra_headers={"x-gate": "1"},
                                                  messages=[{"role": "user", "content": "go"}]) as stream:
            async for _ in stream.text_stream:
                sim.gate.set()

    asyncio.run(run())
    assert sim.gate_results == [True]
    [call] = outside.calls
    assert call.usage is not None and call.usage.completion_tokens == 5


# -- LLMMetricsTransport -----------------------------------------------------------------------------


@pytest.mark.parametrize("package", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_transport_for_one_client_sync_and_async_counts_once_when_also_instrumented(
    upstream: tuple[str, Upstream], package: Any,
) -> None:
    url = upstream[0]
    mine, instrumented = InMemoryExporter(), InMemoryExporter()
    instrument_httpx(exporters=[instrumented])
    request = {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "hey there"}], "max_tokens": 4}
    with package.Client(base_url=url, transport=LLMMetricsTransport(exporters=[mine])) as client:
        plain = client.post("/v1/chat/completions", json=request).json()
        with client.stream("POST", "/v1/chat/completions", json={**request, "stream": True}) as response:
            streamed = b"".join(response.iter_bytes())
        client.get("/health")  # not an LLM path: passed through, not counted

    async def run() -> bytes:
        async with package.AsyncClient(base_url=url, transport=LLMMetricsTransport(exporters=[mine])) as client:
            response = await client.post("/v1/messages", json={**request, "model": ANTHROPIC_MODEL, "stream": True})
            return response.content

    anthropic_stream = asyncio.run(run())
    assert b"message_stop" in anthropic_stream and streamed.endswith(b"data: [DONE]\n\n")
    assert instrumented.calls == []  # counted once, by the transport
    assert [c.usage_source for c in mine.calls] == ["reported", "estimated", "reported"]
    assert mine.calls[0].usage.total_tokens == plain["usage"]["total_tokens"]
    assert [c.operation for c in mine.calls] == ["chat.completions", "chat.completions", "messages"]


def test_transport_options_need_exporters() -> None:
    with pytest.raises(TypeError, match="only exporters= count; pass exporters"):
        LLMMetricsTransport(dimensions=["User ID"])
    with pytest.raises(TypeError, match="namespace"):
        instrument_httpx(namespace="x")


# -- recorded provider traffic -------------------------------------------------------------------------


@pytest.mark.parametrize("package", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_recorded_provider_bodies_read_through_raw_clients(upstream: tuple[str, Upstream], package: Any) -> None:
    url = upstream[0]
    outside = InMemoryExporter()
    instrument_httpx(exporters=[outside], dimensions=["Provider", "Operation ID", "Model"])
    cases = [case for case in CASES if case.method == "POST"]
    with package.Client(base_url=url, timeout=20) as client:
        for case in cases:
            headers = {"content-type": "application/json", "x-case": case.id, **dict(case.request_headers)}
            target = case.path + (f"?{case.query}" if case.query else "")
            with client.stream("POST", target, content=case.request_body, headers=headers) as response:
                assert b"".join(response.iter_raw()) == case.body
        for case, status in NON_LLM_STATUS:
            response = client.post(case.path, content=case.request_body, headers={"x-case": case.id})
            assert response.status_code == status
    assert len(outside.calls) == len(cases) + len(NON_LLM_STATUS)
    for case, call in zip(cases, outside.calls):
        assert call.operation == case.operation, case.id
        if case.estimated:
            assert call.usage_source in ("estimated", "none"), case.id
            continue
        assert call.usage is not None, case.id
        assert (call.usage.prompt_tokens, call.usage.completion_tokens, call.usage.total_tokens,
                call.usage.cached_tokens) == (case.prompt_tokens, case.completion_tokens, case.total_tokens,
                                              case.cached_tokens), case.id
    for (case, status), call in zip(NON_LLM_STATUS, outside.calls[len(cases):]):
        assert (call.status, call.usage) == (status, None), case.id


# -- Flask under gunicorn --------------------------------------------------------------------------------


def test_flask_under_gunicorn_counts_calls_per_user_while_streaming(
    upstream: tuple[str, Upstream], tmp_path: Path,
) -> None:
    url = upstream[0]
    kinds = KINDS
    want = {(user, kind): direct(url, kind, f"Hello from {user}", n) for user, n in USERS.items() for kind in kinds}
    env = python_env(UPSTREAM_URL=url, OUTGOING_APP="flask")
    with gunicorn_server("tests.outgoing_apps:flask_app", workdir=tmp_path, env=env,
                         config="workers = 1\nworker_class = 'gthread'\nthreads = 4\n") as server, \
            concurrent.futures.ThreadPoolExecutor(8) as pool:
        jobs = {key: pool.submit(ask, server.url, key[0], key[1], USERS[key[0]]) for key in want}
        for key, job in jobs.items():
            response = job.result()
            assert response.status_code == 200, (key, response.text, server.log[-3000:])
            assert response.json() == want[key], key
        with httpx.Client(base_url=server.url, timeout=30) as client:
            # A generator that calls the LLM three times as gunicorn iterates it.
            with client.stream("POST", "/agent", json={"user": "kim", "message": "think", "max_tokens": 4}) as response:
                events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
            assert len(events) == 3
            assert client.get("/me/usage").json() == ME_USAGE
            errors = [client.post("/ask", json={"user": "lee", "kind": kind, "message": "x", "max_tokens": 2,
                                                "status": status}) for kind, status in (("openai", "429"),
                                                                                         ("anthropic", "500"))]
            assert [e.status_code for e in errors] == [502, 502]
        total = len(want) + 3 + 2
        samples = scrape_until_counted(server.url, total)
    assert metric_sum(samples, "llm_requests_total") == total
    for user in USERS:
        on = {"user_id": user, "api_id": "/ask"}
        assert metric_sum(samples, "llm_requests_total", **on) == len(kinds)
        assert metric_sum(samples, "llm_requests_total", **on, usage="reported", outcome="completed") == len(REPORTED_KINDS)
        prompt = sum(want[user, k]["read"][0] for k in REPORTED_KINDS)
        completion = sum(want[user, k]["read"][1] for k in REPORTED_KINDS)
        est = {t: metric_sum(samples, "llm_estimated_tokens_total", **on, type=t) for t in ("prompt", "completion")}
        assert est["completion"] > 0
        assert metric_sum(samples, "llm_prompt_tokens_total", **on) - est["prompt"] == prompt
        assert metric_sum(samples, "llm_completion_tokens_total", **on) - est["completion"] == completion
        assert metric_sum(samples, "llm_requests_total", **on, provider="anthropic", operation_id="messages") == 2
    kim = {"user_id": "kim", "api_id": "/agent"}
    assert metric_sum(samples, "llm_requests_total", **kim, usage="reported") == 2
    assert metric_sum(samples, "llm_requests_total", **kim, usage="estimated") == 1
    assert metric_sum(samples, "llm_prompt_tokens_total", **kim, provider="openai") > 0
    lee = {"user_id": "lee", "api_id": "/ask"}
    assert metric_sum(samples, "llm_requests_total", **lee, status="429", usage="none") == 1
    assert metric_sum(samples, "llm_requests_total", **lee, status="500", usage="none") == 1
    assert metric_sum(samples, "llm_tokens_total", **lee) == 0
    assert metric_sum(samples, "llm_tokens_total", api_id="/me") == 0


def test_prometheus_exporter_labels_outgoing_calls_like_incoming_ones(upstream: tuple[str, Upstream]) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    app = create_fastapi_app(upstream[0], exporters=[PrometheusExporter(registry)], dimensions=["User ID", "API ID"])
    instrument_httpx()
    with uvicorn_server(app) as url:
        assert ask(url, "mia", "anthropic", 3).status_code == 200
    text = generate_latest(registry).decode()
    assert re.search(r'llm_tokens_total\{api_id="/ask",user_id="mia"\} \d+', text), text


# -- requests ------------------------------------------------------------------------------------------


def test_requests_inside_a_request_counts_for_the_incoming_user(upstream: tuple[str, Upstream]) -> None:
    url = upstream[0]
    with requests.Session() as session:
        want = {kind: call_requests(session, url, kind, "Hello from nina", 6) for kind in ("requests", "requests_stream")}
    exporter = InMemoryExporter()
    app = create_fastapi_app(url, exporters=[exporter], dimensions=DIMENSIONS)
    instrument_requests()
    with uvicorn_server(app) as base:
        for kind in want:
            response = ask(base, "nina", kind, 6, path="/ask-requests")
            assert response.json() == want[kind]  # what requests read, as without us
        assert ask(base, "nina", "requests", 6, path="/ask-requests", status="429").json() == {"upstream_status": 429}
        uninstrument_requests()
        assert ask(base, "nina", "requests", 6, path="/ask-requests").status_code == 200  # not counted
    calls = calls_of(exporter, "nina")
    assert [(c.status, c.usage_source, c.streamed) for c in calls] == [
        (200, "reported", False), (200, "reported", True), (429, "none", False)]
    assert [c.usage.total_tokens for c in calls[:2]] == [sum(want["requests"]["read"]), sum(want["requests_stream"]["read"])]
    assert all(exporter.dimensions(c)["API ID"] == "/ask-requests" and c.origin == "outgoing" for c in calls)
    assert len(exporter.calls) == 3


def test_requests_adapter_for_one_session_counts_once(upstream: tuple[str, Upstream]) -> None:
    url, sim = upstream
    mine, instrumented = InMemoryExporter(), InMemoryExporter()
    instrument_requests(exporters=[instrumented])
    with requests.Session() as session:
        session.mount("http://", LLMMetricsAdapter(exporters=[mine], dimensions=["Model", "Operation ID"]))
        json_read = call_requests(session, url, "requests", "hi", 3)
        stream_read = call_requests(session, url, "requests_stream", "hi", 4)
        # A stream without usage, read line by line and closed early at [DONE]: estimated, completed.
        request = {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True}
        with session.post(f"{url}/v1/chat/completions", json=request, stream=True, timeout=20) as response:
            for line in response.iter_lines():
                if line == b"data: [DONE]":
                    break
        # Gated: the stream reaches the caller before the upstream's pause ends.
        with session.post(f"{url}/v1/chat/completions", json=request, stream=True, timeout=20,
                          headers={"x-gate": "1"}) as response:
            for _ in response.iter_content(chunk_size=None):
                sim.gate.set()
        assert session.get(f"{url}/health", timeout=20).status_code == 405  # not an LLM path: not counted
    assert sim.gate_results == [True]
    assert instrumented.calls == []
    assert [(c.usage_source, c.outcome) for c in mine.calls] == [
        ("reported", "completed"), ("reported", "completed"), ("estimated", "completed"), ("estimated", "completed")]
    assert mine.calls[0].usage.prompt_tokens == json_read["read"][0]
    assert mine.calls[1].usage.completion_tokens == stream_read["read"][1]


# -- the request context -----------------------------------------------------------------------------------


def test_wsgi_request_is_current_while_its_body_is_iterated_and_not_after() -> None:
    from werkzeug.test import EnvironBuilder

    from llm_metrics_middleware import LLMMetricsWSGIMiddleware
    from llm_metrics_middleware._metering import context

    seen: list[Any] = []

    def app(environ: Any, start_response: Any) -> Any:
        seen.append(context.current())
        start_response("200 OK", [("content-type", "text/plain")])

        def body() -> Iterator[bytes]:
            seen.append(context.current())
            yield b"a"
            seen.append(context.current())
            yield b"b"

        return body()

    wrapped = LLMMetricsWSGIMiddleware(app, exporters=[InMemoryExporter()])
    iterable = wrapped(EnvironBuilder(path="/x").get_environ(), lambda status, headers, exc_info=None: None)
    assert context.current() is None  # the server iterates outside the app's context
    assert [chunk for chunk in iterable if context.current() is None] == [b"a", b"b"]
    iterable.close()  # type: ignore[attr-defined]
    assert context.current() is None
    assert len(seen) == 3 and seen[0] is not None and all(s is seen[0] for s in seen)


def test_connection_error_is_a_request_with_outcome_error() -> None:
    from tests.servers import free_port

    outside = InMemoryExporter()
    instrument_httpx(exporters=[outside])
    with httpx2.Client(base_url=f"http://127.0.0.1:{free_port()}", timeout=5) as client, \
            pytest.raises(httpx2.ConnectError):
        client.post("/v1/chat/completions", json={"model": OPENAI_MODEL, "messages": []})
    [call] = outside.calls
    assert (call.outcome, call.status, call.usage, call.request_model) == ("error", 0, None, OPENAI_MODEL)


def test_token_limits_charge_outgoing_calls_to_the_incoming_key(upstream: tuple[str, Upstream]) -> None:
    import time

    from llm_metrics_middleware import TokenLimit

    exporter = InMemoryExporter()
    app = create_fastapi_app(upstream[0], exporters=[exporter], dimensions=DIMENSIONS,
                             limits=[TokenLimit("per-user", tokens=30, per="minute", key="User ID")])
    instrument_httpx()
    with uvicorn_server(app) as url:
        first, second = (ask(url, "olga", "openai", 10) for _ in range(2))  # 16 tokens each
        assert (first.status_code, second.status_code) == (200, 200)
        deadline = time.monotonic() + 10
        while True:  # the charge lands a moment after the response; polling costs no tokens
            probe = httpx.get(url + "/me/usage", headers={"x-user-id": "olga"}, timeout=10)
            if probe.status_code == 429 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert probe.status_code == 429 and int(probe.headers["retry-after"]) >= 1
        assert httpx.get(url + "/me/usage", headers={"x-user-id": "other"}, timeout=10).status_code == 200
    assert sum(c.usage.total_tokens for c in calls_of(exporter, "olga")) == 32


def test_an_in_process_app_behind_asgi_transport_still_counts_its_own_calls(upstream: tuple[str, Upstream]) -> None:
    """The app behind ASGITransport runs in the sender's task: its own calls are other
    requests, counted by its middleware, while the sender's call is counted once, by the sender."""
    inner, outer = InMemoryExporter(), InMemoryExporter()
    app = create_fastapi_app(upstream[0], exporters=[inner], dimensions=DIMENSIONS)
    instrument_httpx(exporters=[outer], dimensions=["Model"])

    async def run() -> dict[str, Any]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://inner") as client:
            response = await client.post("/v1/chat/completions", json={
                "model": OPENAI_MODEL, "user": "pat", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]})
            return response.json()  # type: ignore[no-any-return]

    body = asyncio.run(run())
    [sent] = outer.calls
    [relayed] = inner.calls
    assert sent.usage.total_tokens == relayed.usage.total_tokens == body["usage"]["total_tokens"]
    assert inner.dimensions(relayed)["User ID"] == "pat" and relayed.origin == "outgoing"


@pytest.mark.parametrize("stream", [False, True])
def test_gzipped_responses_are_read_decompressed_and_reach_the_sdk_as_without_us(
    upstream: tuple[str, Upstream], stream: bool,
) -> None:
    url = upstream[0]
    outside = InMemoryExporter()
    extra: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
    request = {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "zip it"}], "max_tokens": 7, **extra}

    def read() -> Any:
        with openai.OpenAI(base_url=f"{url}/v1", api_key="sk", max_retries=0, timeout=20) as client:
            if not stream:
                completion = client.chat.completions.create(**request, extra_headers={"x-gzip": "1"})
                return completion.choices[0].message.content, completion.usage.total_tokens
            with client.chat.completions.create(**request, extra_headers={"x-gzip": "1"}) as events:
                chunks = list(events)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[-1].usage.total_tokens

    want = read()
    instrument_httpx(exporters=[outside])
    assert read() == want
    [call] = outside.calls
    assert call.usage is not None and call.usage.total_tokens == want[1] and call.usage_source == "reported"


def test_a_caller_that_stops_reading_early_is_a_disconnected_call(upstream: tuple[str, Upstream]) -> None:
    outside = InMemoryExporter()
    instrument_httpx(exporters=[outside])
    request = {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "long"}], "max_tokens": 40, "stream": True}
    url, sim = upstream
    with httpx2.Client(base_url=url, timeout=20) as client:
        # Gated: the upstream pauses after the first word, so [DONE] cannot have arrived yet.
        with client.stream("POST", "/v1/chat/completions", json=request, headers={"x-gate": "1"}) as response:
            for line in response.iter_lines():
                if '"content":"tokens ' in line:
                    break  # stops after the first word, long before [DONE]
        sim.gate.set()  # closed; let the upstream finish
        with client.stream("POST", "/v1/chat/completions", json=request) as response:
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    break  # what the SDKs do: the stream's last word was read
    assert [c.outcome for c in outside.calls] == ["disconnected", "completed"]
    assert outside.calls[0].usage_source == "estimated" and outside.calls[0].usage.completion_tokens < 40


@pytest.mark.parametrize(("hold", "until", "outcome"), [
    ("x-gate", '"content":"tokens ', "disconnected"),  # cancelled long before [DONE]
    ("x-hold-end", "data: [DONE]", "completed"),  # cancelled after [DONE], before the body's end
])
def test_a_reading_task_that_is_cancelled_has_stopped_reading_it_did_not_fail(
    upstream: tuple[str, Upstream], hold: str, until: str, outcome: str
) -> None:
    """Starlette cancels a StreamingResponse's stream when its client leaves: a relay
    reading its upstream with httpx is cancelled mid-read. That is the caller stopping (a
    disconnect, completed once the end mark came), not a failed read (an error)."""
    outside = InMemoryExporter()
    instrument_httpx(exporters=[outside])
    request = {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "long"}], "max_tokens": 40, "stream": True}
    url, sim = upstream

    async def main() -> None:
        seen = asyncio.Event()
        async with httpx2.AsyncClient(base_url=url, timeout=20) as client:

            async def read() -> None:
                async with client.stream("POST", "/v1/chat/completions", json=request, headers={hold: "1"}) as response:
                    async for line in response.aiter_lines():
                        if until in line:
                            seen.set()

            task = asyncio.create_task(read())
            await asyncio.wait_for(seen.wait(), 10)
            await asyncio.sleep(0.05)  # the reader is waiting for the upstream's next bytes
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            sim.gate.set()  # let the upstream finish

    asyncio.run(main())
    [call] = outside.calls
    assert call.outcome == outcome, call
