"""Outgoing LLM calls through ``aiohttp.ClientSession`` are metered as they are read, over real
HTTP on 127.0.0.1: the upstream is the simulated provider (tests/outgoing_apps.Upstream, on
SimulatedLLM) under uvicorn.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import httpx
import pytest

from llm_metrics_middleware import LLMMetricsMiddleware, instrument_aiohttp, uninstrument_aiohttp
from llm_metrics_middleware.testing import InMemoryExporter
from tests.outgoing_apps import OPENAI_MODEL, Upstream
from tests.servers import uvicorn_server

TIMEOUT = aiohttp.ClientTimeout(total=20)
Reader = Callable[[aiohttp.ClientResponse], Awaitable[bytes]]


@pytest.fixture
def upstream() -> Iterator[str]:
    with uvicorn_server(Upstream()) as url:
        yield url


@pytest.fixture(autouse=True)
def clean_instrumentation() -> Iterator[None]:
    uninstrument_aiohttp()
    yield
    uninstrument_aiohttp()


def chat(max_tokens: int, stream: bool = False, usage: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "Hello there"}],
                            "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    if usage:
        body["stream_options"] = {"include_usage": True}
    return body


async def by_iter_any(response: aiohttp.ClientResponse) -> bytes:
    return b"".join([chunk async for chunk in response.content.iter_any()])


async def by_readline(response: aiohttp.ClientResponse) -> bytes:
    lines = []
    while line := await response.content.readline():
        lines.append(line)
    return b"".join(lines)


async def by_json(response: aiohttp.ClientResponse) -> bytes:
    return json.dumps(await response.json()).encode()


async def by_iter_chunked(response: aiohttp.ClientResponse) -> bytes:
    return b"".join([chunk async for chunk in response.content.iter_chunked(7)])


def post(url: str, body: dict[str, Any], read: Reader, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    async def run() -> tuple[int, bytes]:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session, \
                session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as response:
            return response.status, await read(response)
    return asyncio.run(asyncio.wait_for(run(), 30))


def same_ids(body: bytes) -> bytes:
    return re.sub(rb"(chatcmpl|msg)-sim\d+", b"id", body)


def reported_usage(body: bytes) -> dict[str, int]:
    """The usage the upstream wrote into the body (the JSON's, or the last SSE object's)."""
    if body.startswith(b"{"):
        return dict(json.loads(body)["usage"])
    objects = [json.loads(line[6:]) for line in body.splitlines() if line.startswith(b"data: {")]
    return dict([o for o in objects if o.get("usage")][-1]["usage"])


CASES = [
    ("json", chat(5), by_json, "reported", False),
    ("json_readline", chat(4), by_readline, "reported", False),
    ("stream_usage_iter_any", chat(6, stream=True, usage=True), by_iter_any, "reported", True),
    ("stream_usage_readline", chat(3, stream=True, usage=True), by_readline, "reported", True),
    ("stream_usage_chunked", chat(3, stream=True, usage=True), by_iter_chunked, "reported", True),
    ("stream_no_usage", chat(4, stream=True), by_iter_any, "estimated", True),
]


@pytest.mark.parametrize(("body", "read", "source", "streamed"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_calls_outside_requests_count_exact_usage_and_read_the_same_bytes(
    upstream: str, body: dict[str, Any], read: Reader, source: str, streamed: bool
) -> None:
    plain_status, plain = post(upstream, body, read)
    exporter = InMemoryExporter()
    instrument_aiohttp(exporters=[exporter])
    status, metered = post(upstream, body, read)
    # The same bytes but for the id the upstream numbers its responses with.
    assert (status, same_ids(metered)) == (plain_status, same_ids(plain)) and status == 200
    assert len(exporter.calls) == 1
    call = exporter.calls[0]
    assert (call.status, call.outcome, call.usage_source, call.streamed, call.origin) == (
        200, "completed", source, streamed, "outgoing")
    assert call.usage is not None
    if source == "reported":
        usage = reported_usage(plain)
        assert (call.usage.prompt_tokens, call.usage.completion_tokens, call.usage.total_tokens) == (
            usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"])
    else:
        assert call.usage.total_tokens > 0


def test_early_release_after_done_is_completed_and_before_is_disconnected(upstream: str) -> None:
    exporter = InMemoryExporter()
    instrument_aiohttp(exporters=[exporter])

    async def run() -> None:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            async with session.post(f"{upstream}/v1/chat/completions", json=chat(8, stream=True)) as response:
                while line := await response.content.readline():
                    if line.strip() == b"data: [DONE]":
                        break
            async with session.post(f"{upstream}/v1/chat/completions", json=chat(8, stream=True)) as response:
                await response.content.readline()
    asyncio.run(asyncio.wait_for(run(), 30))
    assert [c.outcome for c in exporter.calls] == ["completed", "disconnected"]


def test_upstream_500_is_a_request_with_that_status_and_no_tokens(upstream: str) -> None:
    exporter = InMemoryExporter()
    instrument_aiohttp(exporters=[exporter])
    status, body = post(upstream, chat(5), by_json, headers={"x-sim-status": "500"})
    assert status == 500 and b"simulated 500" in body
    assert [(c.status, c.usage) for c in exporter.calls] == [(500, None)]


def test_no_exporters_outside_requests_counts_nothing_and_uninstrument_stops(upstream: str) -> None:
    exporter = InMemoryExporter()
    instrument_aiohttp()
    assert post(upstream, chat(5), by_json)[0] == 200
    instrument_aiohttp(exporters=[exporter])
    uninstrument_aiohttp()
    assert post(upstream, chat(5), by_json)[0] == 200
    assert exporter.calls == []


def caller_app(upstream: str) -> Any:
    """An ASGI app whose endpoint calls the upstream with aiohttp and answers with its own JSON."""
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session, \
                session.post(f"{upstream}/v1/chat/completions", json=chat(6, stream=True, usage=True)) as response:
            read = await by_iter_any(response)
        answer = json.dumps({"usage": reported_usage(read)}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer})
    return app


def test_a_call_inside_a_request_counts_for_that_request_user(upstream: str) -> None:
    exporter = InMemoryExporter()
    app = LLMMetricsMiddleware(caller_app(upstream), exporters=[exporter], dimensions=["User ID", "API ID", "Model"])
    instrument_aiohttp()
    with uvicorn_server(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        answers = [client.post("/ask", headers={"x-user-id": user}, json={}).json() for user in ("alice", "bob")]
        uninstrument_aiohttp()
        assert client.post("/ask", headers={"x-user-id": "carol"}, json={}).status_code == 200
    assert [exporter.dimensions(c)["User ID"] for c in exporter.calls] == ["alice", "bob"]
    for call, answer in zip(exporter.calls, answers, strict=True):
        assert call.origin == "outgoing" and call.usage is not None and call.usage_source == "reported"
        assert call.usage.total_tokens == answer["usage"]["total_tokens"]
        assert exporter.dimensions(call)["API ID"] == "/ask"
