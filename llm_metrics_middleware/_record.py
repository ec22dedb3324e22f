"""What the middleware hands to exporters: one :class:`CallRecord` per LLM call.

Exporters are small sinks behind one tiny interface. A middleware calls
``exporter.bind(schema)`` once at construction, which returns a :class:`Sink`; then
``sink.record(call)`` once per metered response, on the request path. ``record`` must be
cheap and in-memory (add to counters); shipping happens in the exporter's background.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ._usage import Usage

if TYPE_CHECKING:
    from ._dimensions import Schema

#: Outcomes of a metered request.
COMPLETED = "completed"
DISCONNECTED = "disconnected"
ERROR = "error"

#: How the token counts of a call were obtained.
REPORTED = "reported"  # the provider reported usage in the response
ESTIMATED = "estimated"  # the response had none; counted from the streamed text
NO_USAGE = "none"  # nothing counted (error status, unreadable body, estimates off)


@dataclass(slots=True)
class CallRecord:
    """One metered LLM call. Exporters read it and must not change it (it is shared
    by every exporter of the middleware; not frozen only because frozen dataclasses are
    slow to build on the request path)."""

    #: Dimension values, in the order of ``schema.names``; sanitised and capped.
    dimensions: tuple[str, ...]
    usage: Usage | None
    #: :data:`REPORTED`, :data:`ESTIMATED` or :data:`NO_USAGE`.
    usage_source: str
    provider: str | None
    operation: str | None
    request_model: str | None
    response_model: str | None
    status: int
    #: :data:`COMPLETED`, :data:`DISCONNECTED` or :data:`ERROR`.
    outcome: str
    streamed: bool
    duration_s: float
    #: Seconds from the request to the first body bytes of a streamed response.
    time_to_first_chunk_s: float | None
    #: Why the body could not be read (``malformed``, ``invalid_usage``...), or None.
    parse_error: str | None = None


class Sink(Protocol):
    def record(self, call: CallRecord) -> None: ...


class Exporter(Protocol):
    """What ``exporters=`` accepts."""

    def bind(self, schema: Schema) -> Sink: ...

    def force_flush(self, timeout_millis: int = 30000) -> bool: ...

    def shutdown(self) -> None: ...
