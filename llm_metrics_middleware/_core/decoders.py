"""Incremental decompression of response bodies, for reading only (httpx ``_decoders`` style).

The response always leaves compressed, untouched; we decompress a copy as it passes, in
bounded steps, to find the usage. One class per Content-Encoding, all behind
:class:`ContentDecoder`, whose one guard stops a decompression bomb: a body that inflates
past :data:`MAX_OUTPUT` bytes, or by more than :data:`MAX_RATIO` to one once past
:data:`RATIO_GRACE` bytes. Reading then stops (``error`` is set) and the response goes on
unharmed.

gzip and deflate use the standard library; ``br`` needs ``brotli`` (or ``brotlicffi``) and
``zstd`` needs ``zstandard`` installed, otherwise those bodies are passed on unread.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Iterator
from typing import Any, ClassVar

#: Largest decompressed body read (bytes).
MAX_OUTPUT = 1 << 30
#: Largest decompressed / compressed ratio accepted once past RATIO_GRACE output bytes.
#: Text and JSON compress 5-20x; number arrays up to ~50x; a bomb ~1000x.
MAX_RATIO = 200
RATIO_GRACE = 1 << 20
#: Largest piece produced per step, so memory per response stays bounded.
STEP = 64 * 1024


class _Bomb(Exception):
    pass


def _optional(*names: str) -> Any:
    """The first of these optional libraries that imports, or None (typed Any: its stubs
    may or may not be installed)."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


class ContentDecoder:
    """``decode(chunk)`` yields decompressed pieces of at most :data:`STEP` bytes.

    Subclasses implement :meth:`_pieces` and :attr:`complete`; the bomb guard, the byte
    accounting and the error handling are here, once.
    """

    #: False when the library the encoding needs is not installed.
    available: ClassVar[bool] = True
    #: True when :meth:`_pieces` runs every output byte through :meth:`_check` itself.
    checks_output: ClassVar[bool] = False

    def __init__(self) -> None:
        self._in = 0
        self._out = 0
        #: ``decompression_bomb`` or ``bad_compression`` once reading stopped.
        self.error: str | None = None

    def decode(self, chunk: bytes) -> Iterator[bytes]:
        if self.error is not None or not chunk:
            return
        try:
            checked = self.checks_output
            for piece in self._pieces(chunk):
                if not checked:
                    self._check(len(piece))
                yield piece
        except _Bomb:
            self.error = "decompression_bomb"
        except Exception:
            self.error = "bad_compression"

    def _take(self, n: int) -> None:
        """Counts ``n`` compressed bytes consumed (for the ratio)."""
        self._in += n

    def _check(self, n: int) -> None:
        """Counts ``n`` output bytes; raises :class:`_Bomb` past the limits."""
        self._out += n
        if self._out > MAX_OUTPUT or (self._out > RATIO_GRACE and self._out > MAX_RATIO * self._in):
            raise _Bomb

    def _pieces(self, chunk: bytes) -> Iterator[bytes]:
        raise NotImplementedError

    @property
    def complete(self) -> bool:
        """Whether the compressed stream reached its proper end."""
        return True


class _ZlibDecoder(ContentDecoder):
    #: ``None``: HTTP "deflate", zlib-wrapped per the RFC or raw, told by its header.
    wbits: ClassVar[int | None] = None

    def __init__(self) -> None:
        super().__init__()
        self._d: Any = None if self.wbits is None else zlib.decompressobj(self.wbits)
        self._head = b""

    def _pieces(self, chunk: bytes) -> Iterator[bytes]:
        self._take(len(chunk))
        d = self._d
        data = chunk
        if d is None:
            data = self._head + chunk
            if len(data) < 2:
                self._head = data
                return
            cmf, flg = data[0], data[1]
            zlib_wrapped = cmf & 0x0F == 8 and (cmf * 256 + flg) % 31 == 0
            self._d = d = zlib.decompressobj(zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS)
        while data:
            piece = d.decompress(data, STEP)
            data = d.unconsumed_tail
            if piece:
                yield piece
            if d.eof:
                return

    @property
    def complete(self) -> bool:
        return self._d is not None and bool(self._d.eof)


class GZipDecoder(_ZlibDecoder):
    wbits = 16 + zlib.MAX_WBITS


class DeflateDecoder(_ZlibDecoder):
    wbits = None


_brotli = _optional("brotli", "brotlicffi")


class BrotliDecoder(ContentDecoder):
    available = _brotli is not None

    def __init__(self) -> None:
        super().__init__()
        self._d = _brotli.Decompressor()

    def _pieces(self, chunk: bytes) -> Iterator[bytes]:
        self._take(len(chunk))
        d = self._d
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

    @property
    def complete(self) -> bool:
        try:
            return bool(self._d.is_finished())
        except Exception:
            return False


_zstandard = _optional("zstandard")

#: Largest zstd window accepted. The decoder allocates the window the frame declares, up
#: to 2 GiB; HTTP's zstd (RFC 9659) caps it at 8 MiB, so a bigger one is not read.
ZSTD_MAX_WINDOW = 8 << 20


class ZStandardDecoder(ContentDecoder):
    # zstandard's writer does not say when the frame ended; a truncated zstd body is
    # simply read as far as it goes (``complete`` stays True).
    available = _zstandard is not None
    checks_output = True

    def __init__(self) -> None:
        super().__init__()
        self._out_pieces: list[bytes] = []
        self._writer = _zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_writer(
            self, write_size=STEP
        )

    def write(self, data: bytes) -> int:
        # zstandard pushes output here in pieces of at most write_size; the guard runs as
        # it pushes, so a bomb is stopped before it piles up.
        self._check(len(data))
        self._out_pieces.append(bytes(data))
        return len(data)

    def _pieces(self, chunk: bytes) -> Iterator[bytes]:
        pieces = self._out_pieces
        for i in range(0, len(chunk), 4096):
            part = chunk[i : i + 4096]
            self._take(len(part))
            self._writer.write(part)
            while pieces:
                yield pieces.pop(0)


#: Content-Encoding -> its decoder.
SUPPORTED_DECODERS: dict[str, type[ContentDecoder]] = {
    "gzip": GZipDecoder,
    "x-gzip": GZipDecoder,
    "deflate": DeflateDecoder,
    "br": BrotliDecoder,
    "zstd": ZStandardDecoder,
}


def decompressor_for(content_encoding: str | None) -> ContentDecoder | None:
    """A decoder for a Content-Encoding, or None when we cannot read it.

    Identity (or no header) also gives None: the caller reads the body as it is.
    """
    if not content_encoding:
        return None
    cls = SUPPORTED_DECODERS.get(content_encoding.strip().lower())
    if cls is None or not cls.available:
        return None
    return cls()


def is_identity(content_encoding: str | None) -> bool:
    return not content_encoding or content_encoding.strip().lower() == "identity"
