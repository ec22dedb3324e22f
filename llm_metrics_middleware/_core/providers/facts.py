"""The lists other modules need, derived from the provider table (never written by hand)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from ..textscan import TextFields, UsageHint, text_field_pattern, usage_hint_pattern
from ..usage import Counts, as_count
from .table import PROVIDERS, Path


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


#: Fields of streamed chunks whose strings are generated text, across providers.
STREAM_TEXT_FIELDS = _unique(f for p in PROVIDERS for f in p.stream_text)
#: Top-level fields of a whole JSON response whose strings are generated text.
RESPONSE_TEXT_ROOTS = _unique(f for p in PROVIDERS for f in p.response_text)
#: Top-level request fields whose strings are the prompt.
PROMPT_ROOTS = _unique(f for p in PROVIDERS for f in p.prompt_roots)
#: Request fields the peek keeps.
REQUEST_FIELDS: tuple[Path, ...] = tuple(dict.fromkeys(f for p in PROVIDERS for f in p.request_fields))
#: Request headers that carry an API key, in the order they are looked at.
KEY_HEADERS = _unique(h for p in PROVIDERS for h in p.key_headers)
#: Query parameters that may carry an API key.
KEY_QUERY = _unique(p.key_query for p in PROVIDERS if p.key_query)
#: Response headers that report usage: (input, output, cache read, cache write) names,
#: lower-case, per provider that has them.
USAGE_HEADERS: tuple[tuple[str, ...], ...] = tuple(
    tuple(h.lower() for h in p.usage_headers) for p in PROVIDERS if p.usage_headers
)
#: Every one of them, for a driver to pick out of a response's headers.
USAGE_HEADER_NAMES = frozenset(h for names in USAGE_HEADERS for h in names)


def counts_from_headers(headers: Mapping[str, str]) -> Counts | None:
    """Usage reported in response headers (lower-case names), or None.

    The input count excludes cache reads and writes (Bedrock's headers, like its bodies);
    they are added back. A header that is not a sane count voids them all.
    """
    for names in USAGE_HEADERS:
        values = [headers.get(name) for name in names]
        if values[0] is None and values[1] is None:
            continue
        counts: list[int | None] = []
        for value in values:
            if value is None:
                counts.append(None)
                continue
            try:
                count = as_count(int(value.strip()))
            except ValueError:
                return None
            if count is None:
                return None
            counts.append(count)
        uncached, output, read, written = counts
        prompt = None if uncached is None else uncached + (read or 0) + (written or 0)
        return prompt, output, None, read, None, written, None
    return None


#: Providers whose streams always carry usage.
ALWAYS_REPORTS = frozenset(p.name for p in PROVIDERS if p.streams_report_usage)
#: Operations that bill no tokens: their bodies are not read for usage.
UNBILLED_OPERATIONS = frozenset(op.name for p in PROVIDERS for op in p.operations if not op.billed)
#: Operations that always stream, whatever their body format.
STREAMING_OPERATIONS = frozenset(op.name for p in PROVIDERS for op in p.operations if op.streams)
#: Operations whose responses are not worth counting for an estimate.
NO_TEXT_OPERATIONS = frozenset(op.name for p in PROVIDERS for op in p.operations if not op.estimate_text)


def _otel_names() -> Mapping[str, str]:
    names: dict[str, str] = {}
    for p in PROVIDERS:
        for op in p.operations:
            if names.setdefault(op.name, op.otel) != op.otel:
                raise ValueError(f"operation {op.name!r} has two OpenTelemetry names: {names[op.name]!r}, {op.otel!r}")
    return names


#: Our operation names -> ``gen_ai.operation.name``.
OTEL_OPERATION_NAMES: Mapping[str, str] = _otel_names()
#: Provider names -> ``gen_ai.provider.name`` (ours are those already).
OTEL_PROVIDER_NAMES: Mapping[str, str] = {p.name: p.name for p in PROVIDERS}

_SENDERS = tuple(
    (p.name, tuple(h.lower() for h in p.sent_headers), p.sent_query) for p in PROVIDERS if p.sent_headers or p.sent_query
)


def provider_from_headers(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The provider whose clients alone send these headers, for a path we do not recognise.

    ``headers`` must look names up case-insensitively (as :class:`RequestView`'s do).
    """
    for name, sent_headers, sent_query in _SENDERS:
        if all(h in headers for h in sent_headers) and all(q in query for q in sent_query):
            return name
    return None


_SSE = tuple(p for p in PROVIDERS if p.stream_format == "sse")


#: The last key of every place usage sits in the providers that stream SSE: followed by an
#: object (not null), event data may hold usage.
USAGE_HINT_KEYS = tuple(sorted({path[-1] for p in _SSE for path, _ in p.usage if path}))


#: Whether SSE event data (or a raw chunk of events) can hold usage: a usage key not
#: followed by null (the reference pattern: see :mod:`..textscan`, whose searches run).
USAGE_HINT = usage_hint_pattern(USAGE_HINT_KEYS)


def _markers() -> tuple[bytes, ...]:
    # Top-level counts of the providers that do not stream AWS event streams (whose
    # payloads are all parsed). A marker that ends with another adds nothing to a
    # substring test.
    names = dict.fromkeys(
        m for p in PROVIDERS if p.stream_format != "eventstream" for path, shapes in p.usage if not path
        for s in shapes for m in s.markers
    )
    quoted = [m.encode() + b'"' for m in names]
    return tuple(m for m in quoted if not any(o != m and m.endswith(o) for o in quoted))


#: Bytes whose presence in SSE event data means top-level usage (Ollama's ``eval_count"``).
USAGE_MARKERS = _markers()
#: Any of :data:`USAGE_MARKERS`, for one search per raw chunk.
USAGE_MARKER = re.compile(b"|".join(re.escape(m) for m in USAGE_MARKERS))
_HINT_KEYS = tuple(key.encode("ascii") for key in USAGE_HINT_KEYS)
#: :data:`USAGE_HINT` or :data:`USAGE_MARKER` in a raw chunk, searched (``.seen(data)``).
USAGE_SEEN = UsageHint(_HINT_KEYS, USAGE_MARKERS)
#: :data:`USAGE_HINT` alone in event data, searched (``.seen(data)``).
USAGE_HINTED = UsageHint(_HINT_KEYS, ())

#: Marks of a stream's last word: OpenAI's ``data: [DONE]``, Anthropic's ``message_stop``
#: event, Ollama's final ``"done": true`` object. A client that leaves once it has read
#: one (the OpenAI SDK closes at ``[DONE]``, before the chunked body's terminator) has a
#: completed call, not a disconnected one.
STREAM_END_MARKS = (b"[DONE]", b"message_stop", b'"done":true', b'"done": true')
#: How many of a body's last bytes hold its end mark, if it has one (Ollama's final object
#: carries a few statistics after its ``"done":true``).
STREAM_END_TAIL = 256


def stream_ended(tail: bytes) -> bool:
    """Whether a body's last bytes (at most :data:`STREAM_END_TAIL` of them are looked at)
    show that its stream had said its last word."""
    tail = tail[-STREAM_END_TAIL:]
    return any(mark in tail for mark in STREAM_END_MARKS)


#: Strings worth counting in SSE event data when a stream carries no usage: the streamed
#: text fields of every provider (group 1: the string as written, escapes included).
TEXT_FIELD = text_field_pattern(STREAM_TEXT_FIELDS)
#: Keys whose values are generated text, for :class:`~..textfields.TextFieldCounter`
#: (a whole JSON response under :data:`RESPONSE_TEXT_ROOTS`).
TEXT_FIELD_NAMES = frozenset(STREAM_TEXT_FIELDS)


class StreamText:
    """One operation's streamed-text fields: where their strings are in event data (see
    :mod:`..textscan`), and the names (for an event too large to keep, measured by a
    :class:`~..textfields.TextFieldCounter`)."""

    __slots__ = ("field", "spans", "names")

    def __init__(self, fields: tuple[str, ...]) -> None:
        #: The reference pattern (what the search finds, group 1).
        self.field = text_field_pattern(fields) if fields != STREAM_TEXT_FIELDS else TEXT_FIELD
        #: ``TextFields(...).spans``, bound once here: binding it per response is an object
        #: made (and collected) for every stream.
        self.spans = TextFields(tuple(f.encode("ascii") for f in fields)).spans
        self.names = frozenset(fields)


#: Every provider's streamed-text fields together: what an operation's chunks are read with
#: unless it names its own.
STREAM_TEXT = StreamText(STREAM_TEXT_FIELDS)
#: The operations whose chunks name their text apart from their provider's (Responses).
OPERATION_STREAM_TEXT: Mapping[str, StreamText] = {
    op.name: StreamText(op.stream_text) for p in PROVIDERS for op in p.operations if op.stream_text is not None
}
