"""The records a metered call delivers are whole: every field of CallRecord is set.

MeteredCall builds its CallRecord field by field (no generated ``__init__`` on the request
path), so a field added to CallRecord and forgotten there would be an AttributeError in an
exporter; this test fails first.
"""

from __future__ import annotations

import dataclasses
import json

from llm_metrics_middleware._metering.call import COMPLETED, CallRecord
from llm_metrics_middleware._metering.metered_call import MeteredCall
from llm_metrics_middleware._metering.metering import Metering
from llm_metrics_middleware._metering.request import RequestView
from llm_metrics_middleware.testing import InMemoryExporter


def test_a_delivered_record_has_every_field() -> None:
    keep = InMemoryExporter()
    metering = Metering(exporters=[keep], dimensions=["User ID", "Model"])
    body = json.dumps({"model": "gpt-4o-mini", "user": "u1", "messages": []}).encode()
    scope = {
        "type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json")],
    }
    call = MeteredCall(metering, RequestView.from_scope(scope))  # type: ignore[arg-type]
    call.request_body(body)
    call.response_start(200, "application/json", None)
    call.feed(json.dumps({"model": "gpt-4o-mini-2024-07-18", "usage": {
        "prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}).encode())
    call.finish(COMPLETED)
    (record,) = keep.calls
    fields = [f.name for f in dataclasses.fields(CallRecord)]
    assert all(hasattr(record, name) for name in fields), [n for n in fields if not hasattr(record, n)]
    # The same record as the generated __init__ builds from those values.
    assert record == CallRecord(*(getattr(record, name) for name in fields))
    assert record.dimensions == ("u1", "gpt-4o-mini-2024-07-18")
    assert record.usage is not None and (record.usage.prompt_tokens, record.usage.total_tokens) == (5, 12)
