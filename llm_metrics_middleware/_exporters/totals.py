"""Running token and request sums per dimension tuple, shared by the OpenTelemetry-based
exporters.

A synchronous OpenTelemetry ``Counter.add`` with ten attributes costs the SDK 10-15 µs and
a call needs six of them; adding to plain dicts under one lock costs about a microsecond.
The exporters hand these sums to the SDK at collection time, in the SDK's thread: the
OpenTelemetry exporter reads them cumulatively from observable counters, the Azure exporter
takes them as deltas.
"""

from __future__ import annotations

import threading

from .._metering.call import CallRecord

#: Attribute dicts cached per dimension tuple, up to this many (the middleware caps the
#: tuples with ``max_series``; past this a fresh dict is built each time).
CACHE_LIMIT = 10_000

# Positions in the per-dimension-tuple list of token sums.
PROMPT, COMPLETION, TOTAL, CACHED, REASONING, EST_PROMPT, EST_COMPLETION = range(7)

Dims = tuple[str, ...]
#: (dimension values, HTTP status, outcome, usage source)
RequestKey = tuple[Dims, str, str, str]


class CallTotals:
    """Sums of calls by dimension tuple; ``lock`` guards ``tokens``, ``requests``, ``errors``."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        #: Attribute keys, in the order of the dimension values.
        self.keys = keys
        self.lock = threading.Lock()
        self.tokens: dict[Dims, list[int]] = {}
        self.requests: dict[RequestKey, int] = {}
        self.errors: dict[str, int] = {}
        #: USD by dimension tuple (calls priced by ``pricing=``).
        self.cost: dict[Dims, float] = {}
        self._attrs: dict[Dims, dict[str, str]] = {}

    def add(self, call: CallRecord) -> None:
        dims = call.dimensions
        if len(dims) != len(self.keys):
            raise ValueError(f"{len(dims)} dimension values for {len(self.keys)} dimensions")
        usage = call.usage
        key = (dims, str(call.status), call.outcome, call.usage_source)
        with self.lock:
            if usage is not None:
                sums = self.tokens.get(dims)
                if sums is None:
                    sums = self.tokens[dims] = [0, 0, 0, 0, 0, 0, 0]
                sums[PROMPT] += usage.prompt_tokens
                sums[COMPLETION] += usage.completion_tokens
                sums[TOTAL] += usage.total_tokens
                sums[CACHED] += usage.cached_tokens
                sums[REASONING] += usage.reasoning_tokens
                if usage.estimated:
                    sums[EST_PROMPT] += usage.prompt_tokens
                    sums[EST_COMPLETION] += usage.completion_tokens
            self.requests[key] = self.requests.get(key, 0) + 1
            cost = call.cost_usd
            if cost:
                self.cost[dims] = self.cost.get(dims, 0.0) + cost

    def add_error(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def take(self) -> tuple[dict[Dims, list[int]], dict[RequestKey, int], dict[str, int]]:
        """The sums so far, and start again from zero (for delta export)."""
        with self.lock:
            taken = self.tokens, self.requests, self.errors
            self.tokens, self.requests, self.errors = {}, {}, {}
        return taken

    def take_cost(self) -> dict[Dims, float]:
        """The cost sums so far, and start again from zero (for delta export)."""
        with self.lock:
            taken, self.cost = self.cost, {}
        return taken

    def attributes(self, dims: Dims) -> dict[str, str]:
        attrs = self._attrs.get(dims)
        if attrs is None:
            attrs = dict(zip(self.keys, dims, strict=True))
            if len(self._attrs) < CACHE_LIMIT:
                self._attrs[dims] = attrs
        return attrs


class LimitTotals:
    """Sums of the token-limit events by limit name, and the configured limits.

    ``calls``: ``[authorized calls, limited calls, authorized tokens]`` per limit name.
    ``configured``: ``(name, tokens, window seconds)`` of every limit, for the gauge.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: dict[str, list[int]] = {}
        self.configured: list[tuple[str, int, int]] = []

    def configure(self, limits: list[tuple[str, int, int]]) -> None:
        with self.lock:
            known = {entry[0] for entry in self.configured}
            self.configured.extend(entry for entry in limits if entry[0] not in known)

    def add(self, name: str, authorized: int, limited: int, tokens: int) -> None:
        with self.lock:
            sums = self.calls.get(name)
            if sums is None:
                sums = self.calls[name] = [0, 0, 0]
            sums[0] += authorized
            sums[1] += limited
            sums[2] += tokens

    def snapshot(self) -> dict[str, list[int]]:
        with self.lock:
            return {name: list(sums) for name, sums in self.calls.items()}

    def take(self) -> dict[str, list[int]]:
        """The sums so far, and start again from zero (for delta export)."""
        with self.lock:
            taken, self.calls = self.calls, {}
        return taken
