"""Issue 16, the sans-IO side: estimates, nesting, peek CPU, zstd windows, chunkings.

Each test here failed before its fix.
"""

from __future__ import annotations

import json

import pytest

from llm_metrics_middleware import LLMMetricsMiddleware, LLMMetricsWSGIMiddleware
from llm_metrics_middleware.testing import InMemoryExporter

from .drive import chunk_app, request_json, run_asgi, run_wsgi, wsgi_chunk_app

SSE = [("content-type", "text/event-stream")]


def _chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    obj = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": None}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


# -- 2. include_usage asked, no usage came: estimated from the text ---------------------

WORDS = ["Hello", " there,", " how", " are", " you", " today?"]
NO_USAGE_STREAM = [_chunk(""), *(_chunk(w) for w in WORDS), _chunk(finish="stop"), b"data: [DONE]\n\n"]
ASKED = request_json(model="gpt-4o", stream=True, stream_options={"include_usage": True},
                     messages=[{"role": "user", "content": "say hello to me please"}])
TEXT_TOKENS = -(-len("".join(WORDS)) // 4)


@pytest.mark.parametrize("driver", ["asgi", "wsgi"])
def test_a_stream_that_asked_for_usage_but_got_none_is_estimated(driver: str) -> None:
    exporter = InMemoryExporter()
    if driver == "asgi":
        run_asgi(LLMMetricsMiddleware(chunk_app(200, SSE, NO_USAGE_STREAM), exporters=[exporter]), body=ASKED)
    else:
        run_wsgi(LLMMetricsWSGIMiddleware(wsgi_chunk_app("200 OK", SSE, NO_USAGE_STREAM), exporters=[exporter]), body=ASKED)
    [call] = exporter.calls
    assert call.usage_source == "estimated" and call.usage is not None and call.usage.estimated
    assert call.usage.completion_tokens == TEXT_TOKENS
    # The prompt is measured as before: the strings under "messages", keys included.
    assert call.usage.prompt_tokens == -(-len("roleusercontentsay hello to me please") // 4)


def test_a_client_that_leaves_after_the_finish_chunk_is_estimated() -> None:
    exporter = InMemoryExporter()
    usage_chunk = b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15}}\n\n'
    stream = [*NO_USAGE_STREAM[:-1], usage_chunk, b"data: [DONE]\n\n"]
    app = LLMMetricsMiddleware(chunk_app(200, SSE, stream), exporters=[exporter])
    with pytest.raises(OSError):
        # start + every chunk up to the finish one: the send of the usage chunk fails
        run_asgi(app, body=ASKED, disconnect_after=1 + len(NO_USAGE_STREAM) - 1)
    [call] = exporter.calls
    assert (call.outcome, call.usage_source, call.usage.completion_tokens) == ("disconnected", "estimated", TEXT_TOKENS)


def test_a_stream_that_asked_for_usage_and_got_it_is_reported_exactly() -> None:
    exporter = InMemoryExporter()
    usage_chunk = b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15}}\n\n'
    stream = [*NO_USAGE_STREAM[:-1], usage_chunk, b"data: [DONE]\n\n"]
    run_asgi(LLMMetricsMiddleware(chunk_app(200, SSE, stream), exporters=[exporter]), body=ASKED)
    [call] = exporter.calls
    assert call.usage_source == "reported" and (call.usage.prompt_tokens, call.usage.total_tokens) == (9, 15)
    assert not call.usage.estimated
