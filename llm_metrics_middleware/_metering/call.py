"""What the middleware hands to exporters: one :class:`CallRecord` per LLM call.

Exporters are small sinks behind one tiny interface. A middleware calls
``exporter.bind(schema)`` once at construction, which returns a :class:`Sink`; then
``sink.record(call)`` once per metered response, on the request path. ``record`` must be
cheap and in-memory (add to counters); shipping happens in the exporter's background.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, Protocol, get_args

from .._core.usage import Usage

if TYPE_CHECKING:
    from .dimensions import Schema
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


class Sink(Protocol):
    def record(self, call: CallRecord) -> None: ...


class Exporter(Protocol):
    """What ``exporters=`` accepts."""

    def bind(self, schema: Schema) -> Sink: ...

    def force_flush(self, timeout_millis: int = 30000) -> bool: ...

    def shutdown(self) -> None: ...
