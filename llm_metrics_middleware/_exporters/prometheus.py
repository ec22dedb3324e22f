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

Exemplars: the OpenMetrics exposition gives the token counters and the duration histogram
of each series the trace of its latest call made inside a sampled OpenTelemetry span
(``_metering/trace.py`` reads the span when the call starts); one exemplar per series, so
their cost is one tuple per series whatever the traffic.

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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, make_asgi_app, make_wsgi_app
from prometheus_client.multiprocess import MultiProcessCollector

from .._metering.call import CallRecord
from .endpoint import MetricsAuthOption, guard_asgi, guard_wsgi, metrics_auth
from .namespaces import Namespaces, check_reserved
from .prometheus_families import (
    DURATION_BUCKETS,
    FIRST_CHUNK_BUCKETS,
    _Collector,
    _MultiprocessFamily,
    _Rules,
    _with_rules,
    metric_prefix,
)
from .rules import MetricRule, check_rules

if TYPE_CHECKING:
    from .._metering.call import Schema

#: Our metric names after the namespace prefix, which a MetricRule must not take.
_OWN_NAMES = frozenset({
    "prompt_tokens", "completion_tokens", "tokens", "cached_tokens", "reasoning_tokens", "estimated_tokens",
    "requests", "request_duration_seconds", "time_to_first_chunk_seconds", "metering_errors", "cost_usd",
})

_RESERVED = ("status", "outcome", "usage", "type", "kind", "le", "quantile")


# Registry -> its families by metric prefix, shared by every exporter of that registry.
_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, Namespaces[_Collector | _MultiprocessFamily]] = (
    weakref.WeakKeyDictionary()
)
_LIMIT_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _LimitMetrics]] = weakref.WeakKeyDictionary()
_REGISTRIES_LOCK = threading.Lock()

__all__ = ["DURATION_BUCKETS", "FIRST_CHUNK_BUCKETS", "PrometheusExporter", "metric_prefix", "multiprocess_mode"]


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
    (``limits_configured``, ``on_limit``), whose metrics are made only when limits are used.
    ``record_fields``: the aggregate's ``add_fields`` when recording a call is nothing but
    adding to it (no rules, not multiprocess mode), else None (see ``Metering.direct_fields``)."""

    __slots__ = ("record", "record_fields", "on_error", "_limit_metrics", "_limit_children")

    def __init__(
        self,
        record: Callable[[CallRecord], None],
        on_error: Callable[[str], None],
        limit_metrics: Callable[[], _LimitMetrics],
        record_fields: Callable[..., None] | None = None,
    ) -> None:
        self.record = record
        self.record_fields = record_fields
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




class PrometheusExporter:
    """Token counters in a Prometheus registry (default ``prometheus_client.REGISTRY``).

    Build one and pass it to one or more middlewares; each middleware namespace gets its
    own metric family. Serve the metrics with the middleware's ``metrics_path="/metrics"``,
    or mount :meth:`asgi_app` / :meth:`wsgi_app` yourself.

    ``created_series=True`` adds the ``_created`` series (the time each series was first
    counted) that prometheus_client adds to every counter and histogram by default; they
    are off because they add a series to every counter series and every histogram.

    ``exemplars=True`` (default): when a call was made inside a sampled OpenTelemetry span,
    the token counters and the duration histogram carry an exemplar ``{trace_id, span_id}``
    of the latest such call of each series, in the OpenMetrics exposition only (a scrape
    that asks for ``application/openmetrics-text``, as Prometheus does; the plain text format
    has none). Not in multiprocess mode (prometheus_client keeps no exemplars there).
    ``exemplars=False`` leaves them out.

    The families belong to the registry, so the first exporter bound to a namespace decides
    ``created_series`` and ``exemplars``.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        rules: Sequence[MetricRule] = (),
        created_series: bool = False,
        exemplars: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else REGISTRY
        self.created_series = bool(created_series)
        self.exemplars = bool(exemplars)
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
        record_fields = family.totals.add_fields if isinstance(family, _Collector) else None
        if self._rules:
            record = _with_rules(record, family.rules.counters_for(self._rules))
            record_fields = None
        return _Sink(record, family.on_error, lambda: self._limit_metrics_for(prefix), record_fields)

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
            family = _Collector(prefix, labels, self.created_series, self.exemplars)
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
