"""The framework-free middle of both middlewares: options, routes, delivery.

:class:`Metering` holds what one middleware was configured with, built once. The
per-request state is a :class:`~.metered_call.MeteredCall` built on it (never on the
middleware instance): the ASGI and WSGI adapters drive it with ``request_body``,
``response_start``, ``body`` and ``finish`` and nothing else, and it hands the finished
call back to :meth:`Metering.deliver`.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

from .._core.estimate import TokenCounter, offline_tiktoken
from .._core.providers import Route, UsagePointers, route_of
from .._core.providers.facts import ALWAYS_REPORTS, NO_TEXT_OPERATIONS, USAGE_HEADER_NAMES
from .._core.providers.routes import CLAIMED, claim_reads_headers, claimed
from .call import CallRecord, ErrorKind, Exporter, Sink
from .dimensions import BoundSchema, CallContext, Dimension, Source, build_schema
from .failures import FailureLog
from .limits import HeaderNames, TokenLimit, TokenLimiter
from .paths import PathFilter, PathPatterns
from .pricing import PricingOption, build_pricing
from .request import RequestView
from .series import SeriesLimiter, series_limiter

__all__ = [
    "DEFAULT_MAX_SERIES",
    "USAGE_HEADER_NAMES",
    "Metering",
    "SeriesLimiter",
    "route_of_call",
]

#: Request paths (and, for claimed paths, path and host) whose route entry a Metering
#: keeps (see Metering.route_entry); clients choose both, so a cache is emptied when it fills.
ROUTE_CACHE_SIZE = 1024
_K = TypeVar("_K")

#: Default cap on distinct dimension-value combinations per middleware (the default
#: cardinality limit of the OpenTelemetry SDK, well under Azure Monitor's 50,000).
DEFAULT_MAX_SERIES = 2000


def _keep(cache: dict[_K, tuple[Route, bool, bool]], key: _K, entry: tuple[Route, bool, bool]) -> None:
    if len(cache) >= ROUTE_CACHE_SIZE:
        cache.clear()
    cache[key] = entry


def _host_of(view: RequestView) -> str | bytes | None:
    """The request's ``Host`` as it came (a cache key: the claim itself reads it properly)."""
    environ = view.environ
    if environ is not None:
        host = environ.get("HTTP_HOST")
        return host if isinstance(host, str) else None
    for key, value in view._raw_headers or ():  # RequestView.header_bytes, without the call
        if key == b"host":
            return value if value.__class__ is bytes else bytes(value)
    return None


def route_of_call(view: RequestView) -> Route:
    """The call's route: its path's, or the provider's that claims it by host or headers
    (Azure's ``/openai/v1/...`` on an Azure host). Headers are looked up only for paths
    another provider may claim, one by one, without building the header mapping."""
    route = route_of(view.path)
    if route.provider not in CLAIMED:
        return route
    environ = view.environ

    def header(name: str) -> str | None:
        if environ is not None:
            value = environ.get("HTTP_" + name.upper().replace("-", "_"))
            return value if isinstance(value, str) else None
        raw = view.header_bytes(name.encode("latin-1"))
        return None if raw is None else raw.decode("latin-1")

    return claimed(route, view.path, header)


class Metering:
    """One middleware's configuration and sinks. Built once, shared by all requests."""

    def __init__(
        self,
        *,
        exporters: Sequence[Exporter],
        dimensions: Sequence[Dimension | str] | None = None,
        namespace: str = "llm",
        provider: str | None = None,
        custom_usage: UsagePointers | None = None,
        estimate: bool = True,
        token_counter: TokenCounter | None = None,
        max_series: int = DEFAULT_MAX_SERIES,
        location: str | None = None,
        gateway_id: str | None = None,
        subscription_secret: bytes | str | None = None,
        pricing: PricingOption = None,
        include_paths: PathPatterns | None = None,
        exclude_paths: PathPatterns | None = None,
    ) -> None:
        if exporters is None or isinstance(exporters, (str, bytes)) or not hasattr(exporters, "__iter__"):
            raise TypeError(
                "exporters= takes a list of exporters, e.g. exporters=[PrometheusExporter()]"
            )
        exporters = list(exporters)
        if not exporters:
            raise ValueError("exporters= needs at least one exporter, e.g. exporters=[PrometheusExporter()]")
        for exporter in exporters:
            if not hasattr(exporter, "bind"):
                raise TypeError(
                    f"{exporter!r} is not an exporter; use PrometheusExporter(), "
                    "AzureMonitorExporter() or OpenTelemetryExporter()"
                )
        if not isinstance(namespace, str) or not namespace.strip():
            raise ValueError(f"namespace must be a non-empty str, got {namespace!r}")
        if custom_usage is not None and not isinstance(custom_usage, UsagePointers):
            raise TypeError(f"custom_usage= takes UsagePointers(...), got {custom_usage!r}")
        # Kept for the limit keys (enable_limits), which read the same built-in sources.
        self._location, self._gateway_id, self._subscription_secret = location, gateway_id, subscription_secret
        self.schema = self._build_schema(namespace, dimensions)
        self.exporters = exporters
        self.sinks: list[Sink] = [exporter.bind(self.schema) for exporter in exporters]
        self.provider = provider
        self.custom = custom_usage
        self.estimate = estimate
        self.token_counter = token_counter if token_counter is not None else (offline_tiktoken() if estimate else None)
        self.limiter: SeriesLimiter = series_limiter(max_series, namespace, self.schema.labels)
        #: Which paths besides the known LLM ones are read, and which never are.
        self.paths = PathFilter(include_paths, exclude_paths)
        #: Self-observability: what went wrong, by kind, since start.
        self.errors: collections.Counter[ErrorKind] = collections.Counter()
        self.failures = FailureLog()
        self.pricing = build_pricing(pricing, lambda model: self.count_error("unpriced_model"))
        #: Request path -> its route entry (see :meth:`route_entry`).
        self.routes: dict[str, tuple[Route, bool, bool]] = {}
        #: (request path, Host) -> its route entry, for paths another provider may claim.
        self.claimed_routes: dict[tuple[str, str | bytes | None], tuple[Route, bool, bool]] = {}
        #: Paths another provider may claim by ``Host`` alone: routed once, then looked up
        #: in :attr:`claimed_routes` straight away (a set: path -> nothing else to know).
        self.claimed_paths: set[str] = set()
        self._record_fns: list[Callable[[CallRecord], None]] | None = None
        #: The sinks' record methods once :meth:`deliver` has found it has nothing else to do
        #: (no pricing, no limits): a finishing call then hands its record to them itself,
        #: a Python call fewer per call. None: call :meth:`deliver`.
        self.direct_records: list[Callable[[CallRecord], None]] | None = None
        #: Set with :attr:`direct_records` when every sink also offers ``record_fields``
        #: (a sink that only adds to sums: the Prometheus exporter's aggregate): a finishing
        #: call then hands each the fields of its record, and builds no CallRecord at all.
        #: Internal to this package's sinks; an exporter's ``record`` always gets the record.
        self.direct_fields: list[Callable[..., None]] | None = None

    #: The token limits (``limits=``), or None; see :meth:`enable_limits`.
    limits: TokenLimiter | None = None
    _limit_hooks: list[Callable[[str, int, int, int], None]] | None = None

    def enable_limits(
        self,
        limits: Sequence[TokenLimit],
        *,
        storage: str,
        asynchronous: bool,
        fail_closed: bool,
        timeout: float,
        headers: HeaderNames,
    ) -> None:
        """Check ``limits`` and connect their store; sinks learn the configured limits.

        Their keys read the built-in sources with this Metering's ``location``,
        ``gateway_id`` and ``subscription_secret``."""
        schema = self.schema
        subscription_secret = self._subscription_secret
        self.direct_records = self.direct_fields = None  # calls are charged now: through deliver

        def source(name: str) -> Source | None:
            for dim in schema.dimensions:
                if dim.name == name:
                    return dim.source
            try:  # a default name the middleware does not export: its documented source
                built = self._build_schema(schema.namespace, [name])
            except (TypeError, ValueError):
                return None
            return built.dimensions[0].source

        self.limits = TokenLimiter(
            limits,
            storage=storage,
            asynchronous=asynchronous,
            namespace=schema.namespace,
            sources=source,
            fail_closed=fail_closed,
            timeout=timeout,
            headers=headers,
            count_error=self.count_error,
            on_limit=self._on_limit,
            subscription_secret_set=bool(subscription_secret or os.environ.get("LLM_METRICS_SUBSCRIPTION_SECRET")),
        )
        described = self.limits.describe()
        for sink in self.sinks:
            configured = getattr(sink, "limits_configured", None)
            if configured is not None:
                configured(described)

    def _build_schema(self, namespace: str, dimensions: Sequence[Dimension | str] | None) -> BoundSchema:
        return build_schema(
            namespace,
            dimensions,
            location=self._location,
            gateway_id=self._gateway_id,
            subscription_secret=self._subscription_secret,
        )

    def _on_limit(self, name: str, authorized: int, limited: int, tokens: int) -> None:
        hooks = self._limit_hooks
        if hooks is None:
            hooks = self._limit_hooks = [h for h in (getattr(s, "on_limit", None) for s in self.sinks) if h is not None]
        for on_limit in hooks:
            try:
                on_limit(name, authorized, limited, tokens)
            except Exception as exc:
                self.errors["export"] += 1
                self.failures.failed(f"exporter hook {on_limit!r}", "count a limit event", exc)

    def limit_context(self, view: RequestView, route: Route) -> CallContext:
        """What the built-in key sources know at the start of a request."""
        model = view.body.get("model")
        return CallContext(
            provider=self.provider or route.provider,
            operation=route.operation,
            model=model if isinstance(model, str) and model else route.model,
        )

    def route_entry(self, view: RequestView) -> tuple[Route, bool, bool]:
        """``(route, metered, want_text)`` of a call, kept in :attr:`routes` by path.

        ``metered``: a known LLM path or one ``include_paths=`` allows, and not excluded;
        ``want_text``: count the response's text for an estimate, because its usage may be
        missing (estimates on, a provider whose streams may lack it, an operation that
        generates text). All three depend on the path and this Metering's options only,
        so each is worked out once per path instead of on every request. A path another
        provider may claim (OpenAI's ``/v1/...``, which Azure and Bedrock serve too)
        depends on the ``Host`` as well: it is kept in :attr:`claimed_routes` by path and
        host, unless the claim also reads other headers on that path (Azure's
        ``/openai/v1/...`` with an ``api-key``), in which case it is routed on every call.
        """
        path = view.path
        if path not in self.claimed_paths:
            route = route_of(path)
            if route.provider not in CLAIMED:
                entry = self._entry(route, path)
                _keep(self.routes, path, entry)
                return entry
            if claim_reads_headers(route, path):
                return self._entry(route_of_call(view), path)
            if len(self.claimed_paths) >= ROUTE_CACHE_SIZE:  # clients choose paths: bounded
                self.claimed_paths.clear()
            self.claimed_paths.add(path)
        key = (path, _host_of(view))
        kept = self.claimed_routes.get(key)
        if kept is None:
            kept = self._entry(route_of_call(view), path)
            _keep(self.claimed_routes, key, kept)
        return kept

    def _entry(self, route: Route, path: str) -> tuple[Route, bool, bool]:
        # A provider= override names the provider; else the route's table row says
        # (Gemini's own API always reports usage, its OpenAI-compatible one may not).
        always_reports = self.provider in ALWAYS_REPORTS if self.provider else route.streams_report_usage
        return (
            route,
            self.paths.meters(path, route.operation is not None),
            self.estimate and not always_reports and route.operation not in NO_TEXT_OPERATIONS,
        )

    def count_error(self, kind: ErrorKind) -> None:
        self.errors[kind] += 1
        self._to_sinks("on_error", kind)

    def deliver(self, call: CallRecord) -> None:
        pricing = self.pricing
        if pricing is not None and call.cost_usd is None:
            try:
                call.cost_usd = pricing.cost(call)
            except Exception as exc:  # a bug of ours: the call is delivered without a cost
                self.failures.failed("pricing", "price a call", exc)
                self.count_error("internal")
        if self.limits is not None:
            self.limits.charge(call)
        records = self._record_fns
        if records is None:
            records = self._record_fns = [sink.record for sink in self.sinks]
            if pricing is None and self.limits is None:
                self.direct_records = records
                fields = [getattr(sink, "record_fields", None) for sink in self.sinks]
                if None not in fields:
                    self.direct_fields = fields  # type: ignore[assignment]  # None is not in it
        # The sinks' record methods, looked up once: the guard of _to_sinks only when one raises.
        for record in records:
            try:
                record(call)
            except Exception as exc:
                self._record_failed(records.index(record), exc)

    def _record_failed(self, index: int, exc: Exception) -> None:
        self.errors["export"] += 1
        sink = self.sinks[index]
        self.failures.failed(f"exporter {type(sink).__qualname__} (exporters[{index}])", "record a call", exc)
        self._to_sinks("on_error", "export")  # tell the others

    def _to_sinks(self, method: Literal["record", "on_error"], arg: CallRecord | ErrorKind) -> None:
        """The one guard around exporter code: a sink that raises is logged once per sink and
        kind of failure (not a traceback per request), counted as ``export`` and skipped; the
        other sinks still get the call."""
        for index, sink in enumerate(self.sinks):
            fn = getattr(sink, method, None)
            if fn is None:
                continue  # on_error is optional
            try:
                fn(arg)
            except Exception as exc:
                self.errors["export"] += 1
                who = f"exporter {type(sink).__qualname__} (exporters[{index}])"
                self.failures.failed(who, "record a call" if method == "record" else "count an error", exc)
                if method == "record":  # tell the others; a failing on_error is not retried
                    self._to_sinks("on_error", "export")
