"""The skimming template of SSE streams: the text it counts is the text the regex counts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llm_metrics_middleware._core.extractor import SSE, UsageExtractor
from llm_metrics_middleware._core.providers.facts import TEXT_FIELD

BODIES = Path(__file__).parent / "wire" / "bodies"
SSE_BODIES = sorted(p.name for p in BODIES.glob("*.sse"))


def events_of(body: bytes) -> list[bytes]:
    """One chunk per event, as a server writes them."""
    sep = b"\r\n\r\n" if b"\r\n\r\n" in body else b"\n\n"
    return [e + sep for e in body.split(sep) if e.strip()]


def regex_text_bytes(chunks: list[bytes]) -> int:
    return sum(len(m.group(1)) for c in chunks for m in TEXT_FIELD.finditer(c))


def text_tokens(chunks: list[bytes]) -> int:
    x = UsageExtractor(SSE, want_text=True)
    for c in chunks:
        x.feed(c)
    return x.close().text_tokens


def chat_chunk(text: str, extra: str = "") -> bytes:
    obj = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
           "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode()[:-1] + extra.encode() + b"}\n\n"


@pytest.mark.parametrize("name", SSE_BODIES)
def test_recorded_streams_count_what_the_regex_counts(name: str) -> None:
    chunks = events_of((BODIES / name).read_bytes())
    assert text_tokens(chunks) == -(-regex_text_bytes(chunks) // 4)


@pytest.mark.parametrize("text", ["plain", "", 'with \\"quote\\"', "new\\nline", "ends with \\\\", "é ü", "\\u00e9"])
def test_chunks_that_differ_from_the_template_fall_back_to_the_regex(text: str) -> None:
    raw = [chat_chunk(f"word{i}") for i in range(20)]
    # The JSON text of a string is what the regex sees: build the chunk from raw bytes.
    raw.insert(10, raw[0].replace(b'"word0"', b'"' + text.encode() + b'"'))
    raw.append(chat_chunk("x", ',"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}'))
    x = UsageExtractor(SSE, want_text=True)
    for c in raw:
        x.feed(c)
    result = x.close()
    assert result.usage is not None and result.usage.total_tokens == 3  # the usage chunk was not skimmed
    assert result.text_tokens == -(-regex_text_bytes(raw) // 4)


def test_a_second_text_field_in_a_templated_chunk_is_counted() -> None:
    chunks = [chat_chunk(f"w{i}") for i in range(10)]
    chunks.append(chunks[0].replace(b'"content":"w0"', b'"content":"ab","reasoning_content":"cdef"'))
    assert text_tokens(chunks) == -(-regex_text_bytes(chunks) // 4)


def test_token_counter_sees_the_decoded_text_on_the_template_path() -> None:
    seen: list[str] = []

    def counter(text: str) -> int:
        seen.append(text)
        return len(text.split())

    chunks = [chat_chunk(f" w{i}") for i in range(30)] + [chat_chunk(" caf\u00e9 \"q\"")]
    x = UsageExtractor(SSE, want_text=True, token_counter=counter)
    for c in chunks:
        x.feed(c)
    assert x.close().text_tokens == 32  # 30 words, then "café" and "\"q\""
    assert "".join(seen) == "".join(f" w{i}" for i in range(30)) + ' caf\u00e9 "q"'


def test_template_is_not_learnt_from_a_value_followed_by_a_key() -> None:
    assert re.compile(rb'"\s*:').match(b'": 1}') is not None


def usage_null_chunk(text: str) -> bytes:
    """An OpenAI chunk of a stream that asked for usage: ``"usage":null`` after the choices."""
    return chat_chunk(text, ',"usage":null')


def test_include_usage_stream_without_its_usage_chunk_is_still_estimated() -> None:
    chunks = [usage_null_chunk(f" w{i}") for i in range(50)]
    x = UsageExtractor(SSE, want_text=True)
    for c in chunks:
        x.feed(c)
    result = x.close(ended=False)  # the client left before the usage chunk
    assert result.usage is None
    assert result.text_tokens == -(-regex_text_bytes(chunks) // 4) > 0


@pytest.mark.parametrize(
    "inside",
    [
        'ab","reasoning_content":"cdef',  # a second string, and text in it
        'x \\',  # the quote after the text is escaped: not the template's tail
    ],
)
def test_a_chunk_with_the_template_around_something_else_is_read(inside: str) -> None:
    chunks = [usage_null_chunk(f"w{i}") for i in range(20)]
    odd = chunks[0].replace(b'"w0"', b'"' + inside.encode() + b'"')
    chunks[10:10] = [odd] * 40  # enough of them that a miscount shows in the tokens
    x = UsageExtractor(SSE, want_text=True)
    for c in chunks:
        x.feed(c)
    # Not skimmed as the template: counted as the regex counts it (the escaped quote makes
    # the string run on into the tail, so the regex sees other text there).
    assert x.close().text_tokens == -(-regex_text_bytes(chunks) // 4)


def test_chunks_that_are_not_bytes_never_raise_on_the_skim_path() -> None:
    chunks = [usage_null_chunk(f"w{i}") for i in range(20)]
    x = UsageExtractor(SSE, want_text=True)
    for c in chunks:
        x.feed(c)
    x.feed(memoryview(chunks[0]))  # type: ignore[arg-type]
    x.feed("data: {}\n\n")  # type: ignore[arg-type]
    x.close()
