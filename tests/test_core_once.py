"""The once-per-response steps of the core, each against a slower way that must agree.

read_chat's plain path against its field-by-field judging, the accumulator's tuple merge
against a per-field merge, usage_of's early return against its clamps, an empty body chunk
against none at all, and a streamed usage event of many near shapes against the same
object read as a whole JSON body.
"""

from __future__ import annotations

import gzip
import itertools
import json
import random
from typing import Any

import pytest

from llm_metrics_middleware._core.decoders import decompressor_for
from llm_metrics_middleware._core.extractor import JSON, SNIFF, SSE, Extraction, UsageExtractor
from llm_metrics_middleware._core.readers import SSEReader
from llm_metrics_middleware._core.usage import (
    MAX_TOKENS,
    Counts,
    Invalid,
    UsageAccumulator,
    _judged_chat,
    read_chat,
    usage_of,
)
from llm_metrics_middleware._core.whole import extract_whole_json


def _judged(usage: dict[str, Any]) -> Counts:
    """read_chat as the judged way alone reads it (every value through its checks)."""
    get = usage.get
    details = get("prompt_tokens_details")
    cached = details.get("cached_tokens") if type(details) is dict else None
    details = get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if type(details) is dict else None
    return _judged_chat(usage, get("prompt_tokens"), get("completion_tokens"), get("total_tokens"), cached, reasoning)


def _chat(p: Any = 10, c: Any = 5, t: Any = 15, cached: Any = 0, reasoning: Any = 0, **extra: Any) -> dict[str, Any]:
    return {
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": t,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0},
        **extra,
    }


_NEAR_CHAT: list[dict[str, Any]] = [
    _chat(),
    _chat(p=0, c=0, t=0),
    _chat(cached=4, reasoning=3),
    _chat(p=10, c=5, t=18, reasoning=3),  # xAI: reasoning beside the completion
    _chat(p=10, c=5, t=15, reasoning=3),  # OpenAI: reasoning inside it
    _chat(cached=40),  # more cached than prompt: usage_of caps it
    _chat(p=MAX_TOKENS, c=0, t=MAX_TOKENS),
    _chat(p=MAX_TOKENS - 1, c=MAX_TOKENS - 2, t=MAX_TOKENS),  # or-ed past the limit: judged, same
    _chat(p=10.0, c=5.0, t=15.0),
    _chat(cached=None),
    _chat(cached=None, prompt_cache_hit_tokens=7),  # DeepSeek
    _chat(reasoning=None),
    _chat(t=None),
    _chat(c=None),  # embeddings when there is a total
    _chat(c=None, t=None),
    {"prompt_tokens": 3, "total_tokens": 3},
    {"prompt_tokens": 3, "completion_tokens": 4},
    {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "prompt_tokens_details": None, "completion_tokens_details": None},
    {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "prompt_tokens_details": [], "completion_tokens_details": "x"},
    {},
]

_REFUSED_CHAT: list[dict[str, Any]] = [
    _chat(p=True),
    _chat(c=False),
    _chat(t=True),
    _chat(cached=True),
    _chat(reasoning=True),
    _chat(p=-1),
    _chat(c=-1, t=-1),
    _chat(reasoning=-3),
    _chat(p=MAX_TOKENS + 1),
    _chat(cached=2**70),
    _chat(p=1.5),
    _chat(p="10"),
    _chat(cached="1"),
    _chat(cached=None, prompt_cache_hit_tokens=-1),
]


@pytest.mark.parametrize("usage", _NEAR_CHAT, ids=range(len(_NEAR_CHAT)))
def test_read_chat_is_what_judging_every_field_gives(usage: dict[str, Any]) -> None:
    assert read_chat(usage) == _judged(usage)


@pytest.mark.parametrize("usage", _REFUSED_CHAT, ids=range(len(_REFUSED_CHAT)))
def test_read_chat_refuses_what_judging_refuses(usage: dict[str, Any]) -> None:
    with pytest.raises(Invalid):
        _judged(usage)
    with pytest.raises(Invalid):
        read_chat(usage)


def test_read_chat_plain_counts_exactly() -> None:
    assert read_chat(_chat()) == (10, 5, 15, 0, 0, None, None)
    assert read_chat(_chat(cached=4, reasoning=3)) == (10, 5, 15, 4, 3, None, None)
    assert read_chat(_chat(p=10, c=5, t=18, reasoning=3)) == (10, 8, 18, 0, 3, None, None)
    assert read_chat(_chat(cached=None, prompt_cache_hit_tokens=7)) == (10, 5, 15, 7, 0, None, None)
    assert read_chat(_chat(c=None)) == (10, 0, 15, 0, 0, None, None)


def _merged(updates: list[Counts]) -> Counts | None:
    """The per-field merge the accumulator stands for: the last value wins, the total is
    the last object's."""
    fields: list[int | None] = [None] * 7
    seen = False
    for counts in updates:
        if counts[0] is None and counts[1] is None and counts[2] is None:
            continue
        seen = True
        for i, value in enumerate(counts):
            if i == 2 or value is not None:
                fields[i] = value
    return tuple(fields) if seen else None  # type: ignore[return-value]


def test_accumulator_merges_per_field() -> None:
    rng = random.Random(7)
    values = [None, None, 0, 3, 10, 50]
    for _ in range(2000):
        updates: list[Counts] = [
            tuple(rng.choice(values) for _ in range(7))  # type: ignore[misc]
            for _ in range(rng.randint(0, 4))
        ]
        acc = UsageAccumulator()
        for counts in updates:
            acc.update(counts)
        merged = _merged(updates)
        assert acc.seen is (merged is not None)
        assert acc.counts == merged
        assert acc.result() == (usage_of(merged) if merged is not None else None)


def test_accumulator_keeps_raw_counts_not_capped_ones() -> None:
    # Cached above the prompt is capped by usage_of, at the end: a later, larger prompt
    # finds the cached count as reported.
    acc = UsageAccumulator()
    acc.update((5, 1, None, 8, None, None, None))
    acc.update((20, 2, None, None, None, None, None))
    usage = acc.result()
    assert usage is not None and (usage.prompt_tokens, usage.cached_tokens) == (20, 8)


def test_usage_of_without_cache_writes_is_its_clamps_with_zero() -> None:
    for p, c, t, cached, reasoning in itertools.product((None, 0, 7), (None, 0, 5), (None, 3, 12, 40), (None, 0, 9), (None, 2, 8)):
        plain = usage_of((p, c, t, cached, reasoning, None, None))
        assert plain == usage_of((p, c, t, cached, reasoning, 0, 0))
        if plain is not None:
            assert (plain.cache_write_tokens, plain.cache_write_1h_tokens) == (0, 0)
    usage = usage_of((10, 1, None, 4, None, 9, 12))
    assert usage is not None and (usage.cache_write_tokens, usage.cache_write_1h_tokens) == (6, 6)
    usage = usage_of((10, 1, None, None, None, None, 3))
    assert usage is not None and (usage.cache_write_tokens, usage.cache_write_1h_tokens) == (0, 0)


_STREAM = (
    b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":null}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}\n\n'
    b"data: [DONE]\n\n"
)


def _read(fmt: str, chunks: list[bytes], *, want_text: bool = True, gzipped: bool = False) -> Extraction:
    x = UsageExtractor(fmt, want_text=want_text, decompressor=decompressor_for("gzip") if gzipped else None)  # type: ignore[arg-type]
    for chunk in chunks:
        x.feed(chunk)
    return x.close()


def _events(body: bytes) -> list[bytes]:
    return [e + b"\n\n" for e in body.split(b"\n\n") if e]


@pytest.mark.parametrize("fmt", [SSE, SNIFF])
@pytest.mark.parametrize("want_text", [False, True])
def test_empty_chunks_change_nothing(fmt: str, want_text: bool) -> None:
    events = _events(_STREAM)
    expected = _read(fmt, events, want_text=want_text)
    assert expected.usage is not None and expected.usage.total_tokens == 7
    with_empty = [piece for e in events for piece in (b"", e, b"")]
    assert _read(fmt, with_empty, want_text=want_text) == expected
    # Cut anywhere, with empty chunks between the pieces.
    for cut in range(1, len(_STREAM), 37):
        assert _read(fmt, [b"", _STREAM[:cut], b"", _STREAM[cut:], b""], want_text=want_text) == expected


def test_empty_chunks_change_nothing_in_json_and_gzip() -> None:
    body = json.dumps({"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}).encode()
    expected = _read(JSON, [body])
    assert expected.usage is not None and expected.usage.total_tokens == 7
    assert _read(JSON, [b"", body[:5], b"", body[5:], b""]) == expected
    packed = gzip.compress(_STREAM)
    expected = _read(SSE, [packed], gzipped=True)
    assert expected.usage is not None
    assert _read(SSE, [b"", packed[:20], b"", packed[20:], b""], gzipped=True) == expected
    # A byte order mark split by an empty chunk is still a mark.
    assert _read(JSON, [b"\xef", b"", b"\xbb\xbf" + body]) == _read(JSON, [body])


def test_a_last_empty_chunk_builds_no_sse_decoder() -> None:
    x = UsageExtractor(SSE, want_text=True)
    for e in _events(_STREAM):
        x.feed(e)
    x.feed(b"")
    reader = x._reader
    assert isinstance(reader, SSEReader) and reader._decoder is None
    assert x.close().usage is not None


# The last object of a stream, in shapes near OpenAI's usage chunk and of other providers;
# each read as a streamed event must give what the same object gives as a whole body.
_USAGE_OBJECTS: list[bytes] = [
    b'{"id":"c","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":52,"completion_tokens":60,"total_tokens":112,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}',
    b'{"id": "c", "model": "gpt-4o-mini", "choices": [], "usage": {"prompt_tokens": 52, "completion_tokens": 60, "total_tokens": 112}}',
    b'{"model":"m","usage":{"prompt_tokens":52,"completion_tokens":60,"total_tokens":112,"extra":{"x":1},"prompt_tokens_details":{"cached_tokens":50}},"extra":[1,2]}',
    b'{"model":"m","usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":18,"completion_tokens_details":{"reasoning_tokens":3}}}',
    b'{"model":"m","usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":40}}}',
    b'{"model":"m","usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"prompt_tokens_details":null,"completion_tokens_details":null}}',
    b'{"model":"m","usage":{"prompt_tokens":10.0,"completion_tokens":5,"total_tokens":15}}',
    b'{"model":"m","usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_cache_hit_tokens":4}}',
    b'{"model":"m","usage":{"prompt_tokens":10,"total_tokens":10}}',
    b'{"model":"m","usage":{"prompt_tokens":true,"completion_tokens":5,"total_tokens":15}}',
    b'{"model":"m","usage":{"prompt_tokens":-1,"completion_tokens":5,"total_tokens":15}}',
    b'{"model":"m","usage":null}',
    b'{"model":"m","usage":{}}',
    b'{"model":"m","usage":{"input_tokens":10,"output_tokens":5,"total_tokens":15,"input_tokens_details":{"cached_tokens":2}}}',
    b'{"type":"message_delta","usage":{"input_tokens":10,"cache_read_input_tokens":4,"cache_creation_input_tokens":3,"output_tokens":6}}',
    b'{"modelVersion":"gemini-2.0","usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":5,"thoughtsTokenCount":2,"totalTokenCount":17}}',
    b'{"response":{"model":"r","usage":{"input_tokens":10,"output_tokens":5,"total_tokens":15}},"type":"response.completed"}',
    b'{"model":"llama3","done":true,"prompt_eval_count":10,"eval_count":5}',
]


@pytest.mark.parametrize("obj", _USAGE_OBJECTS, ids=range(len(_USAGE_OBJECTS)))
@pytest.mark.parametrize("space", [b"", b" "])
def test_a_streamed_usage_event_reads_as_the_same_whole_body(obj: bytes, space: bytes) -> None:
    first = b'data: {"id":"c","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}\n\n'
    whole = extract_whole_json(obj)
    streamed = _read(SSE, [first, b"data:" + space + obj + b"\n\n", b"data: [DONE]\n\n", b""], want_text=False)
    assert streamed.usage == whole.usage
    assert streamed.error == whole.error
    if whole.usage is not None:
        assert streamed.provider == whole.provider
    assert streamed.model == "gpt-4o-mini"  # the first event's, as before


def test_the_usage_chunk_of_a_stream_counts_exactly() -> None:
    x = _read(SSE, _events(_STREAM), want_text=False)
    assert x.usage is not None
    assert (x.usage.prompt_tokens, x.usage.completion_tokens, x.usage.total_tokens, x.usage.cached_tokens) == (5, 2, 7, 0)
    assert (x.model, x.provider, x.error) == ("gpt-4o-mini", "openai", None)
