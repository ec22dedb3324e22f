"""Pure ASGI 3 middleware: a short driver of :class:`~.._metering.metered_call.MeteredCall`.

``send`` is awaited first and the message looked at afterwards, so the client gets every
message as the app produced it, when it produced it. All per-request state lives in the
request's :class:`_AsgiCall` (a ``MeteredCall`` that is also its ``receive`` and ``send``
wrappers) and in locals of ``__call__``, never on the middleware.

Why the wrappers are methods of the call rather than closures made in ``__call__``: a
closure is a new function object per request, with a cell for each variable it shares;
a bound method is a small object pointing at the call, which holds that state anyway.
The call does not keep its own bound methods, so no reference cycle is made.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .._metering.call import COMPLETED, DISCONNECTED, ERROR
from .._metering.context import CURRENT
from .._metering.headers import RESPONSE_HEADER_KINDS, header_kind, response_headers
from .._metering.metered_call import MeteredCall
from .._metering.request import RequestView
from .base import MiddlewareBase
from .limited import asgi_check, with_raw_headers

if TYPE_CHECKING:
    from asgiref.typing import (
        ASGI3Application,  # noqa: F401 (named in a string base class)
        ASGIReceiveCallable,
        ASGIReceiveEvent,
        ASGISendCallable,
        ASGISendEvent,
        Scope,
    )


class _AsgiCall(MeteredCall):
    """One request's call, and the ``receive`` and ``send`` the app is given for it."""

    __slots__ = ("app_receive", "app_send", "disconnected")

    app_receive: ASGIReceiveCallable
    app_send: ASGISendCallable
    #: The client went away: a failed send, or ``http.disconnect`` received.
    disconnected: bool

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

    async def send(self, message: ASGISendEvent) -> None:
        try:
            await self.app_send(message)
        except BaseException:
            # A send that fails is the client gone (uvicorn raises OSError on a closed
            # connection); an OSError the app raises itself (a TimeoutError or
            # ConnectionRefusedError from its upstream) is an error, not a disconnect.
            self.disconnected = True
            raise
        kind: str = message["type"]
        if kind == "http.response.body":
            self.feed(message.get("body", b""))  # type: ignore[arg-type]
            if not message.get("more_body", False):
                self.finish(COMPLETED)
        elif kind == "http.response.start":
            # response_start from the raw header pairs, in one pass over them (see
            # headers.RESPONSE_HEADER_KINDS), here rather than in a helper: a call fewer. The
            # Content-Type goes on as bytes: response_start maps them to a body format as they are.
            headers: Any = message.get("headers", ())
            content_type: bytes | str | None = None
            content_encoding: str | None = None
            usage: dict[str, str] | None = None
            kinds = RESPONSE_HEADER_KINDS
            try:
                for key, value in headers:
                    what = kinds[key] if key in kinds else header_kind(key)
                    if what:
                        if what == 1:
                            content_type = value if value.__class__ is bytes else bytes(value)
                        elif what == 2:
                            content_encoding = value.decode("latin-1")
                        else:
                            if usage is None:
                                usage = {}
                            usage[key.lower().decode("latin-1")] = value.decode("latin-1")
            except Exception:
                self._odd_headers(message)
                return
            self.response_start(message["status"], content_type, content_encoding, usage)  # type: ignore[typeddict-item]
        elif kind == "http.response.pathsend":
            self.finish(COMPLETED)
        elif kind == "http.response.zerocopysend":
            # The body goes from a file descriptor straight to the socket: not read.
            if not message.get("more_body", False):
                self.finish(COMPLETED)

    def _odd_headers(self, message: Any) -> None:
        """A response start whose headers are not pairs of bytes (a bytearray name): the
        general reader; headers that are not pairs at all, the server refuses: not read."""
        try:
            content_type, content_encoding, usage = response_headers(message.get("headers", ()))
        except Exception as exc:
            self.metering.failures.failed("llm-metrics", "read the response headers (the call is not read)", exc)
            self.metering.count_error("internal")
            self.status = message["status"]
            return
        self.response_start(message["status"], content_type, content_encoding, usage)


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

    async def send(self, message: ASGISendEvent) -> None:
        if self.extra_headers and message["type"] == "http.response.start":
            message = {**message, "headers": with_raw_headers(message.get("headers", ()), self.extra_headers)}
        await _AsgiCall.send(self, message)


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
        call.app_send = send
        call.disconnected = False

        # The request is current for the whole app call, streaming body included: outgoing
        # LLM calls the app makes meanwhile are counted here (see _metering/context.py).
        # CURRENT.set/reset inline rather than context.enter/leave: two calls fewer per request.
        token = CURRENT.set(call)
        try:
            await self.app(scope, call.receive, call.send)
        except asyncio.CancelledError:
            call.finish(DISCONNECTED)
            raise
        except BaseException:
            call.finish(DISCONNECTED if call.disconnected else ERROR)
            raise
        finally:
            try:
                CURRENT.reset(token)
            except (ValueError, RuntimeError):  # reset in another context: see context.leave
                pass
            if not call.finished:  # the usual case is finished at the last body message
                call.finish(DISCONNECTED if call.disconnected else ERROR)
