"""One decoder per Content-Encoding behind one bomb guard: every encoding at every split."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Sequence

import pytest

from llm_metrics_middleware._core import decoders
from llm_metrics_middleware._core.decoders import SUPPORTED_DECODERS, ContentDecoder, decompressor_for, is_identity

from .samples import JSON_BODY
from .splits import check_every_split


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def _compressors() -> list[tuple[str, Callable[[bytes], bytes]]]:
    out: list[tuple[str, Callable[[bytes], bytes]]] = [
        ("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", _raw_deflate),
    ]
    if SUPPORTED_DECODERS["br"].available:
        brotli = pytest.importorskip("brotli")
        out.append(("br", brotli.compress))
    if SUPPORTED_DECODERS["zstd"].available:
        zstandard = pytest.importorskip("zstandard")
        out.append(("zstd", zstandard.ZstdCompressor().compress))
    return out


COMPRESSORS = _compressors()


def _decode(encoding: str, chunks: Sequence[bytes]) -> tuple[bytes, str | None, bool]:
    decoder = decompressor_for(encoding)
    assert decoder is not None
    out = b"".join(piece for chunk in chunks for piece in decoder.decode(chunk))
    return out, decoder.error, decoder.complete


@pytest.mark.parametrize("encoding,compress", COMPRESSORS, ids=[f"{e}-{c.__name__}" for e, c in COMPRESSORS])
def test_every_encoding_however_cut(encoding: str, compress: Callable[[bytes], bytes]) -> None:
    check_every_split(lambda chunks: _decode(encoding, chunks), compress(JSON_BODY), (JSON_BODY, None, True))


@pytest.mark.parametrize("encoding,compress", COMPRESSORS, ids=[f"{e}-{c.__name__}" for e, c in COMPRESSORS])
def test_one_bomb_guard_for_every_encoding(encoding: str, compress: Callable[[bytes], bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoders, "MAX_OUTPUT", 1000)
    out, error, _ = _decode(encoding, [compress(b"a" * 100_000)])
    assert error == "decompression_bomb" and len(out) <= 1000 + decoders.STEP


@pytest.mark.parametrize("encoding,compress", COMPRESSORS[:4], ids=[f"{e}-{c.__name__}" for e, c in COMPRESSORS[:4]])
def test_a_truncated_body_is_not_complete(encoding: str, compress: Callable[[bytes], bytes]) -> None:
    out, error, complete = _decode(encoding, [compress(JSON_BODY)[:-8]])
    assert not complete and error is None and JSON_BODY.startswith(out)


def test_corrupt_input_is_never_read_as_complete() -> None:
    # zlib may raise (bad_compression) or just never reach the end; the extractor treats
    # both as unreadable (tests/test_compression.py checks the call's parse_error).
    for garbage in (gzip.compress(JSON_BODY)[:20] + b"\xff" * 100, b"\x1f\x8b" + b"\x00" * 50, b"not gzip at all"):
        out, error, complete = _decode("gzip", [garbage])
        assert error == "bad_compression" or not complete
        assert out != JSON_BODY


def test_encodings_we_cannot_read_give_no_decoder() -> None:
    assert decompressor_for(None) is None and decompressor_for("") is None
    assert decompressor_for("identity") is None and decompressor_for("compress") is None
    assert is_identity(None) and is_identity(" Identity ") and not is_identity("gzip")
    assert all(issubclass(cls, ContentDecoder) for cls in SUPPORTED_DECODERS.values())
    assert isinstance(decompressor_for(" GZIP "), decoders.GZipDecoder)
