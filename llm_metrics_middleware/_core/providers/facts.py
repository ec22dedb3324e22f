"""The lists other modules need, derived from the provider table (never written by hand)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

from .objects import TOP_LEVEL_MARKERS, USAGE_CONTAINERS
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
#: Providers whose streams always carry usage.
ALWAYS_REPORTS = frozenset(p.name for p in PROVIDERS if p.streams_report_usage)
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


def _usage_hint() -> re.Pattern[bytes]:
    # The last key of every place usage sits, followed by an object (not null). Keys are
    # factored by their common prefix, so the pattern starts with a literal that the regex
    # engine can skip ahead to ("usage" for usage / usageMetadata: 0.2 us on a chunk).
    keys = sorted({path[-1] for path, _ in USAGE_CONTAINERS if path})
    prefix = os.path.commonprefix(keys)
    rests = "|".join(re.escape(k[len(prefix):]) for k in sorted(keys, key=len, reverse=True))
    return re.compile(f'{re.escape(prefix)}(?:{rests})"\\s*:\\s*\\{{'.encode())


#: Whether SSE event data can hold usage: a usage object, not null.
USAGE_HINT = _usage_hint()


def _markers() -> tuple[bytes, ...]:
    # A marker that ends with another one adds nothing to a substring test.
    quoted = [m.encode() + b'"' for m in TOP_LEVEL_MARKERS]
    return tuple(m for m in quoted if not any(o != m and m.endswith(o) for o in quoted))


#: Bytes whose presence in event data means top-level usage (Ollama's ``eval_count"``).
USAGE_MARKERS = _markers()

#: Strings worth counting in SSE event data when a stream carries no usage: the streamed
#: text fields of every provider. Matched on the raw JSON, escapes included: an estimate.
TEXT_FIELD = re.compile(
    b'"(?:' + b"|".join(re.escape(f).encode() for f in STREAM_TEXT_FIELDS) + rb')"\s*:\s*"((?:[^"\\]|\\.)*)"',
    re.S,
)
