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
``get_current_span`` is kept, and, when OpenTelemetry's own context functions are in
place (the default runtime context, nothing patched over them), so is the context variable
they read: the usual answer (no span is current) is then one variable and one dictionary
lookup, not the four Python calls ``get_current_span`` makes to say so. A span that is
there is still asked for through ``get_current_span``.

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
#: The current OpenTelemetry context (its context variable's ``get``) and the key of its
#: span, when get_current_span reads them the way we know; else None (ask get_current_span).
_current_context: Callable[[], Any] | None = None
_span_key: str = ""


def _direct_lookup() -> tuple[Callable[[], Any], str] | None:
    """The context variable and span key get_current_span reads, when nothing is patched
    over OpenTelemetry's own functions and its runtime context is the default one."""
    try:
        trace = sys.modules["opentelemetry.trace"]
        propagation = sys.modules["opentelemetry.trace.propagation"]
        context = sys.modules["opentelemetry.context"]
        runtime_types = sys.modules["opentelemetry.context.contextvars_context"]
        runtime = context._RUNTIME_CONTEXT
        if (
            trace.get_current_span is propagation.get_current_span
            and propagation.get_value is context.get_value
            and context.get_current.__module__ == "opentelemetry.context"
            and type(runtime) is runtime_types.ContextVarsRuntimeContext
        ):
            return runtime._current_context.get, propagation._SPAN_KEY
    except Exception:  # an OpenTelemetry laid out otherwise: ask it
        pass
    return None


def current_trace() -> TraceIds | None:
    """The current sampled span's ids, or None (no OpenTelemetry, no span, not sampled).

    Never raises: a broken or unexpected OpenTelemetry gives None.
    """
    global _get_current_span, _invalid_span, _current_context, _span_key
    current_context = _current_context
    if current_context is not None:
        try:
            if current_context().get(_span_key) is None:
                return None  # what get_current_span would say: INVALID_SPAN
        except Exception:
            return None
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
        direct = _direct_lookup()
        if direct is not None:
            _current_context, _span_key = direct
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
