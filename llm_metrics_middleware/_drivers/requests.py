"""Outgoing LLM calls through ``requests``: a short driver of :class:`MeteredCall`.

:class:`LLMMetricsAdapter` is a ``requests.adapters.HTTPAdapter`` for one session
(``session.mount("https://", LLMMetricsAdapter())``); :func:`instrument_requests` patches
``HTTPAdapter.send`` on the class, so every session of the process is covered, and
:func:`uninstrument_requests` undoes it. Who counts a call is decided as for httpx (see
:mod:`.outgoing`).

``requests`` reads the body after the adapter returned, through ``response.raw.stream()``
(urllib3, decoding ``Content-Encoding`` on the way) or ``response.raw.read()``: ``raw`` is
replaced by a tee that feeds each piece the caller reads to the call and hands it on
unchanged. Whether the pieces are decoded is known only at the first read, so the call's
response starts then.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
import requests.adapters

from .._metering.call import COMPLETED, DISCONNECTED, ERROR, Outcome
from .._metering.headers import usage_headers_of
from .._metering.metered_call import MeteredCall
from .outgoing import BodyTee, Outgoing, OutgoingOptions, metered_send, sending

if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = logging.getLogger("llm_metrics_middleware")

_ORIGINAL_SEND = requests.adapters.HTTPAdapter.send
_instrumented: Outgoing | None = None


def _latin1(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("latin-1", "replace")


class _TeeRaw(BodyTee):
    """``response.raw`` as the caller reads it, shown to the call on the way."""

    def __init__(
        self,
        raw: Any,
        call: MeteredCall,
        status: int,
        content_type: str | None,
        encoding: str | None,
        usage_headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(raw, call)
        self._head: tuple[int, str | None, str | None] | None = (status, content_type, encoding)
        self._usage_headers = usage_headers

    def _start(self, decoded: bool) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._call.response_start(head[0], head[1], None if decoded else head[2], self._usage_headers)

    def stream(self, amt: int | None = 2**16, decode_content: bool | None = None) -> Iterator[bytes]:
        self._start(bool(decode_content))
        with self:
            for chunk in self._inner.stream(amt, decode_content=decode_content):
                self._feed(chunk)
                yield chunk

    def read(self, amt: int | None = None, decode_content: bool | None = None, **kwargs: Any) -> bytes:
        self._start(bool(decode_content))
        try:
            data: bytes = self._inner.read(amt, decode_content=decode_content, **kwargs)
        except BaseException:
            self._end(ERROR)
            raise
        self._feed(data)
        if not data or amt is None:
            self._end(COMPLETED)
        return data

    def _end(self, outcome: Outcome) -> None:
        self._start(True)  # a body never read still needs its response started
        super()._end(outcome)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._end(DISCONNECTED)

    def release_conn(self) -> None:
        try:
            self._inner.release_conn()
        finally:
            self._end(DISCONNECTED)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _send(outgoing: Outgoing, adapter: Any, request: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    call = None
    try:
        url = urlsplit(request.url)
        headers = [(_latin1(k), _latin1(v)) for k, v in request.headers.items()]
        call = outgoing.begin(request, request.method or "GET", url.path or "/", url.query, headers, url.hostname)
        body = request.body
        if call is not None and call.peek is not None and isinstance(body, (bytes, str)):
            call.request_body(body.encode("utf-8") if isinstance(body, str) else body)
    except Exception:
        logger.exception("llm-metrics: could not read an outgoing request; it is not counted")
        call = None
    if call is None:
        return _ORIGINAL_SEND(adapter, request, *args, **kwargs)
    with metered_send(request, call):
        response = _ORIGINAL_SEND(adapter, request, *args, **kwargs)
    try:
        got = response.headers
        response.raw = _TeeRaw(response.raw, call, response.status_code, got.get("content-type"),
                               got.get("content-encoding"), usage_headers_of(got))
    except Exception:
        logger.exception("llm-metrics: could not read an outgoing response; it is not counted")
        call.finished = True
    return response


def _patched_send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
    outgoing = _instrumented
    if outgoing is None or sending(request):
        return _ORIGINAL_SEND(self, request, *args, **kwargs)
    return _send(outgoing, self, request, args, kwargs)


def instrument_requests(**options: Unpack[OutgoingOptions]) -> None:
    """:func:`instrument_httpx` for ``requests``: every session's ``HTTPAdapter`` meters LLM calls."""
    global _instrumented
    _instrumented = Outgoing(**options)
    requests.adapters.HTTPAdapter.send = _patched_send  # type: ignore[method-assign]


def uninstrument_requests() -> None:
    """Undo :func:`instrument_requests`."""
    global _instrumented
    _instrumented = None
    requests.adapters.HTTPAdapter.send = _ORIGINAL_SEND  # type: ignore[method-assign]


class LLMMetricsAdapter(requests.adapters.HTTPAdapter):
    """An ``HTTPAdapter`` that meters the LLM calls of one session.

    ``session.mount("https://", LLMMetricsAdapter(exporters=[...]))``. Options are those of
    :func:`instrument_httpx`, plus ``adapter_options`` for ``HTTPAdapter`` itself
    (``{"pool_maxsize": 20, "max_retries": 3}``).
    """

    def __init__(
        self, *, adapter_options: dict[str, Any] | None = None, **options: Unpack[OutgoingOptions]
    ) -> None:
        super().__init__(**(adapter_options or {}))
        self._outgoing = Outgoing(**options)

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        response: requests.Response = _send(self._outgoing, self, request, args, kwargs)
        return response
