"""The limiter: which limits apply to a request, the check before the app, the charge after.

One :class:`TokenLimiter` per middleware. :meth:`~TokenLimiter.plan` is pure and shared by
both drivers; the check is :meth:`~TokenLimiter.check` (WSGI, or the in-memory store) or
:meth:`~TokenLimiter.acheck` (ASGI with a shared store, so the event loop never waits on a
socket), and the charge runs inline or as a task on the server's loop. Nothing here raises
into a request: a key that fails is skipped and counted (``limit_key``), a store that fails
is handled by :class:`~.store.LimitStore`'s back-off.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..._core.estimate import tokens_from_bytes
from ..dimensions import CallContext, Source
from ..request import RequestView
from .declaration import MAX_KEY_LENGTH, Applied, BoundLimit, TokenLimit, Verdict, bind_limits, check_limits, escape
from .refusal import HeaderNames, header_names, remaining_headers, too_many, unavailable
from .store import DEFAULT_TIMEOUT, IMPORT_HINT, LimitStore, store_scheme

if TYPE_CHECKING:
    from ..call import CallRecord, ErrorKind

logger = logging.getLogger("llm_metrics_middleware")


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
        check_limits(limits)
        try:
            import limits as limits_lib  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(f"limits= needs the 'limits' package: {IMPORT_HINT}") from exc
        scheme = store_scheme(storage, timeout)
        self.fail_closed = bool(fail_closed)
        self.header_names = header_names(headers)
        # Only the reset header needs the window's end on an allowed request.
        self._need_reset = self.header_names is not None and "reset" in self.header_names
        self._count_error = count_error
        self._on_limit = on_limit
        self._namespace = escape(namespace)
        self.limits: tuple[BoundLimit, ...] = bind_limits(
            list(limits), sources, shared=scheme != "memory", secret_set=subscription_secret_set
        )
        self._warned_keys: set[str] = set()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._thread_charges: set[concurrent.futures.Future[Any]] = set()
        self.store = LimitStore(
            storage, scheme, timeout=timeout, asynchronous=asynchronous, fail_closed=self.fail_closed, count_error=count_error
        )
        self.shared = self.store.shared
        self.asynchronous = self.store.asynchronous

    def _store(self) -> Any:
        """The strategy over the store (tests read its counters through it)."""
        return self.store.strategy()

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
            key = escape(text)
            out.append(Applied(bound, key, bound.item.key_for(self._namespace, bound.escaped_name, key)))
        return out

    # -- the check -------------------------------------------------------------------------

    def check(self, view: RequestView, plan: list[Applied]) -> Verdict:
        """Ask the (synchronous) store about every applicable limit; never raises."""
        store = self.store
        if not store.ready():
            return unavailable(self.fail_closed)
        try:
            storage = store.strategy().storage
            used = [storage.get(a.store_key) for a in plan]
            exhausted = self._exhausted(view, plan, used)
            resets: list[float | None] = [None] * len(plan)
            for i in self._reset_wanted(plan, exhausted):
                resets[i] = storage.get_expiry(plan[i].store_key)
        except Exception as exc:
            store.failed("answer", exc)
            return unavailable(self.fail_closed)
        store.recovered()
        return self._decide(view, plan, used, resets, exhausted)

    async def acheck(self, view: RequestView, plan: list[Applied]) -> Verdict:
        """:meth:`check` for the ``limits.aio`` store, bounded by the timeout; never raises."""
        if not self.asynchronous:
            return self.check(view, plan)
        store = self.store
        store.use_loop(asyncio.get_running_loop())
        if not store.ready():
            return unavailable(self.fail_closed)
        keys = [a.store_key for a in plan]

        async def ask() -> tuple[list[int], set[int], list[float | None]]:
            storage = store.strategy().storage
            if len(keys) == 1:  # the usual case: no gather, no task
                used = [await storage.get(keys[0])]
            else:
                used = list(await asyncio.gather(*(storage.get(k) for k in keys)))
            exhausted = self._exhausted(view, plan, used)
            resets: list[float | None] = [None] * len(plan)
            wanted = self._reset_wanted(plan, exhausted)
            if wanted:
                got = await asyncio.gather(*(storage.get_expiry(keys[i]) for i in wanted))
                for i, value in zip(wanted, got, strict=True):
                    resets[i] = value
            return used, exhausted, resets

        try:
            used, exhausted, resets = await store.bounded(ask())
        except Exception as exc:  # TimeoutError included
            store.failed("answer", exc)
            return unavailable(self.fail_closed)
        store.recovered()
        return self._decide(view, plan, used, resets, exhausted)

    def _cost(self, applied: Applied, view: RequestView) -> int:
        if applied.bound.limit.estimate_prompt:
            return max(1, tokens_from_bytes(view.prompt_bytes))
        return 1

    def _exhausted(self, view: RequestView, plan: list[Applied], used: list[int]) -> set[int]:
        out: set[int] = set()
        for i, (applied, count) in enumerate(zip(plan, used, strict=True)):
            if count + self._cost(applied, view) > applied.bound.tokens:
                out.add(i)
        return out

    def _reset_wanted(self, plan: list[Applied], exhausted: set[int]) -> list[int]:
        """The limits whose window end is needed: the refused ones (Retry-After), or all for the reset header."""
        return [i for i in range(len(plan)) if self._need_reset or i in exhausted]

    def _decide(
        self, view: RequestView, plan: list[Applied], used: list[int], resets: list[float | None], exhausted: set[int]
    ) -> Verdict:
        now = time.time()
        headers = remaining_headers(self.header_names, plan, used, resets, now)
        if exhausted:
            retry = 1
            for i in exhausted:
                reset = resets[i]
                wait = (reset - now) if reset is not None else plan[i].bound.window_seconds
                retry = max(retry, math.ceil(wait))
                self._emit(plan[i].bound.name, 0, 1, 0)
            worst = min(exhausted)
            return too_many(plan[worst].bound, used[worst], self._cost(plan[worst], view), retry, headers)
        for applied in plan:
            self._emit(applied.bound.name, 1, 0, 0)
        return Verdict(True, 200, headers)

    def _emit(self, name: str, authorized: int, limited: int, tokens: int) -> None:
        try:
            self._on_limit(name, authorized, limited, tokens)
        except Exception:
            logger.exception("llm-metrics: an exporter failed to count a limit event")

    # -- the charge ------------------------------------------------------------------------

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
            self.store.failed("add tokens", exc)

    def _charge_sync(self, plan: list[Applied], tokens: int) -> None:
        if not self.store.ready():
            return
        storage = self.store.strategy().storage
        for applied in plan:
            storage.incr(applied.store_key, applied.bound.window_seconds, amount=tokens)
            self._emit(applied.bound.name, 0, 0, tokens)
        self.store.recovered()

    def _charge_async(self, plan: list[Applied], tokens: int) -> None:
        coro = self._acharge(plan, tokens)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        server_loop = self.store.loop
        if loop is not None:
            task: asyncio.Future[Any] = loop.create_task(coro)
        elif server_loop is not None and not server_loop.is_closed():
            # An outgoing call counted in a worker thread: hand the charge to the server's loop.
            future = asyncio.run_coroutine_threadsafe(coro, server_loop)
            self._thread_charges.add(future)
            future.add_done_callback(self._thread_charges.discard)
            return
        else:
            coro.close()
            self.store.skipped()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _acharge(self, plan: list[Applied], tokens: int) -> None:
        store = self.store
        if not store.ready():
            return
        try:
            storage = store.strategy().storage
            if len(plan) == 1:
                await store.bounded(storage.incr(plan[0].store_key, plan[0].bound.window_seconds, amount=tokens))
            else:
                await store.bounded(
                    asyncio.gather(*(storage.incr(a.store_key, a.bound.window_seconds, amount=tokens) for a in plan))
                )
        except Exception as exc:
            store.failed("add tokens", exc)
            return
        for applied in plan:
            self._emit(applied.bound.name, 0, 0, tokens)
        store.recovered()

    # -- lifetime --------------------------------------------------------------------------

    async def drain(self) -> None:
        """Wait for the charges still on their way to the store (tests, shutdown)."""
        while self._tasks or self._thread_charges:
            pending = [*self._tasks, *(asyncio.wrap_future(f) for f in list(self._thread_charges))]
            await asyncio.gather(*pending, return_exceptions=True)

    async def aclose(self) -> None:
        """Close the asynchronous store's connections (call it in the loop that used them)."""
        await self.drain()
        await self.store.aclose()

    def close(self) -> None:
        """Close the synchronous store's connections."""
        self.store.close()

    def describe(self) -> list[tuple[str, int, int]]:
        """``(name, tokens, window seconds)`` of every limit: the ``llm_limit_tokens`` gauge."""
        return [(b.name, b.tokens, b.window_seconds) for b in self.limits]
