"""Usage reported in response headers (Bedrock's X-Amzn-Bedrock-*-Token-Count): authoritative
when present, through both middlewares and every outgoing client."""

from __future__ import annotations

from typing import Any

import pytest

from llm_metrics_middleware import (
    LLMMetricsMiddleware,
    LLMMetricsWSGIMiddleware,
)
from llm_metrics_middleware.testing import InMemoryExporter

from .clients import CLIENT_IDS, CLIENTS, Client
from .drive import chunk_app, run_asgi, run_wsgi, wsgi_chunk_app
from .servers import uvicorn_server

BODY = b'{"id":"msg_bdrk_1","type":"message","role":"assistant","model":"claude-2.0","content":[],"usage":{"input_tokens":14,"output_tokens":10}}'
PATH = "/model/anthropic.claude-v2/invoke"


def _run(headers: list[tuple[str, str]], body: bytes = BODY, wsgi: bool = False, status: int = 200) -> InMemoryExporter:
    exporter = InMemoryExporter()
    response_headers = [("Content-Type", "application/json"), *headers]
    if wsgi:
        app = LLMMetricsWSGIMiddleware(wsgi_chunk_app(f"{status} X", response_headers, [body]), exporters=[exporter])
        run_wsgi(app, path=PATH, body=b"{}")
    else:
        asgi = LLMMetricsMiddleware(chunk_app(status, response_headers, [body]), exporters=[exporter])
        run_asgi(asgi, path=PATH, body=b"{}")
    return exporter


@pytest.mark.parametrize("wsgi", [False, True], ids=["asgi", "wsgi"])
def test_headers_win_over_the_body(wsgi: bool) -> None:
    headers = [("X-Amzn-Bedrock-Input-Token-Count", "20"), ("x-amzn-bedrock-output-token-count", "30"),
               ("X-Amzn-Bedrock-Cache-Read-Input-Token-Count", "5")]
    [call] = _run(headers, wsgi=wsgi).calls
    assert call.usage is not None and call.usage_source == "reported"
    assert (call.usage.prompt_tokens, call.usage.completion_tokens, call.usage.total_tokens, call.usage.cached_tokens) == (25, 30, 55, 5)


@pytest.mark.parametrize("wsgi", [False, True], ids=["asgi", "wsgi"])
def test_garbage_headers_leave_the_body_to_speak(wsgi: bool) -> None:
    headers = [("X-Amzn-Bedrock-Input-Token-Count", "lots"), ("X-Amzn-Bedrock-Output-Token-Count", "30")]
    [call] = _run(headers, wsgi=wsgi).calls
    assert call.usage is not None and (call.usage.prompt_tokens, call.usage.completion_tokens) == (14, 10)


@pytest.mark.parametrize("wsgi", [False, True], ids=["asgi", "wsgi"])
def test_headers_alone_count_a_body_we_do_not_read(wsgi: bool) -> None:
    headers = [("Content-Encoding", "compress"), ("X-Amzn-Bedrock-Input-Token-Count", "6"), ("X-Amzn-Bedrock-Output-Token-Count", "10")]
    [call] = _run(headers, body=b"\x1f\x9d opaque", wsgi=wsgi).calls
    assert call.usage is not None and call.usage.total_tokens == 16


def test_an_error_status_counts_no_tokens_whatever_the_headers() -> None:
    headers = [("X-Amzn-Bedrock-Input-Token-Count", "6"), ("X-Amzn-Bedrock-Output-Token-Count", "10")]
    [call] = _run(headers, body=b'{"message":"throttled"}', status=429).calls
    assert call.usage is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("client", CLIENTS, ids=CLIENT_IDS)
def test_an_outgoing_call_reads_the_headers_too(client: Client) -> None:
    # Over real HTTP (uvicorn on 127.0.0.1): the headers, in any case, win over the body,
    # whichever client library read them.
    headers = [("Content-Type", "application/json"), ("X-Amzn-Bedrock-Input-Token-Count", "20"),
               ("x-amzn-bedrock-output-token-count", "30"), ("X-Amzn-Bedrock-Cache-Read-Input-Token-Count", "5")]
    exporter = InMemoryExporter()
    answer = chunk_app(200, headers, [BODY[:40], BODY[40:]])

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":  # no lifespan
            await answer(scope, receive, send)

    with uvicorn_server(app) as url:
        client.instrument(exporters=[exporter])
        try:
            assert client.send(url + PATH, b"{}", {"content-type": "application/json"}, None) == BODY
        finally:
            client.uninstrument()
    [call] = exporter.calls
    assert call.origin == "outgoing" and call.usage is not None and call.usage_source == "reported"
    assert (call.usage.prompt_tokens, call.usage.completion_tokens, call.usage.total_tokens, call.usage.cached_tokens) == (25, 30, 55, 5)
