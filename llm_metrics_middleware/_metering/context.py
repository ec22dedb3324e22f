"""Which incoming request an outgoing LLM call belongs to: ``contextvars``, set by the middlewares.

Both middlewares put the incoming request's :class:`MeteredCall` in :data:`CURRENT` for as
long as the app works on it: while the app is called, and, because a WSGI server iterates
the response body after the app has returned (outside the context the app ran in), around
every ``__next__`` and ``close`` of the body too. An ASGI app's streaming body is produced
inside the middleware's ``await``, in the same task (or in tasks that copy its context), so
one ``set``/``reset`` around the app covers it.

An instrumented HTTP client reads :data:`CURRENT` when an LLM call starts: inside a request
the call is counted by that middleware, with its dimensions evaluated on the incoming
request; outside any request by the exporters given to ``instrument_httpx`` (or the
transport), else not at all.

Threads: ``asyncio.to_thread``, Starlette's ``run_in_threadpool`` (FastAPI's sync
endpoints) and ``loop.run_in_executor`` under anyio copy the context; a plain
``concurrent.futures.ThreadPoolExecutor.submit`` and ``threading.Thread`` do not. Wrap the
function with :func:`carry_context` (or ``contextvars.copy_context().run``) to take the
request along.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from .dimensions import label_name

if TYPE_CHECKING:
    from .metered_call import MeteredCall

P = ParamSpec("P")
R = TypeVar("R")

#: The incoming request being served, as its per-request state; None outside requests.
CURRENT: contextvars.ContextVar[MeteredCall | None] = contextvars.ContextVar(
    "llm_metrics_middleware.request", default=None
)
#: Dimension values set by :func:`metering_context` for the calls made in its block.
VALUES: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "llm_metrics_middleware.values", default=None
)


@contextmanager
def metering_context(values: Mapping[str, str] | None = None, /, **by_label: str) -> Iterator[None]:
    """Set dimension values for the outgoing LLM calls made inside the block.

    Keys are dimension names (``{"User ID": "alice"}``) or their label form as keywords
    (``user_id="alice"``); a value set here wins over the dimension's own source. Use it in
    scripts, workers and Celery tasks, where there is no incoming request to read the
    user from, or inside a request to attribute one call differently::

        with metering_context({"User ID": job.owner}, tier="batch"):
            client.chat.completions.create(...)

    Blocks nest; the inner one's values win. Names no dimension is configured with are
    ignored (the metrics keep their fixed set of labels).
    """
    merged = dict(VALUES.get() or {})
    if values is not None and not isinstance(values, Mapping):
        raise TypeError(f"metering_context() takes a mapping of dimension name to value, got {values!r}")
    for key, value in [*(values or {}).items(), *by_label.items()]:
        if not isinstance(value, str):
            raise TypeError(f"metering_context() values are str; {key!r} is {value!r}")
        # Keyed by label so that "User ID" and user_id are one dimension.
        merged[label_name(key)] = value
    token = VALUES.set(merged)
    try:
        yield
    finally:
        VALUES.reset(token)


def carry_context(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` bound to the current context: the request (and ``metering_context`` values)
    it was wrapped in go with it into another thread.

    ``executor.submit(carry_context(work), arg)``: a plain ``ThreadPoolExecutor`` runs
    ``work`` in the worker thread's own context, where no request is known, and its LLM
    calls would count outside any request. Each wrapper copies the context once, when it
    is made; call it once (a context cannot be entered by two threads at a time).
    """
    context = contextvars.copy_context()

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return context.run(fn, *args, **kwargs)

    run.__wrapped__ = fn  # type: ignore[attr-defined]
    return run


def enter(call: MeteredCall) -> contextvars.Token[MeteredCall | None]:
    """Make ``call`` the current request; give the token back to :func:`leave`."""
    return CURRENT.set(call)


def leave(token: contextvars.Token[MeteredCall | None]) -> None:
    try:
        CURRENT.reset(token)
    except (ValueError, RuntimeError):
        # Reset from another context than the one it was set in (a server that closes the
        # body in another thread): the value set dies with that context anyway.
        pass


def current() -> MeteredCall | None:
    return CURRENT.get()


def overrides() -> dict[str, str] | None:
    return VALUES.get()
