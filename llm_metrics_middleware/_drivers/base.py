"""Construction shared by the ASGI and WSGI middlewares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from .._core.estimate import TokenCounter
from .._core.providers import UsagePointers
from .._metering.call import Exporter
from .._metering.dimensions import Dimension
from .._metering.limits import DEFAULT_TIMEOUT, HeaderNames, TokenLimit
from .._metering.metering import DEFAULT_MAX_SERIES, Metering
from .._metering.paths import PathPatterns
from .._metering.pricing import PricingOption, pricing_from_environment
from . import environment

AppT = TypeVar("AppT")


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


class MiddlewareBase(Generic[AppT]):
    """The options both middlewares take (keyword-only, so typed ``add_middleware`` checks them).

    Each option, with its default and meaning, is in the README's "Options" table (and the
    ``LLM_METRICS_*`` variables in "From the environment"); ``tests/test_options_documented.py``
    fails when this signature and that table disagree, so the list is written here once.
    The metering options are handed on to :class:`~.._metering.metering.Metering`; the
    limit options to :meth:`~.._metering.metering.Metering.enable_limits`; ``metrics_path``
    and ``metrics_auth`` stay with the driver, which serves the metrics.
    """

    #: The exporter method that builds the app serving ``metrics_path``.
    _metrics_app_factory = "asgi_app"
    #: Whether the limit store is asked with ``limits.aio`` (the ASGI driver) or blocking.
    _asynchronous_limits = True

    def __init__(
        self,
        app: AppT,
        *,
        exporters: Sequence[Exporter],
        dimensions: Sequence[Dimension | str] | None = None,
        namespace: str | None = None,
        provider: str | None = None,
        custom_usage: UsagePointers | None = None,
        estimate: bool = True,
        token_counter: TokenCounter | None = None,
        max_series: int = DEFAULT_MAX_SERIES,
        location: str | None = None,
        gateway_id: str | None = None,
        subscription_secret: bytes | str | None = None,
        metrics_path: str | None = None,
        metrics_auth: str | tuple[str, str] | None = None,
        limits: Sequence[TokenLimit] | None = None,
        limit_storage: str = "memory://",
        limit_fail_closed: bool = False,
        limit_timeout: float = DEFAULT_TIMEOUT,
        limit_headers: HeaderNames = None,
        pricing: PricingOption = None,
        include_paths: PathPatterns | None = None,
        exclude_paths: PathPatterns | None = None,
    ) -> None:
        self.app = app
        # Options not given come from LLM_METRICS_* variables (environment.py), then defaults.
        settings = environment.read(
            dimensions=dimensions, namespace=namespace, include_paths=include_paths, exclude_paths=exclude_paths
        )
        namespace = settings.namespace
        #: False when LLM_METRICS_ENABLED=false: every request goes straight to the app.
        self.enabled = settings.enabled
        self.metering = Metering(
            exporters=exporters,
            dimensions=settings.dimensions,
            namespace=namespace,
            provider=provider,
            custom_usage=custom_usage,
            estimate=estimate,
            token_counter=token_counter,
            max_series=max_series,
            location=location,
            gateway_id=gateway_id,
            subscription_secret=subscription_secret,
            pricing=pricing_from_environment(pricing),
            include_paths=settings.include_paths,
            exclude_paths=settings.exclude_paths,
        )
        if limits is not None:
            self.metering.enable_limits(
                limits,
                storage=limit_storage,
                asynchronous=self._asynchronous_limits,
                fail_closed=limit_fail_closed,
                timeout=limit_timeout,
                headers=limit_headers,
            )
        # Two stacked copies with one namespace would count every call twice.
        self._marker = "llm_metrics_middleware:" + namespace
        self._metrics_path = metrics_path
        if metrics_auth is not None and metrics_path is None:
            raise ValueError("metrics_auth= protects metrics_path=, which is not set; set both, or pass auth= to "
                             "PrometheusExporter.asgi_app() / wsgi_app() where you mount the metrics yourself")
        exporter = metrics_exporter(self.metering.exporters, metrics_path)
        self._metrics_app: Any = (
            getattr(exporter, self._metrics_app_factory)(auth=metrics_auth) if exporter is not None else None
        )
