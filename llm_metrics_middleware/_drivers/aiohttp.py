"""Outgoing LLM calls through ``aiohttp.ClientSession``: a short driver of :class:`MeteredCall`.

:func:`instrument_aiohttp` patches ``ClientSession._request`` on the class (every request
method of every session goes through it), :func:`uninstrument_aiohttp` puts it back. Who
counts a call is decided as for httpx (see :mod:`.outgoing`).

Trace configs do not see a streamed body, so the response's ``content`` (the
``StreamReader`` the caller, ``read()``, ``json()`` and ``text()`` all read from) is replaced
by a tee that feeds each piece the caller reads to the call and hands it on unchanged:
nothing is read ahead or held back. The protocol keeps feeding the original reader; the tee
only takes from it. The call ends at the body's end, on ``release()`` / ``close()`` of the
response, or when a read fails.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp

from .._metering.call import COMPLETED, DISCONNECTED
from .._metering.headers import response_headers
from .._metering.metered_call import MeteredCall
from .outgoing import BodyTee, Outgoing, OutgoingOptions, metered_send

if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = logging.getLogger("llm_metrics_middleware")

_ORIGINAL_REQUEST = aiohttp.ClientSession._request
_instrumented: Outgoing | None = None


class _TeeContent(BodyTee):
    """``response.content`` as the caller reads it, shown to the call on the way.

    Every reading method delegates to the real reader and feeds what it returned; methods
    built on others (``iter_any`` on ``readany``) are rebuilt here on the tee's own, so a
    piece is fed once. Anything else (``at_eof``, ``exception``...) goes to the real reader.
    """

    async def _read(self, name: str, *args: Any, **kwargs: Any) -> bytes:
        try:
            data: bytes = await getattr(self._inner, name)(*args, **kwargs)
        except BaseException as exc:
            self._failed(type(exc))
            raise
        self._fed(data)
        return data

    def _fed(self, data: bytes) -> None:
        try:
            self._feed(data)
            if self._inner.at_eof():
                self._end(COMPLETED)
        except Exception:
            logger.exception("llm-metrics: could not read an outgoing response chunk")

    async def read(self, n: int = -1) -> bytes:
        return await self._read("read", n)

    async def readany(self) -> bytes:
        return await self._read("readany")

    async def readline(self, **kwargs: Any) -> bytes:
        return await self._read("readline", **kwargs)

    async def readuntil(self, separator: bytes = b"\n", **kwargs: Any) -> bytes:
        return await self._read("readuntil", separator, **kwargs)

    async def readexactly(self, n: int) -> bytes:
        return await self._read("readexactly", n)

    async def readchunk(self) -> tuple[bytes, bool]:
        try:
            data, end = await self._inner.readchunk()
        except BaseException as exc:
            self._failed(type(exc))
            raise
        self._fed(data)
        return data, end

    def read_nowait(self, n: int = -1) -> bytes:
        data: bytes = self._inner.read_nowait(n)
        self._fed(data)
        return data

    async def _lines(self) -> AsyncIterator[bytes]:
        while line := await self.readline():
            yield line

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._lines()

    async def iter_any(self) -> AsyncIterator[bytes]:
        while data := await self.readany():
            yield data

    async def iter_chunked(self, n: int) -> AsyncIterator[bytes]:
        while data := await self.read(n):
            yield data

    async def iter_chunks(self) -> AsyncIterator[tuple[bytes, bool]]:
        while True:
            data, end = await self.readchunk()
            if not data and not end:
                return
            yield data, end

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _request_body(session: aiohttp.ClientSession, kwargs: dict[str, Any]) -> bytes | None:
    """The body ``_request`` will send, when it is bytes we can see without consuming it."""
    if kwargs.get("json") is not None:
        serialize = getattr(session, "_json_serialize", json.dumps)
        text = serialize(kwargs["json"])
        return text.encode("utf-8") if isinstance(text, str) else bytes(text)
    data = kwargs.get("data")
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    return None


def _begin(outgoing: Outgoing, session: aiohttp.ClientSession, method: str, url_arg: Any,
           kwargs: dict[str, Any], marker: object) -> MeteredCall | None:
    try:
        url = session._build_url(url_arg)
        headers = dict(session.headers)
        headers.update(kwargs.get("headers") or {})
        raw = [(str(k).encode("latin-1", "replace"), str(v).encode("latin-1", "replace")) for k, v in headers.items()]
        call = outgoing.begin(marker, method.upper(), url.path or "/", url.query_string, raw, url.host)
        if call is not None and call.peek is not None:
            body = _request_body(session, kwargs)
            if body is not None:
                call.request_body(body)
        return call
    except Exception:
        logger.exception("llm-metrics: could not read an outgoing request; it is not counted")
        return None


def _tee(session: aiohttp.ClientSession, response: aiohttp.ClientResponse, call: MeteredCall) -> None:
    """Start the call's response and put the tee in front of ``response.content``."""
    content_type, encoding, usage = response_headers(response.raw_headers)
    # aiohttp decompresses by default: the pieces read are then already decoded.
    if getattr(session, "_auto_decompress", True):
        encoding = None
    call.response_start(response.status, content_type, encoding, usage)
    tee = _TeeContent(response.content, call)
    response.content = tee  # type: ignore[assignment]
    release, close = response.release, response.close

    def metered_release() -> Any:
        try:
            return release()
        finally:
            tee._end(DISCONNECTED)

    def metered_close() -> None:
        try:
            close()
        finally:
            tee._end(DISCONNECTED)

    response.release = metered_release  # type: ignore[method-assign]
    response.close = metered_close  # type: ignore[method-assign]
    if tee._inner.at_eof():
        call.finish(COMPLETED)  # an empty body (a HEAD, a 204): nothing will be read


async def _patched_request(self: aiohttp.ClientSession, method: str, str_or_url: Any, **kwargs: Any) -> Any:
    outgoing = _instrumented
    marker = object()
    call = None if outgoing is None else _begin(outgoing, self, method, str_or_url, kwargs, marker)
    if call is None:
        return await _ORIGINAL_REQUEST(self, method, str_or_url, **kwargs)
    with metered_send(marker, call):
        response = await _ORIGINAL_REQUEST(self, method, str_or_url, **kwargs)
    try:
        _tee(self, response, call)
    except Exception:
        logger.exception("llm-metrics: could not read an outgoing response; it is not counted")
        call.finished = True
    return response


def instrument_aiohttp(**options: Unpack[OutgoingOptions]) -> None:
    """:func:`instrument_httpx` for ``aiohttp``: every ``ClientSession`` meters LLM calls."""
    global _instrumented
    _instrumented = Outgoing(**options)
    aiohttp.ClientSession._request = _patched_request  # type: ignore[method-assign]


def uninstrument_aiohttp() -> None:
    """Undo :func:`instrument_aiohttp`."""
    global _instrumented
    _instrumented = None
    aiohttp.ClientSession._request = _ORIGINAL_REQUEST  # type: ignore[method-assign]
