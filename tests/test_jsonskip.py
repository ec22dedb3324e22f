"""The fast crossings of strings and skipped containers give what a plain reading gives.

``string_end`` is checked against a reference that reads a string byte by byte; the
scanner, which crosses strings and skipped containers through ``jsonskip``, is checked
against ``json.loads`` on bodies shaped to reach every crossing (long flat runs, long and
escape-heavy strings, nesting deeper than the skip expression goes, runs of brackets with
blanks between them), whole, at every split point and at random splits.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from llm_metrics_middleware._core.jsonscan import JSONScanner
from llm_metrics_middleware._core.jsonskip import DOUBTFUL_QUOTES, ESCAPE_PENDING, UNCLOSED, string_end

from .splits import check_every_split


def reference_end(buf: bytes, lo: int) -> int:
    i = lo
    while i < len(buf):
        c = buf[i]
        if c == 0x5C:
            if i + 1 >= len(buf):
                return ESCAPE_PENDING
            i += 2
        elif c == 0x22:
            return i
        else:
            i += 1
    return UNCLOSED


@settings(max_examples=400, deadline=None, database=None)
@given(st.lists(st.sampled_from([b"a", b" ", b"\\", b'"', b"\\\\", b'\\"', b'\\\\\\"', b"\\u00e9"]), max_size=60), st.data())
def test_string_end_agrees_with_reading_byte_by_byte(pieces: list[bytes], data: st.DataObject) -> None:
    buf = b"".join(pieces)
    # Any prefix the reference reads as whole escapes is an escape boundary to start from.
    starts = [0]
    i = 0
    while i < len(buf):
        i += 2 if buf[i] == 0x5C else 1
        if i <= len(buf):
            starts.append(i)
    lo = data.draw(st.sampled_from(starts))
    assert string_end(buf, lo) == reference_end(buf, lo), (buf, lo)


def test_string_end_past_many_doubtful_quotes() -> None:
    # Quotes after three backslashes come back to Python; past DOUBTFUL_QUOTES of them the
    # rest is read byte by byte in C, and the answer is the same.
    for n in (DOUBTFUL_QUOTES - 1, DOUBTFUL_QUOTES, DOUBTFUL_QUOTES + 1, 1000):
        for tail in (b'x"', b'\\\\"', b"x", b"x\\", b"x\\\\", b'\\\\\\\\\\"\\'):
            buf = b'\\\\\\"' * n + b"\\\\\\\\\\\\\\\"" * n + tail
            assert string_end(buf, 0) == reference_end(buf, 0), (n, tail)


PATHS = [("usage",), ("model",), ("message", "usage")]


def _scan(chunks: Sequence[bytes], text: bool = True) -> tuple[list[dict[str, Any]], bool, bool, int]:
    records: list[dict[str, Any]] = []
    scanner = JSONScanner(PATHS, records.append, text_roots=("choices",) if text else ())
    for chunk in chunks:
        scanner.feed(chunk)
    return records, scanner.idle, scanner.failed, scanner.text_bytes


def _text_bytes(value: Any, ascii: bool) -> int:
    """What the scanner counts under a text root: every string (keys too), escapes
    included; none of the values below holds a blob (a long string without a space)."""
    if isinstance(value, str):
        return len(json.dumps(value, ensure_ascii=ascii).encode()) - 2
    if isinstance(value, dict):
        return sum(_text_bytes(k, ascii) + _text_bytes(v, ascii) for k, v in value.items())
    if isinstance(value, list):
        return sum(_text_bytes(v, ascii) for v in value)
    return 0


PROSE = 'Caf\u00e9 na\u00efve, "quoted" \u201ctext\u201d \U0001f600 with a\\backslash,\ta tab and a line.\n'


def _body(value: Any, ascii: bool = True) -> tuple[bytes, list[dict[str, Any]], int]:
    usage = {"prompt_tokens": 3, "x": value if len(json.dumps(value)) < 4000 else None}
    doc = {"id": "c", "data": value, "choices": value, "model": "m", "usage": usage}
    body = json.dumps(doc, ensure_ascii=ascii).encode()
    return body, [{"model": "m", "usage": json.loads(json.dumps(usage))}], _text_bytes(value, ascii)


SHAPES: dict[str, Any] = {
    "long flat run": [0.0123456789] * 120 + [{"embedding": [1.5] * 200, "i": 1}],
    "long string": PROSE * 12,
    "escape-heavy strings": ['a \\"' * 40, '\\\\\\" b' * 30, "\u00e9 " * 200],
    "deep nesting": [[[[[[[["x y", [1, {"k": [[[[2]]]]}]]]]]]]]],
    "many short strings": ["a b", "", "\\ \"", "z z"] * 60,
}


def test_shapes_at_every_split_point() -> None:
    for name, value in SHAPES.items():
        for ascii in (True, False):
            body, records, text = _body(value, ascii)
            check_every_split(_scan, body, (records, True, False, text), examples=20)
            assert _scan([body])[0] == records, name


def test_brackets_with_blanks_between_and_long_runs_of_them() -> None:
    for opened in (3, 700):
        inner = "[ " * opened + '"a b"' + " ]" * opened
        body = ('{"data": ' + inner + ', "choices": [' + "[" * opened + "]" * opened + '], "model": "m"}').encode()
        assert json.loads(body)["model"] == "m"
        check_every_split(_scan, body, ([{"model": "m"}], True, False, 0), every_point=opened < 100, examples=20)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=st.sampled_from('ab \\"{}[]:,\u00e9\u201c\U0001f600\n\t'), max_size=40).map(lambda s: s + " "),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(st.text(alphabet="ab\\\" {", max_size=5).map(lambda s: s + " "), inner, max_size=5),
    ),
    max_leaves=40,
)


@settings(max_examples=150, deadline=None, database=None)
@given(_values, st.booleans(), st.lists(st.integers(0, 10_000), max_size=12))
def test_random_documents_at_random_splits(value: Any, ascii: bool, points: list[int]) -> None:
    body, records, text = _body(value, ascii)
    bounds = [0, *sorted(min(p, len(body)) for p in points), len(body)]
    chunks = [body[a:b] for a, b in zip(bounds, bounds[1:])]
    assert _scan(chunks) == (records, True, False, text)
    assert _scan(chunks, text=False)[:3] == (records, True, False)



# -- the possessive skip expression ------------------------------------------------------


def _skip_pattern() -> bytes:
    from llm_metrics_middleware._core import jsonskip

    pattern: bytes = jsonskip._SKIP_RUN.__self__.pattern  # type: ignore[attr-defined]
    return pattern


def _backtracking_skip_run() -> Any:
    """The skip expression with every possessive repeat made greedy again: as it was
    written before, and as 3.10 (which has no possessive repeats) runs it."""
    import re

    return re.compile(_skip_pattern().replace(b"}+", b"}").replace(b")*+", b")*")).match


_SKIP_PIECES = st.sampled_from(
    [b"1", b"0.5,", b" ", b",", b"[", b"]", b"{", b"}", b'"', b'"a"', b'"k":', b'"[",', b'"}"', b"\\", b'\\"']
    + [b"x" * 300, b"9," * 300]
)


@settings(max_examples=600, deadline=None, database=None)
@given(st.lists(_SKIP_PIECES, max_size=40), st.integers(0, 50))
@example([b'["["]'], 0)
@example([b'{"k":"[","v":[1,"]"]}'], 0)
@example([b"[", b"9," * 300, b"1]"], 0)
def test_possessive_skip_run_ends_where_the_backtracking_one_does(pieces: list[bytes], start: int) -> None:
    """Possessive repeats only refuse sooner: from any position of any mix of flat runs
    (some past the 512-byte bound), strings, escapes and brackets, the run ends at the
    same byte as with the greedy expression."""
    import sys

    from llm_metrics_middleware._core.jsonskip import skip_run

    buf = b"".join(pieces)
    pos = min(start, len(buf))
    backtracking = _backtracking_skip_run()
    if sys.version_info >= (3, 11):  # two different expressions are compared
        assert backtracking.__self__.pattern != _skip_pattern()
        assert b"{0,512}+" in _skip_pattern()
    assert skip_run(buf, pos) == backtracking(buf, pos).end()


def test_an_embedding_array_is_refused_where_it_starts() -> None:
    """An object holding an array of 5,000 numbers (an embedding) does not close within
    the expression's bounds: the run stops before it (the scanner crosses it with
    bytes.find). How fast the refusal is: bench/run section 4, the embeddings scan."""
    from llm_metrics_middleware._core.jsonskip import skip_run

    piece = b'{"object":"embedding","index":0,"embedding":[' + b"0.0123456789," * 5000 + b"0.5]},"
    assert skip_run(piece, 0) == 0
    assert skip_run(b"1," + piece, 0) == 2
    assert skip_run(b'"a", {"b": [1, 2]}, ' + piece, 0) == 20
