"""Incremental decoder of ``application/vnd.amazon.eventstream`` (sans-IO): AWS's binary framing.

Each message is a 12-byte prelude (total length, headers length, CRC32 of those 8 bytes),
headers (name length, name, value type, value), a payload and a CRC32 of everything before
it. Both CRCs are checked: a message that fails either stops the reading (``failed``); a
stream must never be half-believed. Bedrock's ``ConverseStream`` and
``InvokeModelWithResponseStream`` send one JSON payload per message.

Memory is capped: a message is kept whole only up to :data:`MESSAGE_LIMIT` bytes; a longer
one is skipped unread (``skipped`` counts them) without being kept. No recursion.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

#: Largest message kept whole (bytes). Bedrock's are a few hundred bytes: one text delta,
#: one usage object.
MESSAGE_LIMIT = 1 << 20

_PRELUDE = struct.Struct(">III")
_U16 = struct.Struct(">H")
#: Fixed value sizes of the header types that are not strings or bytes (types 0-9).
_FIXED = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}

MessageHandler = Callable[[dict[str, str], bytes], None]


def parse_headers(data: bytes) -> dict[str, str] | None:
    """String-valued headers of one message (others are skipped), or None when malformed."""
    headers: dict[str, str] = {}
    pos, end = 0, len(data)
    while pos < end:
        n = data[pos]
        name = data[pos + 1 : pos + 1 + n]
        pos += 1 + n
        if pos >= end:
            return None
        kind = data[pos]
        pos += 1
        if kind in (6, 7):  # bytes, string: 2-byte length
            if pos + 2 > end:
                return None
            (length,) = _U16.unpack_from(data, pos)
            value = data[pos + 2 : pos + 2 + length]
            pos += 2 + length
            if kind == 7:
                headers[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        elif kind in _FIXED:
            pos += _FIXED[kind]
        else:
            return None
        if pos > end:
            return None
    return headers


def _drop_message(headers: dict[str, str], payload: bytes) -> None:
    """The handler of a released decoder."""


class EventStreamDecoder:
    """``feed(chunk)`` bytes as they arrive; whole messages go to ``on_message(headers, payload)``."""

    __slots__ = ("_on_message", "_buffer", "_skip", "failed", "skipped", "messages")

    def __init__(self, on_message: MessageHandler) -> None:
        self._on_message = on_message
        self._buffer = bytearray()
        self._skip = 0  # bytes still to drop of an over-long message
        self.failed = False
        self.skipped = 0
        self.messages = 0

    @property
    def idle(self) -> bool:
        """Between messages: nothing of one pending (a stream that ends here was whole)."""
        return not self._buffer and not self._skip

    def release(self) -> None:
        """Forget the handler (after the last chunk): it is usually a bound method of the
        decoder's owner, which holds the decoder, a cycle only the garbage collector frees."""
        self._on_message = _drop_message

    def feed(self, chunk: bytes) -> None:
        if self.failed or not chunk:
            return
        if self._skip:
            drop = min(self._skip, len(chunk))
            self._skip -= drop
            chunk = chunk[drop:]
            if not chunk:
                return
        buffer = self._buffer
        buffer += chunk
        while len(buffer) >= 12 and not self.failed:
            total, header_length, prelude_crc = _PRELUDE.unpack_from(buffer)
            if zlib.crc32(buffer[:8]) != prelude_crc or total < 16 or header_length > total - 16:
                self._fail()
                return
            if total > MESSAGE_LIMIT:
                self.skipped += 1
                if len(buffer) >= total:
                    del buffer[:total]
                    continue
                self._skip = total - len(buffer)
                buffer.clear()
                return
            if len(buffer) < total:
                return
            message = bytes(buffer[:total])
            del buffer[:total]
            (message_crc,) = struct.unpack_from(">I", message, total - 4)
            if zlib.crc32(message[: total - 4]) != message_crc:
                self._fail()
                return
            headers = parse_headers(message[12 : 12 + header_length])
            if headers is None:
                self._fail()
                return
            self.messages += 1
            self._on_message(headers, message[12 + header_length : total - 4])

    def _fail(self) -> None:
        self.failed = True
        self._buffer.clear()
