"""Getting 3scale reports delivered: the pending sums, the thread that posts them, retries.

The exporter decides *what* a call is worth to which application; this module makes sure
it arrives, without ever making a request wait. The request path only merges into
per-application sums under a lock (:meth:`Delivery.add`); one daemon thread posts them
every ``flush_interval`` (sooner when a batch is full), ``max_batch`` applications per POST.
A batch the backend did not take (unreachable, 5xx, 429) is merged back and retried with
jittered exponential backoff up to ``max_backoff``: sums only grow, so an outage costs
memory bounded by ``max_pending`` applications, never usage. Each connect and read times
out after ``timeout``, and a watchdog cuts a whole POST after three times that (a backend
that trickles bytes would otherwise hold the thread forever). A 4xx is 3scale saying no:
service-level errors drop the batch, others split it so one bad credential costs only its
own usage.

Uses the standard library's ``http.client``, so these requests are never metered as LLM
calls by an instrumented ``httpx`` or ``requests``.
"""

from __future__ import annotations

import collections
import http.client
import logging
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .threescale_wire import REPORT_PATH, SERVICE_ERRORS, Batch, PendingKey, error_code

logger = logging.getLogger("llm_metrics_middleware")

#: Bytes of a response read at most (3scale's bodies are empty or a short XML error).
_MAX_RESPONSE = 64 * 1024
#: A report is abandoned after this many ``timeout`` periods in all, even when a backend
#: trickles bytes just often enough to keep each read within ``timeout``.
_TOTAL_TIMEOUTS = 3
#: Distinct log-once keys remembered at most (the keys come from statuses and exception
#: types, so this is only a guard).
_MAX_LOGGED = 100

_OK, _RETRY, _REJECTED = "ok", "retry", "rejected"


class LogOnce:
    """Logs a message the first time its key is seen: an outage is one line, not one per POST."""

    def __init__(self) -> None:
        self._logged: set[tuple[Any, ...]] = set()

    def __call__(self, key: tuple[Any, ...], message: str, *args: Any, exc: bool = False) -> None:
        if key in self._logged or len(self._logged) >= _MAX_LOGGED:
            return
        self._logged.add(key)
        if exc:
            logger.exception(message, *args)
        else:
            logger.warning(message, *args)


def _abort(conn: http.client.HTTPConnection, aborted: threading.Event) -> None:
    """End a report that is taking too long: its blocked read fails at once."""
    aborted.set()
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@dataclass(eq=False, repr=False, kw_only=True)
class Delivery:
    """The pending per-application sums of one exporter and the thread that reports them.

    ``url`` is the backend's (checked, no trailing slash); ``form`` turns a batch into the POST body; ``stats`` and ``log_once`` are the
    exporter's, so that its :attr:`stats` tells the whole story in one place. A dataclass:
    the options it is made with are its fields, checked by the exporter beforehand.
    """

    url: str
    form: Callable[[Batch], bytes]
    flush_interval: float
    timeout: float
    max_backoff: float
    max_batch: int
    max_pending: int
    stats: collections.Counter[str]
    log_once: LogOnce

    def __post_init__(self) -> None:
        target = urlsplit(self.url)
        self._https = target.scheme == "https"
        self._host = target.hostname or ""
        self._port = target.port
        self._path = target.path.rstrip("/") + REPORT_PATH
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if self._https else None
        self._reset_state()

    def _reset_state(self) -> None:
        """Fresh lock, sums and thread state (at construction, and in a forked child)."""
        self._pid = os.getpid()
        self.lock = threading.Lock()
        self._pending: dict[PendingKey, dict[str, int]] = {}
        self._wake = threading.Event()
        self._cond = threading.Condition()
        self._flush_requested = 0
        self._flush_done = 0
        self._flush_ok = True
        self._stopping = False
        self.thread: threading.Thread | None = None
        #: Set once the thread runs (it only ends at shutdown): spares is_alive() per call.
        self._running = False

    # -- the request path ------------------------------------------------------------------

    def check_fork(self) -> None:
        """In a forked worker, drop the parent's lock, sums and thread: they are not ours."""
        if self._pid != os.getpid():
            self._reset_state()

    def count(self, kind: str) -> None:
        with self.lock:
            self.stats[kind] += 1

    def add(self, key: PendingKey, usage: dict[str, int]) -> None:
        """Merge one call's usage into its application's sums (the request path)."""
        with self.lock:
            sums = self._pending.get(key)
            if sums is None:
                if len(self._pending) >= self.max_pending:
                    self.stats["dropped"] += 1
                    dropped = True
                else:
                    sums = self._pending[key] = {}
                    dropped = False
            else:
                dropped = False
            if sums is not None:
                for metric, amount in usage.items():
                    sums[metric] = sums.get(metric, 0) + amount
            full = len(self._pending) >= self.max_batch
        if dropped:
            self.log_once(
                ("dropped",),
                "ThreeScaleExporter: %d applications already wait to be reported (max_pending); calls of further "
                "applications are dropped until the backend accepts reports again",
                self.max_pending,
            )
        if not self._running:
            self._start()
        if full:
            self._wake.set()

    def pending(self) -> int:
        """How many applications' sums wait to be reported."""
        with self.lock:
            return len(self._pending)

    # -- the background thread -------------------------------------------------------------

    def _start(self) -> bool:
        """Start the reporting thread unless it runs; whether a thread runs now. Python
        3.12+ starts no thread during interpreter shutdown (a gunicorn worker's atexit
        flush): then False, and :meth:`flush` reports in its own thread."""
        with self._cond:
            if self._stopping or (self.thread is not None and self.thread.is_alive()):
                return self.thread is not None and self.thread.is_alive()
            thread = threading.Thread(target=self._run, name="llm-metrics-3scale", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # "can't create new thread at interpreter shutdown"
                return False
            self.thread = thread
            self._running = True
            return True

    def _run(self) -> None:
        failures = 0
        delay = self.flush_interval
        while True:
            self._wake.wait(delay)
            self._wake.clear()
            with self._cond:
                generation = self._flush_requested
                stopping = self._stopping
            try:
                ok = self._send_pending()
            except Exception:
                logger.exception("ThreeScaleExporter: reporting failed unexpectedly; will retry")
                ok = False
            with self.lock:
                empty = not self._pending
            with self._cond:
                self._flush_done = generation
                self._flush_ok = ok and empty
                self._cond.notify_all()
            if stopping:
                return
            if ok:
                failures = 0
                delay = self.flush_interval
            else:
                failures += 1
                backoff = min(self.max_backoff, self.flush_interval * 2 ** min(failures - 1, 16))
                delay = backoff * random.uniform(0.5, 1.0)

    def _send_pending(self) -> bool:
        """Report every sum; False when the backend could not be reached (the rest is kept)."""
        with self.lock:
            taken, self._pending = self._pending, {}
        items = list(taken.items())
        for start in range(0, len(items), self.max_batch):
            batch = items[start:start + self.max_batch]
            outcome, status, code = self._post(batch)
            if outcome == _OK:
                continue
            if outcome == _RETRY:
                self._requeue(items[start:])
                return False
            if len(batch) == 1 or code in SERVICE_ERRORS:
                self._reject(batch, status, code)
                continue
            for i, item in enumerate(batch):
                outcome, status, code = self._post([item])
                if outcome == _RETRY:
                    self._requeue(batch[i:] + items[start + len(batch):])
                    return False
                if outcome == _REJECTED:
                    self._reject([item], status, code)
        return True

    def _requeue(self, items: Batch) -> None:
        """Merge unreported sums back (the keys were admitted once: no cap applies)."""
        with self.lock:
            pending = self._pending
            for key, usage in items:
                sums = pending.get(key)
                if sums is None:
                    pending[key] = usage
                else:
                    for metric, amount in usage.items():
                        sums[metric] = sums.get(metric, 0) + amount

    def _reject(self, items: Batch, status: int, code: str | None) -> None:
        self.stats["rejected"] += len(items)
        self.log_once(
            ("rejected", status, code),
            "ThreeScaleExporter: the 3scale backend refused a report with %s (error code %s); that usage is dropped. "
            "Check service_id, service_token and the applications' credentials",
            status,
            code or "none",
        )

    def _post(self, batch: Batch) -> tuple[str, int, str | None]:
        """One report: (outcome, HTTP status or 0, 3scale error code)."""
        self.stats["posts"] += 1
        body = self.form(batch)
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        # The socket timeout bounds each connect and read; the watchdog bounds them all together.
        aborted = threading.Event()
        watchdog = threading.Timer(self.timeout * _TOTAL_TIMEOUTS, _abort, (conn, aborted))
        watchdog.daemon = True
        try:
            watchdog.start()
        except RuntimeError:
            # Python 3.12+ refuses to start a thread during interpreter shutdown ("can't create
            # new thread at interpreter shutdown"), which is when the atexit flush of a gunicorn
            # worker posts. The report goes out without its watchdog then: the socket timeout
            # still bounds each connect and read, and shutdown() waits for this (daemon) thread
            # only until its own deadline. (cancel() below is harmless on a Timer never started.)
            pass
        try:
            conn.request(
                "POST",
                self._path,
                body,
                {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "llm-metrics-middleware"},
            )
            response = conn.getresponse()
            data = response.read(_MAX_RESPONSE)
            status = response.status
            if aborted.is_set():  # cut off: whatever was parsed is not an answer
                raise TimeoutError(f"no complete answer within {self.timeout * _TOTAL_TIMEOUTS:g} s")
        except Exception as exc:  # refused, reset, timed out, TLS, a broken answer: all kept for later
            self.stats["retries"] += 1
            self.log_once(
                ("unreachable", type(exc).__name__),
                "ThreeScaleExporter: cannot reach %s (%s: %s); usage is kept and retried",
                self.url,
                type(exc).__name__,
                exc,
            )
            return _RETRY, 0, None
        finally:
            watchdog.cancel()
            conn.close()
        if 200 <= status < 300:
            self.stats["reported"] += len(batch)
            return _OK, status, None
        if status == 429 or status >= 500:
            self.stats["retries"] += 1
            self.log_once(("status", status), "ThreeScaleExporter: %s answered %s; usage is kept and retried", self.url, status)
            return _RETRY, status, None
        return _REJECTED, status, error_code(data)

    # -- flushing --------------------------------------------------------------------------

    def flush(self, timeout_millis: int) -> bool:
        """Report everything now; True when all of it was accepted (or refused for good)."""
        with self.lock:
            if not self._pending and (self.thread is None or not self.thread.is_alive()):
                return True
        if not self._start():
            # No thread (stopping, or none can start at interpreter shutdown): report from
            # here, each POST bounded by the connection's timeout.
            try:
                return self._send_pending()
            except Exception:
                logger.exception("ThreeScaleExporter: reporting at flush failed")
                return False
        deadline = time.monotonic() + max(timeout_millis, 0) / 1000
        with self._cond:
            self._flush_requested += 1
            generation = self._flush_requested
        self._wake.set()
        with self._cond:
            while self._flush_done < generation:
                remaining = deadline - time.monotonic()
                thread = self.thread
                if remaining <= 0 or thread is None or not thread.is_alive():
                    return False
                self._cond.wait(remaining)
            return self._flush_ok

    def stop(self, deadline: float) -> None:
        """Let the thread end after its current round, waiting for it until ``deadline``."""
        with self._cond:
            self._stopping = True
        self._wake.set()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(deadline - time.monotonic(), 0.1))
