"""Every provider's real wire format, through both middlewares and the outgoing transport, at many chunk splits.

Each case runs on both JSON parsing paths (the ``parse_path`` fixture: ``json.loads`` for
small bodies, the incremental scanner for large ones), so a field the scanner is not told
to capture fails here, not only on bodies over 16 KB.
"""

from __future__ import annotations

import dataclasses
import random

import httpx
import pytest

from llm_metrics_middleware import LLMMetricsMiddleware, LLMMetricsTransport, LLMMetricsWSGIMiddleware
from llm_metrics_middleware.testing import InMemoryExporter

from .drive import body_of, chunk_app, run_asgi, run_wsgi, split, wsgi_chunk_app
from .wire.cases import CASES, NON_LLM_CASES, NON_LLM_STATUS, UNBILLED_CASES, UNREPORTED_CASES, WireCase

DIMS = ["Operation ID", "Model", "Provider"]


def _splits(body: bytes, case_id: str) -> list[list[int]]:
    rng = random.Random(case_id)
    plans = [[1], [2], [3], [7], [64], [len(body) or 1]]
    plans += [[rng.randint(1, 40) for _ in range(50)] for _ in range(3)]
    return plans


def _request_headers(case: WireCase) -> list[tuple[str, str]]:
    return [("content-type", "application/json"), *case.request_headers]


def _check(case: WireCase, exporter: InMemoryExporter) -> None:
    [call] = exporter.calls
    usage = call.usage
    assert usage is not None, (case.id, call)
    if case.estimated:
        assert usage.estimated and call.usage_source == "estimated" and usage.completion_tokens > 0
    else:
        assert not usage.estimated and call.usage_source == "reported"
        got = (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.cached_tokens, usage.reasoning_tokens, usage.cache_write_tokens, usage.cache_write_1h_tokens)
        want = (case.prompt_tokens, case.completion_tokens, case.total_tokens, case.cached_tokens, case.reasoning_tokens, case.cache_write_tokens, case.cache_write_1h_tokens)
        assert got == want, case.id
    dims = exporter.dimensions(call)
    assert dims["Provider"] == case.provider, case.id
    assert dims["Operation ID"] == case.operation, case.id
    if case.model is not None:
        assert dims["Model"] == case.model, case.id


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_asgi(case: WireCase, parse_path: str) -> None:
    body = case.body
    for sizes in _splits(body, case.id):
        chunks = split(body, sizes)
        exporter = InMemoryExporter()
        app = LLMMetricsMiddleware(chunk_app(200, [("content-type", case.content_type), *case.response_headers], chunks), exporters=[exporter], dimensions=DIMS)
        sent = run_asgi(app, method=case.method, path=case.path, body=case.request_body, headers=_request_headers(case), query=case.query)
        assert body_of(sent)[:-1] == chunks  # byte for byte, chunk for chunk
        _check(case, exporter)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_wsgi(case: WireCase, parse_path: str) -> None:
    body = case.body
    for sizes in _splits(body, case.id):
        chunks = split(body, sizes)
        exporter = InMemoryExporter()
        app = LLMMetricsWSGIMiddleware(wsgi_chunk_app("200 OK", [("Content-Type", case.content_type), *case.response_headers], chunks), exporters=[exporter], dimensions=DIMS)
        _, _, blocks = run_wsgi(app, method=case.method, path=case.path, body=case.request_body, headers=_request_headers(case), query=case.query)
        assert blocks == chunks
        _check(case, exporter)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_outgoing_transport(case: WireCase, parse_path: str) -> None:
    # The app's own call to the provider, through LLMMetricsTransport, its response arriving
    # in the same pieces: the caller reads every piece unchanged, and the call is counted.
    body = case.body
    for sizes in _splits(body, case.id):
        chunks = split(body, sizes)
        headers = [("content-type", case.content_type), *case.response_headers]

        def answer(request: httpx.Request, chunks: list[bytes] = chunks) -> httpx.Response:
            return httpx.Response(200, headers=headers, content=iter(chunks))

        exporter = InMemoryExporter()
        transport = LLMMetricsTransport(httpx.MockTransport(answer), exporters=[exporter], dimensions=DIMS)
        # The recorded host (Azure's v1 calls are Azure's by it) goes in the URL, as a client sends it.
        target = f"https://{_host(case)}{case.path}" + (f"?{case.query}" if case.query else "")
        sent = [(k, v) for k, v in _request_headers(case) if k != "host"]
        with httpx.Client(transport=transport) as client, client.stream(
            case.method, target, content=case.request_body, headers=sent
        ) as response:
            assert list(response.iter_raw()) == chunks
        _check(case, exporter)


@pytest.mark.parametrize("case", NON_LLM_CASES, ids=[c.id for c in NON_LLM_CASES])
def test_non_llm_bodies_count_no_tokens(case: WireCase) -> None:
    chunks = split(case.body, 5)
    exporter = InMemoryExporter()
    app = LLMMetricsMiddleware(chunk_app(200, [("content-type", case.content_type)], chunks), exporters=[exporter], dimensions=DIMS)
    sent = run_asgi(app, method=case.method, path=case.path, body=case.request_body, query=case.query)
    assert body_of(sent)[:-1] == chunks
    assert all(call.usage is None for call in exporter.calls)


@pytest.mark.parametrize("case,status", NON_LLM_STATUS, ids=[c.id for c, _ in NON_LLM_STATUS])
def test_error_statuses_count_no_tokens(case: WireCase, status: int) -> None:
    chunks = split(case.body, 3)
    exporter = InMemoryExporter()
    app = LLMMetricsMiddleware(chunk_app(status, [("content-type", case.content_type)], chunks), exporters=[exporter], dimensions=DIMS)
    sent = run_asgi(app, method=case.method, path=case.path, body=case.request_body, query=case.query)
    assert body_of(sent)[:-1] == chunks and sent[0]["status"] == status
    [call] = exporter.calls
    assert call.usage is None and call.status == status


@pytest.mark.parametrize("case", UNBILLED_CASES, ids=[c.id for c in UNBILLED_CASES])
def test_unbilled_calls_are_calls_with_no_tokens(case: WireCase) -> None:
    body = case.body
    for sizes in _splits(body, case.id):
        chunks = split(body, sizes)
        for wsgi in (False, True):
            exporter = InMemoryExporter()
            headers = [("content-type", case.content_type), *case.response_headers]
            if wsgi:
                wapp = LLMMetricsWSGIMiddleware(wsgi_chunk_app("200 OK", headers, chunks), exporters=[exporter], dimensions=DIMS)
                assert run_wsgi(wapp, method=case.method, path=case.path, body=case.request_body, headers=_request_headers(case))[2] == chunks
            else:
                app = LLMMetricsMiddleware(chunk_app(200, headers, chunks), exporters=[exporter], dimensions=DIMS)
                sent = run_asgi(app, method=case.method, path=case.path, body=case.request_body, headers=_request_headers(case))
                assert body_of(sent)[:-1] == chunks
            [call] = exporter.calls
            assert call.usage is None and call.usage_source == "none", case.id
            dims = exporter.dimensions(call)
            assert (dims["Provider"], dims["Operation ID"]) == (case.provider, case.operation), case.id


@pytest.mark.parametrize("case", UNREPORTED_CASES, ids=[c.id for c in UNREPORTED_CASES])
def test_calls_that_report_no_usage_count_no_invented_tokens(case: WireCase, parse_path: str) -> None:
    # An embedding whose response carries no usage (Gemini's older embedding models) is
    # counted as a call with no tokens: no estimate is made for embeddings.
    body = case.body
    for sizes in _splits(body, case.id):
        chunks = split(body, sizes)
        for wsgi in (False, True):
            exporter = InMemoryExporter()
            headers = [("content-type", case.content_type), *case.response_headers]
            if wsgi:
                wapp = LLMMetricsWSGIMiddleware(wsgi_chunk_app("200 OK", headers, chunks), exporters=[exporter], dimensions=DIMS)
                assert run_wsgi(wapp, method=case.method, path=case.path, body=case.request_body, headers=_request_headers(case))[2] == chunks
            else:
                app = LLMMetricsMiddleware(chunk_app(200, headers, chunks), exporters=[exporter], dimensions=DIMS)
                sent = run_asgi(app, method=case.method, path=case.path, body=case.request_body, headers=_request_headers(case))
                assert body_of(sent)[:-1] == chunks
            [call] = exporter.calls
            assert call.usage is None and call.usage_source == "none" and call.parse_error is None, case.id
            dims = exporter.dimensions(call)
            assert (dims["Provider"], dims["Operation ID"]) == (case.provider, case.operation), case.id


JSON_ARRAY_STREAMS = [c for c in CASES if c.operation == "streamGenerateContent" and c.content_type.startswith("application/json")]


@pytest.mark.parametrize("case", JSON_ARRAY_STREAMS, ids=[c.id for c in JSON_ARRAY_STREAMS])
def test_a_gemini_json_array_stream_is_a_streamed_call(case: WireCase) -> None:
    # streamGenerateContent without alt=sse streams a JSON array; the request body says
    # nothing of streaming, the path does.
    chunks = split(case.body, 64)
    exporter = InMemoryExporter()
    app = LLMMetricsMiddleware(chunk_app(200, [("content-type", case.content_type)], chunks), exporters=[exporter], dimensions=DIMS)
    run_asgi(app, method=case.method, path=case.path, body=case.request_body, headers=_request_headers(case), query=case.query)
    [call] = exporter.calls
    assert call.streamed and call.time_to_first_chunk_s is not None, case.id


def test_a_stream_without_usage_on_geminis_openai_endpoint_is_estimated() -> None:
    # Gemini's own API always reports usage; its OpenAI compatibility endpoint speaks
    # OpenAI's format, whose streams may not. The recorded OpenAI stream without usage,
    # under that path, is estimated (not left uncounted because the provider is gcp.gemini).
    [case] = [c for c in CASES if c.id == "openai-chat-stream-no-usage"]
    case = dataclasses.replace(case, id=case.id + "-on-gemini", provider="gcp.gemini", path="/v1beta/openai/chat/completions")
    test_asgi(case, "json.loads")
    test_wsgi(case, "json.loads")


def _vertex_anthropic(case: WireCase, operation: str) -> WireCase:
    model = case.model or "claude"
    return dataclasses.replace(
        case, id=case.id + "-on-vertex", provider="gcp.vertex_ai", operation=operation,
        path=f"/v1/projects/my-project/locations/us-east5/publishers/anthropic/models/{model}:{operation}",
    )


# Anthropic on Vertex AI serves the Messages API's bodies behind Vertex's paths; the recorded
# Messages bodies are run under those paths (no Vertex-side recording is in the corpus).
VERTEX_ANTHROPIC = [
    _vertex_anthropic(c, "streamRawPredict" if c.body_file.endswith(".sse") else "rawPredict")
    for c in CASES
    if c.provider == "anthropic"
]


@pytest.mark.parametrize("case", VERTEX_ANTHROPIC, ids=[c.id for c in VERTEX_ANTHROPIC])
def test_anthropic_on_vertex(case: WireCase) -> None:
    test_asgi(case, "json.loads")
    test_wsgi(case, "json.loads")


def _host(case: WireCase) -> str:
    """The host a client would call: the recorded one (Azure's by its host), else any."""
    return dict(case.request_headers).get("host", "llm.example.test")


def _azure_v1(case: WireCase) -> WireCase:
    operation = case.operation.replace(".", "/")
    return dataclasses.replace(
        case, id=case.id + "-on-v1", path=f"/openai/v1/{operation}", query="",
        request_headers=(*case.request_headers, ("api-key", "test-api-key")),
    )


# Azure OpenAI's v1 API serves the deployment API's bodies under OpenAI's paths, the model in
# the request body; the recorded deployment bodies are run under those paths, as an Azure
# client sends them (its api-key). The v1 Responses bodies in the corpus are recordings.
AZURE_V1 = [_azure_v1(c) for c in CASES if c.provider == "azure.ai.openai" and c.path.startswith("/openai/deployments/")]


@pytest.mark.parametrize("case", AZURE_V1, ids=[c.id for c in AZURE_V1])
def test_azure_deployment_bodies_on_v1_paths(case: WireCase) -> None:
    test_asgi(case, "json.loads")
    test_wsgi(case, "json.loads")
    test_outgoing_transport(case, "json.loads")
