"""Which LLM API a request is for, from its path (derived from the provider table), and
whose it is when another provider serves that API behind its own host (a claim)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

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
    #: The provider whose API (and wire format) the path is, when another provider serves
    #: it (``openai`` for Azure's ``/openai/v1/...``); None: ``provider``'s own.
    wire: str | None = None


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


_Claim = tuple[str, "re.Pattern[str] | None", tuple[str, ...], str]


def _hosts(names: tuple[str, ...]) -> re.Pattern[str] | None:
    """One pattern for a claim's host names, ``*`` being one DNS label."""
    if not names:
        return None
    return re.compile("|".join(re.escape(name).replace(r"\*", "[a-z0-9-]+") for name in names))


def _claims() -> dict[str, tuple[_Claim, ...]]:
    """Provider routed -> ((claiming provider, host pattern, header names, path part), ...)."""
    out: dict[str, tuple[_Claim, ...]] = {}
    for p in PROVIDERS:
        for c in p.claims:
            out[c.of] = (*out.get(c.of, ()), (p.name, _hosts(c.hosts), tuple(h.lower() for h in c.headers), c.under))
    return out


_CLAIMS = _claims()

#: Providers whose routes another provider may claim (only their requests look further).
CLAIMED = frozenset(_CLAIMS)

#: Provider routed -> the path parts under which a claim of its routes reads headers
#: besides ``Host`` (Azure's ``api-key`` under ``/openai/``).
_HEADER_CLAIMS = {of: tuple(under for _, _, headers, under in claims if headers) for of, claims in _CLAIMS.items()}


def claim_reads_headers(route: Route, path: str) -> bool:
    """Whether :func:`claimed` may read headers other than ``Host`` for this route and path.

    When it does not, the claim depends on the path and the ``Host`` alone, so a caller can
    keep its answer by those two."""
    for under in _HEADER_CLAIMS.get(route.provider or "", ()):  # noqa: SIM110 (a loop: no generator per call)
        if under in path:
            return True
    return False


def claimed(route: Route, path: str, header: Callable[[str], str | None]) -> Route:
    """``route``, or the same call as the provider that claims it (:class:`~.table.Claim`):
    the request's ``Host`` is one of its hosts, or it sends one of that provider's
    headers on a path under its prefix. ``header(name)`` returns a request header
    (lower-case name), or None.
    """
    claims = _CLAIMS.get(route.provider or "")
    if not claims:
        return route
    host = (header("host") or "").strip().lower()
    if not host.endswith("]"):  # an IPv6 literal has colons of its own (and is no provider's)
        host = host.partition(":")[0].rstrip(".")
    for name, hosts, headers, under in claims:
        if (hosts is not None and hosts.fullmatch(host)) or (
            headers and under in path and any(header(h) is not None for h in headers)
        ):
            # The row's own facts stay (the API, hence its wire habits, is still the route's).
            return replace(route, provider=name, wire=route.provider)
    return route
