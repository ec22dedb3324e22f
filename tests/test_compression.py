"""Compressed responses: read through a decompressed copy, passed on compressed; bombs and corrupt
bodies are refused without touching the response."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import pytest

from llm_metrics_middleware import LLMMetricsWSGIMiddleware
from llm_metrics_middleware._core.decoders import decompressor_for
from llm_metrics_middleware._core.extractor import SSE, UsageExtractor
from llm_metrics_middleware.testing import InMemoryExporter

from .drive import body_of, request_json, run_asgi, run_wsgi, split, wsgi_chunk_app
from .samples import JSON_BODY, OPENAI_STREAM, wrapped_asgi
from .wire.cases import CASES, WireCase


def _deflate_raw(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(
    "encoding,compress",
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", _deflate_raw), ("x-gzip", gzip.compress)],
)
@pytest.mark.parametrize("size", [1, 13, 4096])
def test_compressed_json_and_sse_are_counted(encoding: str, compress: Any, size: int) -> None:
    for body, content_type, expected in ((JSON_BODY, "application/json", 112), (OPENAI_STREAM, "text/event-stream", 11)):
        compressed = compress(body)
        chunks = split(compressed, size)
        headers = [("content-type", content_type), ("content-encoding", encoding)]
        app, exporter = wrapped_asgi(200, headers, chunks)
        sent = run_asgi(app, body=request_json(model="gpt-4o"))
        assert body_of(sent)[:-1] == chunks  # still compressed, chunk for chunk
        assert exporter.calls[0].usage.total_tokens == expected
        wsgi_exporter = InMemoryExporter()
        wsgi = LLMMetricsWSGIMiddleware(wsgi_chunk_app("200 OK", headers, chunks), exporters=[wsgi_exporter])
        assert run_wsgi(wsgi, body=request_json(model="gpt-4o"))[2] == chunks
        assert wsgi_exporter.calls[0].usage.total_tokens == expected


def test_decompression_bomb_is_refused_and_response_untouched() -> None:
    payload = b'{"pad": "' + b"a" * 60_000_000 + b'", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}'
    bomb = gzip.compress(payload, compresslevel=9)
    assert len(payload) / len(bomb) > 200
    chunks = split(bomb, 16384)
    app, exporter = wrapped_asgi(200, [("content-type", "application/json"), ("content-encoding", "gzip")], chunks)
    sent = run_asgi(app, body=request_json(model="m"))
    assert body_of(sent)[:-1] == chunks
    [call] = exporter.calls
    assert call.usage is None and call.parse_error == "decompression_bomb"
    assert "decompression_bomb" in exporter.errors


def test_corrupt_gzip_is_passed_on_unread() -> None:
    garbage = gzip.compress(JSON_BODY)[:20] + b"\xff" * 100
    app, exporter = wrapped_asgi(200, [("content-type", "application/json"), ("content-encoding", "gzip")], [garbage])
    sent = run_asgi(app, body=request_json(model="m"))
    assert body_of(sent)[:-1] == [garbage]
    assert exporter.calls[0].usage is None and exporter.calls[0].parse_error == "bad_compression"


@pytest.mark.parametrize("encoding,module", [("br", "brotli"), ("zstd", "zstandard")])
@pytest.mark.parametrize("size", [1, 100, 8192])
def test_brotli_and_zstd_when_installed(encoding: str, module: str, size: int) -> None:
    lib = pytest.importorskip(module)
    compress = lib.compress if module == "brotli" else lib.ZstdCompressor().compress
    for body, content_type, expected in ((JSON_BODY, "application/json", 112), (OPENAI_STREAM, "text/event-stream", 11)):
        chunks = split(compress(body), size)
        app, exporter = wrapped_asgi(200, [("content-type", content_type), ("content-encoding", encoding)], chunks)
        sent = run_asgi(app, body=request_json(model="gpt-4o"))
        assert body_of(sent)[:-1] == chunks
        assert exporter.calls[0].usage.total_tokens == expected


@pytest.mark.parametrize("encoding,module", [("br", "brotli"), ("zstd", "zstandard")])
def test_brotli_and_zstd_bombs_are_refused(encoding: str, module: str) -> None:
    lib = pytest.importorskip(module)
    payload = b'{"pad": "' + b"a" * 60_000_000 + b'", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}'
    bomb = lib.compress(payload) if module == "brotli" else lib.ZstdCompressor().compress(payload)
    chunks = split(bomb, 16384)
    app, exporter = wrapped_asgi(200, [("content-type", "application/json"), ("content-encoding", encoding)], chunks)
    sent = run_asgi(app, body=request_json(model="m"))
    assert body_of(sent)[:-1] == chunks
    assert exporter.calls[0].usage is None and exporter.calls[0].parse_error == "decompression_bomb"


# A gzip or deflate event stream flushed after every event (Z_SYNC_FLUSH), as a server must
# compress a stream for the client to see each event when it is sent: every recorded SSE
# body, its events compressed one by one, and the compressed pieces fed whole or byte by byte.
SSE_CASES = [case for case in CASES if case.body_file.endswith(".sse")]


@pytest.mark.parametrize("wbits,encoding", [(31, "gzip"), (15, "deflate")])
@pytest.mark.parametrize("case", SSE_CASES, ids=[c.id for c in SSE_CASES])
def test_a_stream_flushed_per_event_is_read_per_event(case: WireCase, wbits: int, encoding: str) -> None:
    body = case.body
    sep = b"\r\n\r\n" if b"\r\n\r\n" in body else b"\n\n"
    events = [event + sep for event in body.split(sep)[:-1]]
    assert b"".join(events) == body
    plain = UsageExtractor(SSE)
    expected = []
    for event in events:
        plain.feed(event)
        expected.append(plain.usage_so_far)
    compressor = zlib.compressobj(wbits=wbits)
    pieces = [compressor.compress(event) + compressor.flush(zlib.Z_SYNC_FLUSH) for event in events]
    tail = compressor.flush()
    for byte_by_byte in (False, True):
        extractor = UsageExtractor(SSE, decompressor=decompressor_for(encoding))
        seen = []
        for piece in pieces:
            for chunk in ([piece[i : i + 1] for i in range(len(piece))] if byte_by_byte else [piece]):
                extractor.feed(chunk)
            seen.append(extractor.usage_so_far)
        assert seen == expected, case.id  # each event counted once its piece is in
        extractor.feed(tail)
        extraction = extractor.close()
        assert extraction.error is None
        assert extraction.usage == expected[-1]
