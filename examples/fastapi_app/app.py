"""A FastAPI app that proxies an LLM API, and calls one itself, with token metrics.

Two kinds of LLM traffic pass through :class:`LLMMetricsMiddleware` here:

- ``POST /v1/{path}``: a streaming proxy. Point the OpenAI SDK at ``http://host/v1`` or the
  Anthropic SDK at ``http://host``; request bodies and credentials go upstream, and the
  upstream's status, content type and body chunks come back as they arrive. The
  middleware reads the usage out of the response as it passes (streamed or not).
- ``POST /chat``: the app's own endpoint. It calls the LLM (a non-streamed chat
  completion) and answers ``{"answer": ..., "model": ...}``, its own JSON without usage.
- ``POST /agent``: two LLM calls per request (a plan, then the answer, streamed), relayed
  to the client as the app's own server-sent events.

``instrument_httpx()`` meters the LLM calls the app makes through httpx (or through the
official SDKs): each one is counted under the incoming request's dimensions (its user,
``API ID="/chat"``...) with the model and operation of the call itself. The proxy's
upstream call is such a call too, so it is counted once, there, not again as it is relayed.

Token counters are served at ``GET /metrics`` (Prometheus), split by API, operation, user
and model. Run it::

    uvicorn examples.fastapi_app.app:app

Environment:

- ``LLM_UPSTREAM_URL``: the provider, e.g. ``https://api.openai.com`` (without ``/v1``).
  Unset: the package's simulated LLM answers in-process, so the example runs offline.
- ``LLM_UPSTREAM_API_KEY``: the provider key to use instead of the client's own.
- ``APPLICATIONINSIGHTS_CONNECTION_STRING``: also export to Azure Application Insights.
- ``PROMETHEUS_MULTIPROC_DIR``: set it (before Python starts) when running several
  worker processes, so that ``/metrics`` adds up all of them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from starlette.background import BackgroundTask

from llm_metrics_middleware import LLMMetricsMiddleware, PrometheusExporter, instrument_httpx
from llm_metrics_middleware.testing import SimulatedLLM

logger = logging.getLogger(__name__)

#: Token counters in prometheus_client's default registry; the middleware serves them at
#: /metrics. Build exporters once and pass them in.
exporter = PrometheusExporter()

DIMENSIONS = ["API ID", "Operation ID", "User ID", "Model"]
DEFAULT_MODEL = os.environ.get("LLM_MODEL", "gpt-4o-mini")
#: Request headers passed upstream: the body's type, the providers' credentials and
#: Anthropic's API version. Nothing else of the client's request leaves this app.
FORWARDED_HEADERS = ("content-type", "authorization", "x-api-key", "api-key", "anthropic-version")
_CREDENTIALS = ("authorization", "x-api-key", "api-key")
#: Base URL under which the in-process simulator is addressed (never resolved).
SIMULATOR_URL = "http://llm-simulator"
# LLM answers take minutes; the read timeout applies between two chunks of a stream.
TIMEOUT = httpx.Timeout(600.0, connect=10.0)


class ChatRequest(BaseModel):
    """``/chat`` and ``/agent`` take ``{"message": str, "user": str?, "model": str?, "max_tokens": int?}``."""

    message: str
    user: str | None = None
    model: str = DEFAULT_MODEL
    max_tokens: int | None = None


def upstream_headers(incoming: Mapping[str, str]) -> dict[str, str]:
    """The headers of an upstream request, from the client's request headers.

    With ``LLM_UPSTREAM_API_KEY`` set, the server's key replaces the client's credential,
    in the header the client used (``x-api-key`` for Anthropic, ``api-key`` for Azure
    OpenAI, else a bearer token).
    """
    headers = {name: incoming[name] for name in FORWARDED_HEADERS if name in incoming}
    key = os.environ.get("LLM_UPSTREAM_API_KEY")
    if key:
        style = next((name for name in ("x-api-key", "api-key") if name in headers), "authorization")
        for name in _CREDENTIALS:
            headers.pop(name, None)
        headers[style] = f"Bearer {key}" if style == "authorization" else key
    return headers


def upstream_client(upstream_app: Any = None) -> httpx.AsyncClient:
    """An HTTP client for the upstream: ``upstream_app`` (an ASGI app) if given, else
    ``LLM_UPSTREAM_URL``, else the simulated LLM, in-process."""
    url = os.environ.get("LLM_UPSTREAM_URL")
    if upstream_app is None and url:
        return httpx.AsyncClient(base_url=url.rstrip("/").removesuffix("/v1"), timeout=TIMEOUT)
    if upstream_app is None:
        upstream_app = SimulatedLLM().asgi
    # Note: httpx's ASGITransport collects the whole response before handing it over, so
    # the simulator's streams arrive at once (still chunk by chunk). A real upstream streams.
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=upstream_app), base_url=SIMULATOR_URL, timeout=TIMEOUT)


def azure_exporters() -> list[Any]:
    """``[AzureMonitorExporter()]`` when Application Insights is configured, else ``[]``."""
    if not os.environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING"):
        return []
    try:
        from llm_metrics_middleware import AzureMonitorExporter
    except ImportError:
        logger.warning(
            "APPLICATIONINSIGHTS_CONNECTION_STRING is set but the Azure Monitor exporter cannot be "
            "imported; install llm-metrics-middleware[azure]. Exporting to Prometheus only.",
            exc_info=True,
        )
        return []
    return [AzureMonitorExporter()]


async def _relay(upstream: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.aiter_bytes():
            yield chunk
    finally:
        await upstream.aclose()


def _sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def _bad_gateway(message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "upstream_error"}}, status_code=502)


def create_app(upstream_app: Any = None, registry: CollectorRegistry | None = None) -> FastAPI:
    """The app. ``upstream_app``: an ASGI app to use as the LLM (tests); ``registry``: a
    Prometheus registry of its own (default: the module's ``exporter``, global registry)."""
    prometheus = exporter if registry is None else PrometheusExporter(registry)
    exporters = [prometheus, *azure_exporters()]
    client = upstream_client(upstream_app)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await client.aclose()
        for each in exporters:
            each.force_flush()
            each.shutdown()

    app = FastAPI(title="LLM proxy with token metrics", lifespan=lifespan)

    @app.post("/v1/{path:path}")
    async def proxy(path: str, request: Request) -> Response:
        url = f"/v1/{path}" + (f"?{request.url.query}" if request.url.query else "")
        outgoing = client.build_request("POST", url, content=await request.body(), headers=upstream_headers(request.headers))
        try:
            upstream = await client.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            logger.warning("upstream request failed: %r", exc)
            return _bad_gateway(f"upstream unreachable: {exc}")
        # Passed as a header, not media_type=, so Starlette adds no charset to it.
        headers = {"content-type": upstream.headers["content-type"]} if "content-type" in upstream.headers else {}
        return StreamingResponse(
            _relay(upstream),
            status_code=upstream.status_code,
            headers=headers,
            background=BackgroundTask(upstream.aclose),  # idempotent; for a relay never started
        )

    def payload_of(body: ChatRequest, content: str, **extra: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": body.model, "messages": [{"role": "user", "content": content}], **extra}
        if body.user:
            payload["user"] = body.user
        if body.max_tokens:
            payload["max_tokens"] = body.max_tokens
        return payload

    @app.post("/chat")
    async def chat(body: ChatRequest, request: Request) -> Response:
        try:
            upstream = await client.post(
                "/v1/chat/completions", json=payload_of(body, body.message), headers=upstream_headers(request.headers)
            )
        except httpx.HTTPError as exc:
            logger.warning("upstream request failed: %r", exc)
            return _bad_gateway(f"upstream unreachable: {exc}")
        if upstream.status_code != 200:
            return _bad_gateway(f"upstream answered {upstream.status_code}: {upstream.text[:500]}")
        completion = upstream.json()
        # The app's own answer: no usage in it. The call above was counted as it was made.
        return JSONResponse({"answer": completion["choices"][0]["message"]["content"], "model": completion.get("model")})

    @app.post("/agent")
    async def agent(body: ChatRequest, request: Request) -> Response:
        headers = upstream_headers(request.headers)

        async def events() -> AsyncIterator[bytes]:
            # Both calls run while the response streams; each is counted for this request.
            plan = await client.post(
                "/v1/chat/completions", json=payload_of(body, f"Plan an answer to: {body.message}"), headers=headers
            )
            if plan.status_code != 200:
                yield _sse({"error": f"upstream answered {plan.status_code}"})
                return
            yield _sse({"plan": plan.json()["choices"][0]["message"]["content"]})
            answer = client.build_request(
                "POST", "/v1/chat/completions", json=payload_of(body, body.message, stream=True), headers=headers
            )
            upstream = await client.send(answer, stream=True)
            try:
                async for line in upstream.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        chunk = json.loads(line[6:])
                        for choice in chunk.get("choices") or ():
                            if choice["delta"].get("content"):
                                yield _sse({"delta": choice["delta"]["content"]})
            finally:
                await upstream.aclose()
            yield _sse({"end": True})

        return StreamingResponse(events(), media_type="text/event-stream")

    app.add_middleware(
        LLMMetricsMiddleware,
        exporters=exporters,
        dimensions=DIMENSIONS,
        metrics_path="/metrics",
    )
    # Meter the LLM calls this process makes through httpx / httpx2 (the official SDKs
    # included): inside a request they count for it, with the middleware's exporters.
    instrument_httpx()
    return app


app = create_app()
