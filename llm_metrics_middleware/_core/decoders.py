"""Incremental decompression of response bodies, for reading only.

The response always leaves compressed, untouched; we decompress a copy as it passes, in
bounded steps, to find the usage. A body that inflates past :data:`MAX_OUTPUT` bytes, or
by more than :data:`MAX_RATIO` to one once past :data:`RATIO_GRACE` bytes, is treated as
a decompression bomb: reading stops (``error`` is set) and the response goes on unharmed.

gzip and deflate use the standard library; ``br`` needs ``brotli`` (or ``brotlicffi``) and
``zstd`` needs ``zstandard`` installed, otherwise those bodies are passed on unread.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Iterator
from typing import Any

#: Largest decompressed body read (bytes).
MAX_OUTPUT = 1 << 30
#: Largest decompressed / compressed ratio accepted once past RATIO_GRACE output bytes.
#: Text and JSON compress 5-20x; number arrays up to ~50x; a bomb ~1000x.
MAX_RATIO = 200
RATIO_GRACE = 1 << 20
#: Largest piece produced per step, so memory per response stays bounded.
STEP = 64 * 1024


class Decompressor:
    """``feed(chunk)`` yields decompressed pieces of at most :data:`STEP` bytes."""

    def __init__(self, engine: Any, is_done: Any) -> None:
        self._engine = engine
        self._is_done = is_done
        self._in = 0
        self._out = 0
        self.error: str | None = None

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        if self.error is not None or not chunk:
            return
        self._in += len(chunk)
        try:
            for piece in self._engine(chunk):
                self._out += len(piece)
                if self._out > MAX_OUTPUT or (self._out > RATIO_GRACE and self._out > MAX_RATIO * self._in):
                    self.error = "decompression_bomb"
                    return
                yield piece
        except _Bomb:
            self.error = "decompression_bomb"
        except Exception:
            self.error = "bad_compression"

    @property
    def complete(self) -> bool:
        """Whether the compressed stream reached its proper end."""
        try:
            return bool(self._is_done())
        except Exception:
            return False


def _zlib_engine(wbits: int | None) -> tuple[Any, Any]:
    """``wbits=None``: HTTP "deflate", zlib-wrapped per the RFC or raw, told by its header."""
    state: dict[str, Any] = {"d": None if wbits is None else zlib.decompressobj(wbits), "head": b""}

    def run(chunk: bytes) -> Iterator[bytes]:
        d = state["d"]
        data = chunk
        if d is None:
            data = state["head"] + chunk
            if len(data) < 2:
                state["head"] = data
                return
            cmf, flg = data[0], data[1]
            zlib_wrapped = cmf & 0x0F == 8 and (cmf * 256 + flg) % 31 == 0
            state["d"] = d = zlib.decompressobj(zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS)
        while data:
            piece = d.decompress(data, STEP)
            data = d.unconsumed_tail
            if piece:
                yield piece
            if d.eof:
                return

    return run, lambda: state["d"] is not None and state["d"].eof


class _Bomb(Exception):
    pass


def _optional(name: str) -> Any:
    """An optional library, or None (typed Any: its stubs may or may not be installed)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _brotli_engine() -> tuple[Any, Any] | None:
    brotli = _optional("brotli") or _optional("brotlicffi")
    if brotli is None:
        return None
    d = brotli.Decompressor()

    def run(chunk: bytes) -> Iterator[bytes]:
        try:
            # brotli >= 1.2: output in steps of at most STEP bytes.
            piece = d.process(chunk, output_buffer_limit=STEP)
        except TypeError:
            # Older brotli has no output cap: feed tiny slices so each output stays small.
            for i in range(0, len(chunk), 256):
                piece = d.process(chunk[i : i + 256])
                if piece:
                    yield piece
            return
        if piece:
            yield piece
        while not d.can_accept_more_data():
            piece = d.process(b"", output_buffer_limit=STEP)
            if not piece:
                break
            yield piece

    return run, d.is_finished


def _zstd_engine() -> tuple[Any, Any] | None:
    zstandard = _optional("zstandard")
    if zstandard is None:
        return None
    pieces: list[bytes] = []
    totals = {"in": 0, "out": 0}

    class _Sink:
        # zstandard pushes output in pieces of at most write_size; the limits are checked
        # here, as it pushes, so a bomb is stopped before it piles up.
        def write(self, data: bytes) -> int:
            totals["out"] += len(data)
            if totals["out"] > MAX_OUTPUT or (
                totals["out"] > RATIO_GRACE and totals["out"] > MAX_RATIO * totals["in"]
            ):
                raise _Bomb
            pieces.append(bytes(data))
            return len(data)

    writer = zstandard.ZstdDecompressor().stream_writer(_Sink(), write_size=STEP)

    def run(chunk: bytes) -> Iterator[bytes]:
        for i in range(0, len(chunk), 4096):
            part = chunk[i : i + 4096]
            totals["in"] += len(part)
            writer.write(part)
            while pieces:
                yield pieces.pop(0)

    # zstandard's writer does not say when the frame ended; a truncated zstd body is
    # simply read as far as it goes.
    return run, lambda: True


def decompressor_for(content_encoding: str | None) -> Decompressor | None:
    """A decompressor for a Content-Encoding, or None when we cannot read it.

    Identity (or no header) also gives None: the caller reads the body as it is.
    """
    if not content_encoding:
        return None
    encoding = content_encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return Decompressor(*_zlib_engine(16 + zlib.MAX_WBITS))
    if encoding == "deflate":
        return Decompressor(*_zlib_engine(None))
    if encoding == "br":
        engine = _brotli_engine()
        return Decompressor(*engine) if engine is not None else None
    if encoding == "zstd":
        engine = _zstd_engine()
        return Decompressor(*engine) if engine is not None else None
    return None


def is_identity(content_encoding: str | None) -> bool:
    return not content_encoding or content_encoding.strip().lower() == "identity"
