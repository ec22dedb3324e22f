"""The framework-free middle of both middlewares: options, per-call state, delivery.

:class:`Metering` holds what one middleware was configured with. :class:`MeteredCall` is the
per-request state (never on the middleware instance): the ASGI and WSGI adapters drive it
with ``request_body``, ``response_start``, ``body`` and ``finish`` and nothing else.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Literal

from .._core.decoders import decompressor_for, is_identity
from .._core.estimate import TokenCounter, offline_tiktoken, tokens_from_bytes
from .._core.extractor import JSON, NONE, SSE, BodyFormat, UsageExtractor, body_format
from .._core.peek import BodyPeek
from .._core.providers import Route, UsagePointers, route_of
from .._core.providers.facts import ALWAYS_REPORTS, NO_TEXT_OPERATIONS, provider_from_headers
from .._core.usage import MAX_TOKENS, make_usage
from .call import (
    ESTIMATED,
    NO_USAGE,
    REPORTED,
    CallRecord,
    ErrorKind,
    Exporter,
    Outcome,
    Sink,
    UsageSource,
    is_error_kind,
)
from .dimensions import OVERFLOW, CallContext, Dimension, Source, build_schema
from .failures import FailureLog
from .limits import HeaderNames, TokenLimit, TokenLimiter
from .request import RequestView

logger = logging.getLogger("llm_metrics_middleware")

#: Default cap on distinct dimension-value combinations per middleware (the default
#: cardinality limit of the OpenTelemetry SDK, well under Azure Monitor's 50,000).
DEFAULT_MAX_SERIES = 2000


def _provider_from_headers(view: RequestView) -> str | None:
    """Headers only one provider's clients send, for paths we do not recognise."""
    return provider_from_headers(view.headers, view.query)


def body_error(error: str) -> ErrorKind:
    """The ``kind`` label for why the core could not read a body. The label set stays closed
    even if the core ever names a reason not in :data:`ErrorKind` (a bug that
    ``tests/test_vocabulary.py`` catches first): that one is counted as ``internal``."""
    return error if is_error_kind(error) else "internal"


class SeriesLimiter:
    """Caps distinct dimension tuples; past the cap, new tuples become all-overflow.

    Sums stay exact: overflowed calls are still counted, under ``__overflow__`` values.
    Memory is bounded by the cap.
    """

    def __init__(self, max_series: int) -> None:
        if not isinstance(max_series, int) or isinstance(max_series, bool) or max_series < 1:
            raise ValueError(f"max_series must be a positive int, got {max_series!r}")
        self.max_series = max_series
        self._seen: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()
        self.overflowed = 0

    def admit(self, values: tuple[str, ...]) -> tuple[tuple[str, ...], bool]:
        """The values to export, and whether they overflowed."""
        if values in self._seen:
            return values, False
        with self._lock:
            if len(self._seen) < self.max_series:
                self._seen.add(values)
                return values, False
            self.overflowed += 1
        return (OVERFLOW,) * len(values), True


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
        self.schema = build_schema(
            namespace,
            dimensions,
            location=location,
            gateway_id=gateway_id,
            subscription_secret=subscription_secret,
        )
        self.exporters = exporters
        self.sinks: list[Sink] = [exporter.bind(self.schema) for exporter in exporters]
        self.provider = provider
        self.custom = custom_usage
        self.estimate = estimate
        self.token_counter = token_counter if token_counter is not None else (offline_tiktoken() if estimate else None)
        self.limiter = SeriesLimiter(max_series)
        #: Self-observability: what went wrong, by kind, since start.
        self.errors: collections.Counter[ErrorKind] = collections.Counter()
        self.failures = FailureLog()

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
        location: str | None,
        gateway_id: str | None,
        subscription_secret: bytes | str | None,
    ) -> None:
        """Check ``limits`` and connect their store; sinks learn the configured limits."""
        schema = self.schema

        def source(name: str) -> Source | None:
            for dim in schema.dimensions:
                if dim.name == name:
                    return dim.source
            try:  # a default name the middleware does not export: its documented source
                built = build_schema(
                    schema.namespace, [name], location=location, gateway_id=gateway_id,
                    subscription_secret=subscription_secret,
                )
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

    def begin(self, view: RequestView) -> MeteredCall:
        return MeteredCall(self, view)

    def count_error(self, kind: ErrorKind) -> None:
        self.errors[kind] += 1
        self._to_sinks("on_error", kind)

    def deliver(self, call: CallRecord) -> None:
        if self.limits is not None:
            self.limits.charge(call)
        self._to_sinks("record", call)

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


def _ignore(chunk: bytes) -> None:
    """The body of a response that is not read."""


class MeteredCall:
    """Per-request state. Every method is safe to call: none raises."""

    __slots__ = (
        "metering",
        "view",
        "route",
        "peek",
        "started",
        "status",
        "extractor",
        "first_chunk",
        "want_text",
        "finished",
        "fmt",
        "feed",
    )

    def __init__(self, metering: Metering, view: RequestView) -> None:
        self.metering = metering
        self.view = view
        self.started = time.perf_counter()
        self.route: Route = route_of(view.path)
        self.peek: BodyPeek | None = view.start_peek()
        self.status = 0
        self.extractor: UsageExtractor | None = None
        self.first_chunk: float | None = None
        self.want_text = False
        self.finished = False
        self.fmt: BodyFormat = NONE
        #: What the drivers call with every response body chunk: first the method that
        #: notes the time of the first chunk, then the extractor's own ``feed`` (or a
        #: no-op), so a streamed chunk costs one Python call here, not two.
        self.feed: Callable[[bytes], None] = self._first_body

    def request_body(self, chunk: bytes) -> None:
        peek = self.peek
        if peek is not None and not peek.done:
            try:
                peek.feed(chunk)
            except Exception:
                self.peek = None

    def response_start(self, status: int, content_type: str | None, content_encoding: str | None) -> None:
        try:
            self.status = status
            if status >= 400 or status < 200:
                return
            decompressor = None
            if not is_identity(content_encoding):
                decompressor = decompressor_for(content_encoding)
                if decompressor is None:
                    return  # an encoding we cannot read: pass it on unread
            fmt = body_format(content_type)
            if fmt == NONE:
                return
            metering = self.metering
            route = self.route
            body = self.view.body
            stream_options = body.get("stream_options")
            include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
            provider = metering.provider or route.provider
            self.want_text = (
                metering.estimate
                and not include_usage
                and provider not in ALWAYS_REPORTS
                and route.operation not in NO_TEXT_OPERATIONS
            )
            self.fmt = fmt
            self.extractor = UsageExtractor(
                fmt,
                custom=metering.custom,
                want_text=self.want_text,
                token_counter=metering.token_counter,
                decompressor=decompressor,
            )
        except Exception as exc:
            self.metering.failures.failed("llm-metrics", "start reading a response (it is not counted)", exc)
            self.metering.count_error("internal")

    def body(self, chunk: bytes) -> None:
        """One response body chunk (the same as calling :attr:`feed`)."""
        self.feed(chunk)

    def _first_body(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.first_chunk = time.perf_counter()
        extractor = self.extractor
        if extractor is None:
            self.feed = _ignore
        else:
            self.feed = extractor.feed
            extractor.feed(chunk)

    def finish(self, outcome: Outcome) -> None:
        if self.finished:
            return
        self.finished = True
        try:
            self._finish(outcome)
        except Exception as exc:
            self.metering.failures.failed("llm-metrics", "meter a call", exc)
            self.metering.count_error("internal")

    def _finish(self, outcome: Outcome) -> None:
        metering = self.metering
        route = self.route
        extraction = self.extractor.close() if self.extractor is not None else None
        usage = extraction.usage if extraction is not None else None
        # Only LLM calls are counted: a known LLM path, or a body that reported usage.
        if route.operation is None and usage is None:
            if extraction is not None and extraction.error is not None and self.metering.custom is not None:
                metering.count_error(body_error(extraction.error))
            return
        if extraction is not None and extraction.error is not None:
            metering.count_error(body_error(extraction.error))
            logger.debug("llm-metrics: body of %s %s not read: %s", self.view.method, self.view.path, extraction.error)
        body = self.view.body
        source: UsageSource = NO_USAGE
        if self.status >= 400:
            usage = None
        elif usage is not None:
            source = REPORTED
        elif (
            self.want_text
            and extraction is not None
            and extraction.text_tokens > 0
            and metering.estimate
        ):
            prompt = min(tokens_from_bytes(self.view.prompt_bytes), MAX_TOKENS)
            completion = min(extraction.text_tokens, MAX_TOKENS)
            usage = make_usage(prompt, completion, prompt + completion, estimated=True)
            source = ESTIMATED
        request_model = body.get("model")
        if not isinstance(request_model, str) or not request_model:
            request_model = route.model
        response_model = extraction.model if extraction is not None else None
        provider = (
            metering.provider
            or route.provider
            or (extraction.provider if extraction is not None else None)
            or _provider_from_headers(self.view)
        )
        ctx = CallContext(provider, route.operation, response_model or request_model)
        dims, overflowed = metering.limiter.admit(metering.schema.values(self.view, ctx, metering.count_error))
        if overflowed:
            metering.count_error("series_overflow")
        streamed = self.fmt == SSE or (self.fmt == JSON and body.get("stream") is True)
        now = time.perf_counter()
        # Positional: a dataclass call with keywords costs 0.6 us more here.
        call = CallRecord(
            dims,
            usage,
            source,
            provider,
            route.operation,
            request_model if isinstance(request_model, str) else None,
            response_model,
            self.status,
            outcome,
            streamed,
            now - self.started,
            (self.first_chunk - self.started) if streamed and self.first_chunk else None,
            extraction.error if extraction is not None else None,
            "incoming",
            self.view,
        )
        metering.deliver(call)

