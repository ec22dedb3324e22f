"""Pure ASGI 3 middleware: a short driver of :class:`~.._metering.metered_call.MeteredCall`.

The client gets every message as the app produced it, when it produced it, and a body chunk
is counted only once its send has returned (a chunk whose send failed never reached the
client). All per-request state lives in the request's :class:`_AsgiCall` (a ``MeteredCall``
that is also its ``receive`` wrapper), in its relay (the ``send`` the app is given, see
:mod:`.short_send`) and in locals of ``__call__``, never on the middleware.

The middle chunks of a streamed body take a short path with no coroutine of ours: an
awaited wrapper costs about a thousand instructions per message, a fifth of what a chunk
costs us. The relay's ``send`` hands the app the server's own coroutine and keeps the chunk
pending; the app calling ``send`` again (or returning) says that the send returned, and the
pending chunk is fed then. When the app raises, its traceback says whether the exception came out
of a send of the server (the client is gone: the pending chunk is dropped and the call is
disconnected) or from the app itself (the chunk went out and is fed). The response start,
the first chunk (its time is the time to first chunk), the last one (the call is complete
when its send returns) and every other message are awaited in ``_awaited_send``, and so
is every message of a server whose ``send`` does not return a coroutine (whose frame a
traceback could not show).

Why the wrappers are methods rather than closures made in ``__call__``: a closure is a new
function object per request, with a cell for each variable it shares; a bound method is a
small object pointing at the call (or relay), which holds that state anyway. The relay and
the call point at each other while the app runs; ``__call__`` lets go of that in its
``finally``, so no reference cycle outlives the request.
"""

from __future__ import annotations

import asyncio
from types import CodeType, CoroutineType, TracebackType
from typing import TYPE_CHECKING, Any

from .._core.providers.facts import stream_ended
from .._metering.call import COMPLETED, DISCONNECTED, ERROR, Outcome
from .._metering.context import CURRENT
from .._metering.headers import response_headers
from .._metering.metered_call import MeteredCall
from .._metering.request import RequestView
from .base import MiddlewareBase
from .limited import asgi_check, with_raw_headers
from .short_send import PyShortSend, ShortSend

if TYPE_CHECKING:
    from asgiref.typing import (
        ASGI3Application,  # noqa: F401 (named in a string base class)
        ASGIReceiveCallable,
        ASGIReceiveEvent,
        ASGISendCallable,
        ASGISendEvent,
        Scope,
    )


#: How many chained exceptions (``__context__``) and traceback entries are looked at to
#: tell whether an exception came out of a send: enough for any real stack, bounded for any.
_CHAIN_LIMIT = 16
_TRACEBACK_LIMIT = 10_000


def _raised_in(exc: BaseException, code: CodeType) -> bool:
    """Whether ``exc``, or an exception it was raised while handling, passed through a
    frame running ``code`` (the server's send): the send failed."""
    seen = 0
    link: BaseException | None = exc
    while link is not None and seen < _CHAIN_LIMIT:
        seen += 1
        tb: TracebackType | None = link.__traceback__
        steps = 0
        while tb is not None and steps < _TRACEBACK_LIMIT:
            if tb.tb_frame.f_code is code:
                return True
            tb = tb.tb_next
            steps += 1
        link = link.__context__
    return False


class _AsgiCall(MeteredCall):
    """One request's call, and the ``receive`` and ``send`` the app is given for it."""

    __slots__ = ("app_receive", "delivered", "disconnected", "relay")

    app_receive: ASGIReceiveCallable
    #: The send the app is given (see :mod:`.short_send`): it holds the server's send, the
    #: pending chunk of the short path, and the server's send code once that path is on.
    relay: PyShortSend
    #: The client went away: a failed send, or ``http.disconnect`` received.
    disconnected: bool
    #: The last body chunk known to have been sent, for its end mark (see ``gone``): noted
    #: where a chunk is fed outside the short path, which is enough, since every body
    #: ends outside it (its last message is awaited; a pending chunk is fed in settle).
    delivered: bytes

    async def receive(self) -> ASGIReceiveEvent:
        message = await self.app_receive()
        kind = message["type"]
        if kind == "http.request":
            peek = self.peek
            if peek is not None and not peek.done:  # request_body(), without the call
                try:
                    peek.feed(message.get("body", b""))  # type: ignore[arg-type]
                except Exception:
                    self.peek = None
        elif kind == "http.disconnect":
            self.disconnected = True
        return message

    def settle(self, exc: BaseException | None) -> None:
        """The pending chunk, when the app returned (``exc`` None) or raised ``exc``:
        dropped, and the client gone, if ``exc`` came out of a send of the server; else fed."""
        relay = self.relay
        pending, code = relay.pending, relay.code
        relay.pending = None
        if exc is not None and code is not None and _raised_in(exc, code):
            self.disconnected = True
        elif pending is not None:
            self.feed(pending)
            self.delivered = pending

    def gone(self) -> Outcome:
        """The outcome of a call whose client left before the body's last message:
        completed when what it was sent last holds the stream's end mark (the OpenAI SDK
        closes at ``[DONE]``, and Starlette then stops the response before its final
        empty message), else disconnected."""
        return COMPLETED if stream_ended(self.delivered) else DISCONNECTED

    async def _awaited_send(self, message: ASGISendEvent) -> None:
        """Every message but the middle chunks of a body: awaited, then looked at."""
        relay = self.relay
        pending = relay.pending
        if pending is not None:  # the app is back: the previous send returned
            relay.pending = None
            self.feed(pending)
            self.delivered = pending
        try:
            awaitable = relay.server_send(message)
            await awaitable
        except BaseException:
            # A send that fails is the client gone (uvicorn raises OSError on a closed
            # connection); an OSError the app raises itself (a TimeoutError or
            # ConnectionRefusedError from its upstream) is an error, not a disconnect.
            self.disconnected = True
            raise
        kind: str = message["type"]
        if kind == "http.response.body":
            body: bytes = message.get("body", b"")  # type: ignore[assignment]
            self.feed(body)
            if body:
                self.delivered = body
            if not message.get("more_body", False):
                self.finish(COMPLETED)
            elif relay.code is None and self.first_chunk is not None and awaitable.__class__ is CoroutineType:
                relay.code = awaitable.cr_code  # the first chunk is in: the short path is on
                # The call's feed no longer changes (a deferred JSON body's does, at its
                # second chunk: see MeteredCall._json_body): the relay calls it directly.
                if not self.deferred:
                    relay.feed = self.feed
        elif kind == "http.response.start":
            try:
                headers = response_headers(message.get("headers", ()))  # type: ignore[arg-type]
            except Exception as exc:  # not pairs at all: the server refuses them, we do not read
                self.metering.failures.failed("llm-metrics", "read the response headers (the call is not read)", exc)
                self.metering.count_error("internal")
                self.status = message["status"]  # type: ignore[typeddict-item]
                return
            self.response_start(message["status"], *headers)  # type: ignore[typeddict-item]
        elif kind == "http.response.pathsend":
            self.finish(COMPLETED)
        elif kind == "http.response.zerocopysend":
            # The body goes from a file descriptor straight to the socket: not read.
            if not message.get("more_body", False):
                self.finish(COMPLETED)

class _LimitedAsgiCall(_AsgiCall):
    """With ``limits=``: first the body messages the limit check read ahead, and the
    limit's headers added to the response start."""

    __slots__ = ("read_ahead", "extra_headers")

    read_ahead: list[ASGIReceiveEvent]
    extra_headers: list[tuple[bytes, bytes]]

    async def receive(self) -> ASGIReceiveEvent:
        if self.read_ahead:  # already peeked at
            message = self.read_ahead.pop(0)
            if message["type"] == "http.disconnect":
                self.disconnected = True
            return message
        return await _AsgiCall.receive(self)

    async def _awaited_send(self, message: ASGISendEvent) -> None:
        if self.extra_headers and message["type"] == "http.response.start":
            message = {**message, "headers": with_raw_headers(message.get("headers", ()), self.extra_headers)}
        await _AsgiCall._awaited_send(self, message)


class LLMMetricsMiddleware(MiddlewareBase["ASGI3Application"]):
    """Counts the LLM tokens of every response that passes, by dimension.

    ``app.add_middleware(LLMMetricsMiddleware, exporters=[PrometheusExporter()])`` in
    Starlette or FastAPI, or ``LLMMetricsMiddleware(app, exporters=[...])`` around any ASGI
    3 app. Options: see :class:`~.._drivers.base.MiddlewareBase` and the README.
    """

    _metrics_app_factory = "asgi_app"

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._metrics_app is not None and scope["path"] == self._metrics_path:
            await self._metrics_app(scope, receive, send)
            return
        state: Any = scope
        if not self.enabled or state.get(self._marker):
            await self.app(scope, receive, send)
            return
        state[self._marker] = True

        metering = self.metering
        call: _AsgiCall
        if metering.limits is None:
            call = _AsgiCall(metering, RequestView.from_scope(scope))
        else:
            limited = call = _LimitedAsgiCall(metering, RequestView.from_scope(scope))
            checked = await asgi_check(metering, call, receive, send)
            if checked is None:
                return  # refused with 429: the app is not called
            limited.read_ahead, limited.extra_headers = checked
        call.app_receive = receive
        relay = call.relay = ShortSend(call, send)
        call.disconnected = False
        call.delivered = b""

        # The request is current for the whole app call, streaming body included: outgoing
        # LLM calls the app makes meanwhile are counted here (see _metering/context.py).
        # CURRENT.set/reset inline rather than context.enter/leave: two calls fewer per request.
        token = CURRENT.set(call)
        try:
            await self.app(scope, call.receive, relay.send)
        except asyncio.CancelledError as exc:
            call.settle(exc)
            call.finish(call.gone())
            raise
        except BaseException as exc:
            call.settle(exc)
            call.finish(call.gone() if call.disconnected else ERROR)
            raise
        finally:
            relay.call = None  # the relay and the call point at each other: no cycle left
            relay.feed = None  # (the call's feed may be one of its own bound methods)
            try:
                CURRENT.reset(token)
            except (ValueError, RuntimeError):  # reset in another context: see context.leave
                pass
            if not call.finished:  # the usual case is finished at the last body message
                call.settle(None)
                call.finish(call.gone() if call.disconnected else ERROR)
