"""Subscription ID: a keyed hash of the request's API key, never the key itself.

Apart from :mod:`.dimensions` (which binds it as the ``"Subscription ID"`` source) because
it owns process state of its own: the random per-process secret, drawn once and redrawn in
a forked worker.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from typing import TYPE_CHECKING

from .._core.providers.facts import KEY_HEADERS, KEY_QUERY
from .request import RequestView

if TYPE_CHECKING:
    from .dimensions import CallContext

logger = logging.getLogger("llm_metrics_middleware")


def _api_key(request: RequestView) -> str | None:
    headers = request.headers
    for name in KEY_HEADERS:
        value = headers.get(name)
        if value:
            if name == "Authorization":
                scheme, _, token = value.partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    continue
                return token.strip()
            return value.strip()
    for name in KEY_QUERY:  # Gemini's ?key=
        key = request.query.get(name)
        if key:
            return key
    return None


class SubscriptionHasher:
    """Subscription ID from the API key: HMAC-SHA256 under a secret, 16 hex digits.

    Keyed so that a leaked metric label cannot be matched against a list of keys. The
    secret comes from ``LLM_METRICS_SUBSCRIPTION_SECRET``; without it a random secret is
    used, one per process as the README says: every middleware of the process shares it
    (so two sub-apps give one key the same ID), and a forked worker draws its own. That
    keeps keys safe but makes IDs differ between processes and restarts (a warning says so
    once per process).
    """

    def __init__(self, secret: bytes | str | None = None) -> None:
        if secret is None:
            env = os.environ.get("LLM_METRICS_SUBSCRIPTION_SECRET")
            secret = env if env else None
        self._secret: bytes | None = None if secret is None else (secret.encode() if isinstance(secret, str) else secret)

    def __call__(self, request: RequestView, ctx: CallContext) -> str | None:
        key = _api_key(request)
        if key is None:
            return None
        secret = self._secret if self._secret is not None else _process_secret()
        return hmac.new(secret, key.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:16]


_PROCESS_SECRET: list[bytes] = []  # drawn at the first hash in this process, emptied in a forked child
_SECRET_LOCK = threading.Lock()


def _process_secret() -> bytes:
    if not _PROCESS_SECRET:
        with _SECRET_LOCK:
            if not _PROCESS_SECRET:
                _PROCESS_SECRET.append(os.urandom(32))
                logger.warning(
                    "Subscription ID is hashed with a random per-process secret; set "
                    "LLM_METRICS_SUBSCRIPTION_SECRET (or subscription_secret=) for IDs that are "
                    "stable across processes and restarts"
                )
    return _PROCESS_SECRET[0]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_PROCESS_SECRET.clear)
