"""What a user declares (:class:`TokenLimit`) and what the limiter keeps of it once checked.

The declaration is a frozen dataclass a user builds at import time, so every mistake in it
(an unknown window, a key that is not a dimension, two limits of one name) is raised by
:func:`bind_limits` when the middleware is built, never on a request. :class:`BoundLimit`
is the checked form the request path reads; :class:`Applied` pairs it with one request's
key, and :class:`Verdict` is what the check answers the driver.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from ..dimensions import CallContext, Source, sanitize
from ..request import RequestView

#: Window names of ``per=`` and their length in seconds (a month is 30 days, as in ``limits``).
PERIODS: Mapping[str, int] = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86_400,
    "month": 30 * 86_400,
}
#: Key values longer than this are cut (they come from requests: a key is a store key).
MAX_KEY_LENGTH = 128

KeySource = Union[str, Callable[[RequestView], "str | None"], None]
Per = Union[Literal["second", "minute", "hour", "day", "month"], int]


@dataclass(frozen=True)
class TokenLimit:
    """A budget of ``tokens`` per window ``per`` for each value of ``key``.

    ``TokenLimit("gold", tokens=500_000, per="day", key="User ID", when=is_gold)``:
    each user for whom ``is_gold(request)`` is True may use 500,000 tokens a day.

    - ``per``: ``"second"``, ``"minute"``, ``"hour"``, ``"day"``, ``"month"`` (30 days) or
      a number of seconds;
    - ``key``: a dimension name, evaluated as that dimension is (with the middleware's own
      ``Dimension`` of that name if it has one), or a callable of the request view; a
      request whose key is None (or empty) is not limited;
    - ``when``: None (every request) or a callable of the request view; the limit applies
      only where it returns True (tiers: one limit per tier, each with its own ``when``);
    - ``estimate_prompt``: also refuse a request whose estimated prompt tokens would cross
      the budget (API Management's ``estimate-prompt-tokens``); off by default.
    """

    name: str
    tokens: int = field(kw_only=True)
    per: Per = field(kw_only=True)
    key: KeySource = field(default="User ID", kw_only=True)
    when: Callable[[RequestView], bool] | None = field(default=None, kw_only=True)
    estimate_prompt: bool = field(default=False, kw_only=True)

    @property
    def window_seconds(self) -> int:
        per = self.per
        return per if isinstance(per, int) else PERIODS[per]


@dataclass(frozen=True, eq=False)
class BoundLimit:
    """A checked :class:`TokenLimit` with its store item and its key's source."""

    limit: TokenLimit
    name: str
    tokens: int
    window_seconds: int
    item: Any  # limits.RateLimitItem
    escaped_name: str
    key: Callable[[RequestView, CallContext], str | None]
    when: Callable[[RequestView], bool] | None


@dataclass(slots=True)
class Applied:
    """One limit that applies to a request, with the request's key for it."""

    bound: BoundLimit
    key: str
    #: The key in the store (``limits``' ``item.key_for(namespace, limit, key)``).
    store_key: str = ""


@dataclass(slots=True)
class Verdict:
    """What the check decided: pass (with optional headers) or refuse with this response."""

    allowed: bool
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def escape(part: str) -> str:
    """One part of a store key, free of the ``/`` that ``limits`` joins the parts with."""
    return part.replace("%", "%25").replace("/", "%2F")


def check_limits(limits: Sequence[TokenLimit]) -> None:
    """``limits=`` is a list, not one limit or a string (a common slip: name the fix)."""
    if limits is None or isinstance(limits, (str, bytes, TokenLimit)) or not hasattr(limits, "__iter__"):
        raise TypeError("limits= takes a list of TokenLimit, e.g. limits=[TokenLimit('free', tokens=10_000, per='day')]")


def _window_seconds(limit: TokenLimit) -> int:
    per = limit.per
    if isinstance(per, bool) or not isinstance(per, (int, str)):
        raise TypeError(f"TokenLimit({limit.name!r}) per= takes a window name or seconds as an int, got {per!r}")
    if isinstance(per, str):
        if per not in PERIODS:
            raise ValueError(
                f"TokenLimit({limit.name!r}) per={per!r} is not a window; use one of "
                f"{', '.join(map(repr, PERIODS))} or a number of seconds"
            )
        return PERIODS[per]
    if per < 1:
        raise ValueError(f"TokenLimit({limit.name!r}) per={per!r}: a window is at least 1 second")
    return per


def _key_source(
    limit: TokenLimit, sources: Callable[[str], Source | None], *, shared: bool, secret_set: bool
) -> Callable[[RequestView, CallContext], str | None]:
    key = limit.key
    if isinstance(key, str):
        found = sources(key)
        if found is None:
            raise ValueError(
                f"TokenLimit({limit.name!r}) key={key!r} is not a dimension; use a default name such as "
                "'User ID' or 'Subscription ID', add Dimension(" + repr(key) + ", ...) to dimensions=, "
                "or pass a callable of the request view"
            )
        if key == "Subscription ID" and shared and not secret_set:
            raise ValueError(
                f"TokenLimit({limit.name!r}) key='Subscription ID' with a shared limit_storage needs the "
                "same hash in every process: set subscription_secret= or LLM_METRICS_SUBSCRIPTION_SECRET"
            )
        return found
    if callable(key):
        fn = key

        def key_source(view: RequestView, ctx: CallContext, fn: Callable[[RequestView], str | None] = fn) -> str | None:
            return fn(view)

        return key_source
    raise TypeError(f"TokenLimit({limit.name!r}) key= takes a dimension name or a callable of the request view, got {key!r}")


def bind_limits(
    limits: list[TokenLimit], sources: Callable[[str], Source | None], *, shared: bool, secret_set: bool
) -> tuple[BoundLimit, ...]:
    """Check every declaration and bind it to its key's source and its store item.

    ``shared``: the store is shared by processes, so a hashed key (``Subscription ID``)
    must hash the same in each (``secret_set``).
    """
    from limits import RateLimitItemPerSecond

    bound: list[BoundLimit] = []
    names: set[str] = set()
    for limit in limits:
        if not isinstance(limit, TokenLimit):
            raise TypeError(f"limits= items are TokenLimit(...), got {limit!r}")
        if not isinstance(limit.name, str) or not limit.name.strip():
            raise ValueError(f"a TokenLimit needs a non-empty name (it is the 'limit' label), got {limit.name!r}")
        name = sanitize(limit.name)
        if name in names:
            raise ValueError(f"two limits are named {limit.name!r}; give each its own name")
        names.add(name)
        tokens = limit.tokens
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise ValueError(f"TokenLimit({limit.name!r}) tokens= takes a positive int, got {tokens!r}")
        seconds = _window_seconds(limit)
        key_source = _key_source(limit, sources, shared=shared, secret_set=secret_set)
        if limit.when is not None and not callable(limit.when):
            raise TypeError(f"TokenLimit({limit.name!r}) when= takes None or a callable of the request view")
        item = RateLimitItemPerSecond(tokens, seconds, namespace="LLMTOKENS")
        bound.append(BoundLimit(limit, name, tokens, seconds, item, escape(name), key_source, limit.when))
    return tuple(bound)
