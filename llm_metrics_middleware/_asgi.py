"""Pure ASGI 3 middleware: a short driver of :class:`~._meter.CallMeter`.

``send`` is awaited first and the message looked at afterwards, so the client gets every
message as the app produced it, when it produced it. All per-request state lives in the
``CallMeter`` and in locals of ``__call__``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._dimensions import Dimension
from ._estimate import TokenCounter
from ._meter import DEFAULT_MAX_SERIES, Meter
from ._options import metrics_exporter
from ._providers import UsagePointers
from ._record import COMPLETED, DISCONNECTED, ERROR, Exporter
from ._request import RequestView

if TYPE_CHECKING:
    from asgiref.typing import (
        ASGI3Application,
        ASGIReceiveCallable,
        ASGIReceiveEvent,
        ASGISendCallable,
        ASGISendEvent,
        Scope,
    )


class LLMMetricsMiddleware:
    """Counts the LLM tokens of every response that passes, by dimension.

    ``app.add_middleware(LLMMetricsMiddleware, exporters=[PrometheusExporter()])`` in
    Starlette or FastAPI, or ``LLMMetricsMiddleware(app, exporters=[...])`` around any ASGI
    3 app. Options:

    - ``exporters``: where the counts go (at least one).
    - ``dimensions``: names of default dimensions and/or :class:`Dimension` objects;
      default: the seven Azure API Management defaults plus ``"Model"``.
    - ``namespace``: metric namespace (Prometheus prefix, Azure namespace); ``"llm"``.
    - ``provider``: force the provider name instead of detecting it (``"mistral"``).
    - ``custom_usage``: a :class:`UsagePointers` for a usage format of your own.
    - ``estimate``: estimate tokens of streams that report no usage (default True).
    - ``token_counter``: ``Callable[[str], int]`` used for estimates.
    - ``max_series``: cap on distinct dimension combinations (default 2000).
    - ``location``, ``gateway_id``: fixed values for those default dimensions.
    - ``subscription_secret``: key of the Subscription ID hash.
    - ``metrics_path``: serve the Prometheus exporter's metrics at this path.
    """

    def __init__(
        self,
        app: ASGI3Application,
        *,
        exporters: Sequence[Exporter],
        dimensions: Sequence[Dimension | str] | None = None,
        namespace: str = "llm",
        provider: str | None = None,
        custom_usage: UsagePointers | None = None,
        estimate: bool = True,
        token_counter: TokenCounter | None = None,
        max_series: int = DEFAULT_MAX_SERIES,
        location: str | None = None,
        gateway_id: str | None = None,
        subscription_secret: bytes | str | None = None,
        metrics_path: str | None = None,
    ) -> None:
        self.app = app
        self.meter = Meter(
            exporters=exporters,
            dimensions=dimensions,
            namespace=namespace,
            provider=provider,
            custom_usage=custom_usage,
            estimate=estimate,
            token_counter=token_counter,
            max_series=max_series,
            location=location,
            gateway_id=gateway_id,
            subscription_secret=subscription_secret,
        )
        self._marker = "llm_metrics_middleware:" + namespace
        self._metrics_path = metrics_path
        exporter = metrics_exporter(self.meter.exporters, metrics_path)
        self._metrics_app = exporter.asgi_app() if exporter is not None else None

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._metrics_app is not None and scope["path"] == self._metrics_path:
            await self._metrics_app(scope, receive, send)
            return
        # Two stacked copies with one namespace would count every call twice.
        state: Any = scope
        if state.get(self._marker):
            await self.app(scope, receive, send)
            return
        state[self._marker] = True

        call = self.meter.begin(RequestView.from_scope(scope))
        disconnected = False

        async def metered_receive() -> ASGIReceiveEvent:
            nonlocal disconnected
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
            try:
                await send(message)
            except OSError:
                disconnected = True  # uvicorn raises on a closed connection
                raise
            kind: str = message["type"]
            if kind == "http.response.body":
                call.body(message.get("body", b""))  # type: ignore[arg-type]
                if not message.get("more_body", False):
                    call.finish(COMPLETED)
            elif kind == "http.response.start":
                content_type = content_encoding = None
                for key, value in message.get("headers", ()):  # type: ignore[attr-defined]
                    key = key.lower()
                    if key == b"content-type":
                        content_type = value.decode("latin-1")
                    elif key == b"content-encoding":
                        content_encoding = value.decode("latin-1")
                call.response_start(message["status"], content_type, content_encoding)  # type: ignore[typeddict-item]
            elif kind == "http.response.pathsend":
                call.finish(COMPLETED)

        try:
            await self.app(scope, metered_receive, metered_send)
        except (asyncio.CancelledError, OSError):
            call.finish(DISCONNECTED)
            raise
        except BaseException:
            call.finish(DISCONNECTED if disconnected else ERROR)
            raise
        finally:
            call.finish(DISCONNECTED if disconnected else ERROR)
