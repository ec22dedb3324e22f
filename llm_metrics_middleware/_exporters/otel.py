"""OpenTelemetry exporter: token counters and the GenAI semantic-convention instruments.

Works with any ``MeterProvider``: the SDK with an OTLP, Prometheus or console reader, a
vendor distro, or the global provider (the default). For each middleware namespace
(``llm`` by default) it creates one meter, named after the namespace, with:

- ``llm.prompt_tokens``, ``llm.completion_tokens``, ``llm.total_tokens``,
  ``llm.cached_tokens``, ``llm.reasoning_tokens`` (observable counters, ``{token}``), one
  attribute per configured dimension keyed by its label (``"User ID"`` -> ``user_id``);
- ``llm.estimated_tokens`` {dimensions, ``type`` = ``prompt`` | ``completion``}: the part
  of the token counters that was estimated because the response reported no usage;
- ``llm.requests`` {dimensions, ``status``, ``outcome``, ``usage``}: LLM calls metered;
- ``llm.metering_errors`` {``kind``}: bodies that could not be read, values refused...;
- ``llm.cost`` {dimensions} (observable counter, ``USD``): the calls' cost, when the
  middleware has ``pricing=``;
- with ``limits=``: ``llm.limit.authorized_calls``, ``llm.limit.limited_calls``,
  ``llm.limit.authorized_tokens`` {``limit``} (observable counters) and ``llm.limit.tokens``
  {``limit``, ``window_seconds``} (observable gauge: each configured budget);
- the GenAI client instruments of the OpenTelemetry semantic conventions, version
  :data:`SEMCONV_VERSION` (they are still in development upstream, so the version we
  follow is pinned here and in the meter's schema URL):
  ``gen_ai.client.token.usage`` (histogram, ``{token}``, one point per call and token type),
  ``gen_ai.client.operation.duration`` (histogram, ``s``) and
  ``gen_ai.client.operation.time_to_first_chunk`` (histogram, ``s``, streamed calls only),
  with the semconv's recommended bucket boundaries as advice.

The GenAI instruments carry only semconv attributes (``gen_ai.operation.name``,
``gen_ai.provider.name``, ``gen_ai.token.type``, ``gen_ai.request.model``,
``gen_ai.response.model``, ``error.type``, and ``server.address``/``server.port`` when
configured), not the dimensions, so dashboards built for the conventions work unchanged
and their cardinality stays low; split by user or API with the counters above. Estimated
usage (the middleware's ``estimate=True``) is included in ``gen_ai.client.token.usage``, as
the conventions allow for offline token counting.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .._core.providers.facts import OTEL_OPERATION_NAMES, OTEL_PROVIDER_NAMES
from .._metering.call import COMPLETED, DISCONNECTED, CallRecord
from .._metering.failures import FailureLog
from .._metering.names import OTEL, safe_name
from .namespaces import Namespaces, check_reserved
from .totals import CallTotals, LimitTotals, Series

_IMPORT_HINT = "pip install 'llm-metrics-middleware[otel]'"

try:
    from opentelemetry.metrics import (
        CallbackOptions,
        Histogram,
        Meter,
        MeterProvider,
        Observation,
        get_meter_provider,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"OpenTelemetryExporter needs the OpenTelemetry API and SDK: {_IMPORT_HINT}") from exc

if TYPE_CHECKING:
    from .._metering.call import Schema

logger = logging.getLogger("llm_metrics_middleware")

#: The OpenTelemetry semantic conventions release whose GenAI metrics we follow
#: (docs/gen-ai/gen-ai-metrics.md). Later releases of the main repository mark the GenAI
#: conventions as moved to open-telemetry/semantic-conventions-genai; the names, units,
#: attributes and bucket advice used here are unchanged there.
SEMCONV_VERSION = "1.41.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"

#: Recommended explicit bucket boundaries of ``gen_ai.client.token.usage``.
TOKEN_USAGE_BUCKETS: tuple[float, ...] = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)
#: Recommended boundaries of ``gen_ai.client.operation.duration`` and of
#: ``gen_ai.client.operation.time_to_first_chunk`` (the same list for both).
DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)

TOKEN_USAGE = "gen_ai.client.token.usage"
OPERATION_DURATION = "gen_ai.client.operation.duration"
TIME_TO_FIRST_CHUNK = "gen_ai.client.operation.time_to_first_chunk"

#: Our operation names (from the request path) -> ``gen_ai.operation.name``, from the
#: provider table. Chat-shaped APIs (Anthropic Messages, OpenAI Responses, Bedrock
#: Converse, Ollama and Cohere chat) are ``chat``: the well-known value for "chat
#: completion operation", and what the OpenAI and Anthropic instrumentations report. Names
#: not listed are passed through as a custom value, which the conventions allow.
OPERATION_NAMES: Mapping[str, str] = OTEL_OPERATION_NAMES
UNKNOWN = "unknown"

_RESERVED = ("status", "outcome", "usage", "type", "kind")


def operation_name(operation: str | None) -> str:
    """``gen_ai.operation.name`` for one of our operation names."""
    if not operation:
        return UNKNOWN
    return OPERATION_NAMES.get(operation, operation)


def instrument_prefix(namespace: str) -> str:
    """``"LLM gateway"`` -> ``LLM_gateway``: a namespace usable in instrument names."""
    return safe_name(namespace, OTEL)


def _error_type(call: CallRecord) -> str | None:
    """``error.type`` of a call that did not succeed (documented list: status, ``_OTHER``, disconnected)."""
    if call.status >= 400:
        return str(call.status)
    if call.outcome == DISCONNECTED:
        return "disconnected"
    if call.outcome != COMPLETED:
        return "_OTHER"
    return None




class _Namespace:
    """The instruments of one namespace, and the running totals behind its counters.

    The dimensioned counters are *observable* counters: the request path adds to plain
    dicts under a lock (about a microsecond), and the SDK reads the totals at each
    collection. A synchronous ``Counter.add`` with ten attributes costs the SDK 10-15 us,
    and a call would need six of them. Observable counters are part of the metrics API,
    so this works with any provider, and any reader temporality (cumulative or delta).
    """

    def __init__(self, meter: Meter, prefix: str, labels: tuple[str, ...], semconv: bool) -> None:
        self.labels = labels
        self.failures = FailureLog()
        self.semconv = semconv
        self.totals = CallTotals(labels)
        self.meter = meter
        self.prefix = prefix
        self.limits: LimitTotals | None = None
        self._limits_lock = threading.Lock()
        token = "{token}"
        counters: tuple[tuple[str, str, Callable[[Series], int]], ...] = (
            ("prompt_tokens", "Prompt (input) tokens, cached included.", lambda s: s.prompt),
            ("completion_tokens", "Completion (output) tokens, reasoning included.", lambda s: s.completion),
            ("total_tokens", "Total tokens.", lambda s: s.total),
            ("cached_tokens", "Prompt tokens read from the provider's cache.", lambda s: s.cached),
            ("reasoning_tokens", "Completion tokens spent on reasoning.", lambda s: s.reasoning),
        )
        for name, description, read in counters:
            meter.create_observable_counter(f"{prefix}.{name}", [self._token_callback(read)], token, description)
        meter.create_observable_counter(
            f"{prefix}.estimated_tokens",
            [self._observe_estimated],
            token,
            "Tokens counted by estimate because the response reported no usage (included in the token counters).",
        )
        meter.create_observable_counter(
            f"{prefix}.requests",
            [self._observe_requests],
            "{request}",
            "LLM calls metered, by HTTP status, outcome and how usage was obtained.",
        )
        meter.create_observable_counter(
            f"{prefix}.metering_errors",
            [self._observe_errors],
            "{error}",
            "Responses or values the middleware could not count, by kind.",
        )
        meter.create_observable_counter(
            f"{prefix}.cost",
            [self._observe_cost],
            "USD",
            "Cost of the LLM calls in USD (the middleware's pricing=); calls of unpriced models add nothing.",
        )
        self.token_usage: Histogram | None = None
        self.duration: Histogram | None = None
        self.first_chunk: Histogram | None = None
        if semconv:
            self.token_usage = meter.create_histogram(
                TOKEN_USAGE, "{token}", "Number of input and output tokens used.",
                explicit_bucket_boundaries_advisory=TOKEN_USAGE_BUCKETS,
            )
            self.duration = meter.create_histogram(
                OPERATION_DURATION, "s", "GenAI operation duration.",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            )
            self.first_chunk = meter.create_histogram(
                TIME_TO_FIRST_CHUNK,
                "s",
                "Time to receive the first chunk, measured from when the client issues the generation request "
                "to when the first chunk is received in the response stream.",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            )

    # -- request path ----------------------------------------------------------------------

    def add(self, call: CallRecord) -> None:
        self.totals.add(call)

    def add_error(self, kind: str) -> None:
        self.totals.add_error(kind)

    # -- collection (the SDK's thread) -----------------------------------------------------

    def _token_callback(self, read: Callable[[Series], int]) -> Callable[[CallbackOptions], Iterable[Observation]]:
        totals = self.totals

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            series, _ = totals.snapshot()
            return [Observation(read(s), totals.attributes(s.dims)) for s in series if s.usage_calls and read(s)]

        return observe

    def _observe_estimated(self, options: CallbackOptions) -> Iterable[Observation]:
        totals = self.totals
        series, _ = totals.snapshot()
        out = []
        for s in series:
            if s.estimated_calls and (s.est_prompt or s.est_completion):
                attrs = totals.attributes(s.dims)
                out.append(Observation(s.est_prompt, {**attrs, "type": "prompt"}))
                out.append(Observation(s.est_completion, {**attrs, "type": "completion"}))
        return out

    def _observe_requests(self, options: CallbackOptions) -> Iterable[Observation]:
        totals = self.totals
        series, _ = totals.snapshot()
        return [
            Observation(count, {**totals.attributes(s.dims), "status": str(status), "outcome": outcome, "usage": source})
            for s in series
            for (status, outcome, source), count in s.requests.items()
        ]

    def _observe_cost(self, options: CallbackOptions) -> Iterable[Observation]:
        totals = self.totals
        series, _ = totals.snapshot()
        return [Observation(s.cost, totals.attributes(s.dims)) for s in series if s.cost is not None]

    def _observe_errors(self, options: CallbackOptions) -> Iterable[Observation]:
        _, errors = self.totals.snapshot()
        return [Observation(count, {"kind": kind}) for kind, count in errors.items()]


    # -- token limits (instruments created when a middleware with limits= binds) ------------

    def limit_totals(self) -> LimitTotals:
        with self._limits_lock:
            if self.limits is None:
                self.limits = _limit_instruments(self.meter, self.prefix)
            return self.limits


def _limit_instruments(meter: Meter, prefix: str) -> LimitTotals:
    totals = LimitTotals()

    def counter(index: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(sums[index], {"limit": name}) for name, sums in totals.snapshot().items()]

        return observe

    for name, index, unit, description in (
        ("authorized_calls", 0, "{request}", "Requests a token limit let through, by limit."),
        ("limited_calls", 1, "{request}", "Requests a token limit refused with 429, by limit."),
        ("authorized_tokens", 2, "{token}", "Tokens charged to a token limit, by limit."),
    ):
        meter.create_observable_counter(f"{prefix}.limit.{name}", [counter(index)], unit, description)

    def observe_budgets(options: CallbackOptions) -> Iterable[Observation]:
        with totals.lock:
            configured = list(totals.configured)
        return [Observation(tokens, {"limit": name, "window_seconds": window}) for name, tokens, window in configured]

    meter.create_observable_gauge(
        f"{prefix}.limit.tokens", [observe_budgets], "{token}", "Configured token budget of a limit per window."
    )
    return totals


class _OTelSink:
    def __init__(self, namespace: _Namespace, server: Mapping[str, Any]) -> None:
        self._ns = namespace
        self._server = dict(server)

    def record(self, call: CallRecord) -> None:
        try:
            self._ns.add(call)
            if self._ns.semconv:
                self._record_semconv(call)
        except Exception as exc:
            self._ns.failures.failed("OpenTelemetryExporter", "record a call", exc)

    def _record_semconv(self, call: CallRecord) -> None:
        ns = self._ns
        gen_ai: dict[str, Any] = {
            "gen_ai.operation.name": operation_name(call.operation),
            "gen_ai.provider.name": OTEL_PROVIDER_NAMES.get(call.provider, call.provider) if call.provider else UNKNOWN,
        }
        if call.request_model:
            gen_ai["gen_ai.request.model"] = call.request_model
        if call.response_model:
            gen_ai["gen_ai.response.model"] = call.response_model
        if self._server:
            gen_ai.update(self._server)
        usage = call.usage
        if usage is not None and ns.token_usage is not None:
            ns.token_usage.record(usage.prompt_tokens, {**gen_ai, "gen_ai.token.type": "input"})
            ns.token_usage.record(usage.completion_tokens, {**gen_ai, "gen_ai.token.type": "output"})
        if ns.first_chunk is not None and call.streamed and call.time_to_first_chunk_s is not None:
            ns.first_chunk.record(call.time_to_first_chunk_s, gen_ai)
        if ns.duration is not None:
            error = _error_type(call)
            ns.duration.record(call.duration_s, {**gen_ai, "error.type": error} if error else gen_ai)

    def on_error(self, kind: str) -> None:
        try:
            self._ns.add_error(kind)
        except Exception as exc:
            self._ns.failures.failed("OpenTelemetryExporter", "count a metering error", exc)

    def limits_configured(self, limits: list[tuple[str, int, int]]) -> None:
        totals = self._ns.limit_totals()
        totals.configure(limits)
        for name, _tokens, _window in limits:
            totals.add(name, 0, 0, 0)

    def on_limit(self, name: str, authorized: int, limited: int, tokens: int) -> None:
        self._ns.limit_totals().add(name, authorized, limited, tokens)


class OpenTelemetryExporter:
    """Token metrics into any OpenTelemetry ``MeterProvider`` (default: the global one).

    Use it when you already run an OpenTelemetry metrics pipeline (OTLP to a collector,
    Grafana, Datadog, Honeycomb...)::

        provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())])
        app.add_middleware(LLMMetricsMiddleware, exporters=[OpenTelemetryExporter(provider)])

    ``semconv=False`` leaves out the GenAI semantic-convention instruments (for example when
    an OpenTelemetry GenAI instrumentation of your LLM client already emits them).
    ``server_address`` / ``server_port`` set ``server.address`` / ``server.port`` on them:
    the upstream LLM server, which the middleware cannot see on its own.

    ``force_flush`` and ``shutdown`` are passed to the provider when it has them (an SDK
    ``MeterProvider`` does); shutting down the exporter therefore shuts down that provider.
    """

    def __init__(
        self,
        meter_provider: MeterProvider | None = None,
        *,
        semconv: bool = True,
        server_address: str | None = None,
        server_port: int | None = None,
    ) -> None:
        if server_port is not None and (isinstance(server_port, bool) or not isinstance(server_port, int)):
            raise TypeError(f"server_port must be an int such as 443, got {server_port!r}")
        self._provider = meter_provider
        self._semconv = bool(semconv)
        self._server: dict[str, Any] = {}
        if server_address:
            self._server["server.address"] = server_address
            if server_port is not None:
                self._server["server.port"] = server_port
        self._namespaces: Namespaces[_Namespace] = Namespaces("OpenTelemetryExporter")
        self._lock = threading.Lock()
        self._shut_down = False

    @property
    def meter_provider(self) -> MeterProvider:
        """The provider in use: the one given, else the global one (looked up on each use)."""
        if self._provider is not None:
            return self._provider
        return get_meter_provider()

    def bind(self, schema: Schema) -> _OTelSink:
        labels = schema.labels
        check_reserved(labels, _RESERVED, "an attribute the OpenTelemetry exporter adds")
        prefix = instrument_prefix(schema.namespace)

        def build() -> _Namespace:
            from .._version import __version__

            meter = self.meter_provider.get_meter(schema.namespace, __version__, schema_url=SCHEMA_URL)
            return _Namespace(meter, prefix, labels, self._semconv)

        return _OTelSink(self._namespaces.bind(schema.namespace, labels, build), self._server)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        flush = getattr(self.meter_provider, "force_flush", None)
        if flush is None:
            return True
        try:
            return bool(flush(timeout_millis=timeout_millis))
        except Exception:
            logger.exception("OpenTelemetryExporter: the meter provider failed to flush")
            return False

    def shutdown(self) -> None:
        """Shut the provider down (once; later calls do nothing)."""
        with self._lock:
            if self._shut_down:
                return
            self._shut_down = True
        shutdown = getattr(self.meter_provider, "shutdown", None)
        if shutdown is None:
            return
        try:
            shutdown()
        except Exception:
            logger.exception("OpenTelemetryExporter: the meter provider failed to shut down")
