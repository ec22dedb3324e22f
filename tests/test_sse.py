from __future__ import annotations

import random
from collections.abc import Sequence

from llm_metrics_middleware._core.sse import EVENT_LIMIT, SSEDecoder

from .splits import check_every_split, pieces


def decode(data: bytes, sizes: list[int] | None = None) -> list[tuple[bytes, bytes]]:
    events: list[tuple[bytes, bytes]] = []
    large: list[bytes] = []

    def on_large_end(event: bytes) -> None:
        events.append((event, b"<large:" + str(len(b"".join(large))).encode() + b">"))
        large.clear()

    decoder = SSEDecoder(lambda e, d: events.append((e, d)), large.append, on_large_end)
    for piece in pieces(data, sizes):
        decoder.feed(piece)
    decoder.close()
    return events


STREAM = (
    b": comment line\n"
    b"event: message_start\n"
    b"data: {\"a\": 1}\n"
    b"\n"
    b"data:no-space\n\n"
    b"data: line one\n"
    b"data: line two\n"
    b"id: 7\n"
    b"retry: 100\n"
    b"\n"
    b"event: ping\n\n"  # no data: not dispatched
    b"data: [DONE]\n\n"
)
EXPECTED = [
    (b"message_start", b'{"a": 1}'),
    (b"", b"no-space"),
    (b"", b"line one\nline two"),
    (b"", b"[DONE]"),
]


def test_lf() -> None:
    assert decode(STREAM) == EXPECTED


def test_crlf_and_cr_at_every_split() -> None:
    for eol in (b"\r\n", b"\r"):
        data = STREAM.replace(b"\n", eol)
        assert decode(data) == EXPECTED
        for i in range(len(data) + 1):
            assert decode(data, [i]) == EXPECTED, (eol, i)


def test_byte_by_byte_and_random() -> None:
    assert decode(STREAM, [1] * len(STREAM)) == EXPECTED
    rng = random.Random(3)
    mixed = STREAM.replace(b"\n\n", b"\r\n\r\n", 2)
    expected = decode(mixed)
    assert expected == EXPECTED
    for _ in range(200):
        assert decode(mixed, [rng.randint(0, 9) for _ in range(60)]) == EXPECTED


def test_unterminated_last_event_is_dispatched() -> None:
    assert decode(b'data: {"usage": 1}') == [(b"", b'{"usage": 1}')]


def test_large_event_is_streamed_not_kept() -> None:
    payload = b"x" * (EVENT_LIMIT * 3)
    events = decode(b"event: big\ndata: " + payload + b"\n\ndata: small\n\n", [1000] * 60)
    assert events[0][0] == b"big" and events[0][1].startswith(b"<large:")
    assert int(events[0][1][7:-1]) >= len(payload)
    assert events[1] == (b"", b"small")


def test_long_non_data_line_dropped() -> None:
    events = decode(b"event: " + b"e" * (EVENT_LIMIT * 2) + b"\ndata: ok\n\n")
    assert events[0][1] == b"ok"


def test_every_way_of_cutting_the_stream() -> None:
    def run(chunks: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
        events: list[tuple[bytes, bytes]] = []
        decoder = SSEDecoder(lambda e, d: events.append((e, d)), lambda piece: None, lambda event: None)
        for chunk in chunks:
            decoder.feed(chunk)
        decoder.close()
        return events

    for eol in (b"\n", b"\r\n", b"\r"):
        check_every_split(run, STREAM.replace(b"\n", eol), EXPECTED)


# One event per chunk is the usual write, and the decoder dispatches such a chunk without
# walking its lines: every shape near that one must give what the line-by-line path gives.
_ONE_EVENT_CHUNKS = [
    b"data: {\"a\": 1}\n\n",
    b"data:{\"a\": 1}\n\n",
    b"data:\n\n",
    b"data: \n\n",
    b"data:  two spaces\n\n",
    b"data: a\rb\n\n",  # a CR ends a line: two lines, the second not a field we keep
    b"data: a\r\n\r\n",
    b"data: a\n\r\n",
    b"data: a\ndata: b\n\n",
    b"data: a\nevent: e\n\n",
    b"data: a\n\n\n",
    b"data: a\n\ndata: b\n\n",
    b"data: a\n",
    b"data: a\n\n" + b"data: b",
    b"database: x\n\n",
    b"data" + b": " + b"x" * (EVENT_LIMIT - 6) + b"\n\n",
    b"data" + b": " + b"x" * (EVENT_LIMIT - 5) + b"\n\n",
    b"data" + b":" + b"x" * (EVENT_LIMIT - 5) + b"\n\n",
    b"data" + b": " + b"x" * (EVENT_LIMIT + 1) + b"\n\n",
]


def test_a_chunk_of_one_event_reads_as_its_lines_do() -> None:
    for chunk in _ONE_EVENT_CHUNKS:
        for before in (b"", b"data: first\n\n", b"event: e\n", b"data: cut"):
            stream = before + chunk + chunk
            whole = decode(stream, [len(before), len(chunk), len(chunk)])
            assert whole == decode(stream, [1] * len(stream)), (before, chunk[:40])
