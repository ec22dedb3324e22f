"""The token-limit check as the two drivers run it: read the body's start, ask, refuse or pass.

A limit's key may come from the request body (``"User ID"`` falls back to the body's
``user``, ``"Model"`` reads ``model``), but the check runs before the app, when the app has
not read the body yet. So when limits are on and the body is JSON, the driver reads up to
:data:`PREREAD_LIMIT` bytes of it first, shows them to the body peek, and hands the app the
very same bytes (ASGI: the same ``http.request`` messages, in order; WSGI: a ``wsgi.input``
that returns the bytes read, then the rest of the stream). Fields past that prefix are not
seen by the check (the key falls back as the dimension does, e.g. to ``X-User-Id``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .._metering.limits import Verdict, status_line
from .._metering.metered_call import MeteredCall
from .._metering.metering import Metering

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment
    from asgiref.typing import ASGIReceiveCallable, ASGIReceiveEvent, ASGISendCallable

#: How much of a JSON request body is read before the app, for keys read from the body.
PREREAD_LIMIT = 64 * 1024


def _response_headers(verdict: Verdict) -> list[tuple[str, str]]:
    return [
        ("content-type", "application/json"),
        ("content-length", str(len(verdict.body))),
        *verdict.headers,
    ]


# -- ASGI ------------------------------------------------------------------------------------


async def asgi_check(
    metering: Metering, call: MeteredCall, receive: ASGIReceiveCallable, send: ASGISendCallable
) -> tuple[list[ASGIReceiveEvent], list[tuple[bytes, bytes]]] | None:
    """Check the request's limits. None: refused (the 429 has been sent, the call is closed);
    else the body messages read ahead (for the app, in order) and headers for the response."""
    limiter = metering.limits
    assert limiter is not None
    buffered: list[ASGIReceiveEvent] = []
    view = call.view
    if call.peek is not None:
        size = 0
        while size < PREREAD_LIMIT:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            call.request_body(chunk)
            if not message.get("more_body", False):
                break
    plan = limiter.plan(view, metering.limit_context(view, call.route))
    if not plan:
        return buffered, []
    view.limits = plan
    verdict = await limiter.acheck(view, plan)
    if verdict.allowed:
        return buffered, [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in verdict.headers]
    call.finished = True  # the app never runs: there is no LLM call to count
    view.limits = None
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in _response_headers(verdict)]
    try:
        await send({"type": "http.response.start", "status": verdict.status, "headers": headers, "trailers": False})
        await send({"type": "http.response.body", "body": verdict.body, "more_body": False})
    except OSError:
        pass  # the client left: nothing more to tell it
    return None


# -- WSGI ------------------------------------------------------------------------------------


class _PrefixedInput:
    """``wsgi.input`` that returns ``prefix`` (read ahead for the check), then ``stream``."""

    def __init__(self, prefix: bytes, stream: Any) -> None:
        self._prefix = prefix
        self._pos = 0
        self._stream = stream

    def _take(self, size: int) -> bytes:
        start = self._pos
        end = len(self._prefix) if size < 0 else min(len(self._prefix), start + size)
        self._pos = end
        return self._prefix[start:end]

    def read(self, size: int | None = -1) -> bytes:
        size = -1 if size is None else size
        part = self._take(size)
        if size < 0:
            return part + bytes(self._stream.read())
        if len(part) < size:
            return part + bytes(self._stream.read(size - len(part)))
        return part

    def readline(self, size: int | None = -1) -> bytes:
        size = -1 if size is None else size
        rest = self._prefix[self._pos :]
        if rest:
            newline = rest.find(b"\n")
            end = len(rest) if newline < 0 else newline + 1
            if size >= 0:
                end = min(end, size)
            part = self._take(end)
            if part.endswith(b"\n") or (size >= 0 and len(part) >= size) or self._pos < len(self._prefix):
                return part
            return part + bytes(self._stream.readline(*(() if size < 0 else (size - len(part),))))
        return bytes(self._stream.readline(*(() if size < 0 else (size,))))

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def wsgi_check(
    metering: Metering, call: MeteredCall, environ: WSGIEnvironment, start_response: StartResponse
) -> tuple[list[tuple[str, str]] | None, list[bytes] | None]:
    """Check the request's limits: ``(headers for the response, None)`` to pass, or
    ``(None, body)`` when refused (``start_response`` has been called, the call is closed)."""
    limiter = metering.limits
    assert limiter is not None
    view = call.view
    stream = environ.get("wsgi.input")
    if call.peek is not None and stream is not None:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > 0:
            prefix = stream.read(min(length, PREREAD_LIMIT))  # through the tee: the peek sees it
            environ["wsgi.input"] = _PrefixedInput(prefix, stream)
    plan = limiter.plan(view, metering.limit_context(view, call.route))
    if not plan:
        return [], None
    view.limits = plan
    verdict = limiter.check(view, plan)
    if verdict.allowed:
        return verdict.headers, None
    call.finished = True
    view.limits = None
    start_response(status_line(verdict.status), _response_headers(verdict))
    return None, [verdict.body]


def with_headers(headers: list[tuple[str, str]], extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The app's headers plus ours; ours replace same-named ones (a proxy passing on the
    upstream's own ``x-ratelimit-*``, which describe the upstream account, not this client)."""
    if not extra:
        return headers
    ours = {name.lower() for name, _ in extra}
    return [(k, v) for k, v in headers if k.lower() not in ours] + extra


def with_raw_headers(headers: Any, extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """:func:`with_headers` for ASGI's raw ``(bytes, bytes)`` headers (names lower case)."""
    ours = {name for name, _ in extra}
    return [(k, v) for k, v in headers if bytes(k).lower() not in ours] + extra

