from __future__ import annotations

import llm_metrics_middleware


def test_exported_members_are_pinned() -> None:
    assert sorted(llm_metrics_middleware.__all__) == [
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
    for name in llm_metrics_middleware.__all__:
        assert getattr(llm_metrics_middleware, name) is not None


def test_every_exporter_has_flush_and_shutdown() -> None:
    for name in ("PrometheusExporter", "AzureMonitorExporter", "OpenTelemetryExporter", "ThreeScaleExporter"):
        cls = getattr(llm_metrics_middleware, name)
        assert callable(cls.force_flush) and callable(cls.shutdown), name
