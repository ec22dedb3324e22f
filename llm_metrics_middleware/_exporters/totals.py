"""Running sums of calls per series (one dimension tuple), the one aggregate every exporter
reads: Prometheus renders it at scrape time, OpenTelemetry observes it at collection,
Azure takes it as deltas at each export.

Why an aggregate instead of the libraries' own instruments on the request path: a
prometheus_client ``inc()`` costs about a microsecond with its checks and its lock, a
``Histogram.observe`` walks its buckets in Python, a synchronous OpenTelemetry
``Counter.add`` with ten attributes costs the SDK 10-15 µs, and one call needs six to eight
of them. Adding to one slotted object under one lock costs about a microsecond for the
whole call, and the libraries do their work once per scrape or export instead.

Thread safety: ``+=`` on an attribute is several bytecodes, so two threads can lose an
update even under the GIL (and certainly without one, on free-threaded builds). Every
change and every read of a series happens under :attr:`CallTotals.lock`, one uncontended
``threading.Lock`` per aggregate (about 0.1 µs); asyncio tasks never contend for it.
Readers copy one series at a time under it (:meth:`CallTotals.snapshot`), so a scrape of
2,000 series never holds the request path for more than a few microseconds at once.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Sequence

from .._core.usage import Usage
from .._metering.call import CallRecord

#: Attribute dicts cached per dimension tuple, up to this many (the middleware caps the
#: tuples with ``max_series``; past this a fresh dict is built each time).
CACHE_LIMIT = 10_000

Dims = tuple[str, ...]
#: (HTTP status, outcome, usage source) of the ``requests`` counter of one series.
RequestKey = tuple[int, str, str]
#: (trace id, span id, prompt, completion, total tokens, Unix time) of one traced call.
TokenExemplar = tuple[str, str, int, int, int, float]
#: (duration bucket index, trace id, span id, seconds, Unix time) of one traced call.
DurationExemplar = tuple[int, str, str, float, float]


class Series:
    """The sums of one dimension tuple. Change and read only under the aggregate's lock."""

    __slots__ = (
        "dims",
        "created",
        "usage_calls",
        "prompt",
        "completion",
        "total",
        "cached",
        "reasoning",
        "estimated_calls",
        "est_prompt",
        "est_completion",
        "cost",
        "requests",
        "duration",
        "duration_sum",
        "first_chunk",
        "first_chunk_sum",
        "exemplar",
        "duration_exemplar",
    )

    def __init__(self, dims: Dims, duration_buckets: int) -> None:
        self.dims = dims
        #: Unix time of the first call (the OpenMetrics ``_created`` value).
        self.created = time.time()
        #: Calls that had usage (reported or estimated): the token counters exist once >= 1.
        self.usage_calls = 0
        self.prompt = 0
        self.completion = 0
        self.total = 0
        self.cached = 0
        self.reasoning = 0
        self.estimated_calls = 0
        self.est_prompt = 0
        self.est_completion = 0
        #: USD, None until a call of this series had a price.
        self.cost: float | None = None
        self.requests: dict[RequestKey, int] = {}
        #: Per-bucket (not cumulative) counts, one more than the bounds (the +Inf bucket);
        #: empty when the aggregate keeps no histogram.
        self.duration = [0] * duration_buckets
        self.duration_sum = 0.0
        #: None until a streamed call of this series had a first chunk.
        self.first_chunk: list[int] | None = None
        self.first_chunk_sum = 0.0
        #: The latest traced call with usage, when the aggregate keeps exemplars: (trace id,
        #: span id, prompt, completion, total tokens, Unix time). One per series, replaced
        #: by the next one: the cost of exemplars stays one tuple per series.
        self.exemplar: TokenExemplar | None = None
        #: The latest traced call's duration: (bucket index, trace id, span id, seconds, Unix time).
        self.duration_exemplar: DurationExemplar | None = None

    def copy(self) -> Series:
        other = Series.__new__(Series)
        for name in Series.__slots__:
            value = getattr(self, name)
            setattr(other, name, value.copy() if isinstance(value, (dict, list)) else value)
        return other


class CallTotals:
    """Sums of calls by dimension tuple, and metering errors by kind.

    ``duration_bounds`` / ``first_chunk_bounds``: histogram upper bounds (seconds, sorted)
    to keep per series; empty keeps no histogram (the exporter records timings its own way).
    ``exemplars``: keep the latest traced call of each series (:attr:`Series.exemplar`).
    """

    def __init__(
        self,
        keys: tuple[str, ...],
        *,
        duration_bounds: Sequence[float] = (),
        first_chunk_bounds: Sequence[float] = (),
        exemplars: bool = False,
    ) -> None:
        #: Attribute keys, in the order of the dimension values.
        self.keys = keys
        self.duration_bounds: tuple[float, ...] = tuple(duration_bounds)
        self.first_chunk_bounds: tuple[float, ...] = tuple(first_chunk_bounds)
        if list(self.duration_bounds) != sorted(self.duration_bounds) or list(self.first_chunk_bounds) != sorted(
            self.first_chunk_bounds
        ):
            raise ValueError("histogram bounds must be sorted")
        self.exemplars = exemplars
        self.lock = threading.Lock()
        self.series: dict[Dims, Series] = {}
        self.errors: dict[str, int] = {}
        self._attrs: dict[Dims, dict[str, str]] = {}

    def _new_series(self, dims: Dims) -> Series:
        if len(dims) != len(self.keys):
            raise ValueError(f"{len(dims)} dimension values for {len(self.keys)} dimensions")
        series = Series(dims, len(self.duration_bounds) + 1 if self.duration_bounds else 0)
        self.series[dims] = series
        return series

    def add(self, call: CallRecord) -> None:
        """Count one call: :meth:`add_fields` of its record."""
        self.add_fields(
            call.dimensions, call.usage, call.status, call.outcome, call.usage_source, call.duration_s,
            call.time_to_first_chunk_s, call.cost_usd, call.trace_id, call.span_id,
        )

    def add_fields(
        self,
        dims: Dims,
        usage: Usage | None,
        status: int,
        outcome: str,
        usage_source: str,
        duration: float,
        first: float | None,
        cost: float | None,
        trace_id: str | None,
        span_id: str | None,
    ) -> None:
        """Count one call from the fields of its :class:`CallRecord` that the sums read: the
        whole cost of a call on the request path. A finishing call hands them over itself
        when every sink only sums (see ``Metering.direct_fields``): no record is built."""
        if trace_id is not None and not self.exemplars:
            trace_id = None
        # acquire/release around try/finally, not ``with``: the same lock held the same way,
        # at half the cost of the context-manager protocol on the request path.
        lock = self.lock
        lock.acquire()
        try:
            series = self.series.get(dims)
            if series is None:
                series = self._new_series(dims)
            now = time.time() if trace_id is not None else 0.0
            if usage is not None:
                series.usage_calls += 1
                series.prompt += usage.prompt_tokens
                series.completion += usage.completion_tokens
                series.total += usage.total_tokens
                if usage.cached_tokens:
                    series.cached += usage.cached_tokens
                if usage.reasoning_tokens:
                    series.reasoning += usage.reasoning_tokens
                if usage.estimated:
                    series.estimated_calls += 1
                    series.est_prompt += usage.prompt_tokens
                    series.est_completion += usage.completion_tokens
                if trace_id is not None:
                    series.exemplar = (
                        trace_id, span_id or "", usage.prompt_tokens, usage.completion_tokens,
                        usage.total_tokens, now,
                    )
            if cost is not None:
                series.cost = cost if series.cost is None else series.cost + cost
            key = (status, outcome, usage_source)
            requests = series.requests
            requests[key] = requests.get(key, 0) + 1
            bounds = self.duration_bounds
            if bounds:
                bucket = bisect_left(bounds, duration)
                series.duration[bucket] += 1
                series.duration_sum += duration
                if trace_id is not None:
                    series.duration_exemplar = (bucket, trace_id, span_id or "", duration, now)
                if first is not None and self.first_chunk_bounds:
                    buckets = series.first_chunk
                    if buckets is None:
                        buckets = series.first_chunk = [0] * (len(self.first_chunk_bounds) + 1)
                    buckets[bisect_left(self.first_chunk_bounds, first)] += 1
                    series.first_chunk_sum += first
        finally:
            lock.release()

    def add_error(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def snapshot(self) -> tuple[list[Series], dict[str, int]]:
        """Copies of every series and of the error counts, for a cumulative reader.

        Each series is copied under the lock on its own, so the request path waits for
        one copy at most; every copy is consistent in itself.
        """
        with self.lock:
            current = list(self.series.values())
            errors = dict(self.errors)
        out = []
        lock = self.lock
        for series in current:
            with lock:
                out.append(series.copy())
        return out, errors

    def take(self) -> tuple[dict[Dims, Series], dict[str, int]]:
        """The sums so far, and start again from zero (for delta export)."""
        with self.lock:
            taken = self.series, self.errors
            self.series, self.errors = {}, {}
        return taken

    def attributes(self, dims: Dims) -> dict[str, str]:
        """``{key: value}`` of a dimension tuple, cached: do not change the dict returned."""
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
