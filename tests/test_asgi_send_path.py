"""The ASGI driver's short path for the middle chunks of a body (see ``_drivers/asgi.py``).

Those chunks are handed to the server's own ``send`` with no coroutine of ours around it,
and a chunk is counted when the app comes back for the next message. What must hold: every chunk
whose send returned is counted, a chunk whose send failed is not (the client never got
it), an exception that came out of a send makes the call disconnected and any other an
error, and servers whose ``send`` returns something other than a coroutine get the same
answers through the awaited path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from llm_metrics_middleware import LLMMetricsMiddleware
from llm_metrics_middleware.testing import CallRecord, InMemoryExporter

from .drive import request_json, split
from .samples import OPENAI_STREAM

EVENTS = [event + b"\n\n" for event in OPENAI_STREAM.split(b"\n\n") if event]  # role, text, usage, [DONE]
START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
SCOPE = {
    "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
    "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
    "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
}


def body(chunk: bytes, more: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": chunk, "more_body": more}


def streaming_app(chunks: list[bytes]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send(START)
        for chunk in chunks:
            await send(body(chunk))
        await send(body(b"", more=False))

    return app


class Server:
    """A server's ``send`` of one of three kinds, failing from its ``fail_at``-th message."""

    def __init__(self, kind: str, fail_at: int | None = None) -> None:
        self.kind = kind
        self.fail_at = fail_at
        self.sent: list[dict[str, Any]] = []

    def _take(self, message: dict[str, Any]) -> None:
        if self.fail_at is not None and len(self.sent) >= self.fail_at:
            raise OSError("client went away")
        if "headers" in message:  # read as a server reads them, once, when sent
            message = {**message, "headers": list(message["headers"])}
        self.sent.append(message)

    def send(self, message: dict[str, Any]) -> Awaitable[None]:
        if self.kind == "coroutine":
            return self._coroutine(message)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            self._take(message)
            future.set_result(None)
        except OSError as exc:
            future.set_exception(exc)
        if self.kind == "future":
            return future
        return _Awaitable(future)

    async def _coroutine(self, message: dict[str, Any]) -> None:
        self._take(message)


class _Awaitable:
    """An awaitable that is neither a coroutine nor a future (as a compiled server's may be)."""

    def __init__(self, future: asyncio.Future[None]) -> None:
        self._future = future

    def __await__(self) -> Any:
        return self._future.__await__()


def run(app: Any, server: Server) -> tuple[CallRecord, BaseException | None]:
    exporter = InMemoryExporter()
    wrapped = LLMMetricsMiddleware(app, exporters=[exporter])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": request_json(model="gpt-4o-mini", stream=True), "more_body": False}

    raised: BaseException | None = None
    try:
        asyncio.run(wrapped(dict(SCOPE), receive, server.send))
    except Exception as exc:
        raised = exc
    [call] = exporter.calls
    return call, raised


def facts(call: CallRecord) -> tuple[Any, ...]:
    usage = call.usage
    counts = None if usage is None else (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
    return call.outcome, call.usage_source, counts, call.streamed


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
@pytest.mark.parametrize("kind", ["coroutine", "future", "awaitable"])
def test_every_chunk_is_counted_whatever_the_server_send_returns(kind: str, size: int) -> None:
    chunks = split(OPENAI_STREAM, size)
    server = Server(kind)
    call, raised = run(streaming_app(chunks), server)
    assert raised is None
    assert server.sent == [START, *(body(c) for c in chunks), body(b"", more=False)]
    assert facts(call) == ("completed", "reported", (9, 2, 11), True)


@pytest.mark.parametrize("kind", ["coroutine", "future", "awaitable"])
def test_a_chunk_whose_send_failed_is_not_counted(kind: str) -> None:
    # Messages: start, role, text, usage, [DONE], end. The send of the usage chunk fails:
    # the client never saw usage, so the call is estimated from the text that got out.
    call, raised = run(streaming_app(EVENTS), Server(kind, fail_at=3))
    assert isinstance(raised, OSError)
    assert facts(call)[:2] == ("disconnected", "estimated")
    # The send of [DONE] fails: the usage chunk before it went out and is counted.
    call, raised = run(streaming_app(EVENTS), Server(kind, fail_at=4))
    assert isinstance(raised, OSError)
    assert facts(call) == ("disconnected", "reported", (9, 2, 11), True)


def test_an_app_error_after_a_send_keeps_the_chunk_that_went_out() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send(START)
        for event in EVENTS[:3]:  # role, text, usage: all sent
            await send(body(event))
        raise RuntimeError("upstream broke")

    call, raised = run(app, Server("coroutine"))
    assert isinstance(raised, RuntimeError)
    assert facts(call) == ("error", "reported", (9, 2, 11), True)


@pytest.mark.parametrize("kind", ["coroutine", "future"])
def test_a_failed_start_is_a_disconnect(kind: str) -> None:
    call, raised = run(streaming_app(EVENTS), Server(kind, fail_at=0))
    assert isinstance(raised, OSError)
    assert call.outcome == "disconnected" and call.usage is None


def test_headers_given_as_an_iterator_reach_the_server_whole() -> None:
    # The response start is read after its send: an iterator of headers is the server's.
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({**START, "headers": iter(START["headers"])})
        for event in EVENTS:
            await send(body(event))
        await send(body(b"", more=False))

    server = Server("coroutine")
    call, raised = run(app, server)
    assert raised is None and server.sent[0]["headers"] == START["headers"]
    assert call.outcome == "completed"


def test_a_failed_send_the_app_turns_into_its_own_error_is_still_a_disconnect() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send(START)
        try:
            for event in EVENTS:
                await send(body(event))
        except OSError as exc:  # as Starlette does: ClientDisconnect from the OSError
            raise RuntimeError("the client disconnected") from exc

    call, raised = run(app, Server("coroutine", fail_at=3))
    assert isinstance(raised, RuntimeError)
    assert facts(call)[:2] == ("disconnected", "estimated")


@pytest.mark.parametrize("where", ["in the usage chunk's send", "after it"])
def test_a_cancelled_request_counts_what_went_out(where: str) -> None:
    exporter = InMemoryExporter()
    blocked = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send(START)
        for event in EVENTS[:3]:
            await send(body(event))
        blocked.set()
        await asyncio.sleep(3600)

    async def send(message: dict[str, Any]) -> None:
        if where == "in the usage chunk's send" and message.get("body") == EVENTS[2]:
            blocked.set()
            await asyncio.sleep(3600)  # a client that stopped reading: the send never returns
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": request_json(model="gpt-4o-mini", stream=True), "more_body": False}

    async def main() -> None:
        task = asyncio.create_task(LLMMetricsMiddleware(app, exporters=[exporter])(dict(SCOPE), receive, send))
        await asyncio.wait_for(blocked.wait(), timeout=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    [call] = exporter.calls
    if where == "after it":
        assert facts(call) == ("disconnected", "reported", (9, 2, 11), True)
    else:
        assert facts(call)[:2] == ("disconnected", "estimated")


def test_the_time_to_first_chunk_is_taken_at_the_first_chunk() -> None:
    # The first chunk is counted as soon as its send returns, not when the app comes back.
    marks: dict[str, float] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        marks["app"] = time.perf_counter()
        await receive()
        await send(START)
        await send(body(EVENTS[0]))
        await send(body(EVENTS[1]))
        await asyncio.sleep(0.05)
        marks["third"] = time.perf_counter()
        for event in EVENTS[2:]:
            await send(body(event))
        await send(body(b"", more=False))

    call, raised = run(app, Server("coroutine"))
    assert raised is None and call.time_to_first_chunk_s is not None
    # The call started before the app did, so its first chunk came at most this long
    # after the app started; counted at the app's return for the third it would be later.
    assert marks["app"] + call.time_to_first_chunk_s < marks["third"]


def test_the_short_path_adds_no_coroutine_of_its_own() -> None:
    # What the app awaits for a middle chunk is the server's own coroutine.
    seen: list[Any] = []
    server = Server("coroutine")

    def send(message: dict[str, Any]) -> Awaitable[None]:
        awaitable = server.send(message)
        seen.append(awaitable)
        return awaitable

    returned: list[Any] = []

    async def app(scope: Any, receive: Any, send_: Callable[[Any], Awaitable[None]]) -> None:
        await receive()
        for message in (START, *(body(e) for e in EVENTS), body(b"", more=False)):
            awaitable = send_(message)
            returned.append(awaitable)
            await awaitable

    exporter = InMemoryExporter()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": request_json(model="gpt-4o-mini", stream=True), "more_body": False}

    asyncio.run(LLMMetricsMiddleware(app, exporters=[exporter])(dict(SCOPE), receive, send))
    # The start, the first chunk (its time is noted when its send returns) and the end (the
    # call is complete when its send returns) are awaited by us; the middle chunks are not.
    same = [r is s for r, s in zip(returned, seen, strict=True)]
    assert same == [False, False, True, True, True, False]
    assert facts(exporter.calls[0]) == ("completed", "reported", (9, 2, 11), True)


def _long_stream(words: int, big_every: int = 0) -> list[bytes]:
    """An OpenAI chat stream of ``words`` text events (every ``big_every``-th one a few KB),
    then usage and [DONE]."""
    head = b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"'
    tail = b'"}}],"usage":null}\n\n'
    events = [EVENTS[0]]
    for i in range(words):
        text = b"word%d " % i
        if big_every and i % big_every == big_every - 1:
            text *= 600
        events.append(head + text + tail)
    usage = b'{"prompt_tokens":9,"completion_tokens":%d,"total_tokens":%d}' % (words, 9 + words)
    events.append(b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[],"usage":' + usage + b"}\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


@pytest.mark.parametrize("big_every", [0, 7])
def test_the_short_path_counts_what_the_awaited_path_counts(big_every: int) -> None:
    # A server whose send returns a future takes the awaited path for every message: the
    # reference. Whatever message's send fails, the short path counts the same.
    events = _long_stream(40, big_every)
    for fail_at in [None, *range(2, len(events) + 2)]:
        short, _ = run(streaming_app(events), Server("coroutine", fail_at))
        awaited, _ = run(streaming_app(events), Server("future", fail_at))
        assert facts(short) == facts(awaited), fail_at
        if fail_at is None:
            assert facts(short) == ("completed", "reported", (9, 40, 49), True)


def test_middle_messages_without_a_body_or_of_zero_copy_pass_the_short_path() -> None:
    # The short path keys on more_body alone: a body message may leave its body out (b""),
    # and the zero-copy extension's message carries more_body but no body to read.
    zero_copy = {"type": "http.response.zerocopysend", "file": 3, "count": 10, "more_body": True}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send(START)
        await send(body(EVENTS[0]))
        await send(body(EVENTS[1]))  # the short path is on from here
        await send({"type": "http.response.body", "more_body": True})
        await send(zero_copy)
        for event in EVENTS[2:]:
            await send(body(event))
        await send(body(b"", more=False))

    server = Server("coroutine")
    call, raised = run(app, server)
    assert raised is None
    assert server.sent[3:5] == [{"type": "http.response.body", "more_body": True}, zero_copy]
    assert facts(call) == ("completed", "reported", (9, 2, 11), True)
