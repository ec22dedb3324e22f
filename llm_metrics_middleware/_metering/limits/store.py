"""The store the limits count in, and how the request path survives it failing.

``limits`` storage: ``memory://`` (one process) or ``redis://``, ``rediss://``,
``redis+unix://``, ``redis+sentinel://``, ``redis+cluster://`` (shared by every process);
the ASGI middleware gets the ``limits.aio`` storage so the event loop never waits on a
socket. Only the Redis family is accepted because only its calls can be bounded: every one
has ``socket_timeout`` / ``socket_connect_timeout`` and no retries (a query parameter in
the URI overrides them), and an asynchronous exchange is bounded as a whole too.

When the store fails, :class:`LimitStore` counts it (``limit_storage``), logs once per
outage and leaves the store alone for :data:`RETRY_AFTER_FAILURE` seconds, so an outage
adds no latency to the requests that pass (or are refused) meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ..call import ErrorKind

logger = logging.getLogger("llm_metrics_middleware")

_T = TypeVar("_T")
_timeout: Any = getattr(asyncio, "timeout", None)

IMPORT_HINT = "pip install 'llm-metrics-middleware[limits]'"

#: Seconds a store that failed is left alone before it is asked again (requests pass or are
#: refused at once meanwhile, without waiting on a dead socket).
RETRY_AFTER_FAILURE = 1.0
#: Default timeout of every store call, in seconds.
DEFAULT_TIMEOUT = 0.25
#: Store schemes accepted by ``limit_storage`` (the Redis family has socket timeouts).
_SCHEMES = ("memory", "redis", "rediss", "redis+unix", "redis+sentinel", "redis+cluster")
#: How often the in-memory store drops the counters of windows that have ended.
SWEEP_INTERVAL = 1.0


def _display(uri: str) -> str:
    """The store URI without its password, for logs and errors."""
    scheme, sep, rest = uri.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest


def store_scheme(storage: str, timeout: float) -> str:
    """Check ``limit_storage`` is a URI and ``limit_timeout`` a bound; the URI's scheme."""
    if not isinstance(storage, str) or "://" not in storage:
        raise ValueError(
            f"limit_storage must be a storage URI such as 'memory://' or 'redis://localhost:6379/0', got {storage!r}"
        )
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 60:
        raise ValueError(f"limit_timeout must be seconds between 0 and 60, such as 0.25, got {timeout!r}")
    return storage.split("://", 1)[0].lower().removeprefix("async+")


class LimitStore:
    """One ``limits`` strategy over its storage, with bounded calls and failure back-off.

    The limiter asks :meth:`ready` before every call and reports :meth:`failed` or
    :meth:`recovered` after it.
    """

    def __init__(
        self,
        uri: str,
        scheme: str,
        *,
        timeout: float,
        asynchronous: bool,
        fail_closed: bool,
        count_error: Callable[[ErrorKind], None],
    ) -> None:
        self.uri = uri
        self.scheme = scheme
        self.timeout = float(timeout)
        self.shared = scheme != "memory"
        # The in-memory store does no I/O: the ASGI driver asks it directly, without tasks.
        self.asynchronous = asynchronous and self.shared
        self._fail_closed = fail_closed
        self._count_error = count_error
        if scheme not in _SCHEMES:
            raise ValueError(
                f"limit_storage={_display(uri)!r}: use 'memory://' or a Redis URI ({', '.join(s + '://' for s in _SCHEMES[1:])}); "
                "other stores of the limits library have no bounded timeout here"
            )
        self._down_until = 0.0
        self._outage = False
        self._lock = threading.Lock()
        #: The event loop the asynchronous client belongs to (charges from threads go there).
        self.loop: asyncio.AbstractEventLoop | None = None
        self._strategy: Any = None
        try:
            self._strategy = self._build()
        except ImportError as exc:
            raise ImportError(f"limit_storage={_display(uri)!r} needs redis-py: {IMPORT_HINT}") from exc
        except Exception as exc:  # a cluster client connects when built: try again on use
            self.failed("connect", exc)

    def _build(self) -> Any:
        from limits.storage import storage_from_string
        from limits.strategies import FixedWindowRateLimiter

        if self.scheme == "memory":
            return FixedWindowRateLimiter(_memory_storage())

        options: dict[str, Any] = {}
        uri = self.uri.removeprefix("async+")
        if self.scheme.startswith(("redis", "rediss", "valkey")):
            options = {"socket_timeout": self.timeout, "socket_connect_timeout": self.timeout}
            from redis.backoff import NoBackoff

            if self.asynchronous:
                from redis.asyncio.retry import Retry as AsyncRetry

                options["retry"] = AsyncRetry(NoBackoff(), 0)
                options["implementation"] = "redispy"
            else:
                from redis.retry import Retry

                options["retry"] = Retry(NoBackoff(), 0)
        if self.asynchronous:
            from limits.aio.strategies import FixedWindowRateLimiter as AsyncFixedWindow

            return AsyncFixedWindow(storage_from_string("async+" + uri, **options))
        return FixedWindowRateLimiter(storage_from_string(uri, **options))

    def strategy(self) -> Any:
        """The strategy over the store, built now if building it failed before (raises then)."""
        strategy = self._strategy
        if strategy is None:
            strategy = self._strategy = self._build()
        return strategy

    def use_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Note the running loop; a new one (a server restarted in process, tests) needs a new client."""
        if loop is not self.loop:
            if self.loop is not None and self.shared:
                # redis.asyncio connections belong to the loop that opened them.
                self._strategy = None
            self.loop = loop

    async def bounded(self, awaitable: Awaitable[_T]) -> _T:
        """``awaitable`` within twice the timeout.

        The socket timeouts bound every Redis call; this bounds the whole exchange too (a
        DNS lookup, a cluster's redirects). The in-memory store needs no guard.
        """
        if not self.shared:
            return await awaitable
        if _timeout is not None:  # Python 3.11+: no task per call, unlike wait_for
            async with _timeout(self.timeout * 2):
                return await awaitable
        return await asyncio.wait_for(awaitable, self.timeout * 2)

    # -- failure back-off ------------------------------------------------------------------

    def ready(self) -> bool:
        """True when the store may be asked; else it is left alone and the skip is counted.

        A request not checked (or a call not charged) meanwhile is a metering error too, so
        an outage shows in ``llm_metering_errors_total`` for as long as it lasts.
        """
        if time.monotonic() >= self._down_until:
            return True
        self.skipped()
        return False

    def skipped(self) -> None:
        """A request not checked (or a call not charged) while the store cannot be asked."""
        self._count_error("limit_storage")

    def failed(self, what: str, exc: BaseException | None) -> None:
        self._count_error("limit_storage")
        with self._lock:
            self._down_until = time.monotonic() + RETRY_AFTER_FAILURE
            first = not self._outage
            self._outage = True
        if first:
            logger.warning(
                "llm-metrics: the limit store %s failed to %s (%s); requests %s until it answers again",
                _display(self.uri),
                what,
                exc.__class__.__name__ if exc is not None else "skipped",
                "are refused with 503" if self._fail_closed else "pass unlimited",
            )

    def recovered(self) -> None:
        if self._outage:
            with self._lock:
                was, self._outage = self._outage, False
            if was:
                logger.warning("llm-metrics: the limit store %s answers again", _display(self.uri))

    # -- closing ---------------------------------------------------------------------------

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
