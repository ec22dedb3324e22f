"""WSGI middleware (PEP 3333): a short driver of :class:`~.._metering.metering.MeteredCall`.

The response iterable is wrapped in a class with an explicit ``close()`` (a generator
closed before its first ``next()`` would skip its ``finally``); the inner iterable is
closed in ``try`` and our accounting finished in ``finally``, as werkzeug's
``ClosingIterator`` does. Every block is yielded as soon as the app yields it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .._metering.call import COMPLETED, DISCONNECTED, ERROR, Outcome
from .._metering.metering import MeteredCall
from .._metering.request import RequestView
from .base import MiddlewareBase
from .limited import with_headers, wsgi_check

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment  # noqa: F401


class _TeeInput:
    """``wsgi.input`` that shows what the app reads to the body peek."""

    def __init__(self, stream: Any, sink: Callable[[bytes], None]) -> None:
        self._stream = stream
        self._sink = sink

    def read(self, *args: Any) -> bytes:
        data: bytes = self._stream.read(*args)
        self._sink(data)
        return data

    def readline(self, *args: Any) -> bytes:
        data: bytes = self._stream.readline(*args)
        self._sink(data)
        return data

    def readinto(self, buffer: Any) -> int:
        # werkzeug's LimitedStream (Flask's request body) reads through readinto when the
        # server's stream has it; forwarding it untouched would hide the body from the peek.
        readinto = getattr(self._stream, "readinto", None)
        if readinto is None:
            data = self._stream.read(len(buffer))
            buffer[: len(data)] = data
            n = len(data)
        else:
            n = readinto(buffer) or 0
        if n:
            self._sink(bytes(memoryview(buffer)[:n]))
        return n

    def readlines(self, *args: Any) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(*args)
        for line in lines:
            self._sink(line)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            self._sink(line)
            yield line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _MeteredIterable:
    """Passes the app's blocks through one by one and finishes the call on ``close()``."""

    __slots__ = ("_iterable", "_iterator", "_call", "_done", "_failed")

    def __init__(self, iterable: Iterable[bytes], call: MeteredCall) -> None:
        self._iterable = iterable
        self._iterator: Iterator[bytes] | None = None
        self._call = call
        self._done = False
        self._failed = False

    def __iter__(self) -> _MeteredIterable:
        return self

    def __next__(self) -> bytes:
        iterator = self._iterator
        if iterator is None:
            iterator = self._iterator = iter(self._iterable)
        try:
            chunk = next(iterator)
        except StopIteration:
            self._done = True
            raise
        except BaseException:
            self._failed = True
            raise
        self._call.feed(chunk)
        return chunk

    def close(self) -> None:
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()
        finally:
            outcome: Outcome
            if self._done:
                outcome = COMPLETED
            elif self._failed:
                outcome = ERROR
            else:
                outcome = DISCONNECTED  # the server stopped iterating: the client left
            self._call.finish(outcome)


class LLMMetricsWSGIMiddleware(MiddlewareBase["WSGIApplication"]):
    """Counts the LLM tokens of every response that passes, by dimension (WSGI).

    ``flask_app.wsgi_app = LLMMetricsWSGIMiddleware(flask_app.wsgi_app, exporters=[...])``,
    or around any WSGI app (Django's ``application``). Takes the same options as
    :class:`LLMMetricsMiddleware`.
    """

    _metrics_app_factory = "wsgi_app"
    _asynchronous_limits = False

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self._metrics_app is not None and environ.get("PATH_INFO") == self._metrics_path:
            body: Iterable[bytes] = self._metrics_app(environ, start_response)
            return body
        if not self.enabled or environ.get(self._marker):
            return self.app(environ, start_response)
        environ[self._marker] = True

        call = self.metering.begin(RequestView.from_environ(environ))
        if call.peek is not None and environ.get("wsgi.input") is not None:
            environ["wsgi.input"] = _TeeInput(environ["wsgi.input"], call.request_body)
        extra_headers: list[tuple[str, str]] = []
        if self.metering.limits is not None:
            passed, refusal = wsgi_check(self.metering, call, environ, start_response)
            if passed is None:
                return refusal or []  # refused with 429: the app is not called
            extra_headers = passed

        def metered_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> Callable[[bytes], object]:
            write = start_response(status, with_headers(headers, extra_headers), exc_info)
            content_type = content_encoding = None
            for key, value in headers:
                lower = key.lower()
                if lower == "content-type":
                    content_type = value
                elif lower == "content-encoding":
                    content_encoding = value
            try:
                code = int(status[:3])
            except ValueError:
                code = 0
            call.response_start(code, content_type, content_encoding)

            def metered_write(data: bytes) -> object:
                result = write(data)
                call.feed(data)
                return result

            return metered_write

        try:
            iterable = self.app(environ, metered_start_response)
        except BaseException:
            call.finish(ERROR)
            raise
        return _MeteredIterable(iterable, call)
