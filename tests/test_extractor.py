from __future__ import annotations

import json

import pytest

from llm_metrics_middleware import UsagePointers
from llm_metrics_middleware._core.extractor import JSON, NONE, SNIFF, SSE, UsageExtractor, body_format

from .drive import split


@pytest.mark.parametrize(
    "content_type,fmt",
    [
        ("text/event-stream", SSE),
        ("text/event-stream; charset=utf-8", SSE),
        ("text/event-stream;charset=UTF-8", SSE),  # no space: Z.ai, Hugging Face's router
        ("text/event-stream;charset=utf-8", SSE),
        ("TEXT/EVENT-STREAM", SSE),
        ("application/json", JSON),
        ("application/json; charset=utf-8", JSON),
        ("application/json;charset=UTF-8", JSON),
        ("application/vnd.api+json", JSON),
        ("application/x-ndjson", JSON),
        ("application/jsonl", JSON),
        ("text/plain", SNIFF),
        ("application/octet-stream", SNIFF),
        (None, SNIFF),
        ("", SNIFF),
        ("text/html", NONE),
        ("image/png", NONE),
    ],
)
def test_body_format(content_type: str | None, fmt: str) -> None:
    assert body_format(content_type) == fmt


@pytest.mark.parametrize(
    "body,total",
    [
        (b'  {"usage": {"prompt_tokens": 1, "completion_tokens": 2}}', 3),
        (b'data: {"usage": {"prompt_tokens": 1, "completion_tokens": 2}}\n\n', 3),
        (b': hello\n\ndata: {"usage": {"input_tokens": 4, "output_tokens": 1}}\n\n', 5),
        (b'[{"usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 2}}]', 4),
    ],
)
def test_sniffing_when_content_type_says_nothing(body: bytes, total: int) -> None:
    for size in (1, 3, len(body)):
        x = UsageExtractor(SNIFF)
        for piece in split(body, size):
            x.feed(piece)
        result = x.close()
        assert result.usage is not None and result.usage.total_tokens == total


def test_html_is_not_read() -> None:
    x = UsageExtractor(SNIFF)
    x.feed(b"<html>usage</html>")
    assert x.close().usage is None


def test_custom_pointers_json_and_sse() -> None:
    pointers = UsagePointers(
        prompt_tokens="/meta/billing/in", completion_tokens="/meta/billing/out",
        total_tokens="/meta/billing/sum", model="/engine/0/name",
    )
    body = json.dumps({"engine": [{"name": "acme-7b"}], "meta": {"billing": {"in": 11, "out": 22, "sum": 33}}}).encode()
    for size in (1, 5, 1000):
        x = UsageExtractor(JSON, custom=pointers)
        for piece in split(body, size):
            x.feed(piece)
        result = x.close()
        assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (11, 22, 33)
        assert result.model == "acme-7b" and result.provider == "custom"
    sse = b"".join(b"data: " + json.dumps({"engine": [{"name": "acme-7b"}], "t": "x" * 10}).encode() + b"\n\n" for _ in range(3))
    sse += b"data: " + json.dumps({"meta": {"billing": {"in": 1, "out": 2}}}).encode() + b"\n\n"
    x = UsageExtractor(SSE, custom=pointers)
    for piece in split(sse, 7):
        x.feed(piece)
    result = x.close()
    assert result.usage.total_tokens == 3


def test_pointer_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="must start with '/'"):
        UsagePointers(prompt_tokens="usage.in", completion_tokens="/out")
    with pytest.raises(ValueError, match="empty JSON pointer"):
        UsagePointers(prompt_tokens="", completion_tokens="/out")


def test_cumulative_stream_usage_last_wins() -> None:
    events = [
        {"model": "g", "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 1, "totalTokenCount": 11}},
        {"usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15}},
        {"usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 9, "thoughtsTokenCount": 4, "totalTokenCount": 23}},
    ]
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in events)
    x = UsageExtractor(SSE)
    for piece in split(body, 1):
        x.feed(piece)
    usage = x.close().usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.reasoning_tokens) == (10, 13, 23, 4)


def test_large_sse_event_with_usage_is_scanned_not_kept() -> None:
    big = json.dumps({"model": "m", "choices": [{"delta": {"content": "y" * 100_000}}], "usage": {"prompt_tokens": 5, "completion_tokens": 6}}).encode()
    x = UsageExtractor(SSE)
    for piece in split(b"data: " + big + b"\n\n", 4096):
        x.feed(piece)
    assert x.close().usage.total_tokens == 11


def test_streams_without_model_stop_being_parsed_but_usage_is_still_found(monkeypatch: pytest.MonkeyPatch) -> None:
    import llm_metrics_middleware._core.readers as readers_module

    calls = []
    real_loads = readers_module.loads

    def counting_loads(data: bytes) -> object:
        calls.append(data)
        return real_loads(data)

    monkeypatch.setattr(readers_module, "loads", counting_loads)
    stream = b"".join(b'data: {"tick": %d}\n\n' % i for i in range(1000))
    stream += b'data: {"usage": {"input_tokens": 2, "output_tokens": 3}}\n\n'
    x = UsageExtractor(SSE)
    for piece in split(stream, 17):
        x.feed(piece)
    assert x.close().usage.total_tokens == 5
    assert len(calls) <= 20


def test_close_sets_every_field_of_the_extraction() -> None:
    # close() fills the slotted Extraction field by field, without its __init__.
    import dataclasses

    from llm_metrics_middleware._core.extractor import Extraction

    x = UsageExtractor(SSE, want_text=True)
    x.feed(b'data: {"model":"m","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}\n\n')
    result = x.close()
    assert all(hasattr(result, f.name) for f in dataclasses.fields(Extraction))
    assert result == Extraction(result.usage, "m", "openai", SSE, result.text_tokens, None)
    assert result.usage is not None and result.usage.total_tokens == 3
