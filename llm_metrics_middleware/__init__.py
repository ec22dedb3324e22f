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
from ._drivers.outgoing import OutgoingOptions
from ._drivers.wsgi import LLMMetricsWSGIMiddleware
from ._exporters.rules import MetricRule
from ._metering.call import CallRecord, ErrorKind, ErrorSink, Exporter, Outcome, Schema, Sink, UsageSource
from ._metering.context import carry_context, metering_context
from ._metering.dimensions import Dimension
from ._metering.limits import TokenLimit
from ._metering.pricing import Price
from ._metering.request import RequestView

if TYPE_CHECKING:
    from ._drivers.aiohttp import instrument_aiohttp, uninstrument_aiohttp
    from ._drivers.httpx import LLMMetricsTransport, instrument_httpx, uninstrument_httpx
    from ._drivers.requests import LLMMetricsAdapter, instrument_requests, uninstrument_requests
    from ._exporters.azure import AzureMonitorExporter
    from ._exporters.otel import OpenTelemetryExporter
    from ._exporters.prometheus import PrometheusExporter
    from ._exporters.threescale import ThreeScaleExporter

__all__ = [
    "AzureMonitorExporter",
    "CallRecord",
    "Dimension",
    "ErrorKind",
    "ErrorSink",
    "Exporter",
    "LLMMetricsAdapter",
    "LLMMetricsMiddleware",
    "LLMMetricsTransport",
    "LLMMetricsWSGIMiddleware",
    "MetricRule",
    "OpenTelemetryExporter",
    "Outcome",
    "OutgoingOptions",
    "Price",
    "PrometheusExporter",
    "RequestView",
    "Schema",
    "Sink",
    "ThreeScaleExporter",
    "TokenLimit",
    "Usage",
    "UsagePointers",
    "UsageSource",
    "carry_context",
    "instrument_aiohttp",
    "instrument_httpx",
    "instrument_requests",
    "metering_context",
    "uninstrument_aiohttp",
    "uninstrument_httpx",
    "uninstrument_requests",
]

from ._version import __version__ as __version__  # noqa: E402 (re-exported, not in __all__)


def __getattr__(name: str) -> Any:
    # Exporters are imported when first asked for: the middlewares themselves need only the
    # standard library and werkzeug, and the OpenTelemetry SDK and the Azure exporter are
    # heavy imports that most apps use one of at most.
    if name in ("LLMMetricsTransport", "instrument_httpx", "uninstrument_httpx"):
        # Imports httpx / httpx2 (for the transport's base classes): only when asked for.
        from ._drivers import httpx

        return getattr(httpx, name)
    if name in ("instrument_aiohttp", "uninstrument_aiohttp"):
        from ._drivers import aiohttp

        return getattr(aiohttp, name)
    if name in ("LLMMetricsAdapter", "instrument_requests", "uninstrument_requests"):
        from ._drivers import requests

        return getattr(requests, name)
    if name == "PrometheusExporter":
        from ._exporters.prometheus import PrometheusExporter

        return PrometheusExporter
    if name == "AzureMonitorExporter":
        from ._exporters.azure import AzureMonitorExporter

        return AzureMonitorExporter
    if name == "OpenTelemetryExporter":
        from ._exporters.otel import OpenTelemetryExporter

        return OpenTelemetryExporter
    if name == "ThreeScaleExporter":
        from ._exporters.threescale import ThreeScaleExporter

        return ThreeScaleExporter
    raise AttributeError(f"module 'llm_metrics_middleware' has no attribute {name!r}")
