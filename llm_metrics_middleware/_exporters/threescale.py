"""3scale exporter: token usage reported to a 3scale backend, per application.

3scale's application plans bill and limit per application and metric; the APIcast gateway
reports what each call used with the Service Management API. This exporter does the same
for the calls the middleware meters:

- the application is read from the incoming request by a callable: ``user_key=`` (API key
  pattern) or ``app_id=`` with an optional ``app_key=`` (App ID pattern);
- each call adds its usage to per-application sums in memory (the request path does only
  that, under a lock, in 2-3 us); a background thread reports the sums every
  ``flush_interval`` seconds with ``POST {url}/transactions.xml`` (form-encoded:
  ``service_token``, ``service_id``, ``transactions[i][user_key]`` or ``[app_id]`` /
  ``[app_key]``, ``transactions[i][usage][metric]``, optionally ``[timestamp]``), at most
  ``max_batch`` applications per POST;
- 3scale answers ``202 Accepted``. A refused or unanswered batch (5xx, 429, connection
  refused, a timeout) is merged back into the sums and retried with exponential backoff up
  to ``max_backoff`` seconds: sums only grow, so an outage of any length loses nothing and
  memory stays bounded by the number of applications (``max_pending``). Each connect and
  read times out after ``timeout``, and a whole report after three times that. Delivery is at
  least once: a batch the backend applied but never answered for is reported again.
- a 4xx for a batch is 3scale saying no: a service-level error (``service_token_invalid``,
  ``service_id_invalid``...) drops the batch; otherwise each application of the batch is
  sent alone once, so one bad credential (``user_key_invalid``, ``application_not_found``,
  ``limits_exceeded``) costs only its own usage. Each refusal is logged once per status and
  error code, and counted in :attr:`ThreeScaleExporter.stats`.

The exporter uses the standard library's ``http.client``, so its own requests are never
metered as LLM calls by an instrumented ``httpx``.
"""

from __future__ import annotations

import atexit
import collections
import http.client
import logging
import os
import random
import re
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Union
from urllib.parse import urlencode, urlsplit

from .._metering.call import CallRecord
from .rules import MetricRule, check_rules, check_usage_field

if TYPE_CHECKING:
    from .._metering.call import Schema
    from .._metering.request import RequestView

logger = logging.getLogger("llm_metrics_middleware")

#: Usage field -> 3scale metric name, by default.
DEFAULT_METRICS: Mapping[str, str] = {
    "prompt_tokens": "prompt_tokens",
    "completion_tokens": "completion_tokens",
    "total_tokens": "total_tokens",
}
#: 3scale accepts at most 1000 transactions per report.
MAX_TRANSACTIONS_PER_REPORT = 1000
#: Bytes of a response read at most (3scale's bodies are empty or a short XML error).
_MAX_RESPONSE = 64 * 1024
#: A report is abandoned after this many ``timeout`` periods in all, even when a backend
#: trickles bytes just often enough to keep each read within ``timeout``.
_TOTAL_TIMEOUTS = 3
#: With ``timestamps=True``, calls are summed per application and minute (3scale's finest
#: limit period), and each sum is reported with the start of its minute.
_TIMESTAMP_BUCKET_S = 60
#: Error codes that concern the whole service, not one application: splitting the batch
#: would not help.
_SERVICE_ERRORS = frozenset({
    "service_token_invalid",
    "service_token_missing",
    "provider_key_invalid",
    "provider_key_or_service_token_required",
    "service_id_invalid",
    "service_id_missing",
    "access_token_invalid",
})
_ERROR_CODE = re.compile(rb"<error\b[^>]*\bcode=\"([^\"]{1,100})\"")

CredentialFn = Callable[["RequestView"], Union[str, None]]
#: ("user_key", key, None) or ("app_id", id, app key or None).
Credential = tuple[str, str, Union[str, None]]
#: A credential and a minute bucket (0 when timestamps are off).
PendingKey = tuple[Credential, int]

_OK, _RETRY, _REJECTED = "ok", "retry", "rejected"


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def _metric_map(metrics: Mapping[str, str] | Sequence[str] | None) -> tuple[tuple[str, str], ...]:
    if metrics is None:
        return tuple(DEFAULT_METRICS.items())
    if isinstance(metrics, str):
        raise TypeError(f"metrics= takes a mapping of usage field to 3scale metric name, or a list of fields; got {metrics!r}")
    pairs = metrics.items() if isinstance(metrics, Mapping) else ((name, name) for name in metrics)
    out = []
    for usage_field, metric in pairs:
        check_usage_field("metrics= key", usage_field)
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"metrics={{{usage_field!r}: {metric!r}}}: the 3scale metric name must be a non-empty str")
        out.append((usage_field, metric))
    return tuple(out)


class _ThreeScaleSink:
    def __init__(self, exporter: ThreeScaleExporter) -> None:
        self._exporter = exporter

    def record(self, call: CallRecord) -> None:
        try:
            self._exporter._add(call)
        except Exception:
            logger.exception("ThreeScaleExporter failed to record a call; the request is unaffected")


def _abort(conn: http.client.HTTPConnection, aborted: threading.Event) -> None:
    """End a report that is taking too long: its blocked read fails at once."""
    aborted.set()
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _shutdown_at_exit(ref: weakref.ref[ThreeScaleExporter]) -> None:
    exporter = ref()
    if exporter is not None:
        exporter.shutdown(timeout_millis=5000)


class ThreeScaleExporter:
    """Reports token usage per application to a 3scale backend (Service Management API).

    ::

        ThreeScaleExporter(
            "https://su1.3scale.net",
            service_id="2555417777820",
            service_token=os.environ["THREESCALE_SERVICE_TOKEN"],
            user_key=lambda request: request.headers.get("x-api-key"),
        )

    - ``user_key`` or ``app_id`` (one of them): a callable of the request view that returns
      the application's credential, or None for a request that belongs to no application
      (it is then not reported, and counted in ``stats["no_credential"]``); ``app_key``:
      likewise, with ``app_id``.
    - ``metrics``: usage field -> 3scale metric system name (default ``prompt_tokens``,
      ``completion_tokens``, ``total_tokens`` under their own names), or a list of fields.
      Fields: ``prompt_tokens``, ``completion_tokens``, ``total_tokens``, ``cached_tokens``,
      ``reasoning_tokens``, ``cache_write_tokens``, ``calls``.
    - ``rules``: :class:`MetricRule` objects, APIcast style: a rule's metric is incremented
      only for the calls its condition holds for. With ``rules`` and no ``metrics``, only
      the rules are reported.
    - ``timestamps``: report each sum with the minute its calls were made (so late reports
      after an outage land in the right limit period); default off (3scale's receive time).
    - ``flush_interval`` (s), ``max_batch`` (applications per POST), ``max_pending``
      (applications summed in memory at most; calls of further ones are dropped and
      counted), ``timeout`` (s per connect and read), ``max_backoff`` (s between retries).

    ``force_flush`` reports everything now and says whether it arrived; ``shutdown``
    flushes (bounded) and stops the thread; it also runs at interpreter exit.
    """

    def __init__(
        self,
        url: str,
        *,
        service_id: str,
        service_token: str,
        user_key: CredentialFn | None = None,
        app_id: CredentialFn | None = None,
        app_key: CredentialFn | None = None,
        metrics: Mapping[str, str] | Sequence[str] | None = None,
        rules: Sequence[MetricRule] = (),
        timestamps: bool = False,
        flush_interval: float = 5.0,
        max_batch: int = 100,
        max_pending: int = 10_000,
        timeout: float = 10.0,
        max_backoff: float = 60.0,
    ) -> None:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be the 3scale backend's http(s) URL, such as 'https://su1.3scale.net', got {url!r}")
        if not isinstance(service_id, str) or not service_id:
            raise ValueError(f"service_id must be the 3scale service (product) ID as a non-empty str, got {service_id!r}")
        if not isinstance(service_token, str) or not service_token:
            raise ValueError("service_token must be the service's token as a non-empty str")
        if (user_key is None) == (app_id is None):
            raise ValueError(
                "give exactly one of user_key= (API key pattern) or app_id= (App ID pattern), each a callable "
                "of the request, e.g. user_key=lambda request: request.headers.get('x-api-key')"
            )
        for name, fn in (("user_key", user_key), ("app_id", app_id), ("app_key", app_key)):
            if fn is not None and not callable(fn):
                raise TypeError(
                    f"{name}= takes a callable of the request view returning str or None, "
                    f"e.g. {name}=lambda request: request.headers.get('x-api-key'); got {fn!r}"
                )
        if app_key is not None and app_id is None:
            raise ValueError("app_key= goes with app_id= (App ID pattern); with user_key= the key is enough")
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or not 1 <= max_batch <= MAX_TRANSACTIONS_PER_REPORT:
            raise ValueError(f"max_batch must be an int from 1 to {MAX_TRANSACTIONS_PER_REPORT}, got {max_batch!r}")
        if not isinstance(max_pending, int) or isinstance(max_pending, bool) or max_pending < 1:
            raise ValueError(f"max_pending must be a positive int, got {max_pending!r}")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = (parts.path.rstrip("/") or "") + "/transactions.xml"
        self._service_id = service_id
        self._service_token = service_token
        self._user_key = user_key
        self._app_id = app_id
        self._app_key = app_key
        self._rules = check_rules(rules)
        self._metrics = _metric_map(metrics) if (metrics is not None or not self._rules) else ()
        self._timestamps = bool(timestamps)
        self._flush_interval = _positive("flush_interval", flush_interval)
        self._timeout = _positive("timeout", timeout)
        self._max_backoff = _positive("max_backoff", max_backoff)
        self._max_batch = max_batch
        self._max_pending = max_pending
        #: What happened, by kind, since start: ``reported`` (transactions accepted),
        #: ``posts``, ``retries`` (failed POSTs, kept for later), ``rejected`` (transactions
        #: 3scale refused, dropped), ``dropped`` (calls past ``max_pending``),
        #: ``no_credential``, ``credential_error``.
        self.stats: collections.Counter[str] = collections.Counter()
        self._logged: set[tuple[Any, ...]] = set()
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if self._https else None
        self._closed = False
        self._reset_state()
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    def _reset_state(self) -> None:
        """Fresh lock, sums and thread state (at construction, and in a forked child)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._pending: dict[PendingKey, dict[str, int]] = {}
        self._wake = threading.Event()
        self._cond = threading.Condition()
        self._flush_requested = 0
        self._flush_done = 0
        self._flush_ok = True
        self._stopping = False
        self._thread: threading.Thread | None = None
        #: Set once the thread runs (it only ends at shutdown): spares is_alive() per call.
        self._running = False

    # -- binding and the request path ------------------------------------------------------

    def bind(self, schema: Schema) -> _ThreeScaleSink:
        return _ThreeScaleSink(self)

    def _credential(self, request: RequestView) -> Credential | None:
        if self._user_key is not None:
            key = self._user_key(request)
            return ("user_key", key, None) if isinstance(key, str) and key else None
        assert self._app_id is not None
        app = self._app_id(request)
        if not isinstance(app, str) or not app:
            return None
        secret = self._app_key(request) if self._app_key is not None else None
        return ("app_id", app, secret if isinstance(secret, str) and secret else None)

    def _add(self, call: CallRecord) -> None:
        if self._closed:
            return
        if self._pid != os.getpid():
            self._reset_state()  # a forked worker: the parent's lock, sums and thread are not ours
        usage: dict[str, int] = {}
        counts = call.usage
        for usage_field, metric in self._metrics:
            amount = 1 if usage_field == "calls" else (getattr(counts, usage_field) if counts is not None else 0)
            if amount > 0:
                usage[metric] = usage.get(metric, 0) + amount
        for rule in self._rules:
            amount = rule.amount(call)
            if amount > 0:
                usage[rule.metric] = usage.get(rule.metric, 0) + amount
        if not usage:
            return
        request = call.request
        try:
            credential = self._credential(request) if request is not None else None
        except Exception:
            with self._lock:
                self.stats["credential_error"] += 1
            self._log_once(("credential",), "ThreeScaleExporter: the credential callable raised; those calls are not reported", exc=True)
            return
        if credential is None:
            with self._lock:
                self.stats["no_credential"] += 1
            return
        bucket = int(time.time() // _TIMESTAMP_BUCKET_S) if self._timestamps else 0
        key = (credential, bucket)
        with self._lock:
            sums = self._pending.get(key)
            if sums is None:
                if len(self._pending) >= self._max_pending:
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
            full = len(self._pending) >= self._max_batch
        if dropped:
            self._log_once(
                ("dropped",),
                "ThreeScaleExporter: %d applications already wait to be reported (max_pending); calls of further "
                "applications are dropped until the backend accepts reports again",
                self._max_pending,
            )
        if not self._running:
            self._start()
        if full:
            self._wake.set()

    # -- the background thread -------------------------------------------------------------

    def _start(self) -> None:
        with self._cond:
            if self._stopping or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(target=self._run, name="llm-metrics-3scale", daemon=True)
            self._thread.start()
            self._running = True

    def _run(self) -> None:
        failures = 0
        delay = self._flush_interval
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
            with self._lock:
                empty = not self._pending
            with self._cond:
                self._flush_done = generation
                self._flush_ok = ok and empty
                self._cond.notify_all()
            if stopping:
                return
            if ok:
                failures = 0
                delay = self._flush_interval
            else:
                failures += 1
                backoff = min(self._max_backoff, self._flush_interval * 2 ** min(failures - 1, 16))
                delay = backoff * random.uniform(0.5, 1.0)

    def _send_pending(self) -> bool:
        """Report every sum; False when the backend could not be reached (the rest is kept)."""
        with self._lock:
            taken, self._pending = self._pending, {}
        items = list(taken.items())
        for start in range(0, len(items), self._max_batch):
            batch = items[start:start + self._max_batch]
            outcome, status, code = self._post(batch)
            if outcome == _OK:
                continue
            if outcome == _RETRY:
                self._requeue(items[start:])
                return False
            if len(batch) == 1 or code in _SERVICE_ERRORS:
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

    def _requeue(self, items: list[tuple[PendingKey, dict[str, int]]]) -> None:
        """Merge unreported sums back (the keys were admitted once: no cap applies)."""
        with self._lock:
            pending = self._pending
            for key, usage in items:
                sums = pending.get(key)
                if sums is None:
                    pending[key] = usage
                else:
                    for metric, amount in usage.items():
                        sums[metric] = sums.get(metric, 0) + amount

    def _reject(self, items: list[tuple[PendingKey, dict[str, int]]], status: int, code: str | None) -> None:
        self.stats["rejected"] += len(items)
        self._log_once(
            ("rejected", status, code),
            "ThreeScaleExporter: the 3scale backend refused a report with %s (error code %s); that usage is dropped. "
            "Check service_id, service_token and the applications' credentials",
            status,
            code or "none",
        )

    def _form(self, batch: list[tuple[PendingKey, dict[str, int]]]) -> bytes:
        fields: list[tuple[str, str]] = [("service_token", self._service_token), ("service_id", self._service_id)]
        for i, ((credential, bucket), usage) in enumerate(batch):
            prefix = f"transactions[{i}]"
            kind, value, secret = credential
            fields.append((f"{prefix}[{kind}]", value))
            if secret is not None:
                fields.append((f"{prefix}[app_key]", secret))
            for metric in sorted(usage):
                fields.append((f"{prefix}[usage][{metric}]", str(usage[metric])))
            if bucket:
                stamp = datetime.fromtimestamp(bucket * _TIMESTAMP_BUCKET_S, tz=timezone.utc)
                fields.append((f"{prefix}[timestamp]", stamp.strftime("%Y-%m-%d %H:%M:%S +00:00")))
        return urlencode(fields).encode("ascii")

    def _post(self, batch: list[tuple[PendingKey, dict[str, int]]]) -> tuple[str, int, str | None]:
        """One report: (outcome, HTTP status or 0, 3scale error code)."""
        self.stats["posts"] += 1
        body = self._form(batch)
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        # The socket timeout bounds each connect and read; the watchdog bounds them all together.
        aborted = threading.Event()
        watchdog = threading.Timer(self._timeout * _TOTAL_TIMEOUTS, _abort, (conn, aborted))
        watchdog.daemon = True
        watchdog.start()
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
                raise TimeoutError(f"no complete answer within {self._timeout * _TOTAL_TIMEOUTS:g} s")
        except Exception as exc:  # refused, reset, timed out, TLS, a broken answer: all kept for later
            self.stats["retries"] += 1
            self._log_once(
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
            self._log_once(("status", status), "ThreeScaleExporter: %s answered %s; usage is kept and retried", self.url, status)
            return _RETRY, status, None
        match = _ERROR_CODE.search(data)
        return _REJECTED, status, match.group(1).decode("ascii", "replace") if match else None

    def _log_once(self, key: tuple[Any, ...], message: str, *args: Any, exc: bool = False) -> None:
        if key in self._logged or len(self._logged) >= 100:
            return
        self._logged.add(key)
        if exc:
            logger.exception(message, *args)
        else:
            logger.warning(message, *args)

    # -- flushing --------------------------------------------------------------------------

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Report everything now; True when all of it was accepted (or refused for good)."""
        with self._lock:
            if not self._pending and (self._thread is None or not self._thread.is_alive()):
                return True
        self._start()
        deadline = time.monotonic() + max(timeout_millis, 0) / 1000
        with self._cond:
            self._flush_requested += 1
            generation = self._flush_requested
        self._wake.set()
        with self._cond:
            while self._flush_done < generation:
                remaining = deadline - time.monotonic()
                thread = self._thread
                if remaining <= 0 or thread is None or not thread.is_alive():
                    return False
                self._cond.wait(remaining)
            return self._flush_ok

    def shutdown(self, timeout_millis: int = 10000) -> None:
        """Flush (within ``timeout_millis``) and stop the thread; later calls are ignored."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + max(timeout_millis, 0) / 1000
        try:
            if not self.force_flush(timeout_millis):
                with self._lock:
                    left = len(self._pending)
                if left:
                    logger.warning("ThreeScaleExporter: shut down with %d applications' usage not reported", left)
        finally:
            with self._cond:
                self._stopping = True
            self._wake.set()
            thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(deadline - time.monotonic(), 0.1))
