"""The OpenTelemetry trace a call belongs to, for the Prometheus exemplars.

Read when a call starts (the incoming request arrives, an outgoing call is sent), because by
the time the call is recorded the span may be gone: a WSGI body is iterated, and an ASGI
response finishes, after the tracing middleware around the app has ended its span. A span
started inside the app (Flask's instrumentation starts it in ``before_request``) is not
current yet when the request arrives; it is when the app starts its response, so the
drivers ask again then (:meth:`~.metered_call.MeteredCall.response_start`).

Why ``sys.modules`` and not an import: a current span can exist only if something imported
``opentelemetry.trace`` (the API that creates and activates spans lives there), so an app
that does not trace pays one dictionary lookup per call and we never import OpenTelemetry
ourselves (a tenth of a second at start, for nothing). Once the module is seen, its
``get_current_span`` is kept.

Only a valid, sampled span context is taken: an exemplar that points to a trace no backend
kept sends the user to nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

#: A call's trace: (trace id, span id), lower-case hex (32 and 16 digits), as W3C
#: ``traceparent`` and the OpenMetrics exemplar convention spell them.
TraceIds = tuple[str, str]

_get_current_span: Callable[[], Any] | None = None
#: The API's "no span" object, which get_current_span returns when none is current: the
#: usual answer, told without asking it for its context (two calls fewer per look-up).
_invalid_span: Any = None


def current_trace() -> TraceIds | None:
    """The current sampled span's ids, or None (no OpenTelemetry, no span, not sampled).

    Never raises: a broken or unexpected OpenTelemetry gives None.
    """
    global _get_current_span, _invalid_span
    get_span = _get_current_span
    if get_span is None:
        module = sys.modules.get("opentelemetry.trace")
        if module is None:
            return None
        get_span = getattr(module, "get_current_span", None)
        if get_span is None:  # the module is still being imported, or not the API we know
            return None
        _invalid_span = getattr(module, "INVALID_SPAN", None)
        _get_current_span = get_span
    try:
        span = get_span()
        if span is _invalid_span:
            return None
        context = span.get_span_context()
        if not context.is_valid or not context.trace_flags & 1:  # 1: W3C "sampled"
            return None
        return format(context.trace_id, "032x"), format(context.span_id, "016x")
    except Exception:
        return None
