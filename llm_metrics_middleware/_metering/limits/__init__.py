"""Token limits: per key, per window, selected by ``when``, counted in a shared store.

One :class:`TokenLimit` is a budget of tokens per window for each value of its key (a
dimension, such as ``"User ID"``, or a callable of the request view). At the start of a
request the middleware asks the store how much each applicable key has used in its current
window; a key that has used its budget is refused with 429 before the app runs. A request
that passes is charged, when its call is counted, the tokens it was counted for (the
incoming response, or the app's own outgoing calls).

Why a fixed window (``limits``' ``FixedWindowRateLimiter``): tokens are known only after a
call, so every charge must be added whatever the total (a moving window refuses a hit that
would not fit, and stores one entry per token); a fixed window is one counter per key, one
``INCRBY`` with an expiry in Redis, as Kuadrant's Limitador keeps it. A window starts with
the first charge of its key and lasts ``per`` (a month is 30 days, as in ``limits``).

How far a window can overshoot: a request is admitted while its key has used less than
``tokens``, and is never cut once admitted (a stream finishes). So the tokens of the calls
admitted before the budget ran out are all charged: a window ends at most the usage of the
calls in flight at that moment above its budget (for one client sending one call at a time,
at most one call: its prompt plus its ``max_tokens``). ``estimate_prompt=True`` also
refuses a request whose estimated prompt alone would cross the budget.

The store: ``limits`` storage, ``memory://`` (one process) or ``redis://``,
``redis+sentinel://``, ``redis+cluster://`` (shared by every process). The ASGI middleware
uses the ``limits.aio`` storage so the event loop never waits on a socket. Every store call
has a timeout (``socket_timeout`` / ``socket_connect_timeout``, no retries; a query
parameter in the URI overrides them). When the store fails, requests pass (or, with
``fail_closed=True``, are answered 503), the failure is counted in
``llm_metering_errors_total{kind="limit_storage"}``, logged once per outage, and the store
is not asked again for :data:`RETRY_AFTER_FAILURE` seconds, so an outage adds no latency.

The modules, each readable alone: ``declaration`` (:class:`TokenLimit`, its windows, and
what the limiter keeps of it), ``refusal`` (the 429 / 503 answer and the remaining-tokens
headers, pure), ``store`` (the storage URI, bounded calls, the in-memory storage, failure
back-off) and ``limiter`` (:class:`TokenLimiter`: plan, check and charge, sync and async).
Everything is re-exported here: import from ``llm_metrics_middleware._metering.limits``.
"""

from __future__ import annotations

from .declaration import MAX_KEY_LENGTH, PERIODS, Applied, BoundLimit, KeySource, Per, TokenLimit, Verdict
from .limiter import TokenLimiter
from .refusal import OPENAI_HEADERS, HeaderNames, _reset_text, status_line
from .store import DEFAULT_TIMEOUT, RETRY_AFTER_FAILURE, SWEEP_INTERVAL, LimitStore

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_KEY_LENGTH",
    "OPENAI_HEADERS",
    "PERIODS",
    "RETRY_AFTER_FAILURE",
    "SWEEP_INTERVAL",
    "Applied",
    "BoundLimit",
    "HeaderNames",
    "KeySource",
    "LimitStore",
    "Per",
    "TokenLimit",
    "TokenLimiter",
    "Verdict",
    "_reset_text",
    "status_line",
]
