"""Crossing what the JSON scanner does not read: strings, and containers off every path.

Almost every byte of a large response is one of the two: the inside of a string (a long
completion is one string of escaped prose) or a container nobody asked for (the number
arrays of an embeddings batch). Both are crossed here without decoding, with the fastest
primitive CPython offers for each shape, and never one Python step per byte:

- ``bytes.find`` (memchr: tens of GB/s) for long stretches with nothing in them: the
  rest of a string up to its next quote, a run of numbers up to the next bracket;
- a search whose pattern starts with a quote (the regex engine skips to each one with
  memchr) for strings full of escaped quotes;
- regular expressions that read byte by byte in C (about a fifth of a GB/s in CPython's
  engine) for dense stretches: many short strings, small arrays, members;
- one Python step per string, per long flat run and per bracket of nesting deeper than
  the expressions go (a run of brackets counts as one step).

The expressions are bounded (a flat run, a string segment, the escapes in a string), so
that they give long stretches back to ``bytes.find`` instead of reading them slowly; a
byte is read a small, bounded number of times whatever the body holds.
"""

from __future__ import annotations

import re
import sys

__all__ = [
    "DOUBTFUL_QUOTES",
    "ESCAPE_PENDING",
    "UNCLOSED",
    "Marks",
    "close_run",
    "open_run",
    "run_text_bytes",
    "skip_run",
    "string_end",
]

_BACKSLASH = 0x5C

# -- strings ----------------------------------------------------------------------------
#
# A string ends at the first quote that an even run of backslashes (none, usually) comes
# before. bytes.find goes to the next quote; a quote escaped by a lone backslash (\") is
# skipped by _CANDIDATE, whose look-behind refuses the quotes one or three backslashes
# escape; only a quote after a longer run comes back to Python, where the run is measured.

#: ``string_end``: the string goes on past the buffer, nothing pending.
UNCLOSED = -1
#: ``string_end``: the string goes on past the buffer, whose last byte is a backslash that
#: escapes the first byte of the next one.
ESCAPE_PENDING = -2

#: Quotes after long runs of backslashes decided in Python per call (``\\\\\\\\\\"``, rare in
#: text); past them the rest of the buffer is read byte by byte in C instead.
DOUBTFUL_QUOTES = 8

# A look-behind may see before the search position: what is there is always the opening
# quote, an escaped byte or the last escaped quote, so its verdict holds there too.
_CANDIDATE = re.compile(rb'"(?<![^\\]\\")(?<![^\\]\\\\\\")').search
# The rest of a string body, byte by byte: stops at the closing quote, at the end of the
# buffer, or before a backslash that is the buffer's last byte.
_BODY = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.S).match


def _run_before(buf: bytes, lo: int, end: int) -> int:
    """Backslashes ending just before ``end``, none counted before ``lo``."""
    if end - 1 <= lo or buf[end - 2] != _BACKSLASH:
        return 1 if end > lo and buf[end - 1] == _BACKSLASH else 0
    piece = buf[lo:end]  # the bytes since the last escape boundary: copied in C, once
    return len(piece) - len(piece.rstrip(b"\\"))


def string_end(buf: bytes, lo: int) -> int:
    """The index of the quote that ends the string whose body goes on at ``buf[lo:]``.

    ``lo`` must be an escape boundary (a backslash there starts an escape: right after the
    opening quote, or after an escaped byte). Returns :data:`UNCLOSED` or
    :data:`ESCAPE_PENDING` when the string does not end in ``buf``.
    """
    q = buf.find(b'"', lo)
    doubts = DOUBTFUL_QUOTES
    while q >= 0:
        if q == lo or buf[q - 1] != _BACKSLASH:
            return q
        if _run_before(buf, lo, q) % 2 == 0:
            return q  # an even run escapes itself: this quote is the end
        lo = q + 1  # an escaped quote: the byte after it is an escape boundary
        doubts -= 1
        if doubts == 0:
            end = _BODY(buf, lo).end()  # type: ignore[union-attr]  # it always matches
            if end < len(buf) and buf[end] != _BACKSLASH:
                return end
            break
        m = _CANDIDATE(buf, lo)
        if m is None:
            break
        q = m.start()
    n = len(buf)
    if n > lo and buf[n - 1] == _BACKSLASH and _run_before(buf, lo, n) % 2 == 1:
        return ESCAPE_PENDING
    return UNCLOSED


# -- skipped containers -----------------------------------------------------------------
#
# skip_run crosses, from inside a skipped container, a run of whole strings, of flat bytes
# (neither brackets nor quotes) and of containers nested at most two deep, in C however
# many short strings or small arrays it holds. It stops at a bracket of deeper nesting, at
# the bracket that closes the container, at a string it does not take (cut by the end of
# the buffer, longer than a few KB, or with many escapes: string_end crosses those faster),
# and inside a flat run longer than _FLAT_MAX (Marks jumps to its end). Written as "unrolled
# loops" (no alternation inside a repeat): linear, and about twice as fast in CPython's
# engine.
#
# Every repeat is possessive where the engine has them (3.11): no repeat here can give
# bytes back to any effect, since what follows each one is a byte it does not take (a
# flat run is followed by a quote or a bracket, a string's piece by a backslash or its
# quote), so a shorter try only fails again; the match is the same, but a container that
# does not close within the bounds (a nested array of 5,000 numbers, an embedding) was
# refused only after retrying every shorter run at every level: eleven microseconds per
# call, most of a 200 MB embeddings scan. Possessive, it is refused at once.

_P = b"+" if sys.version_info >= (3, 11) else b""
_FLAT_MAX = 512
_F = rb'[^"\[\]{}]{0,%d}' % _FLAT_MAX + _P
_STR = rb'"[^"\\]{0,256}' + _P + rb'(?:\\.[^"\\]{0,256}' + _P + rb"){0,32}" + _P + rb'"'
_FLAT = _F + rb"(?:" + _STR + _F + rb")*" + _P
_NESTED1 = rb"[\[{]" + _FLAT + rb"[\]}]"
_NESTED2 = rb"[\[{]" + _FLAT + rb"(?:" + _NESTED1 + _FLAT + rb")*" + _P + rb"[\]}]"
_SKIP_RUN = re.compile(_FLAT + rb"(?:" + _NESTED2 + _FLAT + rb")*" + _P).match
_OPENERS = re.compile(rb"[\[{][\[{ \t\r\n]*").match
_CLOSERS = re.compile(rb"[\]}]+").match
_WHITESPACE = b" \t\r\n"


def skip_run(buf: bytes, pos: int) -> int:
    """Where the run that :func:`skip_run`'s expression crosses from ``pos`` ends."""
    return _SKIP_RUN(buf, pos).end()  # type: ignore[union-attr]  # it always matches


def open_run(buf: bytes, at: int) -> tuple[int, int]:
    """The end of the run of opening brackets (and blanks) at ``at``, and how many."""
    end = _OPENERS(buf, at).end()  # type: ignore[union-attr]  # buf[at] is a bracket
    return end, len(buf[at:end].translate(None, _WHITESPACE))


def close_run(buf: bytes, at: int, depth: int) -> tuple[int, int]:
    """The end of the closing brackets at ``at`` that ``depth`` open ones take, and how many."""
    end = _CLOSERS(buf, at).end()  # type: ignore[union-attr]  # buf[at] is a bracket
    k = min(end - at, depth)
    return at + k, k


class Marks:
    """Where the next quote and bracket of each kind are in one buffer, each found once.

    A search for the next of five bytes from every position would read the rest of the
    buffer again each time (and a run of numbers long for one kind of bracket would make
    it quadratic); remembering each answer until it is passed reads the buffer at most
    once per byte searched for.
    """

    __slots__ = ("_at",)

    _BYTES = (b'"', b"[", b"]", b"{", b"}")

    def __init__(self) -> None:
        self._at = [-1, -1, -1, -1, -1]

    def next(self, buf: bytes, pos: int) -> int:
        """The position of the first quote or bracket at or after ``pos`` (``len(buf)``: none)."""
        at = self._at
        best = n = len(buf)
        for i in range(5):
            p = at[i]
            if p < pos:
                p = buf.find(self._BYTES[i], pos)
                if p < 0:
                    p = n
                at[i] = p
            if p < best:
                best = p
        return best


# -- text in skipped runs ---------------------------------------------------------------

_STRING_SUB = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"').subn
# Aligned on the strings of a run: group 1 holds those longer than 256 bytes.
_LONG_STRINGS = re.compile(rb'"(?:[^"\\]|\\.){0,256}"|"([^"\\]*(?:\\.[^"\\]*)*)"').findall
_LONG_CANDIDATE = re.compile(rb'[^"]{257}').search


def run_text_bytes(run: bytes) -> int:
    """The bytes of the strings in a run of whole strings (and flat bytes), as the scanner
    counts one string: escapes included, blobs (over 256 bytes, no space) left out."""
    if b"\\" not in run:
        inside = run.split(b'"')[1::2]  # no escaped quote: every other piece is a string
        if not inside:
            return 0
        total = sum(map(len, inside))
        if max(map(len, inside)) > 256:
            for text in inside:
                if len(text) > 256 and b" " not in text:
                    total -= len(text)  # a blob (base64, a data URI), not text
        return total
    rest, count = _STRING_SUB(b"", run)
    if not count:
        return 0
    total = len(run) - len(rest) - 2 * count
    if _LONG_CANDIDATE(run) is not None:
        for text in filter(None, _LONG_STRINGS(run)):
            if b" " not in text:
                total -= len(text)
    return total
