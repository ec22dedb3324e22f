"""Sinks that turn metered calls into metrics: Prometheus, OpenTelemetry, Azure Monitor."""
