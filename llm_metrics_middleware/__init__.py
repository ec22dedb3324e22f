"""Token metrics for Python apps that call or proxy LLM APIs.

``LLMMetricsMiddleware`` (ASGI) and ``LLMMetricsWSGIMiddleware`` (WSGI) read token usage
from the responses as they pass and hand it to exporters (Prometheus, OpenTelemetry,
Azure Monitor / Application Insights), split by Azure API Management style dimensions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._core.providers import UsagePointers
from ._core.usage import Usage
from ._drivers.asgi import LLMMetricsMiddleware
from ._drivers.wsgi import LLMMetricsWSGIMiddleware
from ._metering.call import CallRecord, ErrorKind, ErrorSink, Exporter, Outcome, Schema, Sink, UsageSource
from ._metering.dimensions import Dimension
from ._metering.limits import TokenLimit
from ._metering.request import RequestView

if TYPE_CHECKING:
    from ._exporters.azure import AzureMonitorExporter
    from ._exporters.otel import OpenTelemetryExporter
    from ._exporters.prometheus import PrometheusExporter

__all__ = [
    "AzureMonitorExporter",
    "CallRecord",
    "Dimension",
    "ErrorKind",
    "ErrorSink",
    "Exporter",
    "LLMMetricsMiddleware",
    "LLMMetricsWSGIMiddleware",
    "OpenTelemetryExporter",
    "Outcome",
    "PrometheusExporter",
    "RequestView",
    "Schema",
    "Sink",
    "TokenLimit",
    "Usage",
    "UsagePointers",
    "UsageSource",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Exporters are imported when first asked for: the middlewares themselves need only the
    # standard library and werkzeug, and the OpenTelemetry SDK and the Azure exporter are
    # heavy imports that most apps use one of at most.
    if name == "PrometheusExporter":
        from ._exporters.prometheus import PrometheusExporter

        return PrometheusExporter
    if name == "AzureMonitorExporter":
        from ._exporters.azure import AzureMonitorExporter

        return AzureMonitorExporter
    if name == "OpenTelemetryExporter":
        from ._exporters.otel import OpenTelemetryExporter

        return OpenTelemetryExporter
    raise AttributeError(f"module 'llm_metrics_middleware' has no attribute {name!r}")
