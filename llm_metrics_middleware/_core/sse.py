"""Incremental Server-Sent Events decoder (sans-IO).

Follows the WHATWG event-stream rules that matter for counting: a line ends at CR, LF or
CRLF (a CR at the end of one chunk and an LF at the start of the next are one line end);
``:`` starts a comment; ``data`` lines of one event are joined with ``\\n``; an empty line
dispatches the event. ``id`` and ``retry`` are ignored.

Memory is capped: an event whose data grows past :data:`EVENT_LIMIT` is not kept; its data
is handed on in pieces through ``on_large_data`` instead (the extractor streams it into the
JSON scanner), and a non-data line longer than :data:`EVENT_LIMIT` is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable

#: Largest event (or line) kept whole. Bigger ones are streamed through ``on_large_data``.
EVENT_LIMIT = 16 * 1024

_EOL = re.compile(rb"[\r\n]")

_NORMAL = 0
_STREAM_DATA = 1  # inside an over-long data line: forward bytes as they come
_DISCARD = 2  # inside an over-long line that is not data: drop it

EventHandler = Callable[[bytes, bytes], None]
PieceHandler = Callable[[bytes], None]
EndHandler = Callable[[bytes], None]


def _drop_event(event: bytes, data: bytes) -> None:
    """The handler of a released decoder."""


def _drop_piece(piece: bytes) -> None:
    """The handler of a released decoder."""


class SSEDecoder:
    """``feed(chunk)`` bytes as they arrive; complete events go to ``on_event(event, data)``.

    An event over :data:`EVENT_LIMIT` instead produces ``on_large_data(piece)`` calls (the
    first one carries the data kept so far) and ends with ``on_large_end(event)``.
    """

    __slots__ = (
        "_on_event",
        "_on_large_data",
        "_on_large_end",
        "_line",
        "_mode",
        "_skip_lf",
        "_event",
        "_data",
        "_large",
        "events",
        "at_boundary",
    )

    def __init__(
        self,
        on_event: EventHandler,
        on_large_data: PieceHandler,
        on_large_end: EndHandler,
    ) -> None:
        self._on_event = on_event
        self._on_large_data = on_large_data
        self._on_large_end = on_large_end
        self._line = bytearray()
        self._mode = _NORMAL
        self._skip_lf = False
        self._event = b""
        self._data: bytearray | None = None
        self._large = False
        self.events = 0
        #: True between events, with nothing of a line or an event pending; a caller may
        #: then skip whole events without feeding them (see the extractor's fast path).
        self.at_boundary = True

    def feed(self, chunk: bytes) -> None:
        if self.at_boundary and chunk.startswith(b"data:") and chunk.endswith(b"\n\n"):
            # The usual chunk: one whole event of one data line, written in one piece.
            # Dispatched as the line-by-line path would (the data after "data:" and one
            # space), in a few C calls: the only LF after the field name is the line's
            # own, followed by the blank line; no CR anywhere in it.
            end = len(chunk) - 2
            if chunk.find(b"\n", 5) == end and chunk.find(b"\r", 5) < 0:
                start = 6 if chunk[5] == 0x20 else 5
                if end <= EVENT_LIMIT:  # as the line-by-line path keeps it whole
                    self.events += 1
                    self._on_event(b"", chunk[start:end])
                    return  # still between events
        self._feed(chunk)
        self.at_boundary = (
            self._mode == _NORMAL
            and not self._line
            and not self._skip_lf
            and self._data is None
            and not self._large
            and not self._event
        )

    def _feed(self, chunk: bytes) -> None:
        n = len(chunk)
        pos = 0
        if self._skip_lf and n:
            self._skip_lf = False
            if chunk[0] == 0x0A:
                pos = 1
        search = _EOL.search
        while pos < n:
            m = search(chunk, pos)
            if m is None:
                self._partial(chunk, pos, n)
                return
            i = m.start()
            if i - pos > EVENT_LIMIT and self._mode == _NORMAL and not self._line:
                self._long_line(chunk, pos, i)
            else:
                self._line_end(chunk, pos, i)
            if chunk[i] == 0x0D:
                if i + 1 < n:
                    if chunk[i + 1] == 0x0A:
                        i += 1
                else:
                    self._skip_lf = True
            pos = i + 1

    def close(self) -> None:
        """End of stream: a last event whose blank line never came is still dispatched.

        The spec drops it; we count it, because its tokens were generated and billed.
        """
        if self._mode == _NORMAL and self._line:
            self._line_end(b"", 0, 0)
        self._mode = _NORMAL
        self._dispatch()

    def release(self) -> None:
        """Forget the handlers (after :meth:`close`). They are usually bound methods of
        the decoder's owner, which holds the decoder: a reference cycle per stream that only
        the garbage collector could free, and that its collections would pay for under load."""
        self._on_event = _drop_event
        self._on_large_data = self._on_large_end = _drop_piece

    # -- lines --------------------------------------------------------------------------

    def _partial(self, chunk: bytes, start: int, end: int) -> None:
        mode = self._mode
        if mode == _STREAM_DATA:
            self._on_large_data(chunk[start:end])
            return
        if mode == _DISCARD:
            return
        line = self._line
        line += chunk[start:end]
        if len(line) <= EVENT_LIMIT:
            return
        if line.startswith(b"data:"):
            value = line[6:] if line[5:6] == b" " else line[5:]
            self._go_large()
            self._on_large_data(bytes(value))
            self._mode = _STREAM_DATA
        else:
            self._mode = _DISCARD
        del line[:]

    def _line_end(self, chunk: bytes, start: int, end: int) -> None:
        mode = self._mode
        if mode != _NORMAL:
            if mode == _STREAM_DATA:
                self._on_large_data(chunk[start:end])
            self._mode = _NORMAL
            return
        if self._line:
            self._line += chunk[start:end]
            line: bytes = bytes(self._line)
            del self._line[:]
        else:
            line = chunk[start:end]
        if not line:
            self._dispatch()
            return
        if line[0] == 0x3A:  # ":" comment
            return
        colon = line.find(b":")
        if colon < 0:
            name, value = line, b""
        else:
            name = line[:colon]
            value = line[colon + 2 :] if line[colon + 1 : colon + 2] == b" " else line[colon + 1 :]
        if name == b"data":
            self._add_data(value)
        elif name == b"event":
            self._event = value

    def _long_line(self, chunk: bytes, start: int, end: int) -> None:
        """A whole line over :data:`EVENT_LIMIT` in one chunk (a 50 MB event in one write):
        its data goes on in one slice, never copied into a line, then an event buffer,
        then a piece."""
        if chunk.startswith(b"data:", start):
            value = start + 5
            if chunk[value : value + 1] == b" ":
                value += 1
            if self._large:
                self._on_large_data(b"\n")
            else:
                self._go_large()
            self._on_large_data(chunk[value:end])
        # Any other line that long (a comment, a huge event name) is dropped, as always.

    def _add_data(self, value: bytes) -> None:
        if self._large:
            self._on_large_data(b"\n" + value)
            return
        data = self._data
        if data is None:
            self._data = data = bytearray(value)
        else:
            data += b"\n"
            data += value
        if len(data) > EVENT_LIMIT:
            self._go_large(more=False)

    def _go_large(self, *, more: bool = True) -> None:
        """Stream this event's data from now on. ``more``: a data line follows at once
        (so the data kept so far ends with the line break that joins them)."""
        if self._large:
            return
        self._large = True
        data = self._data
        self._data = None
        if data is not None:
            if more:
                data += b"\n"
            self._on_large_data(bytes(data))

    def _dispatch(self) -> None:
        event = self._event
        self._event = b""
        if self._large:
            self._large = False
            self.events += 1
            self._on_large_end(event)
            return
        data = self._data
        if data is None:
            return
        self._data = None
        self.events += 1
        self._on_event(event, bytes(data))
