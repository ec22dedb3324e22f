"""pytest fixtures for apps that use llm-metrics-middleware (loaded by pytest on its own).

The package registers this module as a pytest plugin (the ``pytest11`` entry point), so in
any project that installs it these fixtures exist without a ``conftest.py``:

- ``llm_metrics_exporter``: a fresh :class:`~llm_metrics_middleware.testing.InMemoryExporter`
  for each test; pass it in ``exporters=`` and assert on ``.calls`` and ``.totals()``.
- ``simulated_llm``: a fresh :class:`~llm_metrics_middleware.testing.SimulatedLLM` (an ASGI
  3 app; ``.wsgi`` is the WSGI one), to wrap in the middleware or to point your client at.
- ``simulated_llm_url``: that simulator served on 127.0.0.1 by a real HTTP server for the
  test (``http://127.0.0.1:PORT``), for code under test that calls an LLM over HTTP (set
  its base URL to ``simulated_llm_url + "/v1"``). It starts and stops within 10 s or fails.

::

    def test_my_app_counts_tokens(llm_metrics_exporter, simulated_llm):
        app = LLMMetricsMiddleware(simulated_llm, exporters=[llm_metrics_exporter])
        ...
        assert llm_metrics_exporter.totals()["total"] == 42

Disable it with ``-p no:llm_metrics_middleware``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .testing import InMemoryExporter, SimulatedLLM, serve


@pytest.fixture
def llm_metrics_exporter() -> InMemoryExporter:
    """An in-memory exporter that keeps every metered call (``.calls``, ``.totals()``)."""
    return InMemoryExporter()


@pytest.fixture
def simulated_llm() -> SimulatedLLM:
    """A deterministic OpenAI- and Anthropic-compatible upstream (ASGI 3 app; ``.wsgi`` too)."""
    return SimulatedLLM()


@pytest.fixture
def simulated_llm_url(simulated_llm: SimulatedLLM) -> Iterator[str]:
    """The ``simulated_llm`` served on 127.0.0.1 by a real server: its base URL."""
    with serve(simulated_llm) as url:
        yield url
