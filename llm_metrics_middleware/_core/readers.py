"""One reader per body format, each of which may hand the body on to another (h11's READERS).

A reader's :meth:`~Reader.feed` takes the next chunk of the (decompressed) body and
returns the reader for the chunk after it: itself, or the one it swapped to (the sniffer
becomes the JSON or SSE reader once it sees the first byte; the small-JSON reader becomes
the scanning one when the body outgrows :data:`SMALL_BODY`). :meth:`~Reader.close` ends
the body. Readers report what they find to one :class:`~.findings.Findings` and raise
nothing on purpose; the extractor turns any bug into ``malformed``.

:data:`READERS` maps each format of :func:`~.extractor.body_format` to its reader. A
new format is one more class and one more entry (as AWS's binary event stream was).
"""

from __future__ import annotations

import base64
import json
from typing import Final, Literal, Protocol, get_args

from .eventstream import EventStreamDecoder
from .fastjson import first as _first
from .fastjson import loads
from .findings import Findings
from .jsonscan import JSONScanner
from .providers.facts import USAGE_HINTED
from .sse import EVENT_LIMIT, SSEDecoder
from .textfields import TextFieldCounter
from .typedevent import PROVIDER as _EVENT_PROVIDER
from .typedevent import read_event as _read_event

# Bound once here: a method called on an imported name compiles to a slower attribute load
# plus call (CPython 3.11 treats it as a module attribute), and these run per chunk.
_usage_hinted = USAGE_HINTED.seen

#: How a response body is read: not at all, as SSE, as JSON (one value, NDJSON or a JSON
#: array of objects), "sniff" (the Content-Type says nothing: the first byte decides), or
#: AWS's binary event stream.
BodyFormat = Literal["none", "sse", "json", "sniff", "eventstream"]
NONE: Final = "none"
SSE: Final = "sse"
JSON: Final = "json"
SNIFF: Final = "sniff"
EVENTSTREAM: Final = "eventstream"
BODY_FORMATS: tuple[BodyFormat, ...] = get_args(BodyFormat)

#: Largest JSON body kept whole and parsed with json.loads at the end: json.loads in C
#: costs a few microseconds where the incremental scanner costs about two per token.
#: Read when a body starts, so tests can force every body through the scanner.
SMALL_BODY = 16 * 1024

#: SSE events parsed whole while looking for the model; later ones only if they hold usage.
MODEL_EVENTS = 16

_WHITESPACE = b" \t\r\n"


def _ignore(obj: object) -> None:
    pass


class Reader(Protocol):
    #: The format reported in the Extraction.
    format: BodyFormat
    @property
    def skim(self) -> SSEReader | None:
        """An SSE reader whose whole-event chunks may be skipped unread while it is
        :attr:`~SSEReader.at_boundary` (see :class:`SSEReader`)."""

    def feed(self, chunk: bytes) -> Reader: ...

    def close(self) -> None: ...


class Stopped:
    """Reads nothing more: an unknown format, a failed decompression, a bug."""

    __slots__ = ("format",)
    skim: SSEReader | None = None

    def __init__(self, fmt: BodyFormat = NONE) -> None:
        self.format = fmt

    def feed(self, chunk: bytes) -> Reader:
        return self

    def close(self) -> None:
        pass


class SniffReader:
    """A body whose Content-Type said nothing: the first significant byte decides."""

    __slots__ = ("_found", "_may_skip")
    format: BodyFormat = NONE
    skim: SSEReader | None = None

    def __init__(self, found: Findings, may_skip: bool) -> None:
        self._found = found
        self._may_skip = may_skip

    def feed(self, chunk: bytes) -> Reader:
        first = chunk.lstrip(_WHITESPACE)[:1]
        if not first:
            return self
        reader: Reader
        if first in (b"{", b"["):
            reader = SmallJSONReader(self._found, self._may_skip)
        elif first in (b"d", b"e", b":", b"i", b"r"):  # data:, event:, comment, id:, retry:
            reader = SSEReader(self._found, self._may_skip)
        else:
            return Stopped()
        return reader.feed(chunk)

    def close(self) -> None:
        pass


class SmallJSONReader:
    """A JSON body kept whole while small, then parsed once with json.loads.

    Past :data:`SMALL_BODY` the bytes move into a :class:`ScannedJSONReader` and nothing
    more is kept. A body json.loads refuses (NDJSON, or not JSON at all) goes to the
    scanner too, which reads the first and judges the second.
    """

    __slots__ = ("_found", "_first", "_buffer", "_limit")
    format: BodyFormat = JSON
    skim: SSEReader | None = None

    def __init__(self, found: Findings, may_skip: bool = False) -> None:
        self._found = found
        # The first chunk is kept as it is (most small bodies come in one piece, and
        # copying it would be the only work): a buffer is made for a second one.
        self._first: bytes | None = None
        self._buffer: bytearray | None = None
        self._limit = SMALL_BODY

    def feed(self, chunk: bytes) -> Reader:
        buffer = self._buffer
        if buffer is None:
            first = self._first
            if first is None:
                if len(chunk) <= self._limit:
                    self._first = chunk
                    return self
                buffer = bytearray()
            else:
                buffer = self._buffer = bytearray(first)
                self._first = None
        if len(buffer) + len(chunk) <= self._limit:
            buffer += chunk
            return self
        scanned = ScannedJSONReader(self._found)
        scanned.feed(bytes(buffer))
        self._buffer = None
        return scanned.feed(chunk)

    def close(self) -> None:
        data: bytes | bytearray
        if self._buffer is not None:
            data = self._buffer
        elif self._first is not None:
            data = self._first
        else:
            return
        self._first = self._buffer = None
        if not data or data.isspace():
            return
        found = self._found
        try:
            value = loads(data)
        except (ValueError, RecursionError):
            scanned = ScannedJSONReader(found)
            scanned.feed(bytes(data))
            scanned.close()
            return
        objects = value if isinstance(value, list) else [value]
        for obj in objects:
            if isinstance(obj, dict):
                found.on_object(obj)
        text = found.text
        if text is not None and not found.seen and found.text_roots:
            # No usage: the answer's text is measured on the bytes as they were sent (as
            # the scanner measures a large or cut body), so that the estimate is the same
            # however the body came; only the text fields under the answer's roots count.
            counter = found.text_counter()
            JSONScanner((), _ignore, text_roots=found.text_roots, text_counter=counter).feed(bytes(data))
            text.add_bytes(counter.bytes)


class ScannedJSONReader:
    """JSON, NDJSON or a top-level array of objects, through the incremental scanner.

    Keeps only the fields of the provider table (and a byte count of the answer text), so
    a body of any size costs constant memory; memchr-style skipping makes vectors cheap.
    """

    __slots__ = ("_found", "_scanner")
    format: BodyFormat = JSON
    skim: SSEReader | None = None

    def __init__(self, found: Findings) -> None:
        self._found = found
        self._scanner = found.scanner()

    def feed(self, chunk: bytes) -> Reader:
        self._scanner.feed(chunk)
        return self

    def close(self) -> None:
        scanner = self._scanner
        found = self._found
        found.ended(failed=scanner.failed, idle=scanner.idle, dropped=scanner.overflowed)
        if found.text is not None and scanner.text_counter is not None:
            # A body cut short (the upstream or the client gone) counts the text it got
            # that far, a string cut in the middle included: never its other bytes.
            found.text.add_bytes(scanner.text_counter.bytes)


class SSEReader:
    """Server-Sent Events: each small event's data is parsed only when it can hold usage.

    Fast path (``may_skip``: nothing custom, nothing compressed): once the model is known,
    or after :data:`MODEL_EVENTS` events that named none, :attr:`skim` is set, and the
    extractor does not even call :meth:`feed` for a chunk of whole events that cannot hold
    a usage object (the usual case: one event per write; saving the call is a third of
    the cost of such a chunk); it only measures the chunk's text if asked. Top-level counts
    such as Ollama's come in NDJSON, not SSE; an event that is decoded is still checked
    for them. Events over the decoder's limit stream into a scanner.

    A chunk that is one whole event of one data line (the usual chunk) is dispatched here,
    as the decoder's own fast path would; the :class:`~.sse.SSEDecoder` is only made for
    the first chunk that is not, so a stream of whole events never builds one.
    """

    __slots__ = ("_found", "_decoder", "_large", "_large_text", "_fast", "_may_skip", "_events", "skim", "at_boundary")
    format: BodyFormat = SSE

    def __init__(self, found: Findings, may_skip: bool) -> None:
        self._found = found
        self._decoder: SSEDecoder | None = None
        self._large: JSONScanner | None = None
        self._large_text: TextFieldCounter | None = None
        self._fast = False
        self._events = 0
        #: This reader, once whole events may be skipped unread (see the class docstring).
        self.skim: SSEReader | None = None
        #: True between events, nothing of a line or an event pending (the decoder's
        #: ``at_boundary``): only then may a chunk of whole events be skipped.
        self.at_boundary = True
        self._may_skip = may_skip and not found.triggers

    def feed(self, chunk: bytes, hinted: bool = False) -> Reader:
        """``hinted``: the extractor found a usage hint in this chunk already (see
        :meth:`_on_event`)."""
        if self.at_boundary and chunk.startswith(b"data:") and chunk[-2:] == b"\n\n":
            # As SSEDecoder.feed's fast path: the only LF after the field name is the
            # line's own, followed by the blank line, and no CR anywhere in it (the field
            # name holds neither: the whole chunk is searched, ``13 in`` is a memchr).
            end = len(chunk) - 2
            if chunk.find(b"\n") == end and 13 not in chunk and end <= EVENT_LIMIT:
                self._on_event(b"", chunk[6 if chunk[5] == 0x20 else 5 : end], hinted)
                return self
        decoder = self._decoder
        if decoder is None:
            decoder = self._decoder = SSEDecoder(self._on_event, self._on_large_data, self._on_large_end)
        decoder.feed(chunk)
        self.at_boundary = decoder.at_boundary
        return self

    def close(self) -> None:
        self.skim = None  # itself: no reference cycle left for the garbage collector
        decoder = self._decoder
        if decoder is None:
            return
        try:
            decoder.close()
        finally:
            decoder.release()  # nor through the decoder's handlers

    def _on_event(self, event: bytes, data: bytes, hinted: bool = False) -> None:
        found = self._found
        if not self._fast:  # events are only counted until then: tested first
            self._events += 1
            if self._may_skip and (found.model is not None or self._events > MODEL_EVENTS):
                # The model is known, or events name none (a non-LLM stream, or a provider
                # that never does): stop parsing each one; events that can hold usage still are.
                self._fast = True
                self.skim = self
        text = found.text
        if text is not None:
            if len(data) <= found.pending_room:  # measured when asked (Findings.pending)
                found.pending_room -= len(data)
                found.pending.append(data)
            else:
                if data.__class__ is not bytes:  # a slice of it goes to the meter
                    data = bytes(data)
                for start, end in found.text_spans(data):
                    text.add_json_string(data[start:end])
        if (
            hinted
            or (found.model is None and not self._fast)
            or _usage_hinted(data)
            or any(m in data for m in found.markers)
        ):
            if data == b"[DONE]":
                return
            if found.custom is None:
                # The commonest events (OpenAI chat's first chunk and its usage chunk) read
                # typed, their choices left unbuilt, where that is sure (see typedevent).
                read = _read_event(data)
                if read is not None:
                    model, counts = read
                    if counts is not None:
                        found.update(counts)
                        if found.provider is None:
                            found.provider = _EVENT_PROVIDER
                    if found.model is None:
                        found.model = model
                    if not self._fast and self._may_skip:
                        self._fast = True
                        self.skim = self
                    return
            try:
                try:
                    obj = _first(data)  # orjson itself when installed: one call fewer
                except ValueError:
                    obj = loads(data)  # which decides what orjson refused
            except ValueError:
                found.fail("malformed")
                return
            except RecursionError:
                # Valid JSON nested past json.loads' limit: the scanner (no recursion) reads
                # it, and the events after it are read as usual.
                scanner = found.scanner(text=False)
                scanner.feed(data)
                if scanner.failed:
                    found.fail("malformed")
                return
            if isinstance(obj, dict):
                found.on_object(obj, hinted)
            elif isinstance(obj, list):  # a batch of objects in one event
                for item in obj:
                    if isinstance(item, dict):
                        found.on_object(item)
            if not self._fast and found.model is not None and self._may_skip:
                self._fast = True
                self.skim = self

    def _on_large_data(self, piece: bytes) -> None:
        if self._large is None:
            self._large = self._found.scanner(text=False)
            if self._found.text is not None:
                # Its text is counted as it passes, by the same fields as a small event's.
                self._large_text = self._found.event_counter()
        self._large.feed(piece)
        if self._large_text is not None:
            self._large_text.feed(piece)

    def _on_large_end(self, event: bytes) -> None:
        self._events += 1
        large = self._large
        self._large = None
        counter = self._large_text
        self._large_text = None
        if counter is not None and self._found.text is not None:
            self._found.text.add_bytes(counter.bytes)
        if large is not None and large.failed:
            self._found.fail("malformed")


class EventStreamReader:
    """AWS event streams (Bedrock ``ConverseStream``, ``InvokeModelWithResponseStream``).

    Every event's payload is small and parsed: ConverseStream's are the JSON objects
    themselves (usage in the ``metadata`` event); InvokeModel's carry the model family's
    own JSON object base64-encoded in ``bytes``. Exceptions (``:message-type`` other than
    ``event``) carry no usage. Guardrail traces nest their own usage objects under
    ``trace``, where no usage is looked for: they are not the call's tokens.
    """

    __slots__ = ("_found", "_decoder")
    format: BodyFormat = EVENTSTREAM
    skim: SSEReader | None = None

    def __init__(self, found: Findings, may_skip: bool = False) -> None:
        self._found = found
        self._decoder = EventStreamDecoder(self._on_message)

    def feed(self, chunk: bytes) -> Reader:
        self._decoder.feed(chunk)
        return self

    def close(self) -> None:
        decoder = self._decoder
        decoder.release()  # no reference cycle left for the garbage collector
        self._found.ended(failed=decoder.failed, idle=decoder.idle, dropped=bool(decoder.skipped))

    def _on_message(self, headers: dict[str, str], payload: bytes) -> None:
        if headers.get(":message-type", "event") != "event":
            return
        found = self._found
        try:
            obj = json.loads(payload)
            inner = obj.get("bytes") if type(obj) is dict else None
            if isinstance(inner, str):
                obj = json.loads(base64.b64decode(inner, validate=True))
        except (ValueError, RecursionError):  # binascii.Error is a ValueError
            found.fail("malformed")
            return
        if type(obj) is dict:
            found.on_object(obj)


#: The reader that starts each body format.
READERS: dict[str, type[SniffReader] | type[SmallJSONReader] | type[SSEReader] | type[EventStreamReader]] = {
    SNIFF: SniffReader,
    JSON: SmallJSONReader,
    SSE: SSEReader,
    EVENTSTREAM: EventStreamReader,
}
