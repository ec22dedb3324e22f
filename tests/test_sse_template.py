"""The skimming template of SSE streams: the text it counts is the text the regex counts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llm_metrics_middleware._core import template
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


@pytest.fixture(params=[True, False], ids=["identity", "lengths"])
def both_shape_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The template test as CPython runs it (identity of what removeprefix/removesuffix
    return) and as other implementations do (lengths): both must reject the same chunks."""
    monkeypatch.setattr(template, "_RETURNS_SELF", request.param)


def chat_chunk(text: str, extra: str = "") -> bytes:
    obj = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
           "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode()[:-1] + extra.encode() + b"}\n\n"


@pytest.mark.parametrize("name", SSE_BODIES)
def test_recorded_streams_count_what_the_regex_counts(name: str) -> None:
    chunks = events_of((BODIES / name).read_bytes())
    assert text_tokens(chunks) == -(-regex_text_bytes(chunks) // 4)


@pytest.mark.parametrize("text", ["plain", "", 'with \\"quote\\"', "new\\nline", "ends with \\\\", "é ü", "\\u00e9"])
def test_chunks_that_differ_from_the_template_fall_back_to_the_regex(text: str, both_shape_tests: None) -> None:
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


def test_a_second_text_field_in_a_templated_chunk_is_counted(both_shape_tests: None) -> None:
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
def test_a_chunk_with_the_template_around_something_else_is_read(inside: str, both_shape_tests: None) -> None:
    chunks = [usage_null_chunk(f"w{i}") for i in range(20)]
    odd = chunks[0].replace(b'"w0"', b'"' + inside.encode() + b'"')
    chunks[10:10] = [odd] * 40  # enough of them that a miscount shows in the tokens
    x = UsageExtractor(SSE, want_text=True)
    for c in chunks:
        x.feed(c)
    # Not skimmed as the template: counted as the regex counts it (the escaped quote makes
    # the string run on into the tail, so the regex sees other text there).
    assert x.close().text_tokens == -(-regex_text_bytes(chunks) // 4)


class _Bytes(bytes):
    pass


@pytest.mark.parametrize("kind", [bytearray, _Bytes])
def test_chunks_of_another_bytes_type_are_read_not_skimmed(kind: type[bytes], both_shape_tests: None) -> None:
    # removeprefix/removesuffix always return a new object on these: the identity test
    # must not take that for a head and a tail (a chunk without quotes would be "text").
    chunks = [usage_null_chunk(f"w{i}") for i in range(20)]
    odd = [kind(b"data: no quotes here\n\n")] * 40 + [kind(chunks[0]), kind(chunks[0].replace(b'"w0"', b'"a","b":"c"'))]
    x = UsageExtractor(SSE, want_text=True)
    for c in chunks + odd:
        x.feed(c)
    assert x.close().text_tokens == -(-regex_text_bytes(chunks + [bytes(c) for c in odd]) // 4)


def test_the_template_shape_is_not_confused_by_empty_or_short_chunks(both_shape_tests: None) -> None:
    chunks = [usage_null_chunk(f"w{i}") for i in range(20)]
    head, _, tail = chunks[0].partition(b"w0")
    # Whole events (a split one is read across chunks, which the per-chunk regex is not):
    # empty text; the tail alone; head and tail overlapping by a byte; an escaped
    # backslash before the closing quote; an empty chunk.
    odd = [head + tail, tail, head[:-1] + tail, head + tail[1:], b"", head + b"\\\\" + tail]
    x = UsageExtractor(SSE, want_text=True)
    for c in chunks + odd + chunks:
        x.feed(c)
    assert x.close().text_tokens == -(-regex_text_bytes(chunks + odd + chunks) // 4)


def test_chunks_that_are_not_bytes_never_raise_on_the_skim_path() -> None:
    chunks = [usage_null_chunk(f"w{i}") for i in range(20)]
    x = UsageExtractor(SSE, want_text=True)
    for c in chunks:
        x.feed(c)
    x.feed(memoryview(chunks[0]))  # type: ignore[arg-type]
    x.feed("data: {}\n\n")  # type: ignore[arg-type]
    x.close()


def test_a_stream_read_for_its_usage_alone_skims_and_still_finds_usage_in_a_templated_chunk(both_shape_tests: None) -> None:
    # want_text=False (the request asked for usage): template chunks are skipped without
    # measuring their text, but one whose template surrounds a usage object is read.
    # (Chunks without "usage":null after the choices: JSON's last key would win.)
    chunks = [chat_chunk(f"w{i}") for i in range(30)]
    usage = '"}}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12},"x":[{"d":{"c":"'
    chunks.insert(20, chunks[0].replace(b'"w0"', b'"a' + usage.encode() + b'b"'))
    x = UsageExtractor(SSE, want_text=False)
    for c in chunks:
        x.feed(c)
    result = x.close()
    assert result.usage is not None and (result.usage.prompt_tokens, result.usage.total_tokens) == (5, 12)
    assert result.text_tokens == 0


def test_a_stream_read_for_its_usage_alone_reads_the_usage_chunk_after_the_template() -> None:
    chunks = [usage_null_chunk(f"w{i}") for i in range(30)]
    chunks.append(b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],'
                  b'"usage":{"prompt_tokens":3,"completion_tokens":30,"total_tokens":33}}\n\n')
    x = UsageExtractor(SSE, want_text=False)
    for c in [*chunks, b"data: [DONE]\n\n"]:
        x.feed(c)
    result = x.close()
    assert result.usage is not None and result.usage.completion_tokens == 30
    assert (result.model, result.text_tokens) == ("m", 0)
