"""The framework-free middle of both middlewares: options, per-call state, delivery.

:class:`Metering` holds what one middleware was configured with. :class:`MeteredCall` is the
per-request state (never on the middleware instance): the ASGI and WSGI adapters drive it
with ``request_body``, ``response_start``, ``body`` and ``finish`` and nothing else.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from .._core.decoders import decompressor_for, is_identity
from .._core.estimate import TokenCounter, offline_tiktoken, tokens_from_bytes
from .._core.extractor import EVENTSTREAM, JSON, NONE, SSE, BodyFormat, UsageExtractor, body_format
from .._core.peek import BodyPeek
from .._core.providers import Route, UsagePointers, route_of
from .._core.providers.facts import (
    ALWAYS_REPORTS,
    NO_TEXT_OPERATIONS,
    UNBILLED_OPERATIONS,
    USAGE_HEADER_NAMES,
    counts_from_headers,
    provider_from_headers,
)
from .._core.usage import MAX_TOKENS, Counts, Usage, UsageAccumulator, make_usage
from .call import (
    COMPLETED,
    ESTIMATED,
    NO_USAGE,
    REPORTED,
    CallRecord,
    ErrorKind,
    Exporter,
    Origin,
    Outcome,
    Sink,
    UsageSource,
    is_error_kind,
)
from .dimensions import CallContext, Dimension, Source, build_schema, safe_text
from .failures import FailureLog
from .limits import HeaderNames, TokenLimit, TokenLimiter
from .paths import PathFilter, PathPatterns
from .pricing import PricingOption, build_pricing
from .request import RequestView
from .series import SeriesLimiter, series_limiter

logger = logging.getLogger("llm_metrics_middleware")

__all__ = ["DEFAULT_MAX_SERIES", "USAGE_HEADER_NAMES", "MeteredCall", "Metering", "SeriesLimiter", "usage_headers_of"]

#: Default cap on distinct dimension-value combinations per middleware (the default
#: cardinality limit of the OpenTelemetry SDK, well under Azure Monitor's 50,000).
DEFAULT_MAX_SERIES = 2000


def _provider_from_headers(view: RequestView) -> str | None:
    """Headers only one provider's clients send, for paths we do not recognise."""
    return provider_from_headers(view.headers, view.query)


def usage_headers_of(headers: Mapping[str, str]) -> dict[str, str] | None:
    """The usage-reporting headers among a client library's case-insensitive response
    headers (httpx, requests), lower-case, for :meth:`MeteredCall.response_start`."""
    found = {name: value for name in USAGE_HEADER_NAMES if (value := headers.get(name)) is not None}
    return found or None


def _with_header_counts(usage: Usage | None, counts: Counts) -> Usage | None:
    """The body's usage with the headers' counts over it: the headers are authoritative
    (the provider's billing counts); the body may add what they lack (cached, reasoning)."""
    acc = UsageAccumulator()
    if usage is not None:
        acc.update(
            (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens,
                usage.cached_tokens,
                usage.reasoning_tokens,
                usage.cache_write_tokens,
                usage.cache_write_1h_tokens,
            )
        )
    acc.update(counts)
    return acc.result()


def body_error(error: str) -> ErrorKind:
    """The ``kind`` label for why the core could not read a body. The label set stays closed
    even if the core ever names a reason not in :data:`ErrorKind` (a bug that
    ``tests/test_vocabulary.py`` catches first): that one is counted as ``internal``."""
    return error if is_error_kind(error) else "internal"


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
        self.limiter: SeriesLimiter = series_limiter(max_series, namespace, self.schema.labels)
        #: Which paths besides the known LLM ones are read, and which never are.
        self.paths = PathFilter(include_paths, exclude_paths)
        #: Self-observability: what went wrong, by kind, since start.
        self.errors: collections.Counter[ErrorKind] = collections.Counter()
        self.failures = FailureLog()
        self.pricing = build_pricing(pricing, lambda model: self.count_error("unpriced_model"))

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

    def begin_outgoing(
        self, view: RequestView, call_view: RequestView, *, incoming: MeteredCall | None
    ) -> MeteredCall:
        """Per-call state for an LLM call the app makes (see :mod:`.context`)."""
        return MeteredCall(self, view, call_view=call_view, origin="outgoing", incoming=incoming)

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
        "call_view",
        "origin",
        "incoming",
        "metered",
        "counted_elsewhere",
        "overrides",
        "header_counts",
        "feed",
    )

    def __init__(
        self,
        metering: Metering,
        view: RequestView,
        *,
        call_view: RequestView | None = None,
        origin: Origin = "incoming",
        incoming: MeteredCall | None = None,
    ) -> None:
        self.metering = metering
        #: What the dimensions are evaluated on: the incoming request.
        self.view = view
        #: The LLM request itself (route, body fields, prompt size): the incoming request
        #: for a proxied call, the outgoing one for a call the app makes.
        self.call_view = call_view = view if call_view is None else call_view
        self.origin: Origin = origin
        #: The incoming request an outgoing call was made in (None: outside any request).
        self.incoming = incoming
        #: Set when an outgoing LLM call of this request was metered: this response only
        #: relays (or summarises) it and is not counted again.
        self.counted_elsewhere = False
        #: Dimension values set by ``metering_context()`` for this call, by name or label.
        self.overrides: dict[str, str] | None = None
        self.started = time.perf_counter()
        self.route: Route = route_of(call_view.path)
        #: Known LLM path, or one ``include_paths=`` allows; and not excluded.
        self.metered = metering.paths.meters(call_view.path, self.route.operation is not None)
        # Peeked on every path: the dimensions of outgoing calls made while serving a
        # non-LLM path read the incoming body too (its "user").
        self.peek: BodyPeek | None = call_view.start_peek()
        self.status = 0
        self.extractor: UsageExtractor | None = None
        self.first_chunk: float | None = None
        self.want_text = False
        self.finished = False
        self.fmt: BodyFormat = NONE
        self.header_counts: Counts | None = None
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

    def response_start(
        self,
        status: int,
        content_type: str | None,
        content_encoding: str | None,
        usage_headers: Mapping[str, str] | None = None,
    ) -> None:
        """``usage_headers``: the response headers named in ``facts.USAGE_HEADER_NAMES``
        (lower-case names), which some providers report usage in (Bedrock)."""
        try:
            self.status = status
            if self.route.operation in UNBILLED_OPERATIONS:
                return  # token counting, moderation: a call, but no tokens
            if usage_headers:
                self.header_counts = counts_from_headers(usage_headers)
            if status >= 400 or status < 200 or not self.metered or self.counted_elsewhere:
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
            body = self.call_view.body
            stream_options = body.get("stream_options")
            include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
            provider = metering.provider or route.provider
            self.want_text = (
                metering.estimate
                and provider not in ALWAYS_REPORTS
                and route.operation not in NO_TEXT_OPERATIONS
            )
            self.fmt = fmt
            self.extractor = UsageExtractor(
                fmt,
                custom=metering.custom,
                want_text=self.want_text,
                # A stream that asked for usage is still estimated when none came (the client
                # left after the finish chunk, the upstream ignored the option), but its text
                # is only measured in bytes: usage almost always comes, so no tokenizer runs.
                token_counter=None if include_usage else metering.token_counter,
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
        extraction = self.extractor.close(ended=outcome == COMPLETED) if self.extractor is not None else None
        usage = extraction.usage if extraction is not None else None
        if not self.metered or self.counted_elsewhere:
            return
        if self.header_counts is not None and self.status < 400:
            usage = _with_header_counts(usage, self.header_counts)
        # Only LLM calls are counted: a known LLM path, or a body that reported usage on a
        # path include_paths= allows.
        if route.operation is None and usage is None:
            if extraction is not None and extraction.error is not None and self.metering.custom is not None:
                metering.count_error(body_error(extraction.error))
            return
        if extraction is not None and extraction.error is not None:
            metering.count_error(body_error(extraction.error))
            logger.debug(
                "llm-metrics: body of %s %s not read: %s", self.call_view.method, self.call_view.path, extraction.error
            )
        body = self.call_view.body
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
            prompt = min(tokens_from_bytes(self.call_view.prompt_bytes), MAX_TOKENS)
            completion = min(extraction.text_tokens, MAX_TOKENS)
            usage = make_usage(prompt, completion, prompt + completion, estimated=True)
            source = ESTIMATED
        request_model = body.get("model")
        if not isinstance(request_model, str) or not request_model:
            request_model = route.model
        # Strings from the request or response: made encodable before any exporter sees them.
        request_model = safe_text(request_model)
        response_model = safe_text(extraction.model if extraction is not None else None)
        provider = safe_text(
            metering.provider
            or route.provider
            or (extraction.provider if extraction is not None else None)
            or _provider_from_headers(self.call_view)
        )
        ctx = CallContext(provider, route.operation, response_model or request_model)
        values = metering.schema.values(self.view, ctx, metering.count_error)
        if self.overrides:
            values = metering.schema.override(values, self.overrides)
        dims, overflowed = metering.limiter.admit(values)
        if overflowed:
            metering.count_error("series_overflow")
        streamed = self.fmt == SSE or self.fmt == EVENTSTREAM or (self.fmt == JSON and body.get("stream") is True)
        now = time.perf_counter()
        call = CallRecord(
            dimensions=dims,
            usage=usage,
            usage_source=source,
            provider=provider,
            operation=route.operation,
            request_model=request_model if isinstance(request_model, str) else None,
            response_model=response_model,
            status=self.status,
            outcome=outcome,
            streamed=streamed,
            duration_s=now - self.started,
            time_to_first_chunk_s=(self.first_chunk - self.started) if streamed and self.first_chunk else None,
            parse_error=extraction.error if extraction is not None else None,
            origin=self.origin,
            request=self.view if self.origin == "incoming" or self.incoming is not None else None,
        )
        metering.deliver(call)

