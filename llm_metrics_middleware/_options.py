"""Construction shared by the ASGI and WSGI middlewares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._record import Exporter


def metrics_exporter(exporters: Sequence[Exporter], metrics_path: str | None) -> Any:
    """The exporter that serves ``metrics_path``: the first one able to render itself."""
    if metrics_path is None:
        return None
    if not isinstance(metrics_path, str) or not metrics_path.startswith("/"):
        raise ValueError(f"metrics_path must be a path starting with '/', such as '/metrics', got {metrics_path!r}")
    for exporter in exporters:
        if hasattr(exporter, "asgi_app") and hasattr(exporter, "wsgi_app"):
            return exporter
    raise ValueError(
        f"metrics_path={metrics_path!r} needs a PrometheusExporter among exporters= to serve; "
        "add one or drop metrics_path"
    )
