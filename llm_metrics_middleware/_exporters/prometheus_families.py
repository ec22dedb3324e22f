"""The Prometheus exporter's metric families: what a namespace's metrics are, and the two
ways of keeping them.

Kept apart from :mod:`.prometheus` (the exporter face: options, registries, ``bind``, the
scrape apps) because this is the part that runs per call and per scrape:
:class:`_Collector` renders the in-process aggregate at scrape time (single-process), and
:class:`_MultiprocessFamily` writes prometheus_client's memory-mapped values on every call
(``PROMETHEUS_MULTIPROC_DIR``). Both read their names, help texts and buckets from
:data:`_METRICS` here, so the two modes cannot drift apart.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from .._metering.call import CallRecord
from .._metering.names import PROMETHEUS, safe_name
from .rules import MetricRule
from .totals import CallTotals, Series

# LLM calls take from a tenth of a second (embeddings, short answers) to minutes (long
# generations, reasoning models); request-oriented default buckets stop at 10 s. Ten
# bounds keep one series' histogram at 13 series (10 buckets, +Inf, _sum, _count).
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# The first chunk of a stream comes after queueing and prompt processing: 50 ms to 10 s.
FIRST_CHUNK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# name suffix (after the prefix), kind, help, extra labels
_METRICS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("prompt_tokens", "counter", "Prompt (input) tokens, cached included.", ()),
    ("completion_tokens", "counter", "Completion (output) tokens, reasoning included.", ()),
    ("tokens", "counter", "Total tokens.", ()),
    ("cached_tokens", "counter", "Prompt tokens read from the provider's cache.", ()),
    ("reasoning_tokens", "counter", "Completion tokens spent on reasoning.", ()),
    (
        "estimated_tokens",
        "counter",
        "Tokens counted by estimate because the response reported no usage (included in the token counters).",
        ("type",),
    ),
    ("cost_usd", "counter", "Cost of the LLM calls in USD (the middleware's pricing=); calls of unpriced models add nothing.", ()),
    (
        "requests",
        "counter",
        "LLM calls metered, by HTTP status, outcome and how usage was obtained.",
        ("status", "outcome", "usage"),
    ),
    ("request_duration_seconds", "histogram", "Time from the request to the last response byte.", ()),
    (
        "time_to_first_chunk_seconds",
        "histogram",
        "Time from the request to the first body bytes of a streamed response.",
        (),
    ),
)
_ERRORS_HELP = "Responses or values the middleware could not count, by kind."


def metric_prefix(namespace: str) -> str:
    """``"LLM gateway"`` -> ``LLM_gateway``: a valid Prometheus name prefix."""
    return safe_name(namespace, PROMETHEUS)


def _le_values(bounds: Sequence[float]) -> tuple[str, ...]:
    """The ``le`` label values of ``bounds``, spelt as prometheus_client spells them."""
    return tuple(floatToGoString(b) for b in bounds) + ("+Inf",)  # type: ignore[no-untyped-call]


_DURATION_LE = _le_values(DURATION_BUCKETS)
_FIRST_CHUNK_LE = _le_values(FIRST_CHUNK_BUCKETS)


def _cumulative(les: Sequence[str], counts: Sequence[int]) -> list[Any]:
    """``(le, cumulative count)`` per bucket, as ``HistogramMetricFamily.add_metric`` takes them."""
    out: list[Any] = []
    acc = 0
    for le, count in zip(les, counts, strict=True):
        acc += count
        out.append((le, acc))
    return out


def _exemplar(trace_id: str, span_id: str, value: float, timestamp: float) -> Exemplar:
    """An OpenMetrics exemplar that points to a trace, labelled as Prometheus and Grafana
    expect (``trace_id``, ``span_id``); only the OpenMetrics exposition writes it."""
    return Exemplar({"trace_id": trace_id, "span_id": span_id}, value, timestamp)


class _Rules:
    r"""The counters of ``MetricRule``\ s of one family, made by the first exporter bound
    with each rule (the family is shared by the registry's exporters). Rules are few and
    opt-in, so they stay prometheus_client counters updated on the request path."""

    def __init__(self, registry: CollectorRegistry, prefix: str, labels: tuple[str, ...]) -> None:
        self._registry, self._prefix, self._labels = registry, prefix, labels
        self.counters: dict[str, Counter] = {}
        self._lock = threading.Lock()

    def counters_for(self, rules: tuple[MetricRule, ...]) -> tuple[tuple[MetricRule, Counter], ...]:
        with self._lock:
            for rule in rules:
                if rule.metric not in self.counters:
                    self.counters[rule.metric] = Counter(
                        f"{self._prefix}_{metric_prefix(rule.metric)}",
                        rule.description or f"{rule.usage} of the calls that match the rule {rule.metric!r}.",
                        list(self._labels),
                        registry=self._registry,
                    )
            return tuple((rule, self.counters[rule.metric]) for rule in rules)


def _with_rules(
    record: Callable[[CallRecord], None], rules: tuple[tuple[MetricRule, Counter], ...]
) -> Callable[[CallRecord], None]:
    """``record`` followed by the rules' counters (only when the exporter has rules)."""

    def record_with_rules(call: CallRecord) -> None:
        record(call)
        values = call.dimensions
        for rule, counter in rules:
            amount = rule.amount(call)
            if amount:
                (counter.labels(*values) if values else counter).inc(amount)

    return record_with_rules


class _Collector:
    """The metrics of one namespace in one registry, rendered from the aggregate at scrape time."""

    def __init__(self, prefix: str, labels: tuple[str, ...], created: bool, exemplars: bool = True) -> None:
        self.prefix = prefix
        self.labels = labels
        self.created = created
        self.totals = CallTotals(
            labels, duration_bounds=DURATION_BUCKETS, first_chunk_bounds=FIRST_CHUNK_BUCKETS, exemplars=exemplars
        )
        self.record = self.totals.add
        self.on_error = self.totals.add_error
        self.rules: _Rules  # set by the exporter that builds the family

    def _families(self) -> dict[str, Metric]:
        out: dict[str, Metric] = {}
        for suffix, kind, help_text, extra in _METRICS:
            name = f"{self.prefix}_{suffix}"
            labels = [*self.labels, *extra]
            if kind == "counter":
                out[suffix] = CounterMetricFamily(name, help_text, labels=labels)
            else:
                out[suffix] = HistogramMetricFamily(name, help_text, labels=labels)
        out["errors"] = CounterMetricFamily(f"{self.prefix}_metering_errors", _ERRORS_HELP, labels=["kind"])
        return out

    def describe(self) -> Iterable[Metric]:
        """The families without samples: lets the registry refuse clashing names."""
        return list(self._families().values())

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        series, errors = self.totals.snapshot()
        for one in series:
            self._render(families, one)
        for kind, count in errors.items():
            families["errors"].add_metric([kind], count)  # type: ignore[attr-defined]
        return list(families.values())

    def _render(self, f: dict[str, Any], s: Series) -> None:
        values = list(s.dims)
        created = s.created if self.created else None
        if s.usage_calls:
            prompt = completion = total = None
            if s.exemplar is not None:
                trace_id, span_id, p, c, t, at = s.exemplar
                prompt = _exemplar(trace_id, span_id, p, at)
                completion = _exemplar(trace_id, span_id, c, at)
                total = _exemplar(trace_id, span_id, t, at)
            f["prompt_tokens"].add_metric(values, s.prompt, created=created, exemplar=prompt)
            f["completion_tokens"].add_metric(values, s.completion, created=created, exemplar=completion)
            f["tokens"].add_metric(values, s.total, created=created, exemplar=total)
        if s.cached:
            f["cached_tokens"].add_metric(values, s.cached, created=created)
        if s.reasoning:
            f["reasoning_tokens"].add_metric(values, s.reasoning, created=created)
        if s.estimated_calls:
            f["estimated_tokens"].add_metric([*values, "prompt"], s.est_prompt, created=created)
            f["estimated_tokens"].add_metric([*values, "completion"], s.est_completion, created=created)
        if s.cost is not None:
            f["cost_usd"].add_metric(values, s.cost, created=created)
        for (status, outcome, source), count in s.requests.items():
            f["requests"].add_metric([*values, str(status), outcome, source], count, created=created)
        histograms = (
            ("request_duration_seconds", _DURATION_LE, s.duration, s.duration_sum),
            ("time_to_first_chunk_seconds", _FIRST_CHUNK_LE, s.first_chunk, s.first_chunk_sum),
        )
        for suffix, les, counts, seconds in histograms:
            if counts and any(counts):
                family = f[suffix]
                buckets = _cumulative(les, counts)
                if suffix == "request_duration_seconds" and s.duration_exemplar is not None:
                    index, trace_id, span_id, value, at = s.duration_exemplar
                    le, count = buckets[index]
                    buckets[index] = (le, count, _exemplar(trace_id, span_id, value, at))
                family.add_metric(values, buckets, seconds)
                if created is not None:
                    family.add_sample(family.name + "_created", dict(zip(self.labels, values, strict=True)), created)


class _MultiprocessSeries:
    """The prometheus_client children of one dimension tuple, made when first needed."""

    __slots__ = ("values", "prompt", "completion", "total", "duration", "optional", "requests")

    def __init__(self, family: _MultiprocessFamily, values: tuple[str, ...]) -> None:
        self.values = values
        self.prompt: Any = None
        self.completion: Any = None
        self.total: Any = None
        self.duration = family.duration.labels(*values) if values else family.duration
        # name -> child, for the counters that appear only once they count something.
        self.optional: dict[str, Any] = {}
        # (status, outcome, usage) -> child; a few dozen at most per series.
        self.requests: dict[tuple[int, str, str], Any] = {}


def _inc(child: Any, amount: float) -> None:
    """``Counter.inc`` without its checks (the amount is known to be >= 0); the public
    method if a prometheus_client release renames the value."""
    try:
        value = child._value
    except AttributeError:
        child.inc(amount)
        return
    value.inc(amount)


def _observe(child: Any, amount: float) -> None:
    """``Histogram.observe`` without its Python loop over the buckets (``_upper_bounds``
    ends with +Inf, so the bisection always lands on a bucket)."""
    try:
        total, buckets, bounds = child._sum, child._buckets, child._upper_bounds
    except AttributeError:
        child.observe(amount)
        return
    total.inc(amount)
    buckets[bisect_left(bounds, amount)].inc(1)


class _MultiprocessFamily:
    """Multiprocess mode: every count goes to prometheus_client's memory-mapped values,
    which the scrape of any worker reads; children are made lazily (the series budget) and
    updated through their values directly (the least work per call that stays exact: each
    value has its own lock)."""

    def __init__(self, registry: CollectorRegistry, prefix: str, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.metrics: dict[str, Any] = {}
        L = list(labels)
        for suffix, kind, help_text, extra in _METRICS:
            name = f"{prefix}_{suffix}"
            if kind == "counter":
                self.metrics[suffix] = Counter(name, help_text, [*L, *extra], registry=registry)
            else:
                buckets = DURATION_BUCKETS if suffix == "request_duration_seconds" else FIRST_CHUNK_BUCKETS
                self.metrics[suffix] = Histogram(name, help_text, L, buckets=buckets, registry=registry)
        self.duration = self.metrics["request_duration_seconds"]
        self.errors = Counter(f"{prefix}_metering_errors", _ERRORS_HELP, ["kind"], registry=registry)
        self.rules: _Rules  # set by the exporter that builds the family
        self._series: dict[tuple[str, ...], _MultiprocessSeries] = {}

    def _child(self, suffix: str, values: Sequence[str]) -> Any:
        metric = self.metrics[suffix]
        return metric.labels(*values) if values else metric

    def _optional(self, series: _MultiprocessSeries, suffix: str, *extra: str) -> Any:
        key = suffix + "/" + "/".join(extra)
        child = series.optional.get(key)
        if child is None:
            child = series.optional[key] = self._child(suffix, (*series.values, *extra))
        return child

    def record(self, call: CallRecord) -> None:
        values = call.dimensions
        series = self._series.get(values)
        if series is None:
            if len(values) != len(self.labels):
                raise ValueError(f"{len(values)} dimension values for {len(self.labels)} dimensions")
            series = self._series[values] = _MultiprocessSeries(self, values)
        usage = call.usage
        if usage is not None:
            if series.prompt is None:
                series.prompt = self._child("prompt_tokens", values)
                series.completion = self._child("completion_tokens", values)
                series.total = self._child("tokens", values)
            _inc(series.prompt, usage.prompt_tokens)
            _inc(series.completion, usage.completion_tokens)
            _inc(series.total, usage.total_tokens)
            if usage.cached_tokens:
                _inc(self._optional(series, "cached_tokens"), usage.cached_tokens)
            if usage.reasoning_tokens:
                _inc(self._optional(series, "reasoning_tokens"), usage.reasoning_tokens)
            if usage.estimated:
                _inc(self._optional(series, "estimated_tokens", "prompt"), usage.prompt_tokens)
                _inc(self._optional(series, "estimated_tokens", "completion"), usage.completion_tokens)
        if call.cost_usd is not None:
            _inc(self._optional(series, "cost_usd"), call.cost_usd)
        key = (call.status, call.outcome, call.usage_source)
        requests = series.requests.get(key)
        if requests is None:
            requests = series.requests[key] = self._child("requests", (*values, str(call.status), *key[1:]))
        _inc(requests, 1)
        _observe(series.duration, call.duration_s)
        if call.time_to_first_chunk_s is not None:
            _observe(self._optional(series, "time_to_first_chunk_seconds"), call.time_to_first_chunk_s)

    def on_error(self, kind: str) -> None:
        self.errors.labels(kind).inc()
