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

from .decoders import ContentDecoder
from .estimate import TokenCounter
from .findings import Findings, TextMeter
from .providers.facts import RESPONSE_TEXT_ROOTS, TEXT_FIELD, USAGE_HINT, USAGE_MARKER
from .providers.pointers import UsagePointers
from .readers import BODY_FORMATS, EVENTSTREAM, JSON, NONE, READERS, SNIFF, SSE, BodyFormat, Reader, Stopped
from .usage import Usage

# Bound once here: a method called on an imported name compiles to a slower attribute load
# plus call (CPython 3.11 treats it as a module attribute), and these run per chunk.
_BOM = b"\xef\xbb\xbf"
_usage_hint = USAGE_HINT.search
_usage_marker = USAGE_MARKER.search
_text_fields = TEXT_FIELD.finditer

#: A learnt chunk whose text is followed by what reads as a key (``"...": ``) is no template.
_KEY_AFTER = re.compile(rb'"\s*:').match

#: Chunks of a stream whose text field could not be found (or was found more than once)
#: before the extractor stops looking for a template to skim with (see feed).
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


class UsageExtractor:
    """Feed one response body in chunks; :meth:`close` returns what it said about tokens.

    ``fmt`` is a value of :func:`body_format`. ``want_text`` turns on counting of the
    generated text, for an estimate when the body carries no usage; leave it off when
    usage is known to come (``stream_options.include_usage``), it costs a regex per event.
    """

    __slots__ = (
        "_reader", "_found", "_decoder", "_head", "_tpl_head", "_tpl_tail", "_tpl_tail_len", "_tries", "_fast",
        "_fast_start", "_fast_bytes", "_lazy",
    )

    def __init__(
        self,
        fmt: BodyFormat,
        *,
        custom: UsagePointers | None = None,
        want_text: bool = False,
        token_counter: TokenCounter | None = None,
        decompressor: ContentDecoder | None = None,
    ) -> None:
        self._decoder = decompressor
        self._found = Findings(custom, TextMeter(token_counter) if want_text else None, RESPONSE_TEXT_ROOTS)
        start = READERS.get(fmt)
        # The SSE fast path skips whole events unread: only for uncompressed bodies.
        self._reader: Reader = start(self._found, decompressor is None) if start is not None else Stopped()
        # The body's first bytes, held until a UTF-8 byte order mark is ruled in (and
        # dropped: WHATWG for event streams, RFC 8259 for JSON) or out; then None.
        self._head: bytes | None = b""
        # The template of a skimmed stream's chunks: the bytes before and after the one
        # text string of a chunk (see feed). None until learnt.
        self._tpl_head: bytes | None = None
        self._tpl_tail = b""
        self._tpl_tail_len = 0
        self._tries = TEMPLATE_TRIES
        # The template's head while a chunk that matches it may be skimmed by the first
        # lines of feed (see there), else None; the length of the head, and the text bytes
        # of the chunks skimmed so, handed to the text meter at close.
        self._fast: bytes | None = None
        self._fast_start = 0
        self._fast_bytes = 0
        # Text is counted in bytes (no tokenizer), so a skimmed chunk's text is one sum.
        self._lazy = token_counter is None

    def feed(self, chunk: bytes) -> None:
        """The next chunk of the body, as it goes to the client."""
        head = self._fast
        if head is not None:
            # Most chunks of a stream: its template (see _feed) with another text in it.
            # The whole work is three C calls and a sum: the head, the first quote after it
            # (which must be the tail's, so the text holds no quote and the chunk no other
            # string), the tail, and no backslash before that quote (else it is escaped).
            try:
                if chunk.startswith(head):
                    end = len(chunk) - self._tpl_tail_len
                    start = self._fast_start
                    if chunk.find(b'"', start) == end and chunk.endswith(self._tpl_tail) and chunk[end - 1] != 0x5C:
                        self._fast_bytes += end - start
                        return
            except Exception:  # not bytes: the general path decides (and never raises)
                pass
        self._feed(chunk)
        reader = self._reader
        skim = reader.skim
        self._fast = (
            self._tpl_head if self._lazy and skim is not None and skim.at_boundary and self._decoder is None else None
        )

    def _feed(self, chunk: bytes) -> None:
        reader = self._reader
        skim = reader.skim
        if skim is not None and skim.at_boundary:
            try:
                # The SSE fast paths (see SSEReader): whole events that cannot hold usage.
                head = self._tpl_head
                if head is not None and chunk.startswith(head) and chunk.endswith(self._tpl_tail):
                    # A chunk of a stream is the same bytes before and after its text (id,
                    # model, created, indices): learnt from one chunk whose single text string
                    # the regex found (and that held no usage hint or marker), every chunk with
                    # the same head and tail and no quote in between is that shape with another
                    # string there, so it holds neither usage nor other text, and its text is
                    # the bytes in between. Three C calls instead of three regex scans.
                    start = len(head)
                    end = len(chunk) - self._tpl_tail_len
                    if end >= start and chunk.find(b'"', start, end) < 0 and (end == start or chunk[end - 1] != 0x5C):
                        text = self._found.text
                        if text is not None:
                            text.add_span(chunk, start, end)
                        return
                if (
                    chunk[-2:] == b"\n\n"
                    and _usage_hint(chunk) is None
                    and _usage_marker(chunk) is None  # top-level counts (Ollama's) in SSE
                ):
                    text = self._found.text
                    if text is not None:
                        count = 0
                        last = None
                        for m in _text_fields(chunk):
                            text.add_json_string(m.group(1))
                            count += 1
                            last = m
                        if count == 1 and last is not None:
                            self._learn(chunk, last)
                    elif self._tries > 0:
                        self._tries -= 1
                        found = list(_text_fields(chunk))
                        if len(found) == 1:
                            self._learn(chunk, found[0])
                    return
            except Exception:  # not bytes, a bug: the general path decides (and never raises)
                pass
        decoder = self._decoder
        if decoder is None:
            if self._head is not None:
                chunk = self._without_bom(chunk)
            try:
                self._reader = reader.feed(chunk)
            except Exception:  # a bug must not reach the app: stop reading this body
                self._stop()
            return
        if not chunk:
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
        return self._found.acc.result()

    def _learn(self, chunk: bytes, match: re.Match[bytes]) -> None:
        tail = chunk[match.end(1) :]
        if _KEY_AFTER(tail) is not None:
            return  # the string was a key's value followed by another key: no template
        self._tpl_head = chunk[: match.start(1)]
        self._tpl_tail = tail
        self._tpl_tail_len = len(tail)
        self._fast_start = match.start(1)

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

    def close(self, *, ended: bool = True) -> Extraction:
        """What the body said. ``ended=False``: the body was cut short (the client left,
        the app failed), so a compressed stream that stops midway is expected, not bad:
        what was decoded so far is read."""
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
        if found.text is not None:
            found.text.add_bytes(self._fast_bytes)
            self._fast_bytes = 0
            try:
                text_tokens = found.text.result()
            except Exception:
                text_tokens = 0
        return Extraction(
            usage=found.acc.result(),
            model=found.model,
            provider=found.provider,
            format=reader.format,
            text_tokens=text_tokens,
            error=found.error,
        )
