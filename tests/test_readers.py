"""The extractor's readers: each body format whole, byte by byte, at every split, on both JSON
parsing paths; and the swaps between readers."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from typing import Any

import pytest

from llm_metrics_middleware._core import readers
from llm_metrics_middleware._core.decoders import decompressor_for
from llm_metrics_middleware._core.extractor import EVENTSTREAM, JSON, NONE, SNIFF, SSE, UsageExtractor
from llm_metrics_middleware._core.findings import Findings
from llm_metrics_middleware._core.readers import (
    READERS,
    EventStreamReader,
    ScannedJSONReader,
    SmallJSONReader,
    SniffReader,
    SSEReader,
    Stopped,
)

from .splits import check_every_split

CHAT = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi \"there\" \\ é"}}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 100, "total_tokens": 112,
              "prompt_tokens_details": {"cached_tokens": 4}},
}, ensure_ascii=False).encode()
NDJSON = (
    b'{"model":"llama3","message":{"content":"a"},"done":false}\n'
    b'{"model":"llama3","done":true,"prompt_eval_count":5,"eval_count":7}\n'
)
ARRAY = b'[{"candidates":[],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":4,"totalTokenCount":7},"modelVersion":"g"}]'
STREAM = (
    b'event: message_start\r\ndata: {"type":"message_start","message":{"model":"claude","usage":{"input_tokens":9,"output_tokens":1}}}\r\n\r\n'
    b': ping\r\n\r\n'
    b'data: {"type":"content_block_delta","delta":{"type":"text_delta","text":"Hi"}}\r\n\r\n'
    b'data: {"type":"message_delta","usage":{"output_tokens":6}}\r\n\r\n'
)

# (format, body, (prompt, completion, total, cached), model, provider, format read)
BODIES = [
    (JSON, CHAT, (12, 100, 112, 4), "gpt-4o", "openai", JSON),
    (JSON, NDJSON, (5, 7, 12, 0), "llama3", "ollama", JSON),
    (JSON, ARRAY, (3, 4, 7, 0), "g", "gcp.gemini", JSON),
    (SSE, STREAM, (9, 6, 15, 0), "claude", "anthropic", SSE),
    (SNIFF, b"  \n" + CHAT, (12, 100, 112, 4), "gpt-4o", "openai", JSON),
    (SNIFF, STREAM, (9, 6, 15, 0), "claude", "anthropic", SSE),
]


def _extract(fmt: str, chunks: Sequence[bytes], **options: Any) -> Any:
    x = UsageExtractor(fmt, **options)
    for chunk in chunks:
        x.feed(chunk)
    result = x.close()
    usage = result.usage
    counts = None if usage is None else (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.cached_tokens)
    return counts, result.model, result.provider, result.format, result.error


@pytest.mark.parametrize("fmt,body,counts,model,provider,read_as", BODIES, ids=[f"{b[0]}-{i}" for i, b in enumerate(BODIES)])
def test_every_format_however_cut(parse_path: str, fmt: str, body: bytes, counts: Any, model: str, provider: str, read_as: str) -> None:
    expected = (counts, model, provider, read_as, None)
    check_every_split(lambda chunks: _extract(fmt, chunks), body, expected, examples=30)


def test_the_parse_path_fixture_forces_the_scanner(parse_path: str) -> None:
    x = UsageExtractor(JSON)
    x.feed(CHAT)
    assert isinstance(x._reader, ScannedJSONReader if parse_path == "scanner" else SmallJSONReader)


def test_readers_table_covers_every_readable_format() -> None:
    assert {SNIFF: SniffReader, JSON: SmallJSONReader, SSE: SSEReader, EVENTSTREAM: EventStreamReader} == READERS
    assert isinstance(UsageExtractor(NONE)._reader, Stopped)


def test_small_json_swaps_to_the_scanner_past_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "SMALL_BODY", 100)
    found = Findings(None, None, ())
    reader: readers.Reader = SmallJSONReader(found)
    reader = reader.feed(CHAT[:60])
    assert isinstance(reader, SmallJSONReader)
    reader = reader.feed(CHAT[60:])
    assert isinstance(reader, ScannedJSONReader)  # everything so far went into the scanner
    reader.close()
    result = found.result()
    assert result is not None and result.total_tokens == 112 and found.model == "gpt-4o"


def test_sniffer_swaps_to_the_reader_of_the_first_byte() -> None:
    found = Findings(None, None, ())
    assert isinstance(SniffReader(found, True).feed(b"  "), SniffReader)
    assert isinstance(SniffReader(found, True).feed(b' {"a": 1}'), SmallJSONReader)
    assert isinstance(SniffReader(found, True).feed(b"data: x"), SSEReader)
    assert isinstance(SniffReader(found, True).feed(b"<html>"), Stopped)


def test_sse_reader_skims_once_the_model_is_known() -> None:
    x = UsageExtractor(SSE)
    x.feed(b'data: {"model":"m","choices":[]}\n\n')
    reader = x._reader
    assert isinstance(reader, SSEReader) and reader.skim is not None
    # A compressed stream is never skimmed: its chunks are not whole events.
    compressed = UsageExtractor(SSE, decompressor=decompressor_for("gzip"))
    compressed.feed(gzip.compress(b'data: {"model":"m","choices":[]}\n\n'))
    assert isinstance(compressed._reader, SSEReader) and compressed._reader.skim is None


def test_a_bug_in_a_reader_is_malformed_and_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: Findings, obj: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(Findings, "on_object", boom)
    for fmt, body in ((SSE, STREAM), (JSON, CHAT)):
        x = UsageExtractor(fmt)
        x.feed(body)
        x.feed(body)
        result = x.close()
        assert result.usage is None and result.error == "malformed", fmt


@pytest.mark.parametrize("fmt,body,counts,model,provider,read_as", BODIES, ids=[f"{b[0]}-{i}" for i, b in enumerate(BODIES)])
def test_a_leading_byte_order_mark_is_dropped_however_cut(
    parse_path: str, fmt: str, body: bytes, counts: Any, model: str, provider: str, read_as: str
) -> None:
    # WHATWG: "a single U+FEFF BYTE ORDER MARK character at the start of a stream is ignored";
    # RFC 8259 lets a JSON parser ignore one too. Some servers (.NET's among them) send it.
    expected = (counts, model, provider, read_as, None)
    check_every_split(lambda chunks: _extract(fmt, chunks), b"\xef\xbb\xbf" + body.lstrip(), expected, examples=20)


def test_a_byte_order_mark_in_a_compressed_stream_is_dropped() -> None:
    data_first = STREAM.split(b"\r\n", 1)[1]  # the mark then "data:", so a kept mark would hide the usage
    compressed = gzip.compress(b"\xef\xbb\xbf" + data_first)
    for size in (1, 7, len(compressed)):
        x = UsageExtractor(SSE, decompressor=decompressor_for("gzip"))
        for i in range(0, len(compressed), size):
            x.feed(compressed[i : i + size])
        usage = x.close().usage
        assert usage is not None and usage.total_tokens == 15


def test_a_mark_before_the_first_data_line_hides_nothing() -> None:
    data_first = STREAM.split(b"\r\n", 1)[1]
    for fmt in (SSE, SNIFF):
        check_every_split(lambda chunks: _extract(fmt, chunks), b"\xef\xbb\xbf" + data_first,
                          ((9, 6, 15, 0), "claude", "anthropic", SSE, None), examples=20)


def test_bodies_shorter_than_a_mark_are_still_read() -> None:
    for body, fmt in ((b"\xef", SNIFF), (b"\xef\xbb", JSON), (b"{}", JSON)):
        result = _extract(fmt, [body])
        assert result[0] is None


def test_a_long_gemini_json_array_stream_is_read_as_it_passes_in_constant_memory() -> None:
    # streamGenerateContent without alt=sse: one JSON array written an element at a time,
    # each element's usageMetadata cumulative. The recorded Vertex AI stream's elements are
    # repeated to 1 MB, joined by both separators Google's clients split on ("\n,\n" as
    # captured, "\n,\r\n"); only the last element's counts may be reported, and memory
    # must not grow with the array.
    import tracemalloc
    from pathlib import Path

    recorded = json.loads((Path(__file__).parent / "wire" / "bodies" / "vertex-stream-json-array.json").read_bytes())
    first, last = (json.dumps(e, indent=2).encode() for e in recorded)
    middle = first + b"\n,\r\n" + first + b"\n,\n"
    count = 1024 * 1024 // len(middle)
    chunk = b"[" + middle * 16
    x = UsageExtractor(JSON)
    tracemalloc.start()
    try:
        x.feed(chunk)
        for _ in range(count // 16):
            x.feed(middle * 16)
        x.feed(last + b"\n]")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    result = x.close()
    assert result.usage is not None and result.error is None
    want = recorded[-1]["usageMetadata"]
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (
        want["promptTokenCount"], want["candidatesTokenCount"], want["totalTokenCount"])
    assert result.model == "gemini-2.5-flash-lite"
    assert peak < 256 * 1024, f"peak {peak} bytes for a 1 MB array"
