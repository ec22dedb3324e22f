"""Azure Monitor exporter: token metrics to Application Insights ``customMetrics``.

Built on ``azure-monitor-opentelemetry-exporter``'s ``AzureMonitorMetricExporter`` and
private OpenTelemetry SDK ``MeterProvider`` objects, one per middleware namespace (never the
global provider, so it neither mixes with nor depends on any other OpenTelemetry setup in
the process). The request path only adds to in-memory sums (about a microsecond); a
background thread per namespace (``PeriodicExportingMetricReader``) hands them to the SDK
instruments and ships the points every ``export_interval_millis``.

What lands where (see docs/azure.md for the portal and KQL side):

- metrics named ``"Prompt Tokens"``, ``"Completion Tokens"``, ``"Total Tokens"``,
  ``"Cached Tokens"``, ``"Reasoning Tokens"`` and ``"Estimated Tokens"`` (extra dimension
  ``"Token Type"`` = ``prompt`` | ``completion``), ``"LLM Requests"`` (extra dimensions
  ``"Status Code"`` and ``"Outcome"``), ``"LLM Request Duration"`` and
  ``"LLM Time To First Chunk"`` (seconds; Application Insights keeps sum, count, min and
  max), ``"Cost"`` (USD, when the middleware has ``pricing=``), and
  ``"LLM Metering Errors"`` (dimension ``"Kind"`` only);
- with ``limits=``: ``"LLM Limit Authorized Calls"``, ``"LLM Limit Limited Calls"``,
  ``"LLM Limit Authorized Tokens"`` (dimension ``"Limit"``) and ``"LLM Limit Tokens"``
  (dimensions ``"Limit"`` and ``"Window Seconds"``: each configured budget, a gauge);
- every metric but these and the metering errors carries the configured dimensions as custom dimensions keyed by
  their names exactly as configured (``"API ID"``, ``"User ID"``, ``"tier"``);
- sums are exported as deltas: each ``customMetrics`` row holds what was added during one
  export interval, so ``sum(valueSum)`` over any time range is the total for that range;
- the middleware's ``namespace`` is the meter name, which the Azure exporter writes as the
  metric namespace when ``APPLICATIONINSIGHTS_METRIC_NAMESPACE_OPT_IN=true``.

OpenTelemetry instrument names cannot hold spaces, so the instruments have plain names and
SDK ``View`` objects give the streams their Azure names.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .._metering.call import CallRecord
from .._metering.failures import FailureLog
from .namespaces import Namespaces, check_reserved
from .totals import CallTotals, LimitTotals

_IMPORT_HINT = "pip install 'llm-metrics-middleware[azure]'"

try:
    from azure.monitor.opentelemetry.exporter import AzureMonitorMetricExporter
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.metrics import (
        Counter,
        Histogram,
        MeterProvider,
        ObservableCounter,
        ObservableGauge,
        ObservableUpDownCounter,
        UpDownCounter,
    )
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        MetricExporter,
        MetricExportResult,
        MetricsData,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
    from opentelemetry.sdk.resources import Resource
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"AzureMonitorExporter needs azure-monitor-opentelemetry-exporter and opentelemetry-sdk: {_IMPORT_HINT}"
    ) from exc

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from .._metering.call import Schema

logger = logging.getLogger("llm_metrics_middleware")
T = TypeVar("T")

CONNECTION_STRING_ENV = "APPLICATIONINSIGHTS_CONNECTION_STRING"
NAMESPACE_OPT_IN_ENV = "APPLICATIONINSIGHTS_METRIC_NAMESPACE_OPT_IN"

PROMPT_TOKENS = "Prompt Tokens"
COMPLETION_TOKENS = "Completion Tokens"
TOTAL_TOKENS = "Total Tokens"
CACHED_TOKENS = "Cached Tokens"
REASONING_TOKENS = "Reasoning Tokens"
ESTIMATED_TOKENS = "Estimated Tokens"
LLM_REQUESTS = "LLM Requests"
REQUEST_DURATION = "LLM Request Duration"
TIME_TO_FIRST_CHUNK = "LLM Time To First Chunk"
METERING_ERRORS = "LLM Metering Errors"
COST = "Cost"

#: Dimension keys the exporter adds to some metrics.
TOKEN_TYPE = "Token Type"
STATUS_CODE = "Status Code"
OUTCOME = "Outcome"
KIND = "Kind"

#: Azure Monitor allows 10 dimension keys per pre-aggregated custom metric.
MAX_DIMENSION_KEYS = 10
#: The Azure exporter drops custom dimensions whose key is longer than this.
MAX_KEY_LENGTH = 150

# instrument name -> Azure metric name. Instrument names are internal to the private
# provider; the Views below rename the streams.
_COUNTERS = {
    "prompt_tokens": PROMPT_TOKENS,
    "completion_tokens": COMPLETION_TOKENS,
    "total_tokens": TOTAL_TOKENS,
    "cached_tokens": CACHED_TOKENS,
    "reasoning_tokens": REASONING_TOKENS,
    "estimated_tokens": ESTIMATED_TOKENS,
    "requests": LLM_REQUESTS,
    "metering_errors": METERING_ERRORS,
    "cost": COST,
}
_HISTOGRAMS = {
    "request_duration": REQUEST_DURATION,
    "time_to_first_chunk": TIME_TO_FIRST_CHUNK,
}
#: Token-limit instruments (only fed when a middleware has ``limits=``).
_LIMIT_COUNTERS = {
    "limit_authorized_calls": "LLM Limit Authorized Calls",
    "limit_limited_calls": "LLM Limit Limited Calls",
    "limit_authorized_tokens": "LLM Limit Authorized Tokens",
}
_LIMIT_GAUGE = ("limit_tokens", "LLM Limit Tokens")
LIMIT = "Limit"
WINDOW_SECONDS = "Window Seconds"
#: An observable gauge that reports nothing; its callback feeds the interval's sums to the SDK.
_DRAIN_INSTRUMENT = "interval_sums"

#: Dimension keys each metric carries besides the configured dimensions.
EXTRA_KEYS: Mapping[str, tuple[str, ...]] = {
    ESTIMATED_TOKENS: (TOKEN_TYPE,),
    LLM_REQUESTS: (STATUS_CODE, OUTCOME),
}

#: The Azure exporter's preferred temporality (``APPLICATION_INSIGHTS_METRIC_TEMPORALITIES``
#: in its ``export/metrics/_exporter.py``): delta for counters and histograms.
TEMPORALITY: dict[type, AggregationTemporality] = {
    Counter: AggregationTemporality.DELTA,
    Histogram: AggregationTemporality.DELTA,
    ObservableCounter: AggregationTemporality.DELTA,
    ObservableGauge: AggregationTemporality.CUMULATIVE,
    ObservableUpDownCounter: AggregationTemporality.CUMULATIVE,
    UpDownCounter: AggregationTemporality.CUMULATIVE,
}


def _connection_string(connection_string: str | None) -> str:
    value = connection_string if connection_string is not None else os.environ.get(CONNECTION_STRING_ENV)
    if not value or not value.strip():
        raise ValueError(
            "AzureMonitorExporter needs an Application Insights connection string: pass "
            "connection_string='InstrumentationKey=...;IngestionEndpoint=...' or set the "
            f"{CONNECTION_STRING_ENV} environment variable (copy it from the Application Insights "
            "resource's Overview page in the Azure portal)"
        )
    return value.strip()


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


class _SerialExporter:
    """The one Azure exporter behind a lock, shared by the readers of all namespaces, so
    that exports never overlap and we can ask it to retry stored batches between them.
    Counts failed exports so that ``force_flush`` can say whether its points arrived."""

    def __init__(self, inner: AzureMonitorMetricExporter) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.failures = 0

    def export(self, metrics_data: MetricsData, timeout_millis: float) -> MetricExportResult:
        with self.lock:
            result = self.inner.export(metrics_data, timeout_millis=timeout_millis)
            if result is not MetricExportResult.SUCCESS:
                self.failures += 1
        return result

    def retry_stored(self, timeout_s: float) -> None:
        """Send the batches kept in offline storage whose retry time has come.

        The Azure exporter retries stored batches only after an export that succeeded and
        had points to send, so an idle process would keep them on disk. An export of no
        points takes the same path: it "succeeds" and then drains storage.
        """
        if not self.lock.acquire(timeout=max(timeout_s, 0.0)):
            return  # an export is running (maybe hung); a later one drains
        try:
            self.inner.export(MetricsData(resource_metrics=[]))
        finally:
            self.lock.release()

    def close(self) -> None:
        self.inner.shutdown()


class _ReaderPort(MetricExporter):
    """What one namespace's reader exports to: the shared exporter, with delta temporality.
    Shutting a reader down leaves the shared exporter open; ``AzureMonitorExporter``
    closes it once, last."""

    def __init__(self, serial: _SerialExporter) -> None:
        super().__init__(preferred_temporality=TEMPORALITY)
        self._serial = serial

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        return self._serial.export(metrics_data, timeout_millis)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


#: Timings kept per export interval before the request path records them into the SDK
#: histograms itself (memory bound for very high request rates).
_MAX_PENDING_TIMINGS = 100_000


class _Namespace:
    """One middleware namespace: its own private ``MeterProvider`` (so the Views that give
    every namespace the same metric names never conflict), and the sums of the current
    export interval.

    The request path only adds to plain dicts under a lock (a few microseconds). The SDK
    instruments are fed from those sums by a callback that the SDK runs at the start of
    every collection (periodic export, flush, shutdown), before it reads the instruments:
    one ``add`` per dimension combination per interval instead of several per call.
    """

    def __init__(self, namespace: str, names: tuple[str, ...], provider: MeterProvider) -> None:
        from .. import __version__

        self.names = names
        self.provider = provider
        self.totals = CallTotals(names)
        self.failures = FailureLog()
        self._timing_lock = threading.Lock()
        self._timings: list[tuple[tuple[str, ...], float, float | None]] = []
        meter = provider.get_meter(namespace, __version__)
        self.prompt = meter.create_counter("prompt_tokens", "{token}")
        self.completion = meter.create_counter("completion_tokens", "{token}")
        self.total = meter.create_counter("total_tokens", "{token}")
        self.cached = meter.create_counter("cached_tokens", "{token}")
        self.reasoning = meter.create_counter("reasoning_tokens", "{token}")
        self.estimated = meter.create_counter("estimated_tokens", "{token}")
        self.requests = meter.create_counter("requests", "{request}")
        self.errors = meter.create_counter("metering_errors", "{error}")
        self.cost = meter.create_counter("cost", "USD")
        self.duration = meter.create_histogram("request_duration", "s")
        self.first_chunk = meter.create_histogram("time_to_first_chunk", "s")
        # Reports nothing itself; see the class docstring.
        meter.create_observable_gauge(_DRAIN_INSTRUMENT, callbacks=[self._drain_callback])
        self.limits = LimitTotals()
        self.limit_counters = [
            meter.create_counter(name, "{token}" if name.endswith("tokens") else "{request}") for name in _LIMIT_COUNTERS
        ]
        meter.create_observable_gauge(_LIMIT_GAUGE[0], callbacks=[self._observe_budgets], unit="{token}")

    # -- request path ----------------------------------------------------------------------

    def add(self, call: CallRecord) -> None:
        self.totals.add(call)
        ttfc = call.time_to_first_chunk_s if call.streamed else None
        with self._timing_lock:
            if len(self._timings) < _MAX_PENDING_TIMINGS:
                self._timings.append((call.dimensions, call.duration_s, ttfc))
                return
        attrs = self.totals.attributes(call.dimensions)  # very busy interval: record directly
        self.duration.record(call.duration_s, attrs)
        if ttfc is not None:
            self.first_chunk.record(ttfc, attrs)

    def add_error(self, kind: str) -> None:
        self.totals.add_error(kind)

    # -- collection ------------------------------------------------------------------------

    def _drain_callback(self, options: CallbackOptions) -> Iterable[Observation]:
        try:
            self.drain()
        except Exception:
            logger.exception("AzureMonitorExporter failed to hand the interval's sums to the SDK")
        return ()

    def _observe_budgets(self, options: CallbackOptions) -> Iterable[Observation]:
        with self.limits.lock:
            configured = list(self.limits.configured)
        return [Observation(tokens, {LIMIT: name, WINDOW_SECONDS: str(window)}) for name, tokens, window in configured]

    def drain(self) -> None:
        """Move the interval's sums into the SDK instruments (runs in the export thread)."""
        for name, sums in self.limits.take().items():
            for counter, value in zip(self.limit_counters, sums, strict=True):
                if value:
                    counter.add(value, {LIMIT: name})
        series, errors = self.totals.take()
        with self._timing_lock:
            timings, self._timings = self._timings, []
        attributes = self.totals.attributes
        for dims, s in series.items():
            attrs = attributes(dims)
            if s.prompt:
                self.prompt.add(s.prompt, attrs)
            if s.completion:
                self.completion.add(s.completion, attrs)
            if s.total:
                self.total.add(s.total, attrs)
            if s.cached:
                self.cached.add(s.cached, attrs)
            if s.reasoning:
                self.reasoning.add(s.reasoning, attrs)
            if s.est_prompt:
                self.estimated.add(s.est_prompt, {**attrs, TOKEN_TYPE: "prompt"})
            if s.est_completion:
                self.estimated.add(s.est_completion, {**attrs, TOKEN_TYPE: "completion"})
            if s.cost:
                self.cost.add(s.cost, attrs)
            # Requests are summed by (dims, status, outcome): the usage source is not a dimension here.
            by_status: dict[tuple[int, str], int] = {}
            for (status, outcome, _usage), count in s.requests.items():
                by_status[status, outcome] = by_status.get((status, outcome), 0) + count
            for (status, outcome), count in by_status.items():
                self.requests.add(count, {**attrs, STATUS_CODE: str(status), OUTCOME: outcome})
        for dims, duration, ttfc in timings:
            attrs = attributes(dims)
            self.duration.record(duration, attrs)
            if ttfc is not None:
                self.first_chunk.record(ttfc, attrs)
        for kind, count in errors.items():
            self.errors.add(count, {KIND: kind})


class _AzureSink:
    """What ``bind`` returns: hands each call to its namespace's sums, never raises."""

    def __init__(self, exporter: AzureMonitorExporter, namespace: _Namespace) -> None:
        self._exporter = exporter
        self._namespace = namespace

    def record(self, call: CallRecord) -> None:
        self._guarded(self._namespace.add, call, "record a call")

    def on_error(self, kind: str) -> None:
        self._guarded(self._namespace.add_error, kind, "count a metering error")

    def _guarded(self, add: Callable[[T], None], arg: T, doing: str) -> None:
        if self._exporter._closed:
            return  # after shutdown nothing more is exported: drop it quietly
        try:
            add(arg)
        except Exception as exc:
            self._namespace.failures.failed("AzureMonitorExporter", doing, exc)

    def limits_configured(self, limits: list[tuple[str, int, int]]) -> None:
        self._namespace.limits.configure(limits)

    def on_limit(self, name: str, authorized: int, limited: int, tokens: int) -> None:
        if not self._exporter._closed:
            self._namespace.limits.add(name, authorized, limited, tokens)


def _views(max_attribute_sets: int) -> list[View]:
    views: list[View] = []
    for instrument, name in _COUNTERS.items():
        views.append(View(instrument_name=instrument, name=name, aggregation_cardinality_limit=max_attribute_sets))
    for instrument, name in (*_LIMIT_COUNTERS.items(), _LIMIT_GAUGE):
        views.append(View(instrument_name=instrument, name=name, aggregation_cardinality_limit=max_attribute_sets))
    for instrument, name in _HISTOGRAMS.items():
        # Application Insights keeps sum, count, min and max of a histogram; buckets would
        # only cost memory.
        views.append(View(
            instrument_name=instrument,
            name=name,
            aggregation=ExplicitBucketHistogramAggregation(boundaries=()),
            aggregation_cardinality_limit=max_attribute_sets,
        ))
    return views


def _shutdown_at_exit(ref: weakref.ref[AzureMonitorExporter]) -> None:
    exporter = ref()
    if exporter is not None:
        exporter.shutdown()


class AzureMonitorExporter:
    """Token metrics to Azure Monitor Application Insights (``customMetrics``).

    ::

        exporter = AzureMonitorExporter()  # reads APPLICATIONINSIGHTS_CONNECTION_STRING
        app.add_middleware(LLMMetricsMiddleware, exporters=[exporter])

    Build one per process and share it: several middlewares may bind to it, each namespace
    becoming its own meter (its own Azure metric namespace). Options:

    - ``connection_string``: else ``APPLICATIONINSIGHTS_CONNECTION_STRING``.
    - ``export_interval_millis``: how often the background thread ships (60 s).
    - ``storage_directory``, ``disable_offline_storage``, ``storage_retry_interval``: batches
      the ingestion endpoint refused with a retryable status (408, 429, 500, 502, 503, 504,
      401, 403) or never answered are written to ``storage_directory`` (default: a
      per-instrumentation-key folder under the temp directory) and sent again, no earlier
      than ``storage_retry_interval`` seconds later (or the ``Retry-After`` of a 429), after
      the next export that succeeds, and on :meth:`force_flush`; kept 48 h, 50 MiB at most.
    - ``timeout``: seconds to connect to and to wait for an answer from the ingestion
      endpoint (10). It bounds one export (retries included), so a hung endpoint holds the
      background thread, a flush or a shutdown for about this long, not minutes.
    - ``max_attribute_sets``: distinct dimension combinations per metric per export interval
      (2000); past it, points are merged into one with the single dimension
      ``otel.metric.overflow = "True"``, so sums stay exact.
    - ``credential``: an azure-identity credential for Entra ID authentication.
    - ``resource``: the OpenTelemetry ``Resource`` (cloud role and instance); default from
      ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``.
    - ``exporter_options``: further keyword arguments for ``AzureMonitorMetricExporter``
      (``storage_max_size``, ``storage_retention_period``, ``proxies``...).
    """

    def __init__(
        self,
        connection_string: str | None = None,
        *,
        export_interval_millis: float = 60_000,
        storage_directory: str | os.PathLike[str] | None = None,
        disable_offline_storage: bool = False,
        storage_retry_interval: float = 60,
        timeout: float = 10.0,
        max_attribute_sets: int = 2000,
        credential: TokenCredential | None = None,
        resource: Resource | None = None,
        exporter_options: Mapping[str, Any] | None = None,
    ) -> None:
        conn = _connection_string(connection_string)
        interval = _positive("export_interval_millis", export_interval_millis)
        timeout_s = _positive("timeout", timeout)
        retry_s = _positive("storage_retry_interval", storage_retry_interval)
        if isinstance(max_attribute_sets, bool) or not isinstance(max_attribute_sets, int) or max_attribute_sets < 1:
            raise ValueError(f"max_attribute_sets must be a positive int, got {max_attribute_sets!r}")
        kwargs: dict[str, Any] = dict(exporter_options or {})
        ours: dict[str, Any] = {
            "connection_string": conn,
            "disable_offline_storage": bool(disable_offline_storage),
            "storage_min_retry_interval": retry_s,
            # ``timeout`` is the exporter's connection timeout and, passed on to azure-core's
            # RetryPolicy, the time budget of one send with its retries; ``read_timeout`` goes
            # to the HTTP transport, whose default is 300 s.
            "timeout": timeout_s,
            "read_timeout": timeout_s,
        }
        if storage_directory is not None:
            ours["storage_directory"] = os.fspath(storage_directory)
        if credential is not None:
            ours["credential"] = credential
        clash = sorted(set(kwargs) & set(ours))
        if clash:
            raise ValueError(
                f"exporter_options sets {', '.join(clash)}, which AzureMonitorExporter sets itself; "
                "use its own keyword arguments instead"
            )
        kwargs.update(ours)
        try:
            azure = AzureMonitorMetricExporter(**kwargs)
        except ValueError as exc:
            raise ValueError(
                f"Application Insights connection string not accepted ({exc}); copy it whole from the "
                f"resource's Overview page: 'InstrumentationKey=...;IngestionEndpoint=https://...'"
            ) from exc
        self.timeout = timeout_s
        self.max_attribute_sets = max_attribute_sets
        self._interval_millis = interval
        # One resource for all namespaces: the SDK's default gives every Resource.create() a
        # new random service.instance.id, which would split one process into several
        # cloud_RoleInstance values.
        self._resource = resource if resource is not None else Resource.create()
        self._offline_storage = not disable_offline_storage
        self._serial = _SerialExporter(azure)
        self._namespaces: Namespaces[_Namespace] = Namespaces("AzureMonitorExporter")
        self._lock = threading.Lock()
        self._closed = False
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    def _new_provider(self) -> MeterProvider:
        reader = PeriodicExportingMetricReader(
            _ReaderPort(self._serial),
            export_interval_millis=self._interval_millis,
            export_timeout_millis=self.timeout * 1000,
        )
        return MeterProvider(
            metric_readers=[reader],
            resource=self._resource,
            views=_views(self.max_attribute_sets),
            shutdown_on_exit=False,  # ours (atexit, in __init__) is bounded by `timeout`
        )

    def bind(self, schema: Schema) -> _AzureSink:
        names = schema.names
        check_reserved(names, (TOKEN_TYPE, STATUS_CODE, OUTCOME), "a dimension the Azure exporter adds")
        for name in names:
            if len(name) > MAX_KEY_LENGTH:
                raise ValueError(
                    f"dimension name {name[:40]!r}... is {len(name)} characters; Application Insights drops "
                    f"custom dimension keys over {MAX_KEY_LENGTH}; shorten it"
                )
        self._check_dimension_limit(schema)
        with self._lock:  # not while shutting down: a provider built then would never stop
            if self._closed:
                raise RuntimeError("this AzureMonitorExporter is shut down; build a new one")
            namespace = self._namespaces.bind(
                schema.namespace, names, lambda: _Namespace(schema.namespace, names, self._new_provider())
            )
        return _AzureSink(self, namespace)

    @staticmethod
    def _check_dimension_limit(schema: Schema) -> None:
        base = len(schema.names)
        over = {
            metric: base + len(EXTRA_KEYS.get(metric, ()))
            for metric in (*_COUNTERS.values(), *_HISTOGRAMS.values())
            if metric != METERING_ERRORS and base + len(EXTRA_KEYS.get(metric, ())) > MAX_DIMENSION_KEYS
        }
        if over:
            detail = ", ".join(f"{metric!r} {keys}" for metric, keys in over.items())
            logger.warning(
                "Azure Monitor keeps at most %d dimension keys per pre-aggregated custom metric; with the %d "
                "dimensions of namespace %r these metrics have more: %s. Metrics Explorer will not split or "
                "filter them by all dimensions (the customMetrics table still holds every dimension). "
                "Configure at most %d dimensions to stay within the limit.",
                MAX_DIMENSION_KEYS,
                base,
                schema.namespace,
                detail,
                MAX_DIMENSION_KEYS - max(len(extra) for extra in EXTRA_KEYS.values()),
            )

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export what has been recorded now, then retry stored batches that are due.

        True when the points collected now reached ingestion. An HTTP send in progress
        cannot be interrupted, so this is bounded by ``timeout`` (per namespace) rather than
        by ``timeout_millis`` alone.
        """
        if self._closed:
            return False
        deadline = time.monotonic() + timeout_millis / 1000
        failures = self._serial.failures
        with self._lock:
            providers = [ns.provider for ns in self._namespaces.states()]
        for provider in providers:
            try:
                provider.force_flush(timeout_millis=max(0.0, deadline - time.monotonic()) * 1000)
            except Exception:
                logger.exception("AzureMonitorExporter: flush failed")
                return False
        ok = self._serial.failures == failures
        if ok and self._offline_storage:
            try:
                self._serial.retry_stored(deadline - time.monotonic())
            except Exception:
                logger.exception("AzureMonitorExporter: retrying stored batches failed")
        return ok

    def shutdown(self, timeout_millis: int | None = None) -> None:
        """Export what is left and stop the background threads. Idempotent.

        Returns within about ``timeout_millis`` (default: ``timeout`` + 5 s) even when the
        ingestion endpoint hangs; a batch still in flight then stays with its (daemon) export
        thread until the read timeout, and goes to offline storage.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            providers = [ns.provider for ns in self._namespaces.states()]
        if timeout_millis is None:
            timeout_millis = int(self.timeout * 1000) + 5000
        deadline = time.monotonic() + timeout_millis / 1000
        for provider in providers:
            try:
                provider.shutdown(timeout_millis=max(0.0, deadline - time.monotonic()) * 1000)
            except Exception:
                logger.exception("AzureMonitorExporter: shutdown failed")
        try:
            self._serial.close()
        except Exception:
            logger.exception("AzureMonitorExporter: closing the Azure exporter failed")
