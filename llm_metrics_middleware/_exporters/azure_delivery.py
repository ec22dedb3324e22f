"""How the namespaces' readers reach Application Insights: one shared exporter, one at a time.

:func:`azure_exporter` builds that ``AzureMonitorMetricExporter`` from our options.

Every middleware namespace has its own ``MeterProvider`` and periodic reader (see
:mod:`.azure_namespace`), but they all ship through one ``AzureMonitorMetricExporter``, so
that one process has one offline-storage folder and one HTTP pipeline. The readers run on
their own threads; :class:`SerialExporter` puts the exporter behind a lock so exports never
overlap, and between them drains the batches offline storage kept from earlier failures.
:class:`ReaderPort` is what each reader sees: that shared exporter with Azure's
temporality, which the reader must not close.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from azure.monitor.opentelemetry.exporter import AzureMonitorMetricExporter
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from .azure_names import TEMPORALITY

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential


class SerialExporter:
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


class ReaderPort(MetricExporter):
    """What one namespace's reader exports to: the shared exporter, with delta temporality.
    Shutting a reader down leaves the shared exporter open; ``AzureMonitorExporter``
    closes it once, last."""

    def __init__(self, serial: SerialExporter) -> None:
        super().__init__(preferred_temporality=TEMPORALITY)
        self._serial = serial

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        return self._serial.export(metrics_data, timeout_millis)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def azure_exporter(
    connection_string: str,
    storage_retry_interval: float,
    timeout: float,
    disable_offline_storage: bool,
    storage_directory: str | os.PathLike[str] | None,
    credential: TokenCredential | None,
    exporter_options: Mapping[str, Any] | None,
    /,
) -> AzureMonitorMetricExporter:
    """The Azure exporter ``AzureMonitorExporter``'s options describe (already checked).

    ``exporter_options`` may add keyword arguments but not override ours: a second way to
    set the same thing would leave users guessing which one wins.
    """
    kwargs: dict[str, Any] = dict(exporter_options or {})
    ours: dict[str, Any] = {
        "connection_string": connection_string,
        "disable_offline_storage": bool(disable_offline_storage),
        "storage_min_retry_interval": storage_retry_interval,
        # ``timeout`` is the exporter's connection timeout and, passed on to azure-core's
        # RetryPolicy, the time budget of one send with its retries; ``read_timeout`` goes
        # to the HTTP transport, whose default is 300 s.
        "timeout": timeout,
        "read_timeout": timeout,
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
        return AzureMonitorMetricExporter(**kwargs)
    except ValueError as exc:
        raise ValueError(
            f"Application Insights connection string not accepted ({exc}); copy it whole from the "
            f"resource's Overview page: 'InstrumentationKey=...;IngestionEndpoint=https://...'"
        ) from exc
