"""Fixtures the test modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from llm_metrics_middleware._core import peek, readers
from llm_metrics_middleware.testing import InMemoryExporter

#: The two ways a JSON body is read: kept whole and parsed with json.loads (bodies up to
#: readers.SMALL_BODY), or streamed through the incremental scanner (all larger ones).
PARSE_PATHS = ("json.loads", "scanner")


@pytest.fixture(params=PARSE_PATHS)
def parse_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Runs the test once per JSON parsing path; ``scanner`` forces every JSON response and
    request body through the incremental scanner (the small-body thresholds set to 0), as
    only large bodies go in production. The id shows in the test name:
    ``test_x[scanner-...]``."""
    if request.param == "scanner":
        monkeypatch.setattr(readers, "SMALL_BODY", 0)
        monkeypatch.setattr(peek, "SMALL_REQUEST", 0)
    yield request.param


@pytest.fixture
def exporter() -> InMemoryExporter:
    return InMemoryExporter()


@pytest.fixture
def registry() -> CollectorRegistry:
    """A Prometheus registry of the test's own (never the global one)."""
    return CollectorRegistry()
