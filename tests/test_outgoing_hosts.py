"""OpenAI's paths served by another provider, told apart by the host an outgoing call goes to.

Azure OpenAI's v1 API (``{resource}.openai.azure.com/openai/v1/...``), Bedrock's
OpenAI-compatible endpoint (``bedrock-runtime.{region}.amazonaws.com/openai/v1/...``) and
Groq (``api.groq.com/openai/v1/...``) share their paths. The calls go over real HTTP to an
HTTP proxy on 127.0.0.1 (the recorded upstream of tests/outgoing_apps under uvicorn), so
each client sends the provider's host name exactly as it would to the provider: httpx puts
it in its request headers, requests and aiohttp only on the wire, and the drivers take it
from the URL.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llm_metrics_middleware.testing import InMemoryExporter
from tests.clients import CLIENT_IDS, CLIENTS, Client
from tests.outgoing_apps import RECORDED, Upstream
from tests.servers import uvicorn_server

DIMS = ["Provider", "Operation ID", "Model"]
# (host, path, recorded case, provider): the case's body is what the upstream answers.
CALLS = [
    ("pydantic-ai-realtime-dev.openai.azure.com", "/openai/v1/responses", "azure-v1-responses-json-host", "azure.ai.openai"),
    # The recorded OpenAI chat body stands in for the answers of the OpenAI-compatible
    # endpoints; what is tested is whose call the host makes it.
    ("bedrock-runtime.us-west-2.amazonaws.com", "/openai/v1/chat/completions", "openai-chat-json", "aws.bedrock"),
    ("api.groq.com", "/openai/v1/chat/completions", "openai-chat-json", "openai"),
]
IDS = [f"{host}{path}" for host, path, _, _ in CALLS]


@pytest.fixture(scope="module")
def proxy() -> Iterator[str]:
    with uvicorn_server(Upstream()) as url:
        yield url


@pytest.fixture(autouse=True)
def clean_instrumentation() -> Iterator[None]:
    yield
    for client in CLIENTS:
        client.uninstrument()


def _headers(case_id: str) -> dict[str, str]:
    return {"content-type": "application/json", "x-case": case_id}


def _check(exporter: InMemoryExporter, case_id: str, provider: str) -> None:
    case = RECORDED[case_id]
    [call] = exporter.calls
    assert exporter.dimensions(call)["Provider"] == provider
    assert call.operation == case.operation
    assert call.usage is not None and (call.usage.prompt_tokens, call.usage.completion_tokens) == (
        case.prompt_tokens, case.completion_tokens)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("host,path,case_id,provider", CALLS, ids=IDS)
@pytest.mark.parametrize("client", CLIENTS, ids=CLIENT_IDS)
def test_client(
    proxy: str,
    client: Client,
    host: str,
    path: str,
    case_id: str,
    provider: str,
) -> None:
    exporter = InMemoryExporter()
    client.instrument(exporters=[exporter], dimensions=DIMS)
    body = client.send(f"http://{host}{path}", RECORDED[case_id].request_body, _headers(case_id), proxy)
    assert body == RECORDED[case_id].body
    _check(exporter, case_id, provider)
