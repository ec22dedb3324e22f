"""Reading a body leaves no reference cycle behind: everything a call allocated is freed by
reference counting when the call is done, never left to the garbage collector.

Under load a cycle per call is costly twice: the collector runs more often, and each run
walks the survivors, promoting them to older generations whose full collections walk the
whole heap of the host app.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from llm_metrics_middleware._core.extractor import UsageExtractor, body_format

from .wire.cases import CASES, WireCase


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _read(case: WireCase, want_text: bool) -> None:
    body = case.body
    extractor = UsageExtractor(body_format(case.content_type), want_text=want_text)
    for i in range(0, len(body), 97):
        extractor.feed(body[i : i + 97])
    extractor.close()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_reading_a_recorded_body_leaves_no_cycle(case: WireCase, collector_off: None) -> None:
    for want_text in (False, True):
        _read(case, want_text)
    assert gc.collect() == 0, f"{case.id}: objects in reference cycles were left to the garbage collector"
