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

This module decides what a call is worth to which application and holds the options;
:mod:`.threescale_delivery` gets the sums delivered (thread, batching, retries, watchdog)
and :mod:`.threescale_wire` writes and reads the API's format, so each can be read and
changed alone.
"""

from __future__ import annotations

import atexit
import collections
import logging
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Union
from urllib.parse import urlsplit

from .._metering.call import CallRecord
from .rules import MetricRule, check_rules, check_usage_field
from .threescale_delivery import Delivery, LogOnce
from .threescale_wire import (
    MAX_TRANSACTIONS_PER_REPORT,
    TIMESTAMP_BUCKET_S,
    Batch,
    Credential,
    PendingKey,
    report_form,
)

if TYPE_CHECKING:
    import threading

    from .._metering.call import Schema
    from .._metering.request import RequestView

__all__ = ["DEFAULT_METRICS", "MAX_TRANSACTIONS_PER_REPORT", "Credential", "CredentialFn", "PendingKey", "ThreeScaleExporter"]

logger = logging.getLogger("llm_metrics_middleware")

#: Usage field -> 3scale metric name, by default.
DEFAULT_METRICS: Mapping[str, str] = {
    "prompt_tokens": "prompt_tokens",
    "completion_tokens": "completion_tokens",
    "total_tokens": "total_tokens",
}

CredentialFn = Callable[["RequestView"], Union[str, None]]


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
        self._service_id = service_id
        self._service_token = service_token
        self._user_key = user_key
        self._app_id = app_id
        self._app_key = app_key
        self._rules = check_rules(rules)
        self._metrics = _metric_map(metrics) if (metrics is not None or not self._rules) else ()
        self._timestamps = bool(timestamps)
        #: What happened, by kind, since start: ``reported`` (transactions accepted),
        #: ``posts``, ``retries`` (failed POSTs, kept for later), ``rejected`` (transactions
        #: 3scale refused, dropped), ``dropped`` (calls past ``max_pending``),
        #: ``no_credential``, ``credential_error``.
        self.stats: collections.Counter[str] = collections.Counter()
        self._log_once = LogOnce()
        self._delivery = Delivery(
            url=self.url,
            form=self._form,
            flush_interval=_positive("flush_interval", flush_interval),
            timeout=_positive("timeout", timeout),
            max_backoff=_positive("max_backoff", max_backoff),
            max_batch=max_batch,
            max_pending=max_pending,
            stats=self.stats,
            log_once=self._log_once,
        )
        self._closed = False
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    @property
    def _thread(self) -> threading.Thread | None:
        """The reporting thread, once started (tests join it)."""
        return self._delivery.thread

    def _form(self, batch: Batch) -> bytes:
        return report_form(self._service_token, self._service_id, batch)

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
        delivery = self._delivery
        delivery.check_fork()
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
            delivery.count("credential_error")
            self._log_once(("credential",), "ThreeScaleExporter: the credential callable raised; those calls are not reported", exc=True)
            return
        if credential is None:
            delivery.count("no_credential")
            return
        bucket = int(time.time() // TIMESTAMP_BUCKET_S) if self._timestamps else 0
        delivery.add((credential, bucket), usage)

    # -- flushing --------------------------------------------------------------------------

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Report everything now; True when all of it was accepted (or refused for good)."""
        return self._delivery.flush(timeout_millis)

    def shutdown(self, timeout_millis: int = 10000) -> None:
        """Flush (within ``timeout_millis``) and stop the thread; later calls are ignored."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + max(timeout_millis, 0) / 1000
        try:
            if not self.force_flush(timeout_millis):
                left = self._delivery.pending()
                if left:
                    logger.warning("ThreeScaleExporter: shut down with %d applications' usage not reported", left)
        finally:
            self._delivery.stop(deadline)
