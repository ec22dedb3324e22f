"""The apps the token-limit tests serve from real servers in subprocesses.

``asgi`` (for uvicorn) and ``wsgi`` (for gunicorn): the simulated LLM behind the middleware,
with the Kuadrant-style free/gold tiers counted in the store named by ``LIMIT_STORAGE``, and
their metrics at ``/metrics``. Each app process has its own registry; the counter they share
lives in the store.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry

from llm_metrics_middleware import LLMMetricsMiddleware, LLMMetricsWSGIMiddleware, PrometheusExporter, TokenLimit
from llm_metrics_middleware.testing import SimulatedLLM

FREE_TOKENS = int(os.environ.get("FREE_TOKENS", "50"))
GOLD_TOKENS = int(os.environ.get("GOLD_TOKENS", "200"))
WINDOW = int(os.environ.get("LIMIT_WINDOW", "60"))


def tier(request: Any) -> str:
    return str(request.headers.get("X-Tier", "free"))


LIMITS = [
    TokenLimit("free", tokens=FREE_TOKENS, per=WINDOW, key="User ID", when=lambda r: tier(r) == "free"),
    TokenLimit("gold", tokens=GOLD_TOKENS, per=WINDOW, key="User ID", when=lambda r: tier(r) == "gold"),
]


def _options() -> dict[str, Any]:
    return {
        "exporters": [PrometheusExporter(CollectorRegistry())],
        "metrics_path": "/metrics",
        "limits": LIMITS,
        "limit_storage": os.environ["LIMIT_STORAGE"],
        "limit_headers": "openai",
        # Generous: these apps test sharing, not the timeout (test_limits has its own for
        # that), and a loaded test machine can take longer than the 0.25 s default.
        "limit_timeout": float(os.environ.get("LIMIT_TIMEOUT", "2.0")),
    }


_upstream = SimulatedLLM()
asgi = LLMMetricsMiddleware(_upstream.asgi, **_options())
wsgi = LLMMetricsWSGIMiddleware(_upstream.wsgi, **_options())
