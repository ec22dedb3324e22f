"""The contract between the middleware and its exporters, and the closed sets they share.

Exporters are small sinks behind one tiny interface. A middleware calls
``exporter.bind(schema)`` once at construction (a :class:`Schema`: the namespace and the
dimensions' names and labels), which returns a :class:`Sink`; then ``sink.record(call)``
once per metered LLM call (a :class:`CallRecord`), on the request path, and
``sink.on_error(kind)`` (if the sink has it) once per thing the middleware could not count.
Both must be cheap and in-memory (add to counters); shipping happens in the exporter's
background. README section "Writing an exporter" shows a whole one.

The closed sets (:data:`Outcome`, :data:`UsageSource`, :data:`ErrorKind`) are label values,
so they are ``Literal`` types: mypy checks every place that names one, and
``tests/test_vocabulary.py`` checks the README's lists against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, Protocol, TypeGuard, get_args

from .._core.usage import Usage

if TYPE_CHECKING:
    from .request import RequestView

#: How a metered call ended (the ``outcome`` label).
Outcome = Literal["completed", "disconnected", "error"]
COMPLETED: Final = "completed"
DISCONNECTED: Final = "disconnected"
ERROR: Final = "error"
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)

#: How the token counts of a call were obtained (the ``usage`` label).
UsageSource = Literal["reported", "estimated", "none"]
REPORTED: Final = "reported"  # the provider reported usage in the response
ESTIMATED: Final = "estimated"  # the response had none; counted from the streamed text
NO_USAGE: Final = "none"  # nothing counted (error status, unreadable body, estimates off)
USAGE_SOURCES: tuple[UsageSource, ...] = get_args(UsageSource)

#: What the middleware could not count (the ``kind`` label of ``llm_metering_errors_total``).
#: The first six say why a response body was not read (``CallRecord.parse_error``); the core
#: names them, and ``tests/test_vocabulary.py`` fails when it names one not listed here.
ErrorKind = Literal[
    "malformed",  # not JSON / not the SSE or NDJSON it claimed to be
    "truncated",  # the body ended inside a JSON value or event
    "invalid_usage",  # a usage object with a count that is not a sane non-negative integer
    "too_large",  # a value or event past the size caps (16 KB captured per value)
    "decompression_bomb",  # past 1 GiB out, or 200:1 once past 1 MiB
    "bad_compression",  # a compressed body that did not decompress, or ended early
    "series_overflow",  # a new dimension combination past max_series: exported as __overflow__
    "unpriced_model",  # pricing= has no price for a model (counted once per model)
    "export",  # an exporter raised from record() or on_error()
    "dimension",  # a dimension's value callable raised: exported as "unknown"
    "limit_storage",  # the token-limit store failed or timed out: the request was not checked or not charged
    "limit_key",  # a token limit's key or when= raised: the request was not limited by it
    "internal",  # a bug of ours, caught before it reached the app
]
ERROR_KINDS: tuple[ErrorKind, ...] = get_args(ErrorKind)


def is_error_kind(value: str) -> TypeGuard[ErrorKind]:
    return value in ERROR_KINDS


#: Where a call was read: the incoming response (the app proxies or answers with the
#: provider's body) or an outgoing call the app made itself through an instrumented client.
Origin = Literal["incoming", "outgoing"]


@dataclass(slots=True)
class CallRecord:
    """One metered LLM call. Exporters read it and must not change it (it is shared
    by every exporter of the middleware; not frozen only because frozen dataclasses are
    slow to build on the request path)."""

    #: Dimension values, in the order of ``schema.names``; sanitised and capped.
    dimensions: tuple[str, ...]
    usage: Usage | None
    usage_source: UsageSource
    provider: str | None
    operation: str | None
    request_model: str | None
    response_model: str | None
    status: int
    outcome: Outcome
    streamed: bool
    duration_s: float
    #: Seconds from the request to the first body bytes of a streamed response.
    time_to_first_chunk_s: float | None
    #: Why the body could not be read (``malformed``, ``invalid_usage``...), or None.
    parse_error: str | None = None
    #: Where the call was read.
    origin: Origin = "incoming"
    #: The incoming request the call belongs to, for sinks that read their own keys from
    #: it (a 3scale credential); None for a call made outside any request.
    request: RequestView | None = None
    #: Price of the call in USD when ``pricing=`` knows the model, else None.
    cost_usd: float | None = None
    #: The OpenTelemetry trace the call was made in, when tracing was active and the span
    #: sampled (read when the call started): trace id and span id in lower-case hex (32 and
    #: 16 digits), else None. The Prometheus exporter's exemplars point to it.
    trace_id: str | None = None
    span_id: str | None = None


@dataclass(frozen=True, slots=True)
class Schema:
    """What an exporter is told about the middleware it serves, once, at ``bind``.

    Read-only: the metric namespace, and the configured dimensions in the order of
    :attr:`CallRecord.dimensions`, by name as configured (``"User ID"``: Azure's custom
    dimension keys) and as label names (``user_id``: Prometheus labels, OpenTelemetry
    attribute keys). Build one yourself to test an exporter without a middleware.
    """

    namespace: str
    names: tuple[str, ...]
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.labels):
            raise ValueError(f"a Schema needs one label per name, got names {self.names} and labels {self.labels}")


class Sink(Protocol):
    """What ``Exporter.bind`` returns; called on the request path, so in-memory work only.

    A sink may also define ``on_error(self, kind: ErrorKind) -> None`` (see
    :class:`ErrorSink`): it is then told each thing the middleware could not count. An
    exception from either method is caught, logged once per sink and kind, and counted as
    ``export``; it never reaches the app.
    """

    def record(self, call: CallRecord) -> None: ...


class ErrorSink(Sink, Protocol):
    """A :class:`Sink` that also counts the middleware's errors (``llm_metering_errors_total``)."""

    def on_error(self, kind: ErrorKind) -> None: ...


class Exporter(Protocol):
    """What ``exporters=`` accepts: ``bind`` once per middleware, then flush and shut down
    at the end of the process (both must return within their timeout, never hang)."""

    def bind(self, schema: Schema) -> Sink: ...

    def force_flush(self, timeout_millis: int = 30000) -> bool: ...

    def shutdown(self) -> None: ...
