"""A Flask app that proxies an LLM API, and calls one itself, with token metrics.

The WSGI twin of ``examples/fastapi_app``: :class:`LLMMetricsWSGIMiddleware` around
``app.wsgi_app`` counts the tokens of

- ``POST /v1/<path>``: a streaming proxy (OpenAI SDK ``base_url="http://host/v1"``,
  Anthropic SDK ``base_url="http://host"``); the upstream's status, content type and body
  chunks are passed on as they arrive;
- ``POST /chat``: the app's own endpoint, which calls the LLM and answers
  ``{"answer": ..., "model": ...}`` (its own JSON, without usage);
- ``POST /agent``: a generator that makes two LLM calls as it streams (a plan, then the
  answer, streamed) and sends the app's own server-sent events.

``instrument_httpx()`` meters the LLM calls the app makes itself, under the incoming
request's dimensions, including those a response generator makes after the view returned
(the middleware makes the request current again around every chunk). The proxy's
upstream call is counted there, once.

Token counters are served at ``GET /metrics``. Run it::

    flask --app examples/flask_app/app.py run
    gunicorn 'examples.flask_app.app:app'

Under gunicorn with several workers, set ``PROMETHEUS_MULTIPROC_DIR`` before it starts
and call ``prometheus_client.multiprocess.mark_process_dead`` in ``child_exit`` (see the
README). Environment: ``LLM_UPSTREAM_URL`` (unset: the package's simulated LLM answers
in-process, so the example runs offline), ``LLM_UPSTREAM_API_KEY``,
``APPLICATIONINSIGHTS_CONNECTION_STRING``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import httpx
from flask import Flask, Response, jsonify, request, stream_with_context
from prometheus_client import CollectorRegistry
from werkzeug.datastructures import Headers

from llm_metrics_middleware import LLMMetricsWSGIMiddleware, PrometheusExporter, instrument_httpx
from llm_metrics_middleware.testing import SimulatedLLM

logger = logging.getLogger(__name__)

#: Token counters in prometheus_client's default registry; the middleware serves them at
#: /metrics (all workers added up when PROMETHEUS_MULTIPROC_DIR is set).
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


def upstream_headers(incoming: Headers) -> dict[str, str]:
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


def upstream_client(upstream_app: Any = None) -> httpx.Client:
    """An HTTP client for the upstream: ``upstream_app`` (a WSGI app) if given, else
    ``LLM_UPSTREAM_URL``, else the simulated LLM, in-process."""
    url = os.environ.get("LLM_UPSTREAM_URL")
    if upstream_app is None and url:
        return httpx.Client(base_url=url.rstrip("/").removesuffix("/v1"), timeout=TIMEOUT)
    if upstream_app is None:
        upstream_app = SimulatedLLM().wsgi
    return httpx.Client(transport=httpx.WSGITransport(app=upstream_app), base_url=SIMULATOR_URL, timeout=TIMEOUT)


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


def _sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def _bad_gateway(message: str) -> tuple[Response, int]:
    return jsonify({"error": {"message": message, "type": "upstream_error"}}), 502


def create_app(upstream_app: Any = None, registry: CollectorRegistry | None = None) -> Flask:
    """The app. ``upstream_app``: a WSGI app to use as the LLM (tests); ``registry``: a
    Prometheus registry of its own (default: the module's ``exporter``, global registry)."""
    prometheus = exporter if registry is None else PrometheusExporter(registry)
    exporters = [prometheus, *azure_exporters()]
    client = upstream_client(upstream_app)

    def close() -> None:
        client.close()
        for each in exporters:
            each.force_flush()
            each.shutdown()

    atexit.register(close)

    app = Flask(__name__)
    app.extensions["llm_upstream"] = client

    @app.post("/v1/<path:path>")
    def proxy(path: str) -> Any:
        query = request.query_string.decode("latin-1")
        url = f"/v1/{path}" + (f"?{query}" if query else "")
        outgoing = client.build_request("POST", url, content=request.get_data(), headers=upstream_headers(request.headers))
        try:
            upstream = client.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            logger.warning("upstream request failed: %r", exc)
            return _bad_gateway(f"upstream unreachable: {exc}")

        def relay() -> Iterator[bytes]:
            try:
                yield from upstream.iter_bytes()
            finally:
                upstream.close()

        response = Response(stream_with_context(relay()), status=upstream.status_code)
        if "content-type" in upstream.headers:
            response.headers["Content-Type"] = upstream.headers["content-type"]
        else:
            del response.headers["Content-Type"]
        # For a response closed before its first chunk (the generator's finally never runs).
        response.call_on_close(upstream.close)
        return response

    def payload_of(body: dict[str, Any], content: str, **extra: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": body.get("model") or DEFAULT_MODEL,
            "messages": [{"role": "user", "content": content}],
            **extra,
        }
        if body.get("user"):
            payload["user"] = body["user"]
        if body.get("max_tokens"):
            payload["max_tokens"] = body["max_tokens"]
        return payload

    def chat_body() -> dict[str, Any] | None:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("message"), str):
            return None
        return body

    invalid = {"error": {"message": 'send {"message": "...", "user": "..."}', "type": "invalid_request"}}

    @app.post("/chat")
    def chat() -> Any:
        body = chat_body()
        if body is None:
            return jsonify(invalid), 400
        try:
            upstream = client.post(
                "/v1/chat/completions", json=payload_of(body, body["message"]), headers=upstream_headers(request.headers)
            )
        except httpx.HTTPError as exc:
            logger.warning("upstream request failed: %r", exc)
            return _bad_gateway(f"upstream unreachable: {exc}")
        if upstream.status_code != 200:
            return _bad_gateway(f"upstream answered {upstream.status_code}: {upstream.text[:500]}")
        completion = upstream.json()
        # The app's own answer: no usage in it. The call above was counted as it was made.
        return jsonify({"answer": completion["choices"][0]["message"]["content"], "model": completion.get("model")})

    @app.post("/agent")
    def agent() -> Any:
        body = chat_body()
        if body is None:
            return jsonify(invalid), 400
        # Read from the request now: the generator runs after the view returned, when
        # Flask's request context is gone (the metering one is not).
        headers = upstream_headers(request.headers)

        def events() -> Iterator[bytes]:
            plan = client.post(
                "/v1/chat/completions", json=payload_of(body, f"Plan an answer to: {body['message']}"), headers=headers
            )
            if plan.status_code != 200:
                yield _sse({"error": f"upstream answered {plan.status_code}"})
                return
            yield _sse({"plan": plan.json()["choices"][0]["message"]["content"]})
            answer = client.build_request(
                "POST", "/v1/chat/completions", json=payload_of(body, body["message"], stream=True), headers=headers
            )
            upstream = client.send(answer, stream=True)
            try:
                for line in upstream.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        for choice in json.loads(line[6:]).get("choices") or ():
                            if choice["delta"].get("content"):
                                yield _sse({"delta": choice["delta"]["content"]})
            finally:
                upstream.close()
            yield _sse({"end": True})

        return Response(events(), mimetype="text/event-stream")

    app.wsgi_app = LLMMetricsWSGIMiddleware(  # type: ignore[method-assign]
        app.wsgi_app,
        exporters=exporters,
        dimensions=DIMENSIONS,
        metrics_path="/metrics",
    )
    # Meter the LLM calls this process makes through httpx / httpx2 (the official SDKs
    # included): inside a request they count for it, with the middleware's exporters.
    instrument_httpx()
    return app


app = create_app()
