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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Union

from .._core.estimate import tokens_from_bytes
from .dimensions import CallContext, Source, sanitize
from .request import RequestView

if TYPE_CHECKING:
    from .call import CallRecord, ErrorKind

logger = logging.getLogger("llm_metrics_middleware")

_timeout: Any = getattr(asyncio, "timeout", None)

_IMPORT_HINT = "pip install 'llm-metrics-middleware[limits]'"

#: Window names of ``per=`` and their length in seconds (a month is 30 days, as in ``limits``).
PERIODS: Mapping[str, int] = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86_400,
    "month": 30 * 86_400,
}
#: Seconds a store that failed is left alone before it is asked again (requests pass or are
#: refused at once meanwhile, without waiting on a dead socket).
RETRY_AFTER_FAILURE = 1.0
#: Default timeout of every store call, in seconds.
DEFAULT_TIMEOUT = 0.25
#: Store schemes accepted by ``limit_storage`` (the Redis family has socket timeouts).
_SCHEMES = ("memory", "redis", "rediss", "redis+unix", "redis+sentinel", "redis+cluster")
#: Key values longer than this are cut (they come from requests: a key is a store key).
MAX_KEY_LENGTH = 128

KeySource = Union[str, Callable[[RequestView], "str | None"], None]
Per = Union[Literal["second", "minute", "hour", "day", "month"], int]
#: ``limit_headers=``: None, ``"openai"``, or a mapping of ``limit`` / ``remaining`` /
#: ``reset`` to header names of your own (API Management's ``remaining-tokens-header-name``).
HeaderNames = Union[Literal["openai"], Mapping[str, str], None]

#: An HTTP header name (RFC 9110 token).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

OPENAI_HEADERS: Mapping[str, str] = {
    "limit": "x-ratelimit-limit-tokens",
    "remaining": "x-ratelimit-remaining-tokens",
    "reset": "x-ratelimit-reset-tokens",
}


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


def _display(uri: str) -> str:
    """The store URI without its password, for logs and errors."""
    scheme, sep, rest = uri.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest


def _escape(part: str) -> str:
    # ``limits`` joins the identifiers of a key with "/": keep each part free of it.
    return part.replace("%", "%25").replace("/", "%2F")


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


def _reason(status: int) -> str:
    return "Too Many Requests" if status == 429 else "Service Unavailable"


def status_line(status: int) -> str:
    return f"{status} {_reason(status)}"


def _error_body(message: str, kind: str, code: str) -> bytes:
    # OpenAI's error shape, as its SDKs parse it into RateLimitError.
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


def _reset_text(seconds: float) -> str:
    """OpenAI's ``x-ratelimit-reset-tokens`` form: ``1s``, ``6m0s``, ``1h2m3s``."""
    whole = max(0, math.ceil(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _check_limits(limits: Sequence[TokenLimit]) -> None:
    if limits is None or isinstance(limits, (str, bytes, TokenLimit)) or not hasattr(limits, "__iter__"):
        raise TypeError("limits= takes a list of TokenLimit, e.g. limits=[TokenLimit('free', tokens=10_000, per='day')]")


class TokenLimiter:
    """The configured limits of one middleware and the store they count in.

    ``asynchronous`` (the ASGI middleware) builds ``limits.aio`` storage; the check is then
    :meth:`acheck`, else :meth:`check`. :meth:`plan` is pure and shared by both.
    """

    def __init__(
        self,
        limits: Sequence[TokenLimit],
        *,
        storage: str,
        asynchronous: bool,
        namespace: str,
        sources: Callable[[str], Source | None],
        fail_closed: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        headers: HeaderNames = None,
        count_error: Callable[[ErrorKind], None],
        on_limit: Callable[[str, int, int, int], None],
        subscription_secret_set: bool = True,
    ) -> None:
        _check_limits(limits)
        try:
            import limits as limits_lib  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(f"limits= needs the 'limits' package: {_IMPORT_HINT}") from exc
        if not isinstance(storage, str) or "://" not in storage:
            raise ValueError(
                f"limit_storage must be a storage URI such as 'memory://' or 'redis://localhost:6379/0', got {storage!r}"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 60:
            raise ValueError(f"limit_timeout must be seconds between 0 and 60, such as 0.25, got {timeout!r}")
        self.fail_closed = bool(fail_closed)
        self.timeout = float(timeout)
        self.header_names = self._header_names(headers)
        # Only the reset header needs the window's end on an allowed request.
        self._need_reset = self.header_names is not None and "reset" in self.header_names
        self._count_error = count_error
        self._on_limit = on_limit
        self._namespace = _escape(namespace)
        scheme = storage.split("://", 1)[0].lower().removeprefix("async+")
        self.shared = scheme != "memory"
        # The in-memory store does no I/O: the ASGI driver asks it directly, without tasks.
        self.asynchronous = asynchronous and self.shared
        self.limits = self._bind(list(limits), sources, subscription_secret_set)
        self.storage_uri = storage
        self._scheme = scheme
        if scheme not in _SCHEMES:
            raise ValueError(
                f"limit_storage={_display(storage)!r}: use 'memory://' or a Redis URI ({', '.join(s + '://' for s in _SCHEMES[1:])}); "
                "other stores of the limits library have no bounded timeout here"
            )
        self._down_until = 0.0
        self._outage = False
        self._warned_keys: set[str] = set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._thread_charges: set[concurrent.futures.Future[Any]] = set()
        self._strategy: Any = None
        try:
            self._strategy = self._build_strategy(storage, scheme)
        except ImportError as exc:
            raise ImportError(f"limit_storage={_display(storage)!r} needs redis-py: {_IMPORT_HINT}") from exc
        except Exception as exc:  # a cluster client connects when built: try again on use
            self._failed("connect", exc)

    # -- construction ----------------------------------------------------------------------

    @staticmethod
    def _header_names(headers: HeaderNames) -> dict[str, str] | None:
        if headers is None:
            return None
        if headers == "openai":
            return dict(OPENAI_HEADERS)
        if isinstance(headers, Mapping):
            unknown = set(headers) - set(OPENAI_HEADERS)
            if unknown or not headers or not all(isinstance(v, str) and _TOKEN.fullmatch(v) for v in headers.values()):
                raise ValueError(
                    "limit_headers= mapping takes header names for 'limit', 'remaining' and/or 'reset', "
                    f"e.g. {{'remaining': 'remaining-tokens'}}, got {dict(headers)!r}"
                )
            return dict(headers)
        raise ValueError(f"limit_headers= takes None, 'openai' or a mapping of header names, got {headers!r}")

    def _bind(
        self, limits: list[TokenLimit], sources: Callable[[str], Source | None], secret_set: bool
    ) -> tuple[BoundLimit, ...]:
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
            key = limit.key
            key_source: Callable[[RequestView, CallContext], str | None]
            if isinstance(key, str):
                found = sources(key)
                if found is None:
                    raise ValueError(
                        f"TokenLimit({limit.name!r}) key={key!r} is not a dimension; use a default name such as "
                        "'User ID' or 'Subscription ID', add Dimension(" + repr(key) + ", ...) to dimensions=, "
                        "or pass a callable of the request view"
                    )
                if key == "Subscription ID" and self.shared and not secret_set:
                    raise ValueError(
                        f"TokenLimit({limit.name!r}) key='Subscription ID' with a shared limit_storage needs the "
                        "same hash in every process: set subscription_secret= or LLM_METRICS_SUBSCRIPTION_SECRET"
                    )
                key_source = found
            elif callable(key):
                fn = key

                def key_source(view: RequestView, ctx: CallContext, fn: Callable[[RequestView], str | None] = fn) -> str | None:
                    return fn(view)
            else:
                raise TypeError(
                    f"TokenLimit({limit.name!r}) key= takes a dimension name or a callable of the request view, got {key!r}"
                )
            if limit.when is not None and not callable(limit.when):
                raise TypeError(f"TokenLimit({limit.name!r}) when= takes None or a callable of the request view")
            item = RateLimitItemPerSecond(tokens, seconds, namespace="LLMTOKENS")
            bound.append(BoundLimit(limit, name, tokens, seconds, item, _escape(name), key_source, limit.when))
        return tuple(bound)

    def _build_strategy(self, storage: str, scheme: str) -> Any:
        from limits.storage import storage_from_string
        from limits.strategies import FixedWindowRateLimiter

        if scheme == "memory":
            return FixedWindowRateLimiter(_memory_storage())

        options: dict[str, Any] = {}
        uri = storage.removeprefix("async+")
        if scheme.startswith(("redis", "rediss", "valkey")):
            options = {"socket_timeout": self.timeout, "socket_connect_timeout": self.timeout}
            if self.asynchronous:
                from redis.asyncio.retry import Retry as AsyncRetry
                from redis.backoff import NoBackoff

                options["retry"] = AsyncRetry(NoBackoff(), 0)
                options["implementation"] = "redispy"
            else:
                from redis.backoff import NoBackoff
                from redis.retry import Retry

                options["retry"] = Retry(NoBackoff(), 0)
        if self.asynchronous:
            from limits.aio.strategies import FixedWindowRateLimiter as AsyncFixedWindow

            return AsyncFixedWindow(storage_from_string("async+" + uri, **options))
        return FixedWindowRateLimiter(storage_from_string(uri, **options))

    # -- which limits apply (pure) ---------------------------------------------------------

    def plan(self, view: RequestView, ctx: CallContext) -> list[Applied]:
        """The limits that apply to this request, each with its key; never raises."""
        out: list[Applied] = []
        for bound in self.limits:
            try:
                if bound.when is not None and not bound.when(view):
                    continue
                value = bound.key(view, ctx)
            except Exception as exc:
                self._count_error("limit_key")
                if bound.name not in self._warned_keys:  # once per limit, not per request
                    self._warned_keys.add(bound.name)
                    logger.warning(
                        "limit %r: its key or when= raised; requests it fails on are not limited by it "
                        "(later failures are counted in llm_metering_errors_total{kind=\"limit_key\"} only)",
                        bound.name,
                        exc_info=exc,
                    )
                continue
            if value is None:
                continue
            text = value if isinstance(value, str) else str(value)
            if not text:
                continue
            if len(text) > MAX_KEY_LENGTH:
                text = text[:MAX_KEY_LENGTH]
            key = _escape(text)
            out.append(Applied(bound, key, bound.item.key_for(self._namespace, bound.escaped_name, key)))
        return out

    # -- the store -------------------------------------------------------------------------

    def _store_available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _skipped(self) -> None:
        """A request not checked (or a call not charged) while the store is left alone."""
        self._count_error("limit_storage")

    def _failed(self, what: str, exc: BaseException | None) -> None:
        self._count_error("limit_storage")
        with self._lock:
            self._down_until = time.monotonic() + RETRY_AFTER_FAILURE
            first = not self._outage
            self._outage = True
        if first:
            logger.warning(
                "llm-metrics: the limit store %s failed to %s (%s); requests %s until it answers again",
                _display(self.storage_uri),
                what,
                exc.__class__.__name__ if exc is not None else "skipped",
                "are refused with 503" if self.fail_closed else "pass unlimited",
            )

    def _recovered(self) -> None:
        if self._outage:
            with self._lock:
                was, self._outage = self._outage, False
            if was:
                logger.warning("llm-metrics: the limit store %s answers again", _display(self.storage_uri))

    def _unavailable(self) -> Verdict:
        if not self.fail_closed:
            return Verdict(True)
        body = _error_body(
            "The token limit store is unavailable, so the request could not be checked. Try again shortly.",
            "service_unavailable",
            "limit_storage_unavailable",
        )
        return Verdict(False, 503, [("retry-after", "1")], body)

    def _cost(self, applied: Applied, view: RequestView) -> int:
        if applied.bound.limit.estimate_prompt:
            return max(1, tokens_from_bytes(view.prompt_bytes))
        return 1

    def check(self, view: RequestView, plan: list[Applied]) -> Verdict:
        """Ask the (synchronous) store about every applicable limit; never raises."""
        if not self._store_available():
            self._skipped()
            return self._unavailable()
        try:
            storage = self._store().storage
            used = [storage.get(a.store_key) for a in plan]
            resets: list[float | None] = [None] * len(plan)
            exhausted = self._exhausted(view, plan, used)
            if exhausted or self._need_reset:
                for i, applied in enumerate(plan):
                    if i in exhausted or self._need_reset:
                        resets[i] = storage.get_expiry(applied.store_key)
        except Exception as exc:
            self._failed("answer", exc)
            return self._unavailable()
        self._recovered()
        return self._decide(view, plan, used, resets, exhausted)

    async def acheck(self, view: RequestView, plan: list[Applied]) -> Verdict:
        """:meth:`check` for the ``limits.aio`` store, bounded by the timeout; never raises."""
        if not self.asynchronous:
            return self.check(view, plan)
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._loop is not None and self.shared:
                # redis.asyncio connections belong to the loop that opened them: a new loop
                # (a server restarted in process, tests) needs its own client.
                self._strategy = None
            self._loop = loop
        if not self._store_available():
            self._skipped()
            return self._unavailable()
        keys = [a.store_key for a in plan]
        need_reset = self._need_reset

        async def ask() -> tuple[list[int], set[int], list[float | None]]:
            storage = self._store().storage
            if len(keys) == 1:  # the usual case: no gather, no task
                used = [await storage.get(keys[0])]
            else:
                used = list(await asyncio.gather(*(storage.get(k) for k in keys)))
            exhausted = self._exhausted(view, plan, used)
            resets: list[float | None] = [None] * len(plan)
            if exhausted or need_reset:
                wanted = [i for i in range(len(plan)) if need_reset or i in exhausted]
                got = await asyncio.gather(*(storage.get_expiry(keys[i]) for i in wanted))
                for i, value in zip(wanted, got, strict=True):
                    resets[i] = value
            return used, exhausted, resets

        try:
            used, exhausted, resets = await self._bounded(ask())
        except Exception as exc:  # TimeoutError included
            self._failed("answer", exc)
            return self._unavailable()
        self._recovered()
        return self._decide(view, plan, used, resets, exhausted)

    def _store(self) -> Any:
        """The strategy over the store, built now if building it failed before (raises then)."""
        strategy = self._strategy
        if strategy is None:
            strategy = self._strategy = self._build_strategy(self.storage_uri, self._scheme)
        return strategy

    async def _bounded(self, awaitable: Any) -> Any:
        # The socket timeouts bound every Redis call; this bounds the whole exchange too
        # (a DNS lookup, a cluster's redirects). The in-memory store needs no guard.
        if not self.shared:
            return await awaitable
        if _timeout is not None:  # Python 3.11+: no task per call, unlike wait_for
            async with _timeout(self.timeout * 2):
                return await awaitable
        return await asyncio.wait_for(awaitable, self.timeout * 2)

    def _exhausted(self, view: RequestView, plan: list[Applied], used: list[int]) -> set[int]:
        out: set[int] = set()
        for i, (applied, count) in enumerate(zip(plan, used, strict=True)):
            if count + self._cost(applied, view) > applied.bound.tokens:
                out.add(i)
        return out

    def _decide(
        self, view: RequestView, plan: list[Applied], used: list[int], resets: list[float | None], exhausted: set[int]
    ) -> Verdict:
        now = time.time()
        if exhausted:
            retry = 1
            worst = plan[min(exhausted)]
            for i in exhausted:
                reset = resets[i]
                wait = (reset - now) if reset is not None else plan[i].bound.window_seconds
                retry = max(retry, math.ceil(wait))
                self._emit(plan[i].bound.name, 0, 1, 0)
            bound = worst.bound
            per = bound.limit.per if isinstance(bound.limit.per, str) else f"{bound.window_seconds} s"
            cost = self._cost(worst, view)
            if cost > bound.tokens:
                message = (
                    f"Token limit {bound.name!r}: the prompt alone is about {cost} tokens, more than the "
                    f"{bound.tokens} tokens per {per} this limit allows. Send a shorter prompt."
                )
            else:
                message = (
                    f"Token limit {bound.name!r} reached: {bound.tokens} tokens per {per}, "
                    f"{used[min(exhausted)]} used" + (f", about {cost} more asked" if cost > 1 else "")
                    + f". Try again in {retry} s."
                )
            headers = [("retry-after", str(retry)), *self._headers(plan, used, resets, now)]
            return Verdict(False, 429, headers, _error_body(message, "tokens", "rate_limit_exceeded"))
        for applied in plan:
            self._emit(applied.bound.name, 1, 0, 0)
        return Verdict(True, 200, self._headers(plan, used, resets, now))

    def _headers(self, plan: list[Applied], used: list[int], resets: list[float | None], now: float) -> list[tuple[str, str]]:
        names = self.header_names
        if names is None or not plan:
            return []
        # The most constraining limit: the one with the fewest tokens left.
        i = min(range(len(plan)), key=lambda j: plan[j].bound.tokens - used[j])
        bound = plan[i].bound
        out: list[tuple[str, str]] = []
        if "limit" in names:
            out.append((names["limit"], str(bound.tokens)))
        if "remaining" in names:
            out.append((names["remaining"], str(max(0, bound.tokens - used[i]))))
        if "reset" in names:
            reset = resets[i]
            wait = (reset - now) if reset is not None and used[i] else bound.window_seconds
            out.append((names["reset"], _reset_text(wait)))
        return out

    def _emit(self, name: str, authorized: int, limited: int, tokens: int) -> None:
        try:
            self._on_limit(name, authorized, limited, tokens)
        except Exception:
            logger.exception("llm-metrics: an exporter failed to count a limit event")

    # -- charging --------------------------------------------------------------------------

    def charge(self, call: CallRecord) -> None:
        """Add the call's tokens to every key its request was checked for; never raises."""
        view = call.request
        usage = call.usage
        if view is None or usage is None:
            return
        plan: list[Applied] | None = view.limits
        tokens = usage.total_tokens
        if not plan or tokens <= 0:
            return
        try:
            if self.asynchronous:
                self._charge_async(plan, tokens)
            else:
                self._charge_sync(plan, tokens)
        except Exception as exc:
            self._failed("add tokens", exc)

    def _charge_sync(self, plan: list[Applied], tokens: int) -> None:
        if not self._store_available():
            self._skipped()
            return
        storage = self._store().storage
        for applied in plan:
            storage.incr(applied.store_key, applied.bound.window_seconds, amount=tokens)
            self._emit(applied.bound.name, 0, 0, tokens)
        self._recovered()

    def _charge_async(self, plan: list[Applied], tokens: int) -> None:
        coro = self._acharge(plan, tokens)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            task: asyncio.Future[Any] = loop.create_task(coro)
        elif self._loop is not None and not self._loop.is_closed():
            # An outgoing call counted in a worker thread: hand the charge to the server's loop.
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
            self._thread_charges.add(future)
            future.add_done_callback(self._thread_charges.discard)
            return
        else:
            coro.close()
            self._skipped()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _acharge(self, plan: list[Applied], tokens: int) -> None:
        if not self._store_available():
            self._skipped()
            return
        try:
            storage = self._store().storage
            if len(plan) == 1:
                await self._bounded(storage.incr(plan[0].store_key, plan[0].bound.window_seconds, amount=tokens))
            else:
                await self._bounded(
                    asyncio.gather(*(storage.incr(a.store_key, a.bound.window_seconds, amount=tokens) for a in plan))
                )
        except Exception as exc:
            self._failed("add tokens", exc)
            return
        for applied in plan:
            self._emit(applied.bound.name, 0, 0, tokens)
        self._recovered()

    async def drain(self) -> None:
        """Wait for the charges still on their way to the store (tests, shutdown)."""
        while self._tasks or self._thread_charges:
            pending = [*self._tasks, *(asyncio.wrap_future(f) for f in list(self._thread_charges))]
            await asyncio.gather(*pending, return_exceptions=True)

    def _clients(self) -> list[Any]:
        # The redis-py clients behind the store: a plain one, or a Sentinel's master, replica
        # and the sentinels themselves (``limits`` keeps them on its storage or its bridge).
        storage = getattr(self._strategy, "storage", None)
        holder = getattr(storage, "bridge", storage)
        found = [getattr(holder, name, None) for name in ("storage", "storage_replica", "storage_slave")]
        found.extend(getattr(getattr(holder, "sentinel", None), "sentinels", ()))
        return [client for client in found if client is not None and not isinstance(client, (str, int))]

    async def aclose(self) -> None:
        """Close the asynchronous store's connections (call it in the loop that used them)."""
        await self.drain()
        for client in self._clients():
            close = getattr(client, "aclose", None)
            if close is not None and self.asynchronous:
                await close()

    def close(self) -> None:
        """Close the synchronous store's connections."""
        if self.asynchronous:
            return
        for client in self._clients():
            close = getattr(client, "close", None)
            if close is not None:
                close()

    def describe(self) -> list[tuple[str, int, int]]:
        """``(name, tokens, window seconds)`` of every limit: the ``llm_limit_tokens`` gauge."""
        return [(b.name, b.tokens, b.window_seconds) for b in self.limits]


#: How often the in-memory store drops the counters of windows that have ended.
SWEEP_INTERVAL = 1.0

_MEMORY_STORAGE: Any = None


def _memory_storage() -> Any:
    """``limits``' in-memory storage without its expiry timer.

    ``limits.storage.MemoryStorage`` starts a new ``threading.Timer`` thread whenever the
    last one (10 ms) has finished, so under steady traffic every few requests pay for
    starting a thread (about 200 µs per request here, measured by ``bench/limits.py``).
    Reading a counter already drops it once its window is over; this subclass also sweeps
    the ended windows at most once per :data:`SWEEP_INTERVAL`, on the charge path, so
    memory stays bounded by the keys active in one window.
    """
    global _MEMORY_STORAGE
    if _MEMORY_STORAGE is None:
        from limits.storage import MemoryStorage

        class SweptMemoryStorage(MemoryStorage):
            def __init__(self) -> None:
                super().__init__()
                self._next_sweep = 0.0

            def incr(self, key: str, expiry: float, amount: int = 1) -> int:
                now = time.time()
                if now >= self._next_sweep:
                    self._next_sweep = now + SWEEP_INTERVAL
                    for old, ends in list(self.expirations.items()):
                        if ends <= now:
                            self.get(old)
                self.get(key)
                with self.locks[key]:
                    self.storage[key] += amount
                    if self.storage[key] == amount:
                        self.expirations[key] = now + expiry
                return self.storage.get(key, 0)

        _MEMORY_STORAGE = SweptMemoryStorage
    return _MEMORY_STORAGE()
