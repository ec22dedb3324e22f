"""Reading a body leaves no reference cycle behind: everything a call allocated is freed by
reference counting when the call is done, never left to the garbage collector.

Under load a cycle per call is costly twice: the collector runs more often, and each run
walks the survivors, promoting them to older generations whose full collections walk the
whole heap of the host app.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from llm_metrics_middleware import LLMMetricsMiddleware, LLMMetricsWSGIMiddleware, PrometheusExporter
from llm_metrics_middleware._core.extractor import UsageExtractor, body_format

from .drive import chunk_app, run_wsgi, wsgi_chunk_app
from .wire.cases import CASES, WireCase

_OURS = ("llm_metrics_middleware._core", "llm_metrics_middleware._metering", "llm_metrics_middleware._drivers")


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def cyclic_garbage() -> list[str]:
    """The objects of ours (and methods bound to them) that only the collector could free.

    Only our types are looked at: threads left by other tests (servers shutting down,
    exporters' background senders) may make garbage of their own meanwhile.
    """
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    gc.set_debug(0)
    found = []
    for obj in gc.garbage:
        owner = getattr(obj, "__self__", obj)
        if type(owner).__module__.startswith(_OURS):
            found.append(type(obj).__qualname__ if owner is obj else f"method of {type(owner).__qualname__}")
    gc.garbage.clear()
    return found


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
    assert cyclic_garbage() == [], f"{case.id}: objects in reference cycles were left to the garbage collector"


_CALL_CASES = [c for c in CASES if c.id in ("openai-chat-json", "openai-chat-stream-include-usage", "openai-chat-stream-no-usage")]


def _asgi_call(app: object, case: WireCase) -> None:
    """One call through an ASGI app, driven without an event loop (nothing in it waits)."""
    received = [{"type": "http.request", "body": case.request_body, "more_body": False}]

    async def receive() -> dict[str, object]:
        return received.pop(0) if received else {"type": "http.disconnect"}

    async def send(message: object) -> None:
        return None

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": case.method, "scheme": "http",
             "path": case.path, "raw_path": case.path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"host", b"127.0.0.1")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    coroutine = app(scope, receive, send)  # type: ignore[operator]
    with pytest.raises(StopIteration):
        coroutine.send(None)


def _with_a_long_prompt(case: WireCase) -> WireCase:
    """The case with a request body past the peek's small-body limit (read by its scanner)."""
    request = json.loads(case.request_body)
    request["messages"] = [*request["messages"], {"role": "user", "content": "many words " * 3000}]
    return dataclasses.replace(case, id=case.id + "-long-prompt", request_body=json.dumps(request).encode())


_CALL_CASES += [_with_a_long_prompt(c) for c in _CALL_CASES[:1]]


@pytest.mark.parametrize("case", _CALL_CASES, ids=[c.id for c in _CALL_CASES])
def test_a_call_through_either_middleware_leaves_no_cycle(case: WireCase, collector_off: None) -> None:
    body = case.body
    chunks = [body[i : i + 97] for i in range(0, len(body), 97)]
    headers = [("content-type", case.content_type)]
    asgi = LLMMetricsMiddleware(chunk_app(200, headers, chunks), exporters=[PrometheusExporter(CollectorRegistry())],
                                dimensions=["API ID", "User ID", "Model"])
    wsgi = LLMMetricsWSGIMiddleware(wsgi_chunk_app("200 OK", headers, chunks),
                                    exporters=[PrometheusExporter(CollectorRegistry())], dimensions=["API ID", "User ID", "Model"])
    for _ in range(3):  # the first calls fill the caches (routes, series)
        _asgi_call(asgi, case)
        run_wsgi(wsgi, path=case.path, body=case.request_body)
    gc.collect()
    for _ in range(5):
        _asgi_call(asgi, case)
        run_wsgi(wsgi, path=case.path, body=case.request_body)
    assert cyclic_garbage() == [], f"{case.id}: a call left objects in reference cycles to the garbage collector"


_LARGE_BODIES = {
    # Over the 16 KB a body or an event is read whole below: read by the incremental scanner.
    "json-embeddings": (
        "application/json",
        json.dumps({"object": "list", "data": [{"object": "embedding", "embedding": [0.1] * 20000, "index": 0}],
                    "model": "m", "usage": {"prompt_tokens": 5, "total_tokens": 5}}).encode(),
    ),
    "sse-large-event": (
        "text/event-stream",
        b"data: " + json.dumps({"choices": [{"delta": {"content": "x " * 20000}}], "usage": None}).encode() + b"\n\n"
        b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}\n\n',
    ),
}


@pytest.mark.parametrize("name", list(_LARGE_BODIES))
def test_reading_a_large_body_leaves_no_cycle(name: str, collector_off: None) -> None:
    content_type, body = _LARGE_BODIES[name]
    for want_text in (False, True):
        extractor = UsageExtractor(body_format(content_type), want_text=want_text)
        for i in range(0, len(body), 4096):
            extractor.feed(body[i : i + 4096])
        assert extractor.close().usage is not None
    del extractor
    assert cyclic_garbage() == [], f"{name}: objects in reference cycles were left to the garbage collector"
