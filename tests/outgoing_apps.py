"""Apps that call LLMs themselves, for tests/test_outgoing.py: an upstream, a FastAPI app, a Flask app.

The upstream is the package's simulator behind a real uvicorn, with three additions: a
``x-sim-status`` request header makes it answer that error status; ``x-case`` replays a
recorded provider body from tests/wire (in small chunks); and a *gate* pauses a stream
after its first chunks until the client says it has seen one (or 10 s pass), which proves
the stream reached the client unbuffered without measuring any time.

The apps call the upstream through the official OpenAI and Anthropic SDKs (built on httpx2)
and raw httpx, and answer with their own JSON. ``POST /ask`` takes
``{"kind": ..., "user": ..., "message": ..., "max_tokens": ...}`` and answers what the SDK
read: ``{"text": ..., "read": [prompt, completion] or null}``.

The Flask app is built at import from ``UPSTREAM_URL`` for gunicorn.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import json
import os
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import flask
import httpx
import openai
import requests
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from llm_metrics_middleware import LLMMetricsMiddleware, LLMMetricsWSGIMiddleware, carry_context
from llm_metrics_middleware.testing import SimulatedLLM
from tests.drive import receive_body
from tests.wire.cases import CASES, NON_LLM_STATUS

OPENAI_MODEL = "sim-gpt-1"
ANTHROPIC_MODEL = "sim-claude-1"
RECORDED = {case.id: case for case in [*CASES, *(case for case, _ in NON_LLM_STATUS)]}
RECORDED_STATUS = {case.id: status for case, status in NON_LLM_STATUS}
#: Usage-shaped JSON on a non-LLM path: a user's own usage report.
ME_USAGE = {"user": "alice", "usage": {"prompt_tokens": 100_000, "completion_tokens": 50_000, "total_tokens": 150_000}}


class Upstream:
    """The simulated (or recorded) provider as an ASGI app; ``gate`` for the unbuffered test."""

    def __init__(self) -> None:
        self.simulator = SimulatedLLM()
        self.gate = threading.Event()
        #: One entry per gated stream: True if the client saw a chunk before the pause ended.
        self.gate_results: list[bool] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.simulator.asgi(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        body = await receive_body(receive)
        if "x-sim-status" in headers:
            status = int(headers["x-sim-status"])
            error = {"error": {"message": f"simulated {status}", "type": "rate_limit_error" if status == 429 else "server_error",
                               "param": None, "code": None}}
            await self._send(send, status, "application/json", [json.dumps(error).encode()])
            return
        if "x-case" in headers:
            case = RECORDED[headers["x-case"]]
            data = case.body
            chunks = [data[i : i + 97] for i in range(0, len(data), 97)]
            await self._send(send, RECORDED_STATUS.get(case.id, 200), case.content_type, chunks, case.response_headers)
            return
        response = self.simulator.respond(scope["method"], scope["path"], body)
        content_type = dict(response.headers)["content-type"]
        if "x-gzip" in headers:  # the whole body gzipped, sent in small pieces
            data = gzip.compress(b"".join(response.chunks))
            await send({"type": "http.response.start", "status": response.status,
                        "headers": [(b"content-type", content_type.encode()), (b"content-encoding", b"gzip")]})
            for i in range(0, len(data), 50):
                await send({"type": "http.response.body", "body": data[i : i + 50], "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        gated = "x-gate" in headers
        held_end = "x-hold-end" in headers  # the whole stream, then a pause before its end
        await send({"type": "http.response.start", "status": response.status,
                    "headers": [(b"content-type", content_type.encode())]})
        for chunk in response.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if gated and b'"tokens "' in chunk:  # the first word of every simulated answer
                # Paused until the client has read a chunk; were the stream buffered on the
                # way, the client would see nothing until the end, and the wait would time out.
                self.gate_results.append(await asyncio.to_thread(self.gate.wait, 10))
        if held_end:
            await asyncio.to_thread(self.gate.wait, 10)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send(
        self, send: Any, status: int, content_type: str, chunks: list[bytes], extra: tuple[tuple[str, str], ...] = ()
    ) -> None:
        """``extra``: the recorded response's other headers (Bedrock's token counts)."""
        headers = [(b"content-type", content_type.encode()), *((k.lower().encode(), v.encode()) for k, v in extra)]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


# -- the calls, sync and async -----------------------------------------------------------------


def openai_request(kind: str, message: str, max_tokens: int) -> dict[str, Any]:
    request: dict[str, Any] = {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": message}],
                               "max_tokens": max_tokens}
    if kind == "openai_stream_usage":
        request.update(stream=True, stream_options={"include_usage": True})
    elif kind == "openai_stream":
        request["stream"] = True
    return request


def anthropic_request(message: str, max_tokens: int) -> dict[str, Any]:
    return {"model": ANTHROPIC_MODEL, "max_tokens": max_tokens, "messages": [{"role": "user", "content": message}]}


def call_sync(oai: openai.OpenAI, ant: anthropic.Anthropic, raw: httpx.Client, kind: str, message: str,
              max_tokens: int, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One LLM call of ``kind`` through a sync client: what it read."""
    if kind.startswith("openai"):
        request = openai_request(kind, message, max_tokens)
        if not request.get("stream"):
            completion = oai.chat.completions.create(**request, extra_headers=headers)
            usage = completion.usage
            return {"text": completion.choices[0].message.content, "read": [usage.prompt_tokens, usage.completion_tokens]}
        text, read = "", None
        with oai.chat.completions.create(**request, extra_headers=headers) as stream:
            for chunk in stream:
                text += "".join(c.delta.content or "" for c in chunk.choices)
                if chunk.usage is not None:
                    read = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens]
        return {"text": text, "read": read}
    if kind == "anthropic":
        reply = ant.messages.create(**anthropic_request(message, max_tokens), extra_headers=headers)
        return {"text": reply.content[0].text, "read": [reply.usage.input_tokens, reply.usage.output_tokens]}
    if kind == "anthropic_stream":
        with ant.messages.stream(**anthropic_request(message, max_tokens), extra_headers=headers) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        return {"text": text, "read": [final.usage.input_tokens, final.usage.output_tokens]}
    if kind == "httpx":
        response = raw.post("/v1/chat/completions", json=openai_request("openai", message, max_tokens), headers=headers)
        body = response.json()
        return {"text": body["choices"][0]["message"]["content"],
                "read": [body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]]}
    raise ValueError(kind)


async def call_async(oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic, raw: httpx.AsyncClient, kind: str,
                     message: str, max_tokens: int, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One LLM call of ``kind`` through an async client: what it read."""
    if kind.startswith("openai"):
        request = openai_request(kind, message, max_tokens)
        if not request.get("stream"):
            completion = await oai.chat.completions.create(**request, extra_headers=headers)
            usage = completion.usage
            return {"text": completion.choices[0].message.content, "read": [usage.prompt_tokens, usage.completion_tokens]}
        text, read = "", None
        async with await oai.chat.completions.create(**request, extra_headers=headers) as stream:
            async for chunk in stream:
                text += "".join(c.delta.content or "" for c in chunk.choices)
                if chunk.usage is not None:
                    read = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens]
        return {"text": text, "read": read}
    if kind == "anthropic":
        reply = await ant.messages.create(**anthropic_request(message, max_tokens), extra_headers=headers)
        return {"text": reply.content[0].text, "read": [reply.usage.input_tokens, reply.usage.output_tokens]}
    if kind == "anthropic_stream":
        async with ant.messages.stream(**anthropic_request(message, max_tokens), extra_headers=headers) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        return {"text": text, "read": [final.usage.input_tokens, final.usage.output_tokens]}
    if kind == "httpx":
        response = await raw.post("/v1/chat/completions", json=openai_request("openai", message, max_tokens),
                                  headers=headers)
        body = response.json()
        return {"text": body["choices"][0]["message"]["content"],
                "read": [body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]]}
    raise ValueError(kind)


def call_requests(session: requests.Session, upstream_url: str, kind: str, message: str, max_tokens: int,
                  headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One OpenAI-style call through ``requests``: JSON (``requests``) or an SSE stream with usage."""
    stream = kind == "requests_stream"
    request = openai_request("openai_stream_usage" if stream else "openai", message, max_tokens)
    response = session.post(f"{upstream_url}/v1/chat/completions", json=request, headers=headers, stream=stream,
                            timeout=20)
    if response.status_code != 200:
        return {"upstream_status": response.status_code}
    if not stream:
        body = response.json()
        return {"text": body["choices"][0]["message"]["content"],
                "read": [body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]]}
    text, read = "", None
    with response:
        for line in response.iter_lines():
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                chunk = json.loads(line[6:])
                text += "".join(c["delta"].get("content") or "" for c in chunk["choices"])
                if chunk.get("usage"):
                    read = [chunk["usage"]["prompt_tokens"], chunk["usage"]["completion_tokens"]]
    return {"text": text, "read": read}


def sync_clients(upstream_url: str) -> tuple[openai.OpenAI, anthropic.Anthropic, httpx.Client]:
    return (openai.OpenAI(base_url=f"{upstream_url}/v1", api_key="sk-test", max_retries=0, timeout=20),
            anthropic.Anthropic(base_url=upstream_url, api_key="sk-ant-test", max_retries=0, timeout=20),
            httpx.Client(base_url=upstream_url, timeout=20))


def async_clients(upstream_url: str) -> tuple[openai.AsyncOpenAI, anthropic.AsyncAnthropic, httpx.AsyncClient]:
    return (openai.AsyncOpenAI(base_url=f"{upstream_url}/v1", api_key="sk-test", max_retries=0, timeout=20),
            anthropic.AsyncAnthropic(base_url=upstream_url, api_key="sk-ant-test", max_retries=0, timeout=20),
            httpx.AsyncClient(base_url=upstream_url, timeout=20))


def _sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


# -- FastAPI -----------------------------------------------------------------------------------


def create_fastapi_app(upstream_url: str, **middleware: Any) -> Any:
    """The FastAPI app; its clients are built here, before any test instruments httpx."""
    oai, ant, raw = async_clients(upstream_url)
    soai, sant, sraw = sync_clients(upstream_url)
    proxy_client = httpx.AsyncClient(base_url=upstream_url, timeout=20)
    pool = concurrent.futures.ThreadPoolExecutor(2)
    app = FastAPI()

    @app.post("/ask")
    async def ask(request: Request) -> Response:
        body = await request.json()
        headers = {"x-sim-status": body["status"]} if body.get("status") else None
        try:
            read = await call_async(oai, ant, raw, body["kind"], body["message"], body["max_tokens"], headers)
        except (openai.APIStatusError, anthropic.APIStatusError) as exc:
            return JSONResponse({"upstream_status": exc.status_code}, status_code=502)
        return JSONResponse(read)

    @app.post("/ask-sync")
    def ask_sync(body: dict[str, Any]) -> dict[str, Any]:
        # A sync endpoint: FastAPI runs it in its thread pool (which copies the context).
        return call_sync(soai, sant, sraw, body["kind"], body["message"], body["max_tokens"])

    session = requests.Session()

    @app.post("/ask-requests")
    def ask_requests(body: dict[str, Any]) -> dict[str, Any]:
        headers = {"x-sim-status": body["status"]} if body.get("status") else None
        return call_requests(session, upstream_url, body["kind"], body["message"], body["max_tokens"], headers)

    @app.post("/ask-to-thread")
    async def ask_to_thread(request: Request) -> dict[str, Any]:
        body = await request.json()
        return await asyncio.to_thread(call_sync, soai, sant, sraw, body["kind"], body["message"], body["max_tokens"])

    @app.post("/ask-pool")
    async def ask_pool(request: Request) -> dict[str, Any]:
        body = await request.json()
        args = (soai, sant, sraw, body["kind"], body["message"], body["max_tokens"])
        # A plain pool does not carry the context: carry_context() takes the request along.
        work = carry_context(call_sync) if body.get("carry") else call_sync
        return await asyncio.wrap_future(pool.submit(work, *args))

    @app.post("/agent")
    async def agent(request: Request) -> Response:
        body = await request.json()

        async def events() -> AsyncIterator[bytes]:
            # Both calls are made while the response streams.
            first = await call_async(oai, ant, raw, "openai", "Plan: " + body["message"], body["max_tokens"])
            yield _sse(first)
            second = await call_async(oai, ant, raw, "openai_stream", body["message"], body["max_tokens"])
            yield _sse(second)

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/me/usage")
    async def me_usage() -> dict[str, Any]:
        return ME_USAGE

    @app.post("/v1/{path:path}")
    async def proxy(path: str, request: Request) -> Response:
        outgoing = proxy_client.build_request("POST", f"/v1/{path}", content=await request.body(),
                                              headers={"content-type": "application/json"})
        upstream = await proxy_client.send(outgoing, stream=True)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()

        return StreamingResponse(relay(), status_code=upstream.status_code,
                                 headers={"content-type": upstream.headers["content-type"]})

    return LLMMetricsMiddleware(app, **middleware)


# -- Flask -------------------------------------------------------------------------------------


def create_flask_app(upstream_url: str, **middleware: Any) -> Any:
    oai, ant, raw = sync_clients(upstream_url)
    app = flask.Flask(__name__)
    request = flask.request

    @app.post("/ask")
    def ask() -> Any:
        body = request.get_json()
        headers = {"x-sim-status": body["status"]} if body.get("status") else None
        try:
            return flask.jsonify(call_sync(oai, ant, raw, body["kind"], body["message"], body["max_tokens"], headers))
        except (openai.APIStatusError, anthropic.APIStatusError) as exc:
            return flask.jsonify({"upstream_status": exc.status_code}), 502

    @app.post("/agent")
    def agent() -> Any:
        body = request.get_json()

        def events() -> Iterator[bytes]:
            # Runs as gunicorn iterates the body, after the view returned.
            yield _sse(call_sync(oai, ant, raw, "openai", "Plan: " + body["message"], body["max_tokens"]))
            yield _sse(call_sync(oai, ant, raw, "openai_stream", body["message"], body["max_tokens"]))
            yield _sse(call_sync(oai, ant, raw, "anthropic_stream", body["message"], body["max_tokens"]))

        return flask.Response(events(), mimetype="text/event-stream")

    @app.get("/me/usage")
    def me_usage() -> Any:
        return flask.jsonify(ME_USAGE)

    app.wsgi_app = LLMMetricsWSGIMiddleware(app.wsgi_app, **middleware)  # type: ignore[method-assign]
    return app


def _gunicorn_app() -> Any:
    from prometheus_client import CollectorRegistry

    from llm_metrics_middleware import PrometheusExporter, instrument_httpx

    app = create_flask_app(os.environ["UPSTREAM_URL"], exporters=[PrometheusExporter(CollectorRegistry())],
                           dimensions=["API ID", "Operation ID", "User ID", "Model", "Provider"], metrics_path="/metrics")
    instrument_httpx()
    return app


if os.environ.get("UPSTREAM_URL") and os.environ.get("OUTGOING_APP") == "flask":
    flask_app = _gunicorn_app()
