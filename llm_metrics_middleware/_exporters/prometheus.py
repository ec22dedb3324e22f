"""Prometheus exporter: token counters and latency histograms in a ``prometheus_client`` registry.

Metric names (``llm`` is the middleware's ``namespace``, sanitised):

- ``llm_prompt_tokens_total``, ``llm_completion_tokens_total``, ``llm_tokens_total``
  {dimensions}: token counters, estimates included;
- ``llm_cached_tokens_total``, ``llm_reasoning_tokens_total`` {dimensions};
- ``llm_estimated_tokens_total`` {dimensions, type="prompt"|"completion"}: the part of the
  token counters that was estimated because the response carried no usage;
- ``llm_cost_usd_total`` {dimensions}: the calls' cost in USD, when the middleware has
  ``pricing=`` (calls of unpriced models add nothing);
- one counter per :class:`MetricRule` of ``rules=`` (``{namespace}_{metric}_total``
  {dimensions}): a usage field, added only for the calls the rule's condition holds for;
- ``llm_requests_total`` {dimensions, status, outcome, usage}: LLM calls metered;
- ``llm_request_duration_seconds`` {dimensions}: until the last body byte;
- ``llm_time_to_first_chunk_seconds`` {dimensions}: streamed responses only;
- ``llm_metering_errors_total`` {kind}: bodies we could not read, values refused,
  exporter failures, dimension combinations that overflowed ``max_series``, models
  without a price (``unpriced_model``, once per model);
- with ``limits=``: ``llm_limit_authorized_calls_total``, ``llm_limit_limited_calls_total``,
  ``llm_limit_authorized_tokens_total`` {limit} (Kuadrant Limitador's ``authorized_calls``,
  ``limited_calls``, ``authorized_hits``) and the gauge ``llm_limit_tokens`` {limit,
  window_seconds}: each configured budget, to draw usage against.

A series exists once it has something to count: the cached, reasoning, estimated and cost
counters and the time to first chunk appear for a dimension tuple only after a call of
that tuple had some. ``_created`` series are off unless ``created_series=True``.

The request path only adds to an in-process aggregate (:class:`~.totals.CallTotals`, one
lock, about a microsecond per call); a custom collector renders it when the registry is
collected (a scrape). Under gunicorn and other pre-fork servers, set
``PROMETHEUS_MULTIPROC_DIR`` before Python starts (prometheus_client's multiprocess mode):
the counts then go to prometheus_client's memory-mapped multiprocess values, which every
worker's scrape reads, and :meth:`PrometheusExporter.asgi_app` and
:meth:`~PrometheusExporter.wsgi_app` aggregate all workers on every scrape.
"""

from __future__ import annotations

import os
import threading
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app, make_wsgi_app
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString

from .._metering.call import CallRecord
from .._metering.names import PROMETHEUS, safe_name
from .endpoint import MetricsAuthOption, guard_asgi, guard_wsgi, metrics_auth
from .namespaces import Namespaces, check_reserved
from .rules import MetricRule, check_rules
from .totals import CallTotals, Series

if TYPE_CHECKING:
    from .._metering.call import Schema

# LLM calls take from a tenth of a second (embeddings, short answers) to minutes (long
# generations, reasoning models); request-oriented default buckets stop at 10 s. Ten
# bounds keep one series' histogram at 13 series (10 buckets, +Inf, _sum, _count).
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# The first chunk of a stream comes after queueing and prompt processing: 50 ms to 10 s.
FIRST_CHUNK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Our metric names after the namespace prefix, which a MetricRule must not take.
_OWN_NAMES = frozenset({
    "prompt_tokens", "completion_tokens", "tokens", "cached_tokens", "reasoning_tokens", "estimated_tokens",
    "requests", "request_duration_seconds", "time_to_first_chunk_seconds", "metering_errors", "cost_usd",
})

_RESERVED = ("status", "outcome", "usage", "type", "kind", "le", "quantile")

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

# Registry -> its families by metric prefix, shared by every exporter of that registry.
_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, Namespaces[_Collector | _MultiprocessFamily]] = (
    weakref.WeakKeyDictionary()
)
_LIMIT_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _LimitMetrics]] = weakref.WeakKeyDictionary()
_REGISTRIES_LOCK = threading.Lock()


def metric_prefix(namespace: str) -> str:
    """``"LLM gateway"`` -> ``LLM_gateway``: a valid Prometheus name prefix."""
    return safe_name(namespace, PROMETHEUS)


def multiprocess_mode() -> bool:
    """Whether prometheus_client's multiprocess mode is on (the variable the scrape apps read)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


# -- token limits (kept apart from the token families: created only when limits= is used) ----


class _LimitMetrics:
    """The ``{prefix}_limit_*`` metrics of one namespace in one registry."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.authorized = Counter(
            f"{prefix}_limit_authorized_calls", "Requests a token limit let through, by limit.", ["limit"], registry=registry
        )
        self.limited = Counter(
            f"{prefix}_limit_limited_calls", "Requests a token limit refused with 429, by limit.", ["limit"], registry=registry
        )
        self.tokens = Counter(
            f"{prefix}_limit_authorized_tokens", "Tokens charged to a token limit, by limit.", ["limit"], registry=registry
        )
        self.budget = Gauge(
            f"{prefix}_limit_tokens",
            "Configured token budget of a limit per window.",
            ["limit", "window_seconds"],
            registry=registry,
            multiprocess_mode="max",
        )


class _Sink:
    """What ``bind`` returns: the family's own ``record`` and ``on_error`` (the aggregate's
    ``add`` and ``add_error``, no wrapper), and the two token-limit hooks
    (``limits_configured``, ``on_limit``), whose metrics are made only when limits are used."""

    __slots__ = ("record", "on_error", "_limit_metrics", "_limit_children")

    def __init__(
        self,
        record: Callable[[CallRecord], None],
        on_error: Callable[[str], None],
        limit_metrics: Callable[[], _LimitMetrics],
    ) -> None:
        self.record = record
        self.on_error = on_error
        self._limit_metrics = limit_metrics
        # limit name -> (authorized, limited, tokens) children; one per configured limit.
        self._limit_children: dict[str, tuple[Any, Any, Any]] = {}

    def limits_configured(self, limits: list[tuple[str, int, int]]) -> None:
        metrics = self._limit_metrics()
        for name, tokens, window in limits:
            metrics.budget.labels(name, str(window)).set(tokens)
            # Zero series from the start, so rate() and ratios see the limit before its first event.
            metrics.authorized.labels(name)
            metrics.limited.labels(name)
            metrics.tokens.labels(name)

    def on_limit(self, name: str, authorized: int, limited: int, tokens: int) -> None:
        children = self._limit_children.get(name)
        if children is None:
            metrics = self._limit_metrics()
            children = (metrics.authorized.labels(name), metrics.limited.labels(name), metrics.tokens.labels(name))
            self._limit_children[name] = children
        if authorized:
            children[0].inc(authorized)
        if limited:
            children[1].inc(limited)
        if tokens:
            children[2].inc(tokens)


def _le_values(bounds: Sequence[float]) -> tuple[str, ...]:
    """The ``le`` label values of ``bounds``, spelt as prometheus_client spells them."""
    return tuple(floatToGoString(b) for b in bounds) + ("+Inf",)  # type: ignore[no-untyped-call]


_DURATION_LE = _le_values(DURATION_BUCKETS)
_FIRST_CHUNK_LE = _le_values(FIRST_CHUNK_BUCKETS)


def _cumulative(les: Sequence[str], counts: Sequence[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    acc = 0
    for le, count in zip(les, counts, strict=True):
        acc += count
        out.append((le, acc))
    return out


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

    def __init__(self, prefix: str, labels: tuple[str, ...], created: bool) -> None:
        self.prefix = prefix
        self.labels = labels
        self.created = created
        self.totals = CallTotals(labels, duration_bounds=DURATION_BUCKETS, first_chunk_bounds=FIRST_CHUNK_BUCKETS)
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
            f["prompt_tokens"].add_metric(values, s.prompt, created=created)
            f["completion_tokens"].add_metric(values, s.completion, created=created)
            f["tokens"].add_metric(values, s.total, created=created)
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
        for suffix, les, counts, total in histograms:
            if counts and any(counts):
                family = f[suffix]
                family.add_metric(values, _cumulative(les, counts), total)
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


class PrometheusExporter:
    """Token counters in a Prometheus registry (default ``prometheus_client.REGISTRY``).

    Build one and pass it to one or more middlewares; each middleware namespace gets its
    own metric family. Serve the metrics with the middleware's ``metrics_path="/metrics"``,
    or mount :meth:`asgi_app` / :meth:`wsgi_app` yourself.

    ``created_series=True`` adds the ``_created`` series (the time each series was first
    counted) that prometheus_client adds to every counter and histogram by default; they
    are off because they add a series to every counter series and every histogram. The
    families belong to the registry, so the first exporter bound to a namespace decides.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        rules: Sequence[MetricRule] = (),
        created_series: bool = False,
    ) -> None:
        self.registry = registry if registry is not None else REGISTRY
        self.created_series = bool(created_series)
        self._rules = check_rules(rules)
        for rule in self._rules:
            if metric_prefix(rule.metric) in _OWN_NAMES:
                raise ValueError(
                    f"MetricRule metric {rule.metric!r} would clash with the exporter's own "
                    f"{metric_prefix(rule.metric)} metric; name the rule's metric otherwise"
                )
        # The families belong to the registry, not to this exporter: a second
        # PrometheusExporter() on the same registry (an app factory called twice, a test per
        # app, a reloaded module) reuses them instead of failing with prometheus_client's
        # "Duplicated timeseries in CollectorRegistry".
        with _REGISTRIES_LOCK:
            families = _FAMILIES.get(self.registry)
            if families is None:
                families = _FAMILIES[self.registry] = Namespaces(
                    "registry's PrometheusExporter",
                    "another namespace=, the same dimensions, or its own PrometheusExporter(CollectorRegistry())",
                )
        self._families = families
        with _REGISTRIES_LOCK:
            self._limit_families = _LIMIT_FAMILIES.setdefault(self.registry, {})
        self._limit_lock = _REGISTRIES_LOCK

    def bind(self, schema: Schema) -> _Sink:
        prefix = metric_prefix(schema.namespace)
        labels = schema.labels
        check_reserved(labels, _RESERVED, "a label the Prometheus exporter adds")
        # Keyed by the prefix: two namespaces that sanitise alike would be one family.
        family = self._families.bind(schema.namespace, labels, lambda: self._new_family(prefix, labels), key=prefix)
        record: Callable[[CallRecord], None] = family.record
        if self._rules:
            record = _with_rules(record, family.rules.counters_for(self._rules))
        return _Sink(record, family.on_error, lambda: self._limit_metrics_for(prefix))

    def _limit_metrics_for(self, prefix: str) -> _LimitMetrics:
        metrics = self._limit_families.get(prefix)
        if metrics is None:
            with self._limit_lock:
                metrics = self._limit_families.get(prefix)
                if metrics is None:
                    metrics = self._limit_families[prefix] = _LimitMetrics(self.registry, prefix)
        return metrics

    def _new_family(self, prefix: str, labels: tuple[str, ...]) -> _Collector | _MultiprocessFamily:
        family: _Collector | _MultiprocessFamily
        if multiprocess_mode():
            family = _MultiprocessFamily(self.registry, prefix, labels)
        else:
            family = _Collector(prefix, labels, self.created_series)
            self.registry.register(family)
        family.rules = _Rules(self.registry, prefix, labels)
        return family

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # Prometheus pulls: nothing is ever pending.

    def shutdown(self) -> None:
        pass

    def _scrape_registry(self) -> CollectorRegistry:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return registry
        return self.registry

    def asgi_app(self, *, auth: MetricsAuthOption = None) -> Callable[..., Any]:
        """An ASGI app that serves this exporter's metrics (all workers in multiprocess mode).

        It answers GET and HEAD only; ``auth`` (``"Bearer <token>"``, ``"Basic
        <user>:<password>"`` or ``(user, password)``; default ``$LLM_METRICS_AUTH``) makes
        it refuse scrapes without those credentials. The metrics show per-user usage.
        """
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):

            async def app(scope: Any, receive: Any, send: Any) -> None:
                await make_asgi_app(self._scrape_registry())(scope, receive, send)

            return guard_asgi(app, metrics_auth(auth))
        return guard_asgi(make_asgi_app(self.registry), metrics_auth(auth))

    def wsgi_app(self, *, auth: MetricsAuthOption = None) -> Callable[..., Any]:
        """A WSGI app that serves this exporter's metrics (all workers in multiprocess mode).

        GET and HEAD only, and ``auth`` as for :meth:`asgi_app`.
        """
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):

            def app(environ: Any, start_response: Any) -> Any:
                return make_wsgi_app(self._scrape_registry())(environ, start_response)

            return guard_wsgi(app, metrics_auth(auth))
        return guard_wsgi(make_wsgi_app(self.registry), metrics_auth(auth))
