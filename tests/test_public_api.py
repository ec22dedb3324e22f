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
    for name in llm_metrics_middleware.__all__:
        assert getattr(llm_metrics_middleware, name) is not None


def test_every_exporter_has_flush_and_shutdown() -> None:
    for name in ("PrometheusExporter", "AzureMonitorExporter", "OpenTelemetryExporter"):
        cls = getattr(llm_metrics_middleware, name)
        assert callable(cls.force_flush) and callable(cls.shutdown), name
