"""Pure ASGI 3 middleware: a short driver of :class:`~.._metering.metered_call.MeteredCall`.

``send`` is awaited first and the message looked at afterwards, so the client gets every
message as the app produced it, when it produced it. All per-request state lives in the
``MeteredCall`` and in locals of ``__call__``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .._metering.call import COMPLETED, DISCONNECTED, ERROR
from .._metering.context import CURRENT
from .._metering.metered_call import MeteredCall
from .._metering.metering import USAGE_HEADER_NAMES
from .._metering.request import RequestView
from .base import MiddlewareBase
from .limited import asgi_check, with_raw_headers

# Response headers that carry usage (Bedrock's token-count headers), as ASGI spells them.
_USAGE_HEADERS = frozenset(name.encode("latin-1") for name in USAGE_HEADER_NAMES)

if TYPE_CHECKING:
    from asgiref.typing import (
        ASGI3Application,  # noqa: F401 (named in a string base class)
        ASGIReceiveCallable,
        ASGIReceiveEvent,
        ASGISendCallable,
        ASGISendEvent,
        Scope,
    )


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

        call = MeteredCall(self.metering, RequestView.from_scope(scope))
        disconnected = False
        read_ahead: list[ASGIReceiveEvent] = []
        extra_headers: list[tuple[bytes, bytes]] = []
        if self.metering.limits is not None:
            checked = await asgi_check(self.metering, call, receive, send)
            if checked is None:
                return  # refused with 429: the app is not called
            read_ahead, extra_headers = checked

        async def metered_receive() -> ASGIReceiveEvent:
            nonlocal disconnected
            if read_ahead:  # the body messages the limit check read ahead, already peeked at
                message = read_ahead.pop(0)
                if message["type"] == "http.disconnect":
                    disconnected = True
                return message
            message = await receive()
            kind = message["type"]
            if kind == "http.request":
                if call.peek is not None:
                    call.request_body(message.get("body", b""))  # type: ignore[arg-type]
            elif kind == "http.disconnect":
                disconnected = True
            return message

        async def metered_send(message: ASGISendEvent) -> None:
            nonlocal disconnected
            if extra_headers and message["type"] == "http.response.start":
                message = {**message, "headers": with_raw_headers(message.get("headers", ()), extra_headers)}
            try:
                await send(message)
            except BaseException:
                # A send that fails is the client gone (uvicorn raises OSError on a closed
                # connection); an OSError the app raises itself (a TimeoutError or
                # ConnectionRefusedError from its upstream) is an error, not a disconnect.
                disconnected = True
                raise
            kind: str = message["type"]
            if kind == "http.response.body":
                call.feed(message.get("body", b""))  # type: ignore[arg-type]
                if not message.get("more_body", False):
                    call.finish(COMPLETED)
            elif kind == "http.response.start":
                content_type = content_encoding = None
                usage_headers: dict[str, str] | None = None
                for key, value in message.get("headers", ()):  # type: ignore[attr-defined]
                    key = key.lower()
                    if key == b"content-type":
                        content_type = value.decode("latin-1")
                    elif key == b"content-encoding":
                        content_encoding = value.decode("latin-1")
                    elif key in _USAGE_HEADERS:
                        if usage_headers is None:
                            usage_headers = {}
                        usage_headers[key.decode("latin-1")] = value.decode("latin-1")
                call.response_start(message["status"], content_type, content_encoding, usage_headers)  # type: ignore[typeddict-item]
            elif kind == "http.response.pathsend":
                call.finish(COMPLETED)
            elif kind == "http.response.zerocopysend":
                # The body goes from a file descriptor straight to the socket: not read.
                if not message.get("more_body", False):
                    call.finish(COMPLETED)

        # The request is current for the whole app call, streaming body included: outgoing
        # LLM calls the app makes meanwhile are counted here (see _metering/context.py).
        # CURRENT.set/reset inline rather than context.enter/leave: two calls fewer per request.
        token = CURRENT.set(call)
        try:
            await self.app(scope, metered_receive, metered_send)
        except asyncio.CancelledError:
            call.finish(DISCONNECTED)
            raise
        except BaseException:
            call.finish(DISCONNECTED if disconnected else ERROR)
            raise
        finally:
            try:
                CURRENT.reset(token)
            except (ValueError, RuntimeError):  # reset in another context: see context.leave
                pass
            if not call.finished:  # the usual case is finished at the last body message
                call.finish(DISCONNECTED if disconnected else ERROR)
