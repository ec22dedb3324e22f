"""WSGI middleware (PEP 3333): a short driver of :class:`~.._metering.metered_call.MeteredCall`.

The response iterable is wrapped in a class with an explicit ``close()`` (a generator
closed before its first ``next()`` would skip its ``finally``); the inner iterable is
closed in ``try`` and our accounting finished in ``finally``, as werkzeug's
``ClosingIterator`` does. Every block is yielded as soon as the app yields it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .._metering import context
from .._metering.call import COMPLETED, DISCONNECTED, ERROR, Outcome
from .._metering.metered_call import MeteredCall
from .._metering.metering import USAGE_HEADER_NAMES
from .._metering.request import RequestView
from .base import MiddlewareBase
from .limited import with_headers, wsgi_check

# Bound once: __next__ sets and resets the current request around every block.
_set_current = context.CURRENT.set
_reset_current = context.CURRENT.reset

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment  # noqa: F401


class _TeeInput:
    """``wsgi.input`` that shows what the app reads to the body peek, each byte once.

    The peek sees the body in stream order: an app that seeks back (``seek(0)``) and
    reads the body again gets the same bytes, and the peek sees only what lies past the
    furthest byte it was already shown, so nothing is counted twice.
    """

    def __init__(self, stream: Any, sink: Callable[[bytes], None]) -> None:
        self._stream = stream
        self._sink = sink
        self._pos = 0  # where the next read starts, in stream offsets
        self._shown = 0  # bytes [0, _shown) went to the sink; -1: position lost, tee off
        self._lines: Any = None

    def _show(self, data: bytes) -> None:
        start = self._pos
        end = self._pos = start + len(data)
        shown = self._shown
        if shown < 0 or end <= shown:
            return
        self._shown = end
        try:
            self._sink(data if start >= shown else data[shown - start :])
        except Exception:  # a bug in the peek must not reach the app: stop showing it bytes
            self._shown = -1

    def read(self, *args: Any) -> bytes:
        data: bytes = self._stream.read(*args)
        self._show(data)
        return data

    def readline(self, *args: Any) -> bytes:
        data: bytes = self._stream.readline(*args)
        self._show(data)
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
            self._show(bytes(memoryview(buffer)[:n]))
        return n

    def readlines(self, *args: Any) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(*args)
        for line in lines:
            self._show(line)
        return lines

    def __iter__(self) -> _TeeInput:
        return self

    def __next__(self) -> bytes:
        lines = self._lines
        if lines is None:
            stream = self._stream
            lines = self._lines = stream if hasattr(stream, "__next__") else iter(stream)
        line: bytes = next(lines)
        self._show(line)
        return line

    def seek(self, *args: Any) -> int:
        result = self._stream.seek(*args)
        try:
            self._pos = int(result if result is not None else self._stream.tell())
        except Exception:
            self._shown = -1  # we no longer know where reads start: stop showing them
        return result  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _MeteredIterable:
    """Passes the app's blocks through one by one and finishes the call on ``close()``.

    The server iterates it after the app returned, outside the context the app ran in:
    the request is made current again around every ``__next__`` and ``close`` so that a
    generator calling an LLM as it streams is attributed to its request. ``__next__`` runs
    once per block: :data:`CURRENT` is set and reset inline (not through ``context.enter``
    and ``leave``: two Python calls fewer per block) and the inner iterator's own
    ``__next__`` is called, bound once.
    """

    __slots__ = ("_iterable", "_next", "_call", "_done", "_failed")

    def __init__(self, iterable: Iterable[bytes], call: MeteredCall) -> None:
        self._iterable = iterable
        #: The inner iterator's ``__next__``, bound at the first block (``iter()`` is
        #: called then, with the request current, as the server would have called it).
        self._next: Callable[[], bytes] | None = None
        self._call = call
        self._done = False
        self._failed = False

    def __iter__(self) -> _MeteredIterable:
        return self

    def __next__(self) -> bytes:
        call = self._call
        token = _set_current(call)
        try:
            next_block = self._next
            if next_block is None:
                next_block = self._next = iter(self._iterable).__next__
            chunk = next_block()
        except StopIteration:
            self._done = True
            raise
        except BaseException:
            self._failed = True
            raise
        finally:
            try:
                _reset_current(token)
            except (ValueError, RuntimeError):  # reset in another context: see context.leave
                pass
        call.feed(chunk)
        return chunk

    def close(self) -> None:
        token = context.enter(self._call)
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()
        finally:
            context.leave(token)
            outcome: Outcome
            if self._done:
                outcome = COMPLETED
            elif self._failed:
                outcome = ERROR
            else:
                outcome = DISCONNECTED  # the server stopped iterating: the client left
            self._call.finish(outcome)


class _SizedMeteredIterable(_MeteredIterable):
    """For an iterable with ``len()``: waitress sets Content-Length from a one-element list."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self._iterable)  # type: ignore[arg-type]


def _metered_file(response: Any, call: MeteredCall) -> Any:
    """The server's own ``wsgi.file_wrapper`` response, returned as it is.

    Servers send it their fast way (gunicorn's ``sendfile``, waitress's file buffer with
    its Content-Length) only when they get their own object back, so we neither wrap nor
    read it: the call is finished when the server closes it, with no usage read from the
    file.
    """
    inner_close = getattr(response, "close", None)

    def close() -> None:
        try:
            if inner_close is not None:
                inner_close()
        finally:
            call.finish(COMPLETED)

    try:
        response.close = close
    except Exception:  # a wrapper with __slots__: finish now rather than never
        call.finish(COMPLETED)
    return response


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

        call = MeteredCall(self.metering, RequestView.from_environ(environ))
        if call.peek is not None and environ.get("wsgi.input") is not None:
            # The peek itself is the sink, not the call: the environ holds the tee, and the
            # call holds the environ (its view), so a sink bound to the call would make a
            # reference cycle of every request, left to the garbage collector.
            environ["wsgi.input"] = _TeeInput(environ["wsgi.input"], call.peek.feed)
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
            usage_headers: dict[str, str] | None = None
            for key, value in headers:
                lower = key.lower()
                if lower == "content-type":
                    content_type = value
                elif lower == "content-encoding":
                    content_encoding = value
                elif lower in USAGE_HEADER_NAMES:
                    if usage_headers is None:
                        usage_headers = {}
                    usage_headers[lower] = value
            try:
                code = int(status[:3])
            except ValueError:
                code = 0
            call.response_start(code, content_type, content_encoding, usage_headers)

            def metered_write(data: bytes) -> object:
                result = write(data)
                call.feed(data)
                return result

            return metered_write

        token = context.enter(call)
        try:
            iterable = self.app(environ, metered_start_response)
        except BaseException:
            call.finish(ERROR)
            raise
        finally:
            context.leave(token)
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(iterable, file_wrapper):
            return _metered_file(iterable, call)  # type: ignore[no-any-return]
        if hasattr(iterable, "__len__"):
            return _SizedMeteredIterable(iterable, call)
        return _MeteredIterable(iterable, call)
