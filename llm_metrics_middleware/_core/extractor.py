"""Reads token usage out of one response body as it passes (sans-IO).

One :class:`UsageExtractor` per response: :meth:`~UsageExtractor.feed` every body chunk
as it goes to the client, then :meth:`~UsageExtractor.close` once for the
:class:`Extraction`. Nothing here knows about ASGI, WSGI or exporters, and nothing here
raises: a body we cannot read ends with ``error`` set and no usage.

The body format comes from the Content-Type (parameters and vendor ``+json`` types
allowed); when that says nothing useful (missing, ``text/plain``,
``application/octet-stream``) the first significant byte decides. Each format has its
reader (:mod:`.readers`), which may swap itself for another as the body goes on; a
compressed body passes through its decoder (:mod:`.decoders`) first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .decoders import ContentDecoder
from .estimate import TokenCounter
from .findings import Findings, TextMeter
from .providers.facts import OPERATION_STREAM_TEXT, RESPONSE_TEXT_ROOTS, STREAM_TEXT, USAGE_SEEN
from .providers.pointers import UsagePointers
from .readers import BODY_FORMATS, EVENTSTREAM, JSON, NONE, READERS, SNIFF, SSE, BodyFormat, Reader, Stopped
from .template import TemplateFront
from .usage import Usage, usage_of

# Bound once here: a method called on an imported name compiles to a slower attribute load
# plus call (CPython 3.11 treats it as a module attribute), and these run per chunk.
_BOM = b"\xef\xbb\xbf"
_new = object.__new__
_usage_seen = USAGE_SEEN.seen

#: A learnt chunk whose text is followed by what reads as a key (``"...": ``) is no template.
_KEY_AFTER = re.compile(rb'"\s*:').match

#: Chunks of a stream whose text field could not be found (or was found more than once)
#: before the extractor stops looking for a template to skim with (see _read).
TEMPLATE_TRIES = 8

__all__ = ["BODY_FORMATS", "EVENTSTREAM", "JSON", "NONE", "SNIFF", "SSE", "BodyFormat", "Extraction", "UsageExtractor", "body_format"]

_JSON_TYPES = frozenset(
    {
        "application/json",
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "application/jsonlines",
        "application/json-seq",
        "application/stream+json",
        "text/json",
    }
)
_SNIFF_TYPES = frozenset({"", "text/plain", "application/octet-stream", "binary/octet-stream"})


def body_format(content_type: str | None) -> BodyFormat:
    """The format to read for a response Content-Type; :data:`SNIFF` when it says nothing."""
    if not content_type:
        return SNIFF
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "text/event-stream":
        return SSE
    if media == "application/vnd.amazon.eventstream":
        return EVENTSTREAM
    if media in _JSON_TYPES or media.endswith("+json") or media.endswith("+ndjson"):
        return JSON
    if media in _SNIFF_TYPES:
        return SNIFF
    return NONE


@dataclass(slots=True)
class Extraction:
    """What one response body said about its tokens."""

    usage: Usage | None
    #: The model the response names (first one seen).
    model: str | None
    #: Provider inferred from the usage shape (``openai``, ``anthropic``...), if any.
    provider: str | None
    #: Body format that was read: ``sse``, ``json`` or ``none``.
    format: BodyFormat
    #: Bytes of generated text seen, or tokens when a token counter was given;
    #: used to estimate completion tokens when ``usage`` is None.
    text_tokens: int
    #: Why counting failed (``malformed``, ``invalid_usage``, ``too_large``), or None.
    error: str | None


if TYPE_CHECKING:
    from .template import PyTemplateFront as _Front
else:
    _Front = TemplateFront  # compiled where it was built (see template.py)


class UsageExtractor(_Front):
    """Feed one response body in chunks; :meth:`close` returns what it said about tokens.

    ``fmt`` is a value of :func:`body_format`. ``want_text`` turns on counting of the
    generated text, for an estimate when the body carries no usage; leave it off when
    usage is known to come (``stream_options.include_usage``), it costs a regex per event.
    ``operation`` (the route's) picks the streamed-text fields when its chunks name their
    text apart from the provider's (see :data:`~.providers.facts.OPERATION_STREAM_TEXT`).
    """

    __slots__ = ("_reader", "_found", "_decoder", "_head", "_tpl_learnt", "_tries", "_put_off")

    def __init__(
        self,
        fmt: BodyFormat,
        *,
        custom: UsagePointers | None = None,
        want_text: bool = False,
        token_counter: TokenCounter | None = None,
        decompressor: ContentDecoder | None = None,
        operation: str | None = None,
    ) -> None:
        self._decoder = decompressor
        text = TextMeter(token_counter) if want_text else None
        fields = OPERATION_STREAM_TEXT.get(operation, STREAM_TEXT) if operation is not None else STREAM_TEXT
        self._found = Findings(custom, text, RESPONSE_TEXT_ROOTS, fields)
        start = READERS.get(fmt)
        # The SSE fast path skips whole events unread: only for uncompressed bodies.
        self._reader: Reader = start(self._found, decompressor is None) if start is not None else Stopped()
        # The body's first bytes, held until a UTF-8 byte order mark is ruled in (and
        # dropped: WHATWG for event streams, RFC 8259 for JSON) or out; then None.
        self._head: bytes | None = b""
        # The template of a skimmed stream's chunks: the bytes before and after the one
        # text string of a chunk (see :mod:`.template`, whose ``feed`` this class's is).
        # ``_tpl_learnt`` is None until learnt; ``_tpl_head`` is the same bytes while the
        # stream is between events (the only time a chunk may be skimmed), else None, so
        # that feed tests one attribute.
        self._tpl_head = None
        self._tpl_learnt: bytes | None = None
        self._tpl_tail = b""
        # Where a template chunk's text goes: counted here as bytes (the default), or
        # handed to a tokenizer's meter.
        self._tpl_text = text if token_counter is not None else None
        self._tpl_bytes = 0
        self._tries = TEMPLATE_TRIES
        # The first chunk that misses a learnt template has its text measure put off (see
        # Findings.pending): usually a stream's last ones (the finish, the usage), seen
        # once. A second miss is read at once, and may teach the template of a new shape.
        self._put_off = False

    def _read(self, chunk: bytes) -> None:
        """A chunk the template did not account for (see :mod:`.template`)."""
        reader = self._reader
        skim = reader.skim
        if skim is not None and skim.at_boundary:
            try:
                # The SSE fast path (see SSEReader): whole events that cannot hold usage.
                if chunk[-2:] != b"\n\n":
                    skim = None
                elif 34 not in chunk:
                    return  # no quote: no text and no usage ([DONE], a comment, a ping)
                elif not _usage_seen(chunk):  # a usage key, or a marker (Ollama's counts)
                    found = self._found
                    text = found.text
                    if self._put_off and len(chunk) <= found.pending_room:
                        self._put_off = False
                        found.pending_room -= len(chunk)
                        found.pending.append(chunk)
                    elif text is not None:
                        if chunk.__class__ is not bytes:  # a slice of it goes to the meter
                            chunk = bytes(chunk)
                        spans = found.text_spans(chunk)
                        for start, end in spans:
                            text.add_json_string(chunk[start:end])
                        if len(spans) == 1:
                            self._learn(chunk, spans[0])
                    elif self._tries > 0:
                        self._tries -= 1
                        spans = found.text_spans(chunk)
                        if len(spans) == 1:
                            self._learn(chunk, spans[0])
                    return
                # Else usage may be here: ``skim`` stays set, and the reader parses the
                # event without looking for the hint again. (No flag of its own: every
                # local of this method costs every such chunk's call.)
            except Exception:  # not bytes, a bug: the general path decides (and never raises)
                skim = None
        else:
            skim = None
        if not chunk:
            # Nothing to read (an ASGI body message that only says the body ended): every
            # reader would leave its state as it is, and the SSE reader would build the
            # decoder it only needs for a chunk that is not whole events.
            return
        decoder = self._decoder
        if decoder is None:
            head = self._head
            if head is not None:
                if head or not chunk or chunk[0] == 0xEF:
                    chunk = self._without_bom(chunk)
                else:
                    self._head = None  # its first byte rules a mark out: the chunk as it is
            try:
                self._reader = reader.feed(chunk) if skim is None else skim.feed(chunk, True)
            except Exception:  # a bug must not reach the app: stop reading this body
                self._stop()
            if self._tpl_learnt is not None:
                # The template applies again once the decoder is between events.
                skim = self._reader.skim
                self._tpl_head = self._tpl_learnt if skim is not None and skim.at_boundary else None
            return
        for piece in decoder.decode(chunk):
            if self._head is not None:
                piece = self._without_bom(piece)
            try:
                self._reader = self._reader.feed(piece)
            except Exception:
                self._stop()
        if decoder.error is not None:
            self._found.fail(decoder.error)

    @property
    def usage_so_far(self) -> Usage | None:
        """The usage the body has reported up to the last chunk fed, merged as :meth:`close`
        merges it; None before any. Each event is read as it arrives (a gzip stream
        flushed per event is decompressed per chunk), so this moves with the stream."""
        return self._found.result()

    def _learn(self, chunk: bytes, span: tuple[int, int]) -> None:
        """A template from a chunk whose one text string is at ``span``."""
        start, end = span
        tail = chunk[end:]
        if _KEY_AFTER(tail) is not None:
            return  # the string was a key's value followed by another key: no template
        self._tpl_head = self._tpl_learnt = chunk[:start]
        self._tpl_tail = tail
        self._put_off = True

    def _without_bom(self, chunk: bytes) -> bytes:
        head = (self._head or b"") + chunk
        if len(head) < 3 and _BOM.startswith(head):
            self._head = head  # maybe a mark split across chunks: wait for more
            return b""
        self._head = None
        return head[3:] if head.startswith(_BOM) else head

    def _stop(self) -> None:
        self._found.error = "malformed"
        self._reader = Stopped()

    def close(self, *, ended: bool = True, estimate_only: bool = False) -> Extraction:
        """What the body said. ``ended=False``: the body was cut short (the client left,
        the app failed), so a compressed stream that stops midway is expected, not bad:
        what was decoded so far is read. ``estimate_only``: the caller reads
        ``text_tokens`` only to estimate a body that reported no usage, so one that did
        says 0 and the text whose measure was put off is never measured."""
        found = self._found
        reader = self._reader
        decoder = self._decoder
        if decoder is not None and (decoder.error is not None or (ended and not decoder.complete)):
            found.fail(decoder.error or "bad_compression")
            reader = Stopped(reader.format)
        try:
            if self._head:  # a body of one or two bytes that began like a mark
                reader = reader.feed(self._head)
                self._head = None
            reader.close()
        except Exception:
            found.fail("malformed")
        text_tokens = 0
        # found.result() inline (a call fewer): the merged counts, normalised.
        counts = found.counts
        usage = usage_of(counts) if counts is not None else None
        if found.text is not None and not (estimate_only and usage is not None):
            if found.pending:
                try:
                    found.measure_pending()
                except Exception:
                    found.pending.clear()
            if self._tpl_bytes:
                found.text.add_bytes(self._tpl_bytes)
                self._tpl_bytes = 0
            try:
                text_tokens = found.text.result()
            except Exception:
                text_tokens = 0
        # Every field of the slotted Extraction set directly: its generated __init__ is a
        # call through the type with keywords, once per call (tests/test_extractor.py
        # checks that every field is set).
        extraction = _new(Extraction)
        extraction.usage = usage
        extraction.model = found.model
        extraction.provider = found.provider
        extraction.format = reader.format
        extraction.text_tokens = text_tokens
        extraction.error = found.error
        return extraction
