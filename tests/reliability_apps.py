"""WSGI apps that the reliability tests serve from a subprocess (gunicorn, waitress).

Options come from the environment, read at import (each worker imports this module):
``LLM_TEST_MAX_SERIES`` caps the series. Apps:

- ``simulated()``: the simulated LLM behind the WSGI middleware, ``/metrics`` served by it.
- ``bare_files()`` / ``metered_files()``: ``/v1/chat/completions`` answers a one-element list without
  Content-Length, ``/file/v1/chat/completions`` a ``wsgi.file_wrapper`` of a file on disk.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from typing import Any

from llm_metrics_middleware import LLMMetricsWSGIMiddleware, PrometheusExporter
from llm_metrics_middleware.testing import SimulatedLLM

MAX_SERIES = int(os.environ.get("LLM_TEST_MAX_SERIES", "2000"))



def simulated() -> Any:
    """Served as ``tests.reliability_apps:simulated()`` (one exporter per process)."""
    return LLMMetricsWSGIMiddleware(
        SimulatedLLM().wsgi,
        exporters=[PrometheusExporter()],
        dimensions=["User ID", "Model"],
        metrics_path="/metrics",
        max_series=MAX_SERIES,
    )

ONE = b'{"id":"c1","object":"chat.completion","model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}'
#: The file the ``/file`` path sends: in the directory the test gives (its tmp_path), so that
#: no run leaves files behind in the system's temporary directory.
_FILE = os.path.join(os.environ.get("LLM_METRICS_TEST_DIR") or tempfile.gettempdir(), f"llm-metrics-test-{os.getpid()}.json")


def _files(environ: Any, start_response: Any) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)
    start_response("200 OK", [("Content-Type", "application/json")])
    if environ["PATH_INFO"].startswith("/file"):
        with open(_FILE, "wb") as out:
            out.write(ONE)
        wrapper: Iterable[bytes] = environ["wsgi.file_wrapper"](open(_FILE, "rb"))  # noqa: SIM115 (the server closes it)
        return wrapper
    return [ONE]


def bare_files() -> Any:
    return _files


def metered_files() -> Any:
    return LLMMetricsWSGIMiddleware(_files, exporters=[PrometheusExporter()], metrics_path="/metrics")
