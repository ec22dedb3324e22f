"""Outgoing LLM calls through ``httpx`` and ``httpx2``: a short driver of :class:`MeteredCall`.

Two ways in, one code path:

- :func:`instrument_httpx` patches ``handle_request`` / ``handle_async_request`` of the
  packages' own transports (``HTTPTransport``, ``AsyncHTTPTransport``, ``WSGITransport``,
  ``ASGITransport``, ``MockTransport``) on the classes, as opentelemetry-instrumentation-httpx
  does, so clients built before the call are covered too, those inside the official SDKs
  included; :func:`uninstrument_httpx` puts the originals back.
- :class:`LLMMetricsTransport` wraps one transport, for one client.

The transport's response stream is replaced by a tee of the same package's
``SyncByteStream`` / ``AsyncByteStream`` class that feeds every chunk to the call as the
caller reads it, and hands it on unchanged: nothing is read ahead or held back. The call
ends when the stream is exhausted, fails, or is closed (an SDK that stops at ``[DONE]``
closes early: with the stream's end mark seen, that is a completed call).
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

from .._metering.call import COMPLETED, DISCONNECTED
from .._metering.headers import response_headers
from .._metering.metered_call import MeteredCall
from .outgoing import BodyTee, Outgoing, OutgoingOptions, metered_send, sending

if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = logging.getLogger("llm_metrics_middleware")

#: The packages we instrument: httpx2 (the official OpenAI and Anthropic SDKs) and httpx.
PACKAGES = ("httpx2", "httpx")
#: (class, method) of each package's transports that send requests.
_TARGETS = (
    ("HTTPTransport", "handle_request"),
    ("AsyncHTTPTransport", "handle_async_request"),
    ("WSGITransport", "handle_request"),
    ("ASGITransport", "handle_async_request"),
    ("MockTransport", "handle_request"),
    ("MockTransport", "handle_async_request"),
)
_ORIGINAL = "_llm_metrics_original"

#: The options of the active instrument_httpx(), None when not instrumented.
_instrumented: Outgoing | None = None
#: Patched (class, method name, original function), to undo.
_patched: list[tuple[type, str, Any]] = []


# -- the tee ---------------------------------------------------------------------------------


def _tee_classes(module: ModuleType) -> tuple[type, type]:
    """Stream tees that are instances of ``module``'s own stream classes (httpx asserts it)."""

    class SyncTee(BodyTee, module.SyncByteStream):  # type: ignore[name-defined,misc]
        def __iter__(self) -> Iterator[bytes]:
            with self:
                for chunk in self._inner:
                    self._feed(chunk)
                    yield chunk

        def close(self) -> None:
            try:
                self._inner.close()
            finally:
                self._end(DISCONNECTED)

    class AsyncTee(BodyTee, module.AsyncByteStream):  # type: ignore[name-defined,misc]
        async def __aiter__(self) -> AsyncIterator[bytes]:
            with self:
                async for chunk in self._inner:
                    self._feed(chunk)
                    yield chunk

        async def aclose(self) -> None:
            try:
                await self._inner.aclose()
            finally:
                self._end(DISCONNECTED)

    return SyncTee, AsyncTee


_tees: dict[str, tuple[type, type]] = {}


def _tee_for(response: Any, is_async: bool) -> type:
    name = type(response).__module__.partition(".")[0]
    pair = _tees.get(name)
    if pair is None:
        pair = _tees[name] = _tee_classes(sys.modules[name])
    return pair[1] if is_async else pair[0]


# -- one call --------------------------------------------------------------------------------


def _begin(outgoing: Outgoing, request: Any) -> MeteredCall | None:
    try:
        url = request.url
        call = outgoing.begin(request, request.method, url.path, url.query.decode("latin-1"), request.headers.raw, url.host)
        if call is not None and call.peek is not None:
            try:
                content = request.content  # bytes bodies (SDKs, json=) are read already
            except Exception:
                content = None  # a streamed request body: counted without its fields
            if content:
                call.request_body(content)
        return call
    except Exception:
        logger.exception("llm-metrics: could not read an outgoing request; it is not counted")
        return None


def _attach(call: MeteredCall, response: Any, is_async: bool) -> None:
    """Start reading ``response`` into ``call``; never raises."""
    try:
        call.response_start(response.status_code, *response_headers(response.headers.raw))
        if hasattr(response, "_content"):
            # Built with its body (a mock's Response(json=...)): nothing will iterate the stream.
            call.body(response._content)
            call.finish(COMPLETED)
            return
        response.stream = _tee_for(response, is_async)(response.stream, call)
    except Exception:
        logger.exception("llm-metrics: could not read an outgoing response; it is not counted")
        call.metering.count_error("internal")
        call.finished = True


def _send(outgoing: Outgoing, send: Callable[[Any], Any], request: Any) -> Any:
    call = _begin(outgoing, request)
    if call is None:
        return send(request)
    with metered_send(request, call):
        response = send(request)
    _attach(call, response, False)
    return response


async def _send_async(outgoing: Outgoing, send: Callable[[Any], Awaitable[Any]], request: Any) -> Any:
    call = _begin(outgoing, request)
    if call is None:
        return await send(request)
    with metered_send(request, call):
        response = await send(request)
    _attach(call, response, True)
    return response


# -- instrument_httpx ------------------------------------------------------------------------


def _patch_sync(original: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def handle_request(self: Any, request: Any) -> Any:
        outgoing = _instrumented
        if outgoing is None or sending(request):
            return original(self, request)
        return _send(outgoing, lambda r: original(self, r), request)

    setattr(handle_request, _ORIGINAL, original)
    handle_request.__wrapped__ = original  # type: ignore[attr-defined]
    return handle_request


def _patch_async(original: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    async def handle_async_request(self: Any, request: Any) -> Any:
        outgoing = _instrumented
        if outgoing is None or sending(request):
            return await original(self, request)
        return await _send_async(outgoing, lambda r: original(self, r), request)

    setattr(handle_async_request, _ORIGINAL, original)
    handle_async_request.__wrapped__ = original  # type: ignore[attr-defined]
    return handle_async_request


def _installed() -> list[ModuleType]:
    modules = []
    for name in PACKAGES:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            continue
    return modules


def instrument_httpx(**options: Unpack[OutgoingOptions]) -> None:
    """Meter the LLM calls of every ``httpx`` and ``httpx2`` client of the process.

    Clients built before the call are covered, those inside the official OpenAI and
    Anthropic SDKs included. A call made while a request passes through one of our
    middlewares is counted by that middleware, under the incoming request's dimensions;
    a call outside any request by ``exporters=`` (with ``dimensions=`` and the middlewares'
    other ``**options``), evaluated on the outgoing request and :func:`metering_context`
    values; without exporters it is not counted. Only calls to known LLM paths (and
    ``include_paths=``) are read. Calling it again replaces the options.
    """
    global _instrumented
    outgoing = Outgoing(**options)
    modules = _installed()
    if not modules:
        raise ImportError("instrument_httpx() needs httpx or httpx2 installed (pip install httpx2)")
    if not _patched:
        for module in modules:
            for class_name, method in _TARGETS:
                cls = getattr(module, class_name, None)
                function = cls.__dict__.get(method) if isinstance(cls, type) else None
                if cls is None or function is None or hasattr(function, _ORIGINAL):
                    continue
                patch = _patch_async(function) if method == "handle_async_request" else _patch_sync(function)
                setattr(cls, method, patch)
                _patched.append((cls, method, function))
    _instrumented = outgoing


def uninstrument_httpx() -> None:
    """Undo :func:`instrument_httpx`: the transports' own methods are put back."""
    global _instrumented
    _instrumented = None
    while _patched:
        cls, method, function = _patched.pop()
        setattr(cls, method, function)


# -- LLMMetricsTransport ---------------------------------------------------------------------


def _bases() -> tuple[type, ...]:
    """Each package's transport base classes, so that type checkers and ``isinstance``
    accept the transport in either package's clients; a stand-in for a missing package."""
    bases: list[type] = []
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
            bases += [module.BaseTransport, module.AsyncBaseTransport]
        except (ImportError, AttributeError):
            bases += [type(f"_No{name}Base", (), {}), type(f"_No{name}AsyncBase", (), {})]
    return tuple(bases)


if TYPE_CHECKING:
    from httpx import AsyncBaseTransport as _HttpxAsyncBase
    from httpx import BaseTransport as _HttpxBase
    from httpx2 import AsyncBaseTransport as _Httpx2AsyncBase
    from httpx2 import BaseTransport as _Httpx2Base
else:
    _Httpx2Base, _Httpx2AsyncBase, _HttpxBase, _HttpxAsyncBase = _bases()


class LLMMetricsTransport(_Httpx2Base, _Httpx2AsyncBase, _HttpxBase, _HttpxAsyncBase):
    """A transport that meters the LLM calls of one client: ``httpx2.Client(transport=LLMMetricsTransport())``.

    Sync or async, of ``httpx`` or ``httpx2``. ``transport`` is the transport it wraps;
    by default the client package's own ``HTTPTransport`` / ``AsyncHTTPTransport``, built
    at the first request (so configure TLS, proxies and limits on a transport you pass in).
    ``**options`` are those of :func:`instrument_httpx`. Inside an instrumented process a
    call is counted once, by this transport.
    """

    def __init__(
        self, transport: Any = None, **options: Unpack[OutgoingOptions]
    ) -> None:
        self._outgoing = Outgoing(**options)
        self._transport = transport
        self._defaults: dict[tuple[str, bool], Any] = {}

    @property
    def metering(self) -> Any:
        """The Metering of calls made outside any request (None without exporters)."""
        return self._outgoing.default

    def _inner(self, request: Any, is_async: bool) -> Any:
        if self._transport is not None:
            return self._transport
        key = (type(request).__module__.partition(".")[0], is_async)
        inner = self._defaults.get(key)
        if inner is None:
            module = sys.modules[key[0]]
            inner = self._defaults[key] = module.AsyncHTTPTransport() if is_async else module.HTTPTransport()
        return inner

    def handle_request(self, request: Any) -> Any:
        return _send(self._outgoing, self._inner(request, False).handle_request, request)

    async def handle_async_request(self, request: Any) -> Any:
        return await _send_async(self._outgoing, self._inner(request, True).handle_async_request, request)

    def close(self) -> None:
        for inner in [self._transport, *(t for (_, is_async), t in self._defaults.items() if not is_async)]:
            close = getattr(inner, "close", None)
            if close is not None:
                close()

    async def aclose(self) -> None:
        for inner in [self._transport, *(t for (_, is_async), t in self._defaults.items() if is_async)]:
            aclose = getattr(inner, "aclose", None)
            if aclose is not None:
                await aclose()

    def __enter__(self) -> LLMMetricsTransport:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None = None, exc: BaseException | None = None, tb: TracebackType | None = None
    ) -> None:
        self.close()

    async def __aenter__(self) -> LLMMetricsTransport:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None = None, exc: BaseException | None = None, tb: TracebackType | None = None
    ) -> None:
        await self.aclose()
