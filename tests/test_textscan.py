"""The compiled event searches (``_textscan.c``) give the answers of their patterns.

:class:`~llm_metrics_middleware._core.textscan.PyTextFields` and
:class:`~llm_metrics_middleware._core.textscan.PyUsageHint` are the reference (the regular
expressions the extractor ran before); where the extension was built, the compiled ones are
held to them here on generated event data made of the bytes that matter (quotes, escapes,
whitespace of every kind, colons, the names and keys themselves, null), on recorded
provider chunks, and on what neither should ever take. Without the extension the tests
that compare are skipped, and the extractor's own tests cover the Python path
(``test_template_front.py`` runs them with ``LLM_METRICS_NO_EXTENSIONS=1``).
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_metrics_middleware._core import textscan
from llm_metrics_middleware._core.providers import facts
from llm_metrics_middleware._core.textscan import CTextFields, CUsageHint, PyTextFields, PyUsageHint

compiled = pytest.mark.skipif(
    CTextFields is None or CUsageHint is None,
    reason="no compiled searches to compare: _textscan.c was not built or LLM_METRICS_NO_EXTENSIONS is set",
)

NAMES = tuple(f.encode() for f in facts.STREAM_TEXT_FIELDS)
KEYS = tuple(k.encode() for k in facts.USAGE_HINT_KEYS)
MARKERS = facts.USAGE_MARKERS

# What event data is made of, where the two could part: every byte the patterns test.
PIECES = st.sampled_from(
    [
        b'"',
        b"\\",
        b'\\"',
        b"\\\\",
        b":",
        b",",
        b"{",
        b"}",
        b"[",
        b" ",
        b"\t",
        b"\n",
        b"\r",
        b"\x0b",
        b"\x0c",
        b"\x1c",
        b"\xa0",
        b"\xc3\xa9",
        b"a",
        b"null",
        b"nul",
        b"data: ",
        b"\x00",
        *(n for n in NAMES),
        *(b'"%s"' % n for n in NAMES),
        *(b'"%s":"' % n for n in NAMES),
        *(k for k in KEYS),
        *(b'"%s"' % k for k in KEYS),
        *MARKERS,
        b"usageMeta",
        b"eval_coun",
    ]
)
DATA = st.lists(PIECES, max_size=40).map(b"".join)

# Recorded chunk shapes (OpenAI chat, Anthropic messages, Gemini, Ollama, Responses), as
# the wire tests replay them (tests/wire/), cut to what matters here.
RECORDED = [
    b'data: {"id":"chatcmpl-B9","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}\n\n',
    b'data: {"id":"chatcmpl-B9","choices":[{"index":0,"delta":{"content":" Tokens \\"quoted\\" \\\\"},"finish_reason":null}],"usage":null}\n\n',
    b'data: {"id":"chatcmpl-B9","choices":[],"usage":{"prompt_tokens":52,"completion_tokens":60,"total_tokens":112}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}\n\n',
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage": {"output_tokens":15}}\n\n',
    b'data: {"candidates": [{"content": {"parts": [{"text": "Hi"}],"role": "model"}}],"usageMetadata": {"promptTokenCount": 4}}\r\n\r\n',
    b'{"model":"llama3","created_at":"2024","response":"","done":true,"eval_count":298}\n',
    b'data: {"type":"response.output_text.delta","delta":"Hi","item_id":"msg_1"}\n\n',
    b"data: [DONE]\n\n",
]


def both_fields(names: tuple[bytes, ...] = NAMES) -> tuple[Any, Any]:
    assert CTextFields is not None
    return PyTextFields(names), CTextFields(names)


def both_hints(keys: tuple[bytes, ...] = KEYS, markers: tuple[bytes, ...] = MARKERS) -> tuple[Any, Any]:
    assert CUsageHint is not None
    return PyUsageHint(keys, markers), CUsageHint(keys, markers)


def test_the_reference_is_the_facts_pattern() -> None:
    """The Python searches are the patterns facts.py exports (what the tests of the put-off
    text and the template compare with): the same spans, the same hints."""
    fields = PyTextFields(NAMES)
    hint = PyUsageHint(KEYS, ())
    for data in RECORDED:
        assert fields.spans(data) == [m.span(1) for m in facts.TEXT_FIELD.finditer(data)]
        assert hint.seen(data) == (facts.USAGE_HINT.search(data) is not None)
    assert facts.STREAM_TEXT.spans(RECORDED[1]) == [m.span(1) for m in facts.TEXT_FIELD.finditer(RECORDED[1])]


def test_the_searches_in_use_are_the_compiled_ones_where_built() -> None:
    assert textscan.TextFields is (CTextFields or PyTextFields)
    assert textscan.UsageHint is (CUsageHint or PyUsageHint)


@compiled
@settings(max_examples=3000, deadline=None)
@given(DATA)
def test_text_spans_alike(data: bytes) -> None:
    py, c = both_fields()
    assert c.spans(data) == py.spans(data)


@compiled
@settings(max_examples=3000, deadline=None)
@given(DATA)
def test_usage_hints_alike(data: bytes) -> None:
    for keys, markers in ((KEYS, MARKERS), (KEYS, ()), ((b"usage",), ()), ((b"a", b"ab"), (b'b"',))):
        py, c = both_hints(keys, markers)
        assert c.seen(data) is py.seen(data), (keys, markers)


@compiled
@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"ab", b"delta", b"text"]), min_size=1, max_size=4, unique=True), DATA)
def test_other_names_alike(names: list[bytes], data: bytes) -> None:
    """An operation's own fields (the Responses API reads ``delta`` alone), and names that
    are prefixes of each other."""
    py, c = both_fields(tuple(names))
    assert c.spans(data) == py.spans(data)


@compiled
@pytest.mark.parametrize("data", RECORDED)
def test_recorded_chunks_alike(data: bytes) -> None:
    (pyf, cf), (pyh, ch) = both_fields(), both_hints()
    assert cf.spans(data) == pyf.spans(data)
    assert ch.seen(data) is pyh.seen(data)
    for kind in (bytearray, memoryview):
        assert cf.spans(kind(data)) == pyf.spans(kind(data))
        assert ch.seen(kind(data)) is pyh.seen(kind(data))


@compiled
def test_edges_alike() -> None:
    """Where a hand-written search goes wrong: the first byte, the last, an escape the
    data ends in, a key at the very end, null cut short, whitespace that \\s takes and
    bytes it does not."""
    cases = [
        b'"content":"x"',
        b' "content":"x"',
        b'{"content":"x',
        b'{"content":"x\\',
        b'{"content":"x\\"',
        b'{"content" \t\n\r\x0b\x0c: \x0c"x"',
        b'{"content"\x1c:"x"',
        b'{"content":\xa0"x"',
        b'{"content":"a\\\nb"',
        b'\\"content":"x"',
        b'{"content":"x""content":"y"',
        b'{"content":"x",,"text":"y"',
        b"",
        b'"usage"',
        b'"usage":',
        b'"usage":nul',
        b'"usage": null',
        b'"usage":\nnull',
        b'"usage":\x1cnull',
        b'"usage"\t:{',
        b"usage",
        b'usageMetadata":{',
        b'usageMetadata" :null,"usage":{}',
        b'eval_count"',
        b"eval_count",
        b'x"usage":null "usage":1',
    ]
    (pyf, cf), (pyh, ch) = both_fields(), both_hints()
    for data in cases:
        assert cf.spans(data) == pyf.spans(data), data
        assert ch.seen(data) is pyh.seen(data), data


@compiled
def test_what_neither_takes() -> None:
    """A str is refused by both (TypeError, as the patterns refuse it); so are needles
    that are not a tuple of non-empty bytes, with a message naming the argument."""
    (pyf, cf), (pyh, ch) = both_fields(), both_hints()
    for search in (pyf.spans, cf.spans, pyh.seen, ch.seen):
        with pytest.raises(TypeError):
            search("data: {}")  # type: ignore[arg-type]
    assert CTextFields is not None and CUsageHint is not None
    with pytest.raises(TypeError, match="names"):
        CTextFields([b"content"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="names"):
        CTextFields((b"",))
    with pytest.raises(TypeError, match="markers"):
        CUsageHint(KEYS, ("eval_count",))  # type: ignore[arg-type]


@compiled
def test_compiled_searches_leak_nothing() -> None:
    """100,000 searches that find and that do not: reference counts of the data and the
    scanners end where they began, and traced memory does not grow."""
    assert CTextFields is not None and CUsageHint is not None
    fields, hint = CTextFields(NAMES), CUsageHint(KEYS, MARKERS)
    hit, miss = RECORDED[1], RECORDED[-1]

    def run(n: int) -> None:
        for _ in range(n):
            fields.spans(hit)
            fields.spans(miss)
            hint.seen(hit)
            hint.seen(RECORDED[2])

    run(100)
    gc.collect()
    watched = (hit, miss, fields, hint)
    before = [sys.getrefcount(x) for x in watched]
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        run(25_000)
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert [sys.getrefcount(x) for x in watched] == before
    assert grown < 64 * 1024, grown
