"""Reads token usage out of one response body as it passes (sans-IO).

One :class:`UsageExtractor` per response: :meth:`~UsageExtractor.feed` every body chunk
as it goes to the client, then :meth:`~UsageExtractor.close` once for the
:class:`Extraction`. Nothing here knows about ASGI, WSGI or exporters, and nothing here
raises: a body we cannot read ends with ``error`` set and no usage.

The body format comes from the Content-Type (parameters and vendor ``+json`` types
allowed); when that says nothing useful (missing, ``text/plain``,
``application/octet-stream``) the first significant byte decides. JSON, NDJSON and a
top-level JSON array of objects all go through the same incremental scanner; SSE goes
through the SSE decoder, and each small event's data is parsed only when it can hold usage.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from .decoders import Decompressor
from .estimate import TokenCounter
from .jsonscan import JSONScanner, Path
from .providers import PROVIDER_OF_FAMILY, UsagePointers
from .sse import SSEDecoder
from .usage import OBJECT_PATHS, Invalid, Usage, UsageAccumulator, counts_from_object, model_from_object

#: How a response body is read: not at all, as SSE, as JSON (one value, NDJSON or a JSON
#: array of objects), or "sniff" (the Content-Type says nothing: the first byte decides).
BodyFormat = Literal["none", "sse", "json", "sniff"]
NONE: Final = "none"
SSE: Final = "sse"
JSON: Final = "json"
SNIFF: Final = "sniff"
BODY_FORMATS: tuple[BodyFormat, ...] = get_args(BodyFormat)

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

# Response-side roots whose strings are the generated text, for a JSON body with no usage.
_RESPONSE_TEXT_ROOTS = ("choices", "content", "candidates", "message", "output", "response", "text", "generations")

# Strings worth counting in SSE event data when a stream carries no usage: the generated
# text fields of every known chunk shape (OpenAI delta.content, Anthropic text_delta /
# thinking_delta / input_json_delta, Responses output_text.delta, Gemini parts.text,
# tool-call arguments). Matched on the raw JSON, escapes included: an estimate.
_TEXT_FIELD = re.compile(
    rb'"(?:content|text|delta|response|reasoning_content|reasoning|thinking|partial_json|arguments)"\s*:\s*"((?:[^"\\]|\\.)*)"',
    re.S,
)
# Whether SSE event data can hold usage: a "usage" / "usageMetadata" object, not null.
# The literal prefix lets the regex engine skip ahead quickly (0.2 us on a typical chunk).
_USAGE_HINT = re.compile(rb'sage(?:Metadata)?"\s*:\s*\{')

_WHITESPACE = b" \t\r\n"


#: Events parsed whole while looking for the model; later ones only if they hold usage.
MODEL_EVENTS = 16

#: Largest JSON body kept whole and parsed with json.loads at the end (see _small).
SMALL_BODY = 16 * 1024


def _string_bytes(value: Any) -> int:
    """Length of the strings in a parsed JSON value (keys included), for estimates."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(k) + _string_bytes(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(_string_bytes(v) for v in value)
    return 0


def body_format(content_type: str | None) -> BodyFormat:
    """The format to read for a response Content-Type; :data:`SNIFF` when it says nothing."""
    if not content_type:
        return SNIFF
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "text/event-stream":
        return SSE
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


class _TextMeter:
    """Counts generated text without keeping it: bytes/4, or a tokenizer on small batches."""

    __slots__ = ("_counter", "_decoder", "_pending", "bytes", "tokens")

    BATCH = 4096

    def __init__(self, counter: TokenCounter | None) -> None:
        self._counter = counter
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace") if counter else None
        self._pending: list[str] = []
        self.bytes = 0
        self.tokens = 0

    def add_json_string(self, raw: bytes) -> None:
        """``raw`` is a JSON string's body, escapes included."""
        if self._counter is None:
            self.bytes += len(raw)
            return
        try:
            text = json.loads(b'"' + raw + b'"')
        except ValueError:
            text = raw.decode("utf-8", "replace")
        self._add_text(text)

    def add_bytes(self, n: int) -> None:
        self.bytes += n

    def _add_text(self, text: str) -> None:
        self._pending.append(text)
        self.bytes += len(text)
        if self.bytes >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._pending and self._counter is not None:
            try:
                self.tokens += max(0, int(self._counter("".join(self._pending))))
            except Exception:
                self.tokens += -(-self.bytes // 4)
        self._pending.clear()
        self.bytes = 0

    def result(self) -> int:
        if self._counter is None:
            return -(-self.bytes // 4)
        self._flush()
        return self.tokens


class UsageExtractor:
    """Feed one response body in chunks; :meth:`close` returns what it said about tokens.

    ``fmt`` is a value of :func:`body_format`. ``want_text`` turns on counting of the
    generated text, for an estimate when the body carries no usage; leave it off when
    usage is known to come (``stream_options.include_usage``), it costs a regex per event.
    """

    __slots__ = (
        "_format",
        "_custom",
        "_paths",
        "_acc",
        "_model",
        "_family",
        "_scanner",
        "_sse",
        "_large",
        "_text",
        "_want_text",
        "_error",
        "_triggers",
        "_decompressor",
        "_small",
        "_fast",
    )

    def __init__(
        self,
        fmt: BodyFormat,
        *,
        custom: UsagePointers | None = None,
        want_text: bool = False,
        token_counter: TokenCounter | None = None,
        decompressor: Decompressor | None = None,
    ) -> None:
        self._format = fmt
        self._decompressor = decompressor
        self._custom = custom
        self._paths: Sequence[Path] = OBJECT_PATHS if custom is None else [*OBJECT_PATHS, *custom.scan_paths()]
        self._acc = UsageAccumulator()
        self._model: str | None = None
        self._family: str | None = None
        self._scanner: JSONScanner | None = None
        # A JSON body is first kept whole while it is small: json.loads in C costs a few
        # microseconds where the incremental scanner costs about two per token. Past
        # SMALL_BODY the bytes move into the scanner and nothing more is kept.
        self._small: bytearray | None = None
        # SSE fast path allowed: the model is known, nothing custom, nothing compressed.
        self._fast = False
        self._sse: SSEDecoder | None = None
        self._large: JSONScanner | None = None
        self._want_text = want_text
        self._text = _TextMeter(token_counter) if want_text else None
        self._error: str | None = None
        self._triggers: tuple[bytes, ...] = custom.triggers if custom is not None else ()
        if fmt == SSE:
            self._start_sse()
        elif fmt == JSON:
            self._start_json()

    # -- public -------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        # Fast path: a chunk of whole events (the usual case: one event per write) that
        # cannot hold usage is not decoded at all; only its text is measured if asked.
        if self._fast:
            sse = self._sse
            if (
                sse is not None
                and sse.at_boundary
                and chunk[-2:] == b"\n\n"
                and _USAGE_HINT.search(chunk) is None
            ):
                text = self._text
                if text is not None:
                    for m in _TEXT_FIELD.finditer(chunk):
                        text.add_json_string(m.group(1))
                return
        if not chunk:
            return
        decompressor = self._decompressor
        if decompressor is not None:
            for piece in decompressor.feed(chunk):
                self._feed(piece)
            if decompressor.error is not None and self._error is None:
                self._error = decompressor.error
            return
        self._feed(chunk)

    def _feed(self, chunk: bytes) -> None:
        try:
            sse = self._sse
            if sse is not None:
                sse.feed(chunk)
            elif self._small is not None:
                small = self._small
                if len(small) + len(chunk) <= SMALL_BODY:
                    small += chunk
                else:
                    self._small = None
                    scanner = self._scanner = self._new_scanner()
                    scanner.feed(bytes(small))
                    scanner.feed(chunk)
            elif self._scanner is not None:
                self._scanner.feed(chunk)
            elif self._format == SNIFF:
                self._sniff(chunk)
        except Exception:  # a bug must not reach the app: stop reading this body
            self._error = "malformed"
            self._sse = None
            self._scanner = None
            self._small = None
            self._format = NONE

    def close(self) -> Extraction:
        decompressor = self._decompressor
        if decompressor is not None and (decompressor.error is not None or not decompressor.complete):
            self._error = self._error or decompressor.error or "bad_compression"
            self._sse = None
            self._scanner = None
            self._small = None
        try:
            if self._small is not None:
                self._close_small()
            if self._sse is not None:
                self._sse.close()
            elif self._scanner is not None:
                scanner = self._scanner
                if scanner.failed and self._error is None:
                    self._error = "malformed"
                elif not scanner.idle and self._error is None and not self._acc.seen:
                    self._error = "truncated"
                if scanner.overflowed and self._error is None and not self._acc.seen:
                    self._error = "too_large"
        except Exception:
            self._error = self._error or "malformed"
        usage = self._acc.result()
        text_tokens = 0
        if self._text is not None:
            try:
                if self._scanner is not None:
                    self._text.add_bytes(self._scanner.text_bytes)
                text_tokens = self._text.result()
            except Exception:
                text_tokens = 0
        family = self._family
        return Extraction(
            usage=usage,
            model=self._model,
            provider=PROVIDER_OF_FAMILY.get(family) if family else None,
            format=self._format if self._format != SNIFF else NONE,
            text_tokens=text_tokens,
            error=self._error,
        )

    # -- formats ------------------------------------------------------------------------

    def _sniff(self, chunk: bytes) -> None:
        first = chunk.lstrip(_WHITESPACE)[:1]
        if not first:
            return
        if first in (b"{", b"["):
            self._format = JSON
            self._start_json()
            self._feed(chunk)
        elif first in (b"d", b"e", b":", b"i", b"r"):  # data:, event:, comment, id:, retry:
            self._format = SSE
            self._start_sse()
            assert self._sse is not None
            self._sse.feed(chunk)
        else:
            self._format = NONE

    def _start_json(self) -> None:
        self._small = bytearray()

    def _new_scanner(self) -> JSONScanner:
        roots: Sequence[str] = _RESPONSE_TEXT_ROOTS if self._want_text else ()
        return JSONScanner(self._paths, self._on_object, text_roots=roots)

    def _close_small(self) -> None:
        data = bytes(self._small or b"")
        self._small = None
        if not data.strip():
            return
        try:
            value = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError):
            # NDJSON, or not JSON at all: the scanner reads the first and judges the second.
            scanner = self._scanner = self._new_scanner()
            scanner.feed(data)
            return
        objects = value if isinstance(value, list) else [value]
        for obj in objects:
            if isinstance(obj, dict):
                self._on_object(obj)
        if self._text is not None and not self._acc.seen:
            self._text.add_bytes(
                sum(_string_bytes(r.get(root)) for r in objects if isinstance(r, dict) for root in _RESPONSE_TEXT_ROOTS)
            )

    def _start_sse(self) -> None:
        self._sse = SSEDecoder(self._on_event, self._on_large_data, self._on_large_end)

    # -- SSE ----------------------------------------------------------------------------

    def _on_event(self, event: bytes, data: bytes) -> None:
        sse = self._sse
        if (
            self._model is None
            and not self._fast
            and sse is not None
            and sse.events > MODEL_EVENTS
            and self._decompressor is None
            and not self._triggers
        ):
            # Events that name no model (a non-LLM stream, or a provider that never
            # does): stop parsing each one; events that can hold usage still are.
            self._fast = True
        if self._text is not None:
            meter = self._text
            for m in _TEXT_FIELD.finditer(data):
                meter.add_json_string(m.group(1))
        if (
            (self._model is None and not self._fast)
            or _USAGE_HINT.search(data) is not None
            or b'eval_count"' in data
            or any(t in data for t in self._triggers)
        ):
            if data == b"[DONE]":
                return
            try:
                obj = json.loads(data)
            except ValueError:
                self._error = self._error or "malformed"
                return
            if isinstance(obj, dict):
                self._on_object(obj)
            elif isinstance(obj, list):  # a batch of objects in one event
                for item in obj:
                    if isinstance(item, dict):
                        self._on_object(item)

    def _on_large_data(self, piece: bytes) -> None:
        if self._large is None:
            self._large = JSONScanner(self._paths, self._on_object)
        self._large.feed(piece)

    def _on_large_end(self, event: bytes) -> None:
        large = self._large
        self._large = None
        if large is not None and large.failed:
            self._error = self._error or "malformed"

    # -- JSON objects -------------------------------------------------------------------

    def _on_object(self, obj: Mapping[str, Any]) -> None:
        try:
            custom = self._custom
            if custom is not None:
                counts = custom.counts(obj)
                if counts is not None:
                    self._acc.update(counts)
                    self._family = "custom"
                if self._model is None:
                    self._model = custom.model_of(obj)
            found = counts_from_object(obj)
            if found is not None:
                counts, family = found
                self._acc.update(counts)
                if self._family is None:
                    self._family = family
            if self._model is None:
                self._model = model_from_object(obj)
                if self._model is not None:
                    self._fast = self._sse is not None and self._decompressor is None and not self._triggers
        except Invalid:
            self._error = "invalid_usage"
