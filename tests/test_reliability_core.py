"""Issue 16, the sans-IO side: estimates, nesting, peek CPU, zstd windows, chunkings.

Each test here failed before its fix.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_metrics_middleware import LLMMetricsMiddleware, LLMMetricsWSGIMiddleware
from llm_metrics_middleware.testing import InMemoryExporter

from .drive import chunk_app, request_json, run_asgi, run_wsgi, split, wsgi_chunk_app

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


# -- 3. no recursion on request or response data ----------------------------------------


def _deep(depth: int, inner: str = '"deep text"') -> str:
    return "[" * depth + inner + "]" * depth


@pytest.mark.parametrize("driver", ["asgi", "wsgi"])
def test_a_deeply_nested_request_is_still_recorded_and_estimated(driver: str) -> None:
    # 900 deep: json.loads takes it, a recursive walk over it does not.
    body = ('{"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": ' + _deep(900) + "}]}").encode()
    stream = [_chunk(w) for w in WORDS]
    exporter = InMemoryExporter()
    if driver == "asgi":
        run_asgi(LLMMetricsMiddleware(chunk_app(200, SSE, stream), exporters=[exporter]), body=body)
    else:
        run_wsgi(LLMMetricsWSGIMiddleware(wsgi_chunk_app("200 OK", SSE, stream), exporters=[exporter]), body=body)
    [call] = exporter.calls
    assert call.usage_source == "estimated"
    assert call.usage.prompt_tokens == -(-len("roleusercontentdeep text") // 4)


def test_a_deeply_nested_json_response_is_still_estimated() -> None:
    body = ('{"model": "gpt-4o", "choices": [{"message": {"content": ' + _deep(900) + "}}]}").encode()
    exporter = InMemoryExporter()
    run_asgi(LLMMetricsMiddleware(chunk_app(200, [("content-type", "application/json")], [body]), exporters=[exporter]),
             body=request_json(model="gpt-4o", messages=[{"role": "user", "content": "hi"}]))
    [call] = exporter.calls
    assert call.usage_source == "estimated" and call.usage.completion_tokens > 0


@pytest.mark.parametrize("depth", [2000, 20_000])
def test_a_deep_event_does_not_stop_the_reading_of_later_events(depth: int) -> None:
    deep = b"data: " + _deep(depth, '{"usage": {"prompt_tokens": 1}}').encode() + b"\n\n"
    usage = b'data: {"id":"c1","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15}}\n\n'
    for chunks in ([_chunk("hi"), deep, usage], [_chunk("hi") + deep + usage]):
        exporter = InMemoryExporter()
        run_asgi(LLMMetricsMiddleware(chunk_app(200, SSE, chunks), exporters=[exporter]), body=ASKED)
        [call] = exporter.calls
        assert call.usage_source == "reported" and call.usage.total_tokens == 15, call


def test_a_deep_value_at_a_usage_path_is_dropped_and_scanning_goes_on() -> None:
    """A captured value json.loads refuses as too deep (RecursionError) is dropped.

    How deep json.loads goes is the interpreter's: about 1,000 levels on 3.11 (the recursion
    limit), 1,500 on 3.12 and 10,000 on 3.13 (the C recursion limit, since 3.12). 5,000 levels
    were refused before 3.13 and read by it; 20,000 are refused by every version we support.
    """
    from llm_metrics_middleware._core.jsonscan import JSONScanner

    deep = _deep(20_000, "1")
    with pytest.raises(RecursionError):  # the premise: this json.loads refuses it
        json.loads(deep)
    found: list[dict[str, object]] = []
    scanner = JSONScanner([("usage",)], found.append)
    scanner.feed(('{"usage": ' + deep + "}\n").encode())
    scanner.feed(b'{"usage": {"prompt_tokens": 3}}\n')
    assert not scanner.failed
    assert found == [{}, {"usage": {"prompt_tokens": 3}}]


# -- 8. zstd: the window is capped --------------------------------------------------------


def _zstd(data: bytes, window_log: int) -> bytes:
    import io

    import zstandard

    params = zstandard.ZstdCompressionParameters(window_log=window_log, write_content_size=False)
    out = io.BytesIO()
    writer = zstandard.ZstdCompressor(compression_params=params).stream_writer(out, closefd=False)
    writer.write(data)
    writer.flush(zstandard.FLUSH_FRAME)
    return out.getvalue()


@pytest.mark.parametrize("window_log,read", [(23, True), (27, False)])
def test_a_zstd_window_past_8_mib_is_not_read(window_log: int, read: bool) -> None:
    body = b'{"model":"m","usage":{"prompt_tokens":1,"completion_tokens":2}}'
    compressed = _zstd(body, window_log)
    headers = [("content-type", "application/json"), ("content-encoding", "zstd")]
    exporter = InMemoryExporter()
    sent = run_asgi(LLMMetricsMiddleware(chunk_app(200, headers, [compressed]), exporters=[exporter]), body=b"{}")
    assert [m.get("body") for m in sent[1:]] == [compressed, b""]  # passed on untouched
    [call] = exporter.calls
    if read:
        assert call.usage is not None and call.usage.total_tokens == 3
    else:
        # The decoder would have allocated the declared 128 MiB window for this one body.
        assert call.usage is None and call.parse_error == "bad_compression"


# -- a client that leaves a compressed stream ---------------------------------------------


@pytest.mark.parametrize("driver", ["asgi", "wsgi"])
def test_a_client_leaving_a_gzip_stream_is_no_bad_compression(driver: str) -> None:
    import zlib

    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    usage = b'data: {"id":"c1","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15}}\n\n'
    events = [_chunk("a"), usage, *(_chunk(w) for w in WORDS * 20)]
    chunks = [compressor.compress(e) + compressor.flush(zlib.Z_SYNC_FLUSH) for e in events]
    chunks.append(compressor.flush())
    headers = [*SSE, ("content-encoding", "gzip")]
    exporter = InMemoryExporter()
    if driver == "asgi":
        with pytest.raises(OSError):
            run_asgi(LLMMetricsMiddleware(chunk_app(200, headers, chunks), exporters=[exporter]), body=ASKED,
                     disconnect_after=5)
    else:
        run_wsgi(LLMMetricsWSGIMiddleware(wsgi_chunk_app("200 OK", headers, chunks), exporters=[exporter]), body=ASKED,
                 stop_after=4)
    [call] = exporter.calls
    assert call.outcome == "disconnected" and call.usage.total_tokens == 15
    assert call.parse_error is None and exporter.errors == []


def test_a_complete_response_whose_gzip_stops_short_is_still_bad_compression() -> None:
    import gzip

    body = gzip.compress(b'{"model":"m","usage":{"prompt_tokens":1,"completion_tokens":2}}')[:-6]
    headers = [("content-type", "application/json"), ("content-encoding", "gzip")]
    exporter = InMemoryExporter()
    run_asgi(LLMMetricsMiddleware(chunk_app(200, headers, [body]), exporters=[exporter]), body=b"{}")
    assert exporter.errors == ["bad_compression"]


# -- 9. usage found whatever the chunking --------------------------------------------------

OLLAMA_SSE = b"".join(
    b"data: " + json.dumps(o).encode() + b"\n\n"
    for o in [
        {"model": "llama3", "choices": [{"index": 0, "delta": {"content": w}}]} for w in WORDS
    ] + [{"model": "llama3", "choices": [], "done": True, "prompt_eval_count": 5, "eval_count": 7}]
)
SPLIT_USAGE_SSE = b"".join(_chunk(w) for w in WORDS) + (
    b'data: {"id":"c1","model":"gpt-4o","choices":[],"usage":\n'
    b'data: {"prompt_tokens":9,"completion_tokens":6,"total_tokens":15}}\n\n'
    b"data: [DONE]\n\n"
)


def _chunkings(stream: bytes) -> list[list[bytes]]:
    events = [e + b"\n\n" for e in stream.split(b"\n\n") if e]
    return [events, [stream], *([stream[i : i + n] for i in range(0, len(stream), n)] for n in (1, 7, 64))]


@pytest.mark.parametrize("stream,total", [(OLLAMA_SSE, 12), (SPLIT_USAGE_SSE, 15)], ids=["ollama-counts", "split-usage"])
def test_usage_in_sse_is_found_at_every_chunking(stream: bytes, total: int) -> None:
    for chunks in _chunkings(stream):
        exporter = InMemoryExporter()
        run_asgi(LLMMetricsMiddleware(chunk_app(200, SSE, chunks), exporters=[exporter]), body=ASKED)
        [call] = exporter.calls
        assert call.usage_source == "reported" and call.usage.total_tokens == total, (len(chunks), call)


# -- 4. the request peek's work is bounded ---------------------------------------------


def _python_calls(fn: Any) -> int:
    """How many Python function calls ``fn()`` makes: a measure of work that is not time."""
    calls = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


HOSTILE_REQUESTS = {
    "2M short strings in the prompt": {"model": "m", "messages": [{"role": "user", "content": ["ab"] * 2_000_000}], "user": "u"},
    "2M short strings elsewhere": {"model": "m", "tools": ["ab"] * 2_000_000, "user": "u"},
    "100,000 keys": {"model": "m", **{f"k{i}": i for i in range(100_000)}, "user": "u"},
    "100,000 keys in metadata": {"model": "m", "metadata": {**{f"k{i}": "v" for i in range(100_000)}, "user_id": "u"}},
    "1M small arrays": {"model": "m", "tools": [[1, ["a"]] for _ in range(1_000_000)], "user": "u"},
}


@pytest.mark.parametrize("name", list(HOSTILE_REQUESTS))
def test_the_request_peek_does_python_work_per_chunk_not_per_string(name: str) -> None:
    from llm_metrics_middleware._core.peek import BodyPeek

    value = HOSTILE_REQUESTS[name]
    body = json.dumps(value).encode()
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    peek = BodyPeek()

    def run() -> None:
        for chunk in chunks:
            peek.feed(chunk)

    calls = _python_calls(run)
    # Before: several calls per string or key (millions); now a few per chunk.
    assert calls < 40 * len(chunks), (calls, len(chunks))
    user = value.get("user") or value["metadata"]["user_id"]  # type: ignore[index]
    assert peek.fields.get("user", peek.fields.get("metadata", {}).get("user_id")) == user
    if "prompt" in name:
        assert peek.prompt_bytes == len("roleusercontent") + 2 * 2_000_000


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=300) | st.sampled_from(["a b", "x" * 300, 'q"\\']),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=JSON_VALUES, other=JSON_VALUES, user=st.text(max_size=20),
    ascii_only=st.booleans(), sizes=st.lists(st.integers(1, 200), min_size=1, max_size=8),
)
def test_the_scanner_reads_the_same_at_every_chunking(
    messages: Any, other: Any, user: str, ascii_only: bool, sizes: list[int]
) -> None:
    from llm_metrics_middleware._core.jsonscan import JSONScanner

    body = json.dumps({"tools": other, "messages": messages, "meta": {"x": other}, "user": user},
                      ensure_ascii=ascii_only).encode()

    def scan(chunks: list[bytes]) -> tuple[Any, ...]:
        found: list[Any] = []
        scanner = JSONScanner([("user",), ("meta", "x")], found.append, text_roots=("messages",))
        for chunk in chunks:
            scanner.feed(chunk)
        return found, scanner.text_bytes, scanner.failed

    whole = scan([body])
    assert whole == scan([body[i : i + 1] for i in range(len(body))])
    assert whole == scan(split(body, sizes))
    assert whole[0][0]["user"] == user and not whole[2]


# -- a huge event in one chunk is not copied over and over --------------------------------


def test_a_huge_single_chunk_event_costs_one_copy_at_most() -> None:
    import tracemalloc

    size = 20 * 1024 * 1024
    event = (b'data: {"id":"c1","model":"gpt-4o","choices":[{"delta":{"content":"' + b"x" * size
             + b'"}}],"usage":{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15}}\n\n')
    exporter = InMemoryExporter()
    app = LLMMetricsMiddleware(chunk_app(200, SSE, [event]), exporters=[exporter])
    tracemalloc.start()
    try:
        run_asgi(app, body=ASKED)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    [call] = exporter.calls
    assert call.usage.total_tokens == 15
    assert peak < 1.5 * size, f"peak {peak / size:.1f}x the event"  # it was five copies


@pytest.mark.parametrize("lines", [[b"a", b"L"], [b"L", b"b"], [b"L", b"L"], [b"a", b"L", b"b"]])
def test_long_data_lines_in_one_chunk_join_as_the_spec_says(lines: list[bytes]) -> None:
    from llm_metrics_middleware._core.sse import EVENT_LIMIT, SSEDecoder

    values = [b"y" * (EVENT_LIMIT + 10) if v == b"L" else v for v in lines]
    stream = b"event: e\n" + b"".join(b"data: " + v + b"\n" for v in values) + b"\n"
    for chunks in ([stream], split(stream, 1000)):
        pieces: list[bytes] = []
        ends: list[bytes] = []
        decoder = SSEDecoder(lambda e, d: pytest.fail("a large event came whole"), pieces.append, ends.append)
        for chunk in chunks:
            decoder.feed(chunk)
        got = b"".join(pieces)
        assert (len(chunks), got.replace(b"y" * (EVENT_LIMIT + 10), b"L")) == (len(chunks), b"\n".join(lines))
        assert ends == [b"e"]
