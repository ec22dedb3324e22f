"""The ``send`` an ASGI app is given: the short path of a streamed body's middle chunks.

Those chunks take a path with no coroutine of ours: an awaited wrapper costs about a
thousand instructions per message, a fifth of what a chunk costs us. :meth:`send` hands the
app the server's own coroutine and keeps the chunk pending; the app calling ``send`` again
(or returning) says that the send returned, and the pending chunk is fed to the call then.
Every other message (the response start, the first chunk, the last one, anything before
the short path is on) goes to the call's ``_awaited_send``. See :mod:`.asgi` for how the
call turns the short path on and settles the pending chunk when the app returns or raises.

This runs once per chunk of every ASGI stream, so it exists twice: compiled
(``_short_send.c``, built with the package where a C compiler is present) and here, in
Python, the reference, which runs where the extension is missing or
``LLM_METRICS_NO_EXTENSIONS`` is true. :data:`ShortSend` is the one in use;
``tests/test_short_send.py`` holds the two to the same answers.
"""

from __future__ import annotations

from collections.abc import Callable
from types import CodeType
from typing import TYPE_CHECKING, Any

from .._core.extensions import extensions_enabled

if TYPE_CHECKING:
    from asgiref.typing import ASGISendCallable, ASGISendEvent


class PyShortSend:
    """One request's ``send``, in Python. ``call`` has ``feed(chunk)`` and
    ``_awaited_send(message)``; it is None once the request is over (see :mod:`.asgi`),
    when messages go to the server as they are."""

    __slots__ = ("call", "code", "feed", "pending", "server_send")

    #: The code of the server's send coroutine once the short path is on, else None.
    code: CodeType | None
    #: The chunk whose send was handed to the app last (the short path), not fed yet.
    pending: bytes | None
    #: What a pending chunk is fed to: the call's ``feed`` callable, set by the call when
    #: it no longer changes (one attribute look-up on the call fewer per chunk); None: the
    #: call's ``feed`` is looked up for every chunk.
    feed: Callable[[bytes], object] | None

    def __init__(self, call: Any, server_send: ASGISendCallable) -> None:
        self.call = call
        self.server_send = server_send
        self.code = None
        self.pending = None
        self.feed = None

    def send(self, message: ASGISendEvent) -> Any:
        # Only body messages carry ``more_body`` (http.response.body, and the zero-copy
        # extension's, which has no body: b"" is fed for it), so its type is not compared;
        # the body is subscripted, not got: the two cost a third of this method per chunk.
        call = self.call
        if self.code is not None and call is not None and message.get("more_body"):
            pending = self.pending
            if pending is not None:  # the app is back: its previous send returned
                feed = self.feed
                if feed is None:
                    call.feed(pending)
                else:
                    feed(pending)
            try:
                self.pending = message["body"]  # type: ignore[typeddict-item]
            except KeyError:
                self.pending = b""
            return self.server_send(message)
        if call is None:
            return self.server_send(message)
        return call._awaited_send(message)


def _compiled() -> type[PyShortSend] | None:
    """The compiled ShortSend, or None where it was not built or is turned off."""
    if not extensions_enabled():
        return None
    try:
        from ._short_send import ShortSend as compiled
    except ImportError:
        return None
    return compiled  # type: ignore[no-any-return]


#: The compiled short send where it was built and not turned off, else None.
CShortSend: type[PyShortSend] | None = _compiled()

#: The short send the ASGI middleware gives apps.
ShortSend: type[PyShortSend] = CShortSend if CShortSend is not None else PyShortSend

__all__ = ["CShortSend", "PyShortSend", "ShortSend"]
