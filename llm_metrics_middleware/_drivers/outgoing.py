"""What every outgoing-call driver shares: which calls are LLM calls, and who counts them.

An outgoing driver (httpx transports, the ``requests`` adapter) asks :meth:`Outgoing.begin`
for a :class:`MeteredCall` when a request starts and drives it exactly as the incoming
drivers do (``request_body``, ``response_start``, ``body``, ``finish``). ``begin`` answers
None, cheaply, for everything that is not to be counted: a path that is no LLM operation,
a call already metered by an outer layer (a :class:`LLMMetricsTransport` inside an
instrumented client), a call outside any request when no exporters were given.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypedDict, cast

from .._core.estimate import TokenCounter
from .._core.providers import UsagePointers, route_of
from .._core.providers.facts import STREAM_END_TAIL as TAIL
from .._core.providers.facts import stream_ended
from .._metering import context
from .._metering.call import COMPLETED, DISCONNECTED, ERROR, Exporter, Outcome
from .._metering.dimensions import Dimension
from .._metering.metered_call import MeteredCall
from .._metering.metering import Metering
from .._metering.paths import PathFilter, PathPatterns
from .._metering.pricing import PricingOption
from .._metering.request import RequestView

if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = logging.getLogger("llm_metrics_middleware")

#: The request a metering layer is sending: layers below it (an instrumented transport
#: inside a ``LLMMetricsTransport``) pass that same request through uncounted. The request
#: itself, not a flag: an in-process app behind ``ASGITransport`` runs in the sender's task,
#: and the calls it makes (other request objects) are still counted.
SENDING: contextvars.ContextVar[object] = contextvars.ContextVar("llm_metrics_middleware.sending", default=None)


def sending(request: object) -> bool:
    """Whether an outer metering layer is already sending ``request``."""
    return SENDING.get() is request

@contextlib.contextmanager
def metered_send(request: object, call: MeteredCall) -> Iterator[None]:
    """Around sending ``request`` for ``call``: layers below pass that request through
    uncounted (see :data:`SENDING`), and a send that fails ends the call as an error."""
    token = SENDING.set(request)
    try:
        yield
    except BaseException:
        call.finish(ERROR)
        raise
    finally:
        SENDING.reset(token)


#: Exceptions out of a read that say the caller stopped reading, not that the read failed.
_STOPPED = (GeneratorExit, asyncio.CancelledError)


class BodyTee:
    """What every outgoing response tee shares, whatever the client library.

    ``_feed`` shows each piece the caller reads to the call and keeps the body's last bytes;
    ``_end`` ends the call, a close before the end counting as completed when those bytes
    hold the stream's end mark. Used as a context manager around the reading loop, it ends
    the call by how the loop ended: exhausted, closed early (``GeneratorExit``) or failed.
    """

    def __init__(self, inner: Any, call: MeteredCall) -> None:
        self._inner = inner
        self._call = call
        self._tail = b""

    def _feed(self, chunk: bytes) -> None:
        if chunk:
            self._call.feed(chunk)  # the feed of the moment (it swaps itself), not body()
            self._tail = chunk[-TAIL:] if len(chunk) >= TAIL else (self._tail + chunk)[-TAIL:]

    def _end(self, outcome: Outcome) -> None:
        if outcome == DISCONNECTED and stream_ended(self._tail):
            outcome = COMPLETED
        self._call.finish(outcome)

    def __enter__(self) -> None:
        return None

    def _failed(self, exc_type: type[BaseException]) -> None:
        """End the call on an exception out of a read. The caller stopping (its generator
        closed, its task cancelled, as Starlette cancels a response's stream when its own
        client leaves) is a disconnect, completed if the end mark had come; any other is a
        failed read."""
        self._end(DISCONNECTED if issubclass(exc_type, _STOPPED) else ERROR)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self._end(COMPLETED)
        else:
            self._failed(exc_type)


class OutgoingOptions(TypedDict, total=False):
    """The options of ``instrument_httpx``, ``instrument_requests``, ``instrument_aiohttp``,
    ``LLMMetricsTransport`` and ``LLMMetricsAdapter``, written once: ``exporters`` and the
    middlewares' metering options (same meaning and defaults as in the README's "Options"),
    for the calls made outside any request; ``include_paths`` / ``exclude_paths`` for the
    outgoing URL's path."""

    exporters: Sequence[Exporter] | None
    dimensions: Sequence[Dimension | str] | None
    include_paths: PathPatterns | None
    exclude_paths: PathPatterns | None
    namespace: str
    provider: str | None
    custom_usage: UsagePointers | None
    estimate: bool
    token_counter: TokenCounter | None
    max_series: int
    location: str | None
    gateway_id: str | None
    subscription_secret: bytes | str | None
    pricing: PricingOption


class Outgoing:
    """The options of ``instrument_httpx`` or of one ``LLMMetricsTransport``.

    ``exporters`` / ``dimensions`` / the other metering options build the
    :class:`Metering` that counts calls made outside any request; without exporters, those
    calls are not counted. Inside a request the middleware's own Metering counts the call.
    ``include_paths`` / ``exclude_paths`` apply to the outgoing URL's path: LLM calls to
    a path of your own (an internal gateway) are counted when ``include_paths`` names it.
    """

    def __init__(self, **options: Unpack[OutgoingOptions]) -> None:
        exporters = options.pop("exporters", None)
        self.paths = PathFilter(options.pop("include_paths", None), options.pop("exclude_paths", None))
        if exporters is None:
            if options:
                raise TypeError(
                    f"{', '.join(sorted(options))}= apply to the calls made outside any request, which only "
                    "exporters= count; pass exporters=[...] as well (inside a request the middleware's own "
                    "options apply)"
                )
            self.default: Metering | None = None
        else:
            # What is left are Metering's own keyword options (exporters and paths popped).
            self.default = Metering(exporters=exporters, **cast("dict[str, Any]", options))

    def begin(
        self,
        request: object,
        method: str,
        path: str,
        query: str,
        raw_headers: Iterable[tuple[bytes, bytes]],
        host: str | None = None,
    ) -> MeteredCall | None:
        """The per-call state for an outgoing ``request``, or None when it is not counted.

        ``host``: the URL's host, for clients whose headers do not carry it yet (requests,
        aiohttp add ``Host`` on the wire): the host tells Azure's ``/openai/v1/...`` from
        another server's (:func:`~.._metering.metering.route_of_call`)."""
        try:
            if sending(request):
                return None
            route = route_of(path)
            if not self.paths.meters(path, route.operation is not None):
                return None
            incoming = context.current()
            if incoming is not None:
                metering = incoming.metering
            elif self.default is not None:
                metering = self.default
            else:
                return None
            headers = [(k.lower(), v) for k, v in raw_headers]
            if host and not any(k == b"host" for k, _ in headers):
                headers.append((b"host", host.encode("latin-1", "replace")))
            call_view = RequestView(method, path, query, "", raw_headers=headers)
            view = incoming.view if incoming is not None else call_view
            call = MeteredCall(metering, view, call_view=call_view, origin="outgoing", incoming=incoming)
            # The outgoing options decided; the middleware's paths are incoming ones.
            call.metered = True
            call.overrides = context.overrides()
            if incoming is not None:
                incoming.counted_elsewhere = True  # a relayed response is not counted again
            return call
        except Exception:
            logger.exception("llm-metrics: could not start metering an outgoing call; it is not counted")
            return None
