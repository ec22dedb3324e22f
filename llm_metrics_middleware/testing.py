"""Test helpers: a simulated LLM upstream and an in-memory exporter.

The simulator speaks the OpenAI Chat Completions, legacy Completions, Embeddings and
Anthropic Messages wire formats, streamed and not, with deterministic usage, so the demo,
our tests and your own tests can run offline against real HTTP traffic::

    from llm_metrics_middleware.testing import SimulatedLLM, InMemoryExporter

    upstream = SimulatedLLM()
    app = LLMMetricsMiddleware(upstream, exporters=[exporter := InMemoryExporter()])  # or upstream.wsgi

``SimulatedLLM()`` is an ASGI 3 app (``uvicorn myapp:upstream`` serves it), its ``.wsgi``
a WSGI one. With the package installed, pytest has the fixtures ``llm_metrics_exporter``,
``simulated_llm`` and ``simulated_llm_url`` (see :mod:`llm_metrics_middleware.pytest_plugin`).

Counts are deterministic: the prompt costs one token per whitespace-separated word of
the messages' text plus 3 per message; the answer is ``max_tokens`` words (default 16),
one token each, streamed one word per chunk.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._metering.call import CallRecord

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment
    from asgiref.typing import ASGIReceiveCallable, ASGISendCallable, Scope

    from ._metering.call import Schema

_WORDS = ["tokens", "are", "the", "unit", "of", "cost", "so", "we", "count", "every", "one", "of", "them", "as", "it", "streams", "past", "without", "holding", "the", "body", "and", "without", "slowing", "the", "answer", "down"]


def _text_of(content: Any) -> str:
    """The text of a message's content: a str, or content parts nested to any depth.

    Iterative, so a hostile prompt nested thousands deep cannot exhaust the stack.
    """
    texts: list[str] = []
    stack = [content]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict):
            stack.append(item.get("text", ""))
        elif isinstance(item, list):  # content parts
            stack.extend(reversed(item))
    return " ".join(texts)


def prompt_tokens_of(body: dict[str, Any]) -> int:
    """The simulator's prompt token count for a request body."""
    messages = body.get("messages")
    if isinstance(messages, list):
        words = sum(len(_text_of(m.get("content")).split()) for m in messages if isinstance(m, dict))
        words += len(_text_of(body.get("system")).split())
        return words + 3 * len(messages)
    prompt = body.get("prompt", body.get("input", ""))
    if isinstance(prompt, list):
        return sum(len(_text_of(p).split()) for p in prompt)
    return len(_text_of(prompt).split())


def _answer(n: int) -> list[str]:
    return [(_WORDS[i % len(_WORDS)] + " ") for i in range(n)]


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclass
class SimulatedResponse:
    status: int
    headers: list[tuple[str, str]]
    chunks: Iterator[bytes]


@dataclass
class SimulatedLLM:
    """A deterministic OpenAI- and Anthropic-compatible upstream, as ASGI and WSGI apps.

    ``chunk_delay`` seconds pass between streamed chunks (0 by default). ``cached_tokens``
    and ``reasoning_tokens`` (0 by default) are reported as that many of the prompt tokens
    read from the cache and of the completion tokens spent reasoning (at most all of them).
    """

    model: str = "sim-gpt-1"
    anthropic_model: str = "sim-claude-1"
    chunk_delay: float = 0.0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    requests: int = field(default=0, init=False)

    # -- sans-IO core ---------------------------------------------------------------------

    def respond(self, method: str, path: str, body: bytes) -> SimulatedResponse:
        self.requests += 1
        try:
            req = json.loads(body) if body else {}
        except (ValueError, RecursionError):
            req = None
        if not isinstance(req, dict):
            return self._error(400, "invalid_request_error", "body is not a JSON object")
        if method != "POST":
            return self._error(405, "invalid_request_error", f"{method} not allowed")
        path = path.rstrip("/")
        if path.endswith("/chat/completions"):
            return self._chat(req)
        if path.endswith("/completions"):
            return self._completions(req)
        if path.endswith("/embeddings"):
            return self._embeddings(req)
        if path.endswith("/messages"):
            return self._messages(req)
        return self._error(404, "not_found_error", f"no such endpoint {path}")

    def _error(self, status: int, kind: str, message: str) -> SimulatedResponse:
        body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()
        return SimulatedResponse(status, [("content-type", "application/json")], iter([body]))

    def _json(self, obj: Any) -> SimulatedResponse:
        return SimulatedResponse(200, [("content-type", "application/json")], iter([json.dumps(obj).encode()]))

    def _stream(self, chunks: Iterable[bytes]) -> SimulatedResponse:
        return SimulatedResponse(
            200,
            [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")],
            iter(chunks),
        )

    def _max_tokens(self, req: dict[str, Any]) -> int:
        n = req.get("max_tokens", req.get("max_completion_tokens", 16))
        return n if isinstance(n, int) and 0 < n <= 100_000 else 16

    def _chat(self, req: dict[str, Any]) -> SimulatedResponse:
        words = _answer(self._max_tokens(req))
        prompt = prompt_tokens_of(req)
        usage = {"prompt_tokens": prompt, "completion_tokens": len(words), "total_tokens": prompt + len(words),
                 "prompt_tokens_details": {"cached_tokens": min(self.cached_tokens, prompt)},
                 "completion_tokens_details": {"reasoning_tokens": min(self.reasoning_tokens, len(words))}}
        model = req.get("model") or self.model
        created = 1_700_000_000
        cid = f"chatcmpl-sim{self.requests}"
        if not req.get("stream"):
            return self._json({
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words), "refusal": None},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": usage, "system_fingerprint": "fp_sim",
            })
        opts = req.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True

        def chunks() -> Iterator[bytes]:
            base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "system_fingerprint": "fp_sim"}
            extra = {"usage": None} if include_usage else {}
            yield _sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                             "logprobs": None, "finish_reason": None}], **extra})
            for word in words:
                yield _sse({**base, "choices": [{"index": 0, "delta": {"content": word}, "logprobs": None,
                                                 "finish_reason": None}], **extra})
            yield _sse({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}], **extra})
            if include_usage:
                yield _sse({**base, "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return self._stream(chunks())

    def _completions(self, req: dict[str, Any]) -> SimulatedResponse:
        words = _answer(self._max_tokens(req))
        prompt = prompt_tokens_of(req)
        return self._json({
            "id": f"cmpl-sim{self.requests}", "object": "text_completion", "created": 1_700_000_000,
            "model": req.get("model") or self.model,
            "choices": [{"text": "".join(words), "index": 0, "logprobs": None, "finish_reason": "length"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": len(words), "total_tokens": prompt + len(words)},
        })

    def _embeddings(self, req: dict[str, Any]) -> SimulatedResponse:
        inputs = req.get("input", "")
        items = inputs if isinstance(inputs, list) else [inputs]
        prompt = prompt_tokens_of(req)
        return self._json({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": [0.0, 0.5, -0.5, 1.0]} for i in range(len(items))],
            "model": req.get("model") or "sim-embedding-1",
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        })

    def _messages(self, req: dict[str, Any]) -> SimulatedResponse:
        words = _answer(self._max_tokens(req))
        prompt = prompt_tokens_of(req)
        # Anthropic's input_tokens leave out cache reads; the two add up to the prompt.
        cached = min(self.cached_tokens, prompt)
        model = req.get("model") or self.anthropic_model
        mid = f"msg_sim{self.requests}"
        if not req.get("stream"):
            return self._json({
                "id": mid, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": "".join(words)}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": prompt - cached, "output_tokens": len(words),
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached},
            })

        def chunks() -> Iterator[bytes]:
            yield _sse({"type": "message_start", "message": {
                "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": prompt - cached, "output_tokens": 1,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}}}, "message_start")
            yield _sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                       "content_block_start")
            yield _sse({"type": "ping"}, "ping")
            for word in words:
                yield _sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}},
                           "content_block_delta")
            yield _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
            yield _sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                        "usage": {"output_tokens": len(words)}}, "message_delta")
            yield _sse({"type": "message_stop"}, "message_stop")

        return self._stream(chunks())

    # -- adapters -------------------------------------------------------------------------

    async def asgi(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        """The simulator as an ASGI 3 app."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk: Any = message.get("body", b"")
            body += chunk
            if not message.get("more_body", False):
                break
        response = self.respond(scope["method"], scope["path"], bytes(body))
        await send({
            "type": "http.response.start",
            "status": response.status,
            "headers": [(k.encode(), v.encode()) for k, v in response.headers],
            "trailers": False,
        })
        for i, chunk in enumerate(response.chunks):
            if i and self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)  # never time.sleep: the event loop serves others meanwhile
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        """The simulator is itself an ASGI 3 app: ``uvicorn mymodule:upstream`` serves
        ``upstream = SimulatedLLM()`` as it is."""
        await self.asgi(scope, receive, send)

    def wsgi(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """The simulator as a WSGI app."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(length) if length else b""
        path = environ.get("PATH_INFO", "/")
        response = self.respond(environ.get("REQUEST_METHOD", "GET"), path, body)
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}.get(response.status, "")
        start_response(f"{response.status} {reason}", response.headers)
        if not self.chunk_delay:
            return response.chunks
        return self._paced(response.chunks)

    def _paced(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        # A WSGI worker is a thread of its own: sleeping here blocks only this response.
        for i, chunk in enumerate(chunks):
            if i:
                time.sleep(self.chunk_delay)
            yield chunk


class InMemoryExporter:
    """Keeps every :class:`CallRecord` in a list, for tests. Thread-safe."""

    def __init__(self) -> None:
        self.calls: list[CallRecord] = []
        self.schemas: list[Schema] = []
        self.errors: list[str] = []
        #: Token-limit events: ``(limit, authorized calls, limited calls, tokens charged)``.
        self.limit_events: list[tuple[str, int, int, int]] = []
        #: ``(limit, tokens, window seconds)`` of every configured limit.
        self.limits: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()

    def bind(self, schema: Schema) -> InMemoryExporter:
        self.schemas.append(schema)
        return self

    def record(self, call: CallRecord) -> None:
        with self._lock:
            self.calls.append(call)

    def on_error(self, kind: str) -> None:
        with self._lock:
            self.errors.append(kind)

    def limits_configured(self, limits: list[tuple[str, int, int]]) -> None:
        with self._lock:
            self.limits.extend(limits)

    def on_limit(self, name: str, authorized: int, limited: int, tokens: int) -> None:
        with self._lock:
            self.limit_events.append((name, authorized, limited, tokens))

    def dimensions(self, call: CallRecord) -> dict[str, str]:
        """A call's dimensions by configured name (of the last bound schema)."""
        return dict(zip(self.schemas[-1].names, call.dimensions, strict=True))

    def totals(self) -> dict[str, int]:
        """Token sums over all calls."""
        out = {"prompt": 0, "completion": 0, "total": 0, "cached": 0, "reasoning": 0}
        for call in self.calls:
            u = call.usage
            if u is not None:
                out["prompt"] += u.prompt_tokens
                out["completion"] += u.completion_tokens
                out["total"] += u.total_tokens
                out["cached"] += u.cached_tokens
                out["reasoning"] += u.reasoning_tokens
        return out

    def clear(self) -> None:
        with self._lock:
            self.calls.clear()
            self.errors.clear()
            self.limit_events.clear()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def shutdown(self) -> None:
        pass


@contextmanager
def serve_asgi(app: Any, *, timeout: float = 10.0, name: str = "app") -> Iterator[str]:
    """Serve any ASGI ``app`` with a real uvicorn on a free port of 127.0.0.1, in a thread;
    yields its base URL, stops it on exit.

    For tests of your own app under the server it runs on in production (streaming and
    client disconnects behave there as they do in production, not as in an in-process test
    client). The OS picks the port, so parallel tests never race for one; a server that has
    not started, or not stopped, within ``timeout`` seconds raises instead of hanging.
    Needs ``uvicorn``.
    """
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_config=None,
                            log_level="warning", access_log=False, ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn {name}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"uvicorn stopped before serving the {name}; see its log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {name} did not start within {timeout} s")
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"the {name} did not stop within {timeout} s")


@contextmanager
def serve(llm: SimulatedLLM | None = None, *, timeout: float = 10.0) -> Iterator[str]:
    """Serve ``llm`` (a new :class:`SimulatedLLM` by default) on a free port of 127.0.0.1,
    in a thread; yields its base URL (``http://127.0.0.1:PORT``), stops it on exit.

    Uses uvicorn (the ASGI app, delays on the event loop) when it is installed, else
    werkzeug's threaded WSGI server, which the package depends on anyway. A server that has
    not started, or not stopped, within ``timeout`` seconds raises instead of hanging.
    """
    llm = llm if llm is not None else SimulatedLLM()
    try:
        import uvicorn
    except ImportError:
        uvicorn = None  # type: ignore[assignment]
    if uvicorn is not None:
        with serve_asgi(llm, timeout=timeout, name="simulated LLM") as url:
            yield url
        return

    from werkzeug.serving import make_server

    wsgi_server = make_server("127.0.0.1", 0, llm.wsgi, threaded=True)
    wsgi_thread = threading.Thread(target=wsgi_server.serve_forever, kwargs={"poll_interval": 0.05},
                                   name="simulated-llm", daemon=True)
    wsgi_thread.start()
    try:
        yield f"http://127.0.0.1:{wsgi_server.server_port}"
    finally:
        wsgi_server.shutdown()
        wsgi_thread.join(timeout)
        wsgi_server.server_close()
        if wsgi_thread.is_alive():
            raise TimeoutError(f"the simulated LLM did not stop within {timeout} s")
