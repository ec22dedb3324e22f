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
    for name in llm_metrics_middleware.__all__:
        assert getattr(llm_metrics_middleware, name) is not None


def test_every_exporter_has_flush_and_shutdown() -> None:
    for name in ("PrometheusExporter", "AzureMonitorExporter", "OpenTelemetryExporter", "ThreeScaleExporter"):
        cls = getattr(llm_metrics_middleware, name)
        assert callable(cls.force_flush) and callable(cls.shutdown), name


def test_the_version_is_the_distribution_version() -> None:
    # One number, two places (pyproject.toml for the build, _version.py for the exporters'
    # meter version): this keeps them in step.
    import pathlib
    import re

    pyproject = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"
    declared = re.search(r'^version = "([^"]+)"$', pyproject.read_text(), re.M)  # tomllib is 3.11+
    assert declared is not None and declared.group(1) == llm_metrics_middleware.__version__
