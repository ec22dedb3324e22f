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

This module holds the options and the exporter's life cycle (bind, flush, shutdown); the
names and Views live in :mod:`.azure_names`, the per-namespace sums and instruments in
:mod:`.azure_namespace`, the shared, serialised Azure exporter in :mod:`.azure_delivery`.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

try:
    import azure.monitor.opentelemetry.exporter  # noqa: F401  (checked here, used in .azure_delivery)
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "AzureMonitorExporter needs azure-monitor-opentelemetry-exporter and opentelemetry-sdk: "
        "pip install 'llm-metrics-middleware[azure]'"
    ) from exc

# This module is the exporter's public face: the names below are defined in the modules
# that use them and re-exported here, where users and tests import them.
from .azure_delivery import ReaderPort, SerialExporter, azure_exporter
from .azure_names import (
    CACHED_TOKENS,
    COMPLETION_TOKENS,
    COST,
    ESTIMATED_TOKENS,
    EXTRA_KEYS,
    KIND,
    LIMIT,
    LLM_REQUESTS,
    MAX_DIMENSION_KEYS,
    MAX_KEY_LENGTH,
    METERING_ERRORS,
    OUTCOME,
    PROMPT_TOKENS,
    REASONING_TOKENS,
    REQUEST_DURATION,
    STATUS_CODE,
    TEMPORALITY,
    TIME_TO_FIRST_CHUNK,
    TOKEN_TYPE,
    TOTAL_TOKENS,
    WINDOW_SECONDS,
    check_dimensions,
    views,
)
from .azure_namespace import AzureNamespace
from .namespaces import Namespaces

__all__ = [
    "CACHED_TOKENS",
    "COMPLETION_TOKENS",
    "CONNECTION_STRING_ENV",
    "COST",
    "ESTIMATED_TOKENS",
    "EXTRA_KEYS",
    "KIND",
    "LIMIT",
    "LLM_REQUESTS",
    "MAX_DIMENSION_KEYS",
    "MAX_KEY_LENGTH",
    "METERING_ERRORS",
    "NAMESPACE_OPT_IN_ENV",
    "OUTCOME",
    "PROMPT_TOKENS",
    "REASONING_TOKENS",
    "REQUEST_DURATION",
    "STATUS_CODE",
    "TEMPORALITY",
    "TIME_TO_FIRST_CHUNK",
    "TOKEN_TYPE",
    "TOTAL_TOKENS",
    "WINDOW_SECONDS",
    "AzureMonitorExporter",
]

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from .._metering.call import CallRecord, Schema

logger = logging.getLogger("llm_metrics_middleware")
T = TypeVar("T")

CONNECTION_STRING_ENV = "APPLICATIONINSIGHTS_CONNECTION_STRING"
NAMESPACE_OPT_IN_ENV = "APPLICATIONINSIGHTS_METRIC_NAMESPACE_OPT_IN"


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
        azure = azure_exporter(
            conn, retry_s, timeout_s, disable_offline_storage, storage_directory, credential, exporter_options
        )
        self.timeout = timeout_s
        self.max_attribute_sets = max_attribute_sets
        self._interval_millis = interval
        # One resource for all namespaces: the SDK's default gives every Resource.create() a
        # new random service.instance.id, which would split one process into several
        # cloud_RoleInstance values.
        self._resource = resource if resource is not None else Resource.create()
        self._offline_storage = not disable_offline_storage
        self._serial = SerialExporter(azure)
        self._namespaces: Namespaces[AzureNamespace] = Namespaces("AzureMonitorExporter")
        self._lock = threading.Lock()
        self._closed = False
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    def _new_provider(self) -> MeterProvider:
        reader = PeriodicExportingMetricReader(
            ReaderPort(self._serial),
            export_interval_millis=self._interval_millis,
            export_timeout_millis=self.timeout * 1000,
        )
        return MeterProvider(
            metric_readers=[reader],
            resource=self._resource,
            views=views(self.max_attribute_sets),
            shutdown_on_exit=False,  # ours (atexit, in __init__) is bounded by `timeout`
        )

    def bind(self, schema: Schema) -> AzureSink:
        names = schema.names
        check_dimensions(schema)
        with self._lock:  # not while shutting down: a provider built then would never stop
            if self._closed:
                raise RuntimeError("this AzureMonitorExporter is shut down; build a new one")
            namespace = self._namespaces.bind(
                schema.namespace, names, lambda: AzureNamespace(schema.namespace, names, self._new_provider())
            )
        return AzureSink(self, namespace)

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


class AzureSink:
    """What ``bind`` returns: hands each call to its namespace's sums, never raises, and drops
    calls quietly once the exporter is shut down."""

    def __init__(self, exporter: AzureMonitorExporter, namespace: AzureNamespace) -> None:
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
