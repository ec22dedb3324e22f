"""Logging a failure of exporter code once, not a traceback per request.

A broken exporter fails on every call: logging each one would flood the host app's logs
with the same traceback and cost more than the request. :class:`FailureLog` logs the first
failure of each kind (who failed, doing what, with which exception type) at ERROR with
its traceback, and later ones at DEBUG. The set of kinds is bounded by the code (sinks x
methods x exception types), not by the traffic.
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger("llm_metrics_middleware")

#: Kinds remembered at most; past this every failure is logged at DEBUG (memory stays bounded
#: even if an exporter raises a new exception class on every call).
MAX_KINDS = 256


class FailureLog:
    """Remembers which failures were logged; thread-safe."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    def failed(self, who: str, doing: str, exc: BaseException) -> None:
        """Log that ``who`` raised ``exc`` while ``doing`` something; never raises."""
        key = (who, doing, type(exc).__qualname__)
        with self._lock:
            first = key not in self._seen and len(self._seen) < MAX_KINDS
            if first:
                self._seen.add(key)
        if first:
            logger.error(
                "%s failed to %s; the request is unaffected (later failures like this one are logged at DEBUG)",
                who,
                doing,
                exc_info=exc,
            )
        else:
            logger.debug("%s failed to %s: %r", who, doing, exc)
