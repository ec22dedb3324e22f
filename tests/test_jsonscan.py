from __future__ import annotations

import json
import random
from collections.abc import Sequence

import pytest

from llm_metrics_middleware._core.jsonscan import CAPTURE_LIMIT, JSONScanner

from .splits import check_every_split, pieces

PATHS = [("usage",), ("model",), ("message", "usage"), ("a", 1)]


def scan(data: bytes, chunks: list[int] | None = None, text_roots: tuple[str, ...] = ()) -> tuple[list[dict], JSONScanner]:
    records: list[dict] = []
    scanner = JSONScanner(PATHS, records.append, text_roots=text_roots)
    for piece in pieces(data, chunks):
        scanner.feed(piece)
    return records, scanner


BODY = json.dumps(
    {
        "id": "x\\\"y",
        "model": "gpt-4o",
        "choices": [{"message": {"content": "a \"quoted\" \\ word {not} [json]", "usage": {"no": 1}}}],
        "message": {"usage": {"input_tokens": 3}, "model": "skip"},
        "a": [0, {"k": [1, 2]}, 2],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "details": {"x": [1, 2.5e3, None, True]}},
        "tail": "é∑😀",
    },
    ensure_ascii=False,
).encode()
EXPECTED = {
    "model": "gpt-4o",
    "message": {"usage": {"input_tokens": 3}},
    "a": {1: {"k": [1, 2]}},
    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "details": {"x": [1, 2500.0, None, True]}},
}


def test_whole_body() -> None:
    records, scanner = scan(BODY)
    assert records == [EXPECTED]
    assert scanner.idle and not scanner.failed


def test_every_split_point() -> None:
    for i in range(len(BODY) + 1):
        records, scanner = scan(BODY, [i])
        assert records == [EXPECTED], i
        assert not scanner.failed


def test_byte_by_byte() -> None:
    records, _ = scan(BODY, [1] * len(BODY))
    assert records == [EXPECTED]


def test_random_splits() -> None:
    rng = random.Random(7)
    for _ in range(300):
        cuts = [rng.randint(0, 12) for _ in range(len(BODY) // 3)]
        records, _ = scan(BODY, cuts)
        assert records == [EXPECTED]


def test_ndjson_and_top_level_array() -> None:
    lines = b'{"model":"a","usage":{"x":1}}\n{"model":"b"}\n\n{"usage":{"x":2}}\n'
    records, scanner = scan(lines, [1] * len(lines))
    assert records == [{"model": "a", "usage": {"x": 1}}, {"model": "b"}, {"usage": {"x": 2}}]
    array = b'[{"model":"a"}, {"usage":{"x":1}} ,{"model":"c","usage":{"x":3}}]'
    records, scanner = scan(array, [2] * len(array))
    assert records == [{"model": "a"}, {"usage": {"x": 1}}, {"model": "c", "usage": {"x": 3}}]
    assert scanner.idle


def test_escaped_key_matches() -> None:
    records, _ = scan(b'{"us\\u0061ge": {"t": 1}}')
    assert records == [{"usage": {"t": 1}}]


@pytest.mark.parametrize(
    "bad",
    [b'{"usage": {"a": 1}]', b'{"a" 1}', b"}", b'{,}', b"[1, 2]]"],
)
def test_malformed_sets_failed_and_never_raises(bad: bytes) -> None:
    _, scanner = scan(bad, [1] * len(bad))
    assert scanner.failed


def test_truncated_is_not_idle() -> None:
    _, scanner = scan(b'{"usage": {"prompt_tokens": 1')
    assert not scanner.idle and not scanner.failed


def test_oversized_capture_is_dropped() -> None:
    big = b'{"usage": {"blob": "' + b"x" * (CAPTURE_LIMIT + 10) + b'"}, "model": "m"}'
    records, scanner = scan(big, [1000] * (len(big) // 1000 + 1))
    assert records == [{"model": "m"}]
    assert scanner.overflowed


def test_text_bytes_counts_strings_under_roots_but_not_blobs() -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "hello world"}], "image": "b" * 999, "model": "x"}).encode()
    _, scanner = scan(body, text_roots=("messages",))
    # Keys inside the root count too: they stand in for the per-message token overhead.
    assert scanner.text_bytes == len("role") + len("user") + len("content") + len("hello world")
    blob = json.dumps({"messages": [{"content": "A" * 1000}]}).encode()
    _, scanner = scan(blob, text_roots=("messages",))
    assert scanner.text_bytes == len("content")  # the 1000-byte blob is not text


def test_big_body_constant_state() -> None:
    scanner = JSONScanner(PATHS, lambda r: None)
    scanner.feed(b'{"data": [')
    chunk = b'{"embedding": [' + b"0.123456," * 10_000 + b'1.0], "text": "' + b"word " * 5000 + b'"},'
    for _ in range(50):
        scanner.feed(chunk)
    scanner.feed(b'{}], "usage": {"prompt_tokens": 1}}')
    assert not scanner.failed and scanner.idle


def test_strings_full_of_escapes_at_every_split() -> None:
    text = 'say \\"hi\\" \\\\ back\\\\\\"slash \\n end \\\\' * 40
    body = ('{"choices": [{"message": {"content": "' + text + '"}}], "model": "m\\\\", "usage": {"x": "\\\\\\""}}').encode()
    expected = [{"model": "m\\", "usage": {"x": '\\"'}}]
    assert json.loads(body)["model"] == "m\\"
    for i in range(0, len(body) + 1, 7):
        records, scanner = scan(body, [i])
        assert records == expected, i
    records, _ = scan(body, [1] * len(body))
    assert records == expected


def _scan_chunks(chunks: Sequence[bytes]) -> tuple[list[dict], bool, bool]:
    records: list[dict] = []
    scanner = JSONScanner(PATHS, records.append)
    for chunk in chunks:
        scanner.feed(chunk)
    return records, scanner.idle, scanner.failed


def test_every_way_of_cutting_a_body() -> None:
    check_every_split(_scan_chunks, BODY, ([EXPECTED], True, False))


def test_every_way_of_cutting_ndjson_and_arrays() -> None:
    line = json.dumps({"model": "m", "usage": {"prompt_tokens": 1}}).encode()
    expected = ([{"model": "m", "usage": {"prompt_tokens": 1}}] * 2, True, False)
    check_every_split(_scan_chunks, line + b"\n" + line + b"\n", expected)
    check_every_split(_scan_chunks, b"[" + line + b",\r\n " + line + b"]", expected)
