"""Prometheus exporter: counters and histograms in a ``prometheus_client`` registry.

Metric names (``llm`` is the middleware's ``namespace``, sanitised):

- ``llm_prompt_tokens_total``, ``llm_completion_tokens_total``, ``llm_tokens_total``
  {dimensions}: token counters, estimates included;
- ``llm_cached_tokens_total``, ``llm_reasoning_tokens_total`` {dimensions};
- ``llm_estimated_tokens_total`` {dimensions, type="prompt"|"completion"}: the part of the
  token counters that was estimated because the response carried no usage;
- ``llm_requests_total`` {dimensions, status, outcome, usage}: LLM calls metered;
- ``llm_request_duration_seconds`` {dimensions}: until the last body byte;
- ``llm_time_to_first_chunk_seconds`` {dimensions}: streamed responses only;
- ``llm_metering_errors_total`` {kind}: bodies we could not read, values refused,
  exporter failures, dimension combinations that overflowed ``max_series``, models
  without a price (``unpriced_model``, once per model);
- ``llm_cost_usd_total`` {dimensions}: the calls' cost in USD, when the middleware has
  ``pricing=`` (calls of unpriced models add nothing);
- one counter per :class:`MetricRule` of ``rules=`` (``{namespace}_{metric}_total``
  {dimensions}): a usage field, added only for the calls the rule's condition holds for.
- with ``limits=``: ``llm_limit_authorized_calls_total``, ``llm_limit_limited_calls_total``,
  ``llm_limit_authorized_tokens_total`` {limit} (Kuadrant Limitador's ``authorized_calls``,
  ``limited_calls``, ``authorized_hits``) and the gauge ``llm_limit_tokens`` {limit,
  window_seconds}: each configured budget, to draw usage against.

Under gunicorn and other pre-fork servers, set ``PROMETHEUS_MULTIPROC_DIR`` before Python
starts (prometheus_client's multiprocess mode); :meth:`PrometheusExporter.asgi_app` and
:meth:`~PrometheusExporter.wsgi_app` then aggregate all workers on every scrape.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app, make_wsgi_app
from prometheus_client.multiprocess import MultiProcessCollector

from .._metering.call import CallRecord
from .._metering.names import PROMETHEUS, safe_name
from .endpoint import MetricsAuthOption, guard_asgi, guard_wsgi, metrics_auth
from .namespaces import Namespaces, check_reserved
from .rules import MetricRule, check_rules

if TYPE_CHECKING:
    from .._metering.call import Schema

# Generation takes seconds to minutes; request-oriented default buckets stop at 10 s.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
FIRST_CHUNK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: Our metric names after the namespace prefix, which a MetricRule must not take.
_OWN_NAMES = frozenset({
    "prompt_tokens", "completion_tokens", "tokens", "cached_tokens", "reasoning_tokens", "estimated_tokens",
    "requests", "request_duration_seconds", "time_to_first_chunk_seconds", "metering_errors", "cost_usd",
})

_RESERVED = ("status", "outcome", "usage", "type", "kind", "le", "quantile")

# Registry -> its families by metric prefix, shared by every exporter of that registry.
_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, Namespaces[_Family]] = weakref.WeakKeyDictionary()
_LIMIT_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _LimitMetrics]] = weakref.WeakKeyDictionary()
_REGISTRIES_LOCK = threading.Lock()


def metric_prefix(namespace: str) -> str:
    """``"LLM gateway"`` -> ``LLM_gateway``: a valid Prometheus name prefix."""
    return safe_name(namespace, PROMETHEUS)


class _Family:
    """The metrics of one namespace in one registry."""

    def __init__(self, registry: CollectorRegistry, prefix: str, labels: tuple[str, ...]) -> None:
        self.labels = labels
        L = list(labels)
        self.prompt = Counter(f"{prefix}_prompt_tokens", "Prompt (input) tokens, cached included.", L, registry=registry)
        self.completion = Counter(
            f"{prefix}_completion_tokens", "Completion (output) tokens, reasoning included.", L, registry=registry
        )
        self.total = Counter(f"{prefix}_tokens", "Total tokens.", L, registry=registry)
        self.cached = Counter(f"{prefix}_cached_tokens", "Prompt tokens read from the provider's cache.", L, registry=registry)
        self.reasoning = Counter(
            f"{prefix}_reasoning_tokens", "Completion tokens spent on reasoning.", L, registry=registry
        )
        self.estimated = Counter(
            f"{prefix}_estimated_tokens",
            "Tokens counted by estimate because the response reported no usage (included in the token counters).",
            [*L, "type"],
            registry=registry,
        )
        self.requests = Counter(
            f"{prefix}_requests",
            "LLM calls metered, by HTTP status, outcome and how usage was obtained.",
            [*L, "status", "outcome", "usage"],
            registry=registry,
        )
        self.duration = Histogram(
            f"{prefix}_request_duration_seconds",
            "Time from the request to the last response byte.",
            L,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.first_chunk = Histogram(
            f"{prefix}_time_to_first_chunk_seconds",
            "Time from the request to the first body bytes of a streamed response.",
            L,
            buckets=FIRST_CHUNK_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            f"{prefix}_metering_errors",
            "Responses or values the middleware could not count, by kind.",
            ["kind"],
            registry=registry,
        )
        self.cost = Counter(
            f"{prefix}_cost_usd",
            "Cost of the LLM calls in USD (the middleware's pricing=); calls of unpriced models add nothing.",
            L,
            registry=registry,
        )
        #: MetricRule metric -> its counter, made by the first exporter bound with that rule.
        self.rules: dict[str, Counter] = {}
        self._registry, self._prefix = registry, prefix
        self._rules_lock = threading.Lock()

    def rule_counters(self, rules: tuple[MetricRule, ...]) -> tuple[tuple[MetricRule, Counter], ...]:
        """Each rule with its counter (the family is shared by the registry's exporters)."""
        with self._rules_lock:
            for rule in rules:
                if rule.metric not in self.rules:
                    self.rules[rule.metric] = Counter(
                        f"{self._prefix}_{metric_prefix(rule.metric)}",
                        rule.description or f"{rule.usage} of the calls that match the rule {rule.metric!r}.",
                        list(self.labels),
                        registry=self._registry,
                    )
            return tuple((rule, self.rules[rule.metric]) for rule in rules)


class _Series:
    """The children of one dimension tuple, cached so a record is a few ``inc()`` calls."""

    __slots__ = ("prompt", "completion", "total", "cached", "reasoning", "duration", "first_chunk", "family", "values", "requests")

    def __init__(self, family: _Family, values: tuple[str, ...]) -> None:
        self.family = family
        self.values = values
        # (status, outcome, usage) -> child; a few dozen at most per series.
        self.requests: dict[tuple[str, str, str], Any] = {}
        if values:
            self.prompt = family.prompt.labels(*values)
            self.completion = family.completion.labels(*values)
            self.total = family.total.labels(*values)
            self.cached = family.cached.labels(*values)
            self.reasoning = family.reasoning.labels(*values)
            self.duration = family.duration.labels(*values)
            self.first_chunk = family.first_chunk.labels(*values)
        else:
            self.prompt, self.completion, self.total = family.prompt, family.completion, family.total
            self.cached, self.reasoning = family.cached, family.reasoning
            self.duration, self.first_chunk = family.duration, family.first_chunk


class _PrometheusSink:
    def __init__(self, family: _Family, rules: tuple[MetricRule, ...] = ()) -> None:
        self._family = family
        self._series: dict[tuple[str, ...], _Series] = {}
        self._cost: dict[tuple[str, ...], Any] = {}
        self._rules = family.rule_counters(rules)

    def record(self, call: CallRecord) -> None:
        values = call.dimensions
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = _Series(self._family, values)
        family = self._family
        usage = call.usage
        if usage is not None:
            if usage.prompt_tokens:
                series.prompt.inc(usage.prompt_tokens)
            if usage.completion_tokens:
                series.completion.inc(usage.completion_tokens)
            if usage.total_tokens:
                series.total.inc(usage.total_tokens)
            if usage.cached_tokens:
                series.cached.inc(usage.cached_tokens)
            if usage.reasoning_tokens:
                series.reasoning.inc(usage.reasoning_tokens)
            if usage.estimated:
                family.estimated.labels(*values, "prompt").inc(usage.prompt_tokens)
                family.estimated.labels(*values, "completion").inc(usage.completion_tokens)
        key = (str(call.status), call.outcome, call.usage_source)
        requests = series.requests.get(key)
        if requests is None:
            requests = series.requests[key] = family.requests.labels(*values, *key)
        requests.inc()
        series.duration.observe(call.duration_s)
        if call.time_to_first_chunk_s is not None:
            series.first_chunk.observe(call.time_to_first_chunk_s)
        # Cost and rule counters: kept apart from the token series on purpose.
        cost = call.cost_usd
        if cost:
            child = self._cost.get(values)
            if child is None:
                child = self._cost[values] = family.cost.labels(*values) if values else family.cost
            child.inc(cost)
        for rule, counter in self._rules:
            amount = rule.amount(call)
            if amount:
                (counter.labels(*values) if values else counter).inc(amount)

    def on_error(self, kind: str) -> None:
        self._family.errors.labels(kind).inc()


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


class _LimitedPrometheusSink(_PrometheusSink):
    """The sink with the two token-limit hooks (``limits_configured``, ``on_limit``)."""

    def __init__(
        self, family: _Family, rules: tuple[MetricRule, ...], limit_metrics: Callable[[], _LimitMetrics]
    ) -> None:
        super().__init__(family, rules)
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
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, rules: Sequence[MetricRule] = ()) -> None:
        self.registry = registry if registry is not None else REGISTRY
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

    def bind(self, schema: Schema) -> _PrometheusSink:
        prefix = metric_prefix(schema.namespace)
        labels = schema.labels
        check_reserved(labels, _RESERVED, "a label the Prometheus exporter adds")
        # Keyed by the prefix: two namespaces that sanitise alike would be one family.
        family = self._families.bind(
            schema.namespace, labels, lambda: _Family(self.registry, prefix, labels), key=prefix
        )
        return _LimitedPrometheusSink(family, self._rules, lambda: self._limit_metrics_for(prefix))

    def _limit_metrics_for(self, prefix: str) -> _LimitMetrics:
        metrics = self._limit_families.get(prefix)
        if metrics is None:
            with self._limit_lock:
                metrics = self._limit_families.get(prefix)
                if metrics is None:
                    metrics = self._limit_families[prefix] = _LimitMetrics(self.registry, prefix)
        return metrics

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
