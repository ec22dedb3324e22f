"""Which LLM API a request is for, from its path alone (derived from the provider table)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .table import PROVIDERS, Provider


@dataclass(frozen=True)
class Route:
    """What the request path says about the LLM call."""

    provider: str | None
    operation: str | None
    #: A model named in the path (Azure deployment, Gemini model, Bedrock model ID).
    model: str | None = None
    #: The provider's total holds output its completion count leaves out (the table's
    #: ``hidden_output_in_total``).
    hidden_output_in_total: bool = False
    #: The table row's ``streams_report_usage``: per row, not per provider name, since one
    #: provider may serve several APIs (Gemini's own, and its OpenAI compatibility one).
    streams_report_usage: bool = False


_UNKNOWN = Route(None, None)


@dataclass(frozen=True)
class _Pattern:
    provider: str
    regex: re.Pattern[str]
    requires: tuple[str, ...]
    operation_of_tail: dict[str, str]
    hidden_output_in_total: bool
    streams_report_usage: bool


def _pattern(provider: Provider) -> _Pattern:
    assert provider.path is not None
    tails = {tail: op.name for op in provider.operations for tail in op.tails}
    alternatives = "|".join(re.escape(t) for t in sorted(tails, key=len, reverse=True))
    regex = re.compile(provider.path.replace("{ops}", alternatives))
    return _Pattern(
        provider.name, regex, provider.path_requires, tails, provider.hidden_output_in_total, provider.streams_report_usage
    )


# Patterns that need more of the path first (Vertex AI before the Gemini API it shares
# its pattern with), then the rest in table order.
_PATTERNS = tuple(
    _pattern(p) for p in sorted((p for p in PROVIDERS if p.path), key=lambda p: not p.path_requires)
)

# (suffix, provider, operation, not_under), longest suffixes first: "/chat/completions"
# must win over "/completions", "/api/embeddings" over "/embeddings".
_SUFFIXES = tuple(
    sorted(
        (
            (suffix, p.name, op.name, op.not_under, p.streams_report_usage)
            for p in PROVIDERS
            if p.path is None
            for op in p.operations
            for suffix in op.suffixes
        ),
        key=lambda entry: len(entry[0]),
        reverse=True,
    )
)

_CACHE: dict[str, Route] = {}
_CACHE_SIZE = 1024


def route_of(path: str) -> Route:
    """Provider, operation and path model for a request path (no query string).

    Cached: an app serves few distinct paths. Paths come from clients, so the cache is
    emptied whenever it fills.
    """
    route = _CACHE.get(path)
    if route is None:
        route = _route_of(path)
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()
        _CACHE[path] = route
    return route


def _route_of(path: str) -> Route:
    for pattern in _PATTERNS:
        if pattern.requires and not all(part in path for part in pattern.requires):
            continue
        m = pattern.regex.search(path)
        if m:
            tail = m.group("op")
            operation = pattern.operation_of_tail.get(tail) or tail.replace("/", ".")
            # A path that names no model (Gemini's OpenAI endpoint) has no model group.
            return Route(
                pattern.provider,
                operation,
                m.groupdict().get("model"),
                pattern.hidden_output_in_total,
                pattern.streams_report_usage,
            )
    stripped = path.rstrip("/")
    for suffix, provider, operation, not_under, reports in _SUFFIXES:
        if stripped.endswith(suffix):
            if any(part in stripped for part in not_under):
                return _UNKNOWN
            return Route(provider, operation, streams_report_usage=reports)
    return _UNKNOWN
