"""One middleware namespace in the Azure exporter: its provider, instruments and interval sums.

The request path must stay at a few microseconds, and the OpenTelemetry SDK's ``add`` costs
more than that per instrument. So a call only adds to plain sums (:class:`.totals.CallTotals`)
and the SDK instruments are fed once per export interval from those sums, by a callback
the SDK runs before it reads them. What ``bind`` hands the metering (the exporter's sink,
in :mod:`.azure`) adds to these sums.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider

from .._metering.call import CallRecord
from .._metering.failures import FailureLog
from .azure_names import (
    DRAIN_INSTRUMENT,
    KIND,
    LIMIT,
    LIMIT_COUNTERS,
    LIMIT_GAUGE,
    OUTCOME,
    STATUS_CODE,
    TOKEN_TYPE,
    WINDOW_SECONDS,
)
from .totals import CallTotals, LimitTotals

logger = logging.getLogger("llm_metrics_middleware")


#: Timings kept per export interval before the request path records them into the SDK
#: histograms itself (memory bound for very high request rates).
MAX_PENDING_TIMINGS = 100_000


class AzureNamespace:
    """One middleware namespace: its own private ``MeterProvider`` (so the Views that give
    every namespace the same metric names never conflict), and the sums of the current
    export interval.

    The request path only adds to plain dicts under a lock (a few microseconds). The SDK
    instruments are fed from those sums by a callback that the SDK runs at the start of
    every collection (periodic export, flush, shutdown), before it reads the instruments:
    one ``add`` per dimension combination per interval instead of several per call.
    """

    def __init__(self, namespace: str, names: tuple[str, ...], provider: MeterProvider) -> None:
        from .._version import __version__

        self.names = names
        self.provider = provider
        self.totals = CallTotals(names)
        self.failures = FailureLog()
        self._timing_lock = threading.Lock()
        self._timings: list[tuple[tuple[str, ...], float, float | None]] = []
        meter = provider.get_meter(namespace, __version__)
        self.prompt = meter.create_counter("prompt_tokens", "{token}")
        self.completion = meter.create_counter("completion_tokens", "{token}")
        self.total = meter.create_counter("total_tokens", "{token}")
        self.cached = meter.create_counter("cached_tokens", "{token}")
        self.reasoning = meter.create_counter("reasoning_tokens", "{token}")
        self.estimated = meter.create_counter("estimated_tokens", "{token}")
        self.requests = meter.create_counter("requests", "{request}")
        self.errors = meter.create_counter("metering_errors", "{error}")
        self.cost = meter.create_counter("cost", "USD")
        self.duration = meter.create_histogram("request_duration", "s")
        self.first_chunk = meter.create_histogram("time_to_first_chunk", "s")
        # Reports nothing itself; see the class docstring.
        meter.create_observable_gauge(DRAIN_INSTRUMENT, callbacks=[self._drain_callback])
        self.limits = LimitTotals()
        self.limit_counters = [
            meter.create_counter(name, "{token}" if name.endswith("tokens") else "{request}") for name in LIMIT_COUNTERS
        ]
        meter.create_observable_gauge(LIMIT_GAUGE[0], callbacks=[self._observe_budgets], unit="{token}")

    # -- request path ----------------------------------------------------------------------

    def add(self, call: CallRecord) -> None:
        self.totals.add(call)
        ttfc = call.time_to_first_chunk_s if call.streamed else None
        with self._timing_lock:
            if len(self._timings) < MAX_PENDING_TIMINGS:
                self._timings.append((call.dimensions, call.duration_s, ttfc))
                return
        attrs = self.totals.attributes(call.dimensions)  # very busy interval: record directly
        self.duration.record(call.duration_s, attrs)
        if ttfc is not None:
            self.first_chunk.record(ttfc, attrs)

    def add_error(self, kind: str) -> None:
        self.totals.add_error(kind)

    # -- collection ------------------------------------------------------------------------

    def _drain_callback(self, options: CallbackOptions) -> Iterable[Observation]:
        try:
            self.drain()
        except Exception:
            logger.exception("AzureMonitorExporter failed to hand the interval's sums to the SDK")
        return ()

    def _observe_budgets(self, options: CallbackOptions) -> Iterable[Observation]:
        with self.limits.lock:
            configured = list(self.limits.configured)
        return [Observation(tokens, {LIMIT: name, WINDOW_SECONDS: str(window)}) for name, tokens, window in configured]

    def drain(self) -> None:
        """Move the interval's sums into the SDK instruments (runs in the export thread)."""
        for name, sums in self.limits.take().items():
            for counter, value in zip(self.limit_counters, sums, strict=True):
                if value:
                    counter.add(value, {LIMIT: name})
        series, errors = self.totals.take()
        with self._timing_lock:
            timings, self._timings = self._timings, []
        attributes = self.totals.attributes
        for dims, s in series.items():
            attrs = attributes(dims)
            if s.prompt:
                self.prompt.add(s.prompt, attrs)
            if s.completion:
                self.completion.add(s.completion, attrs)
            if s.total:
                self.total.add(s.total, attrs)
            if s.cached:
                self.cached.add(s.cached, attrs)
            if s.reasoning:
                self.reasoning.add(s.reasoning, attrs)
            if s.est_prompt:
                self.estimated.add(s.est_prompt, {**attrs, TOKEN_TYPE: "prompt"})
            if s.est_completion:
                self.estimated.add(s.est_completion, {**attrs, TOKEN_TYPE: "completion"})
            if s.cost:
                self.cost.add(s.cost, attrs)
            # Requests are summed by (dims, status, outcome): the usage source is not a dimension here.
            by_status: dict[tuple[int, str], int] = {}
            for (status, outcome, _usage), count in s.requests.items():
                by_status[status, outcome] = by_status.get((status, outcome), 0) + count
            for (status, outcome), count in by_status.items():
                self.requests.add(count, {**attrs, STATUS_CODE: str(status), OUTCOME: outcome})
        for dims, duration, ttfc in timings:
            attrs = attributes(dims)
            self.duration.record(duration, attrs)
            if ttfc is not None:
                self.first_chunk.record(ttfc, attrs)
        for kind, count in errors.items():
            self.errors.add(count, {KIND: kind})
