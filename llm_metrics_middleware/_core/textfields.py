"""The generated text of a whole JSON response, measured as its bytes pass (sans-IO).

An estimate counts only what the model wrote: the string values of the provider table's
text fields (``content``, ``text``, ``arguments``, ``thinking``...), never ids, object
names, roles, model names or finish reasons, which can outweigh a short answer many times.
Each string is measured as it sits in the body (escapes as written), the same rule as for
streamed chunks, so a body gives the same estimate whole, split anywhere, or cut short.

The scanner (:mod:`.jsonscan`) hands this counter the raw bytes of each value under the
response's text roots, in pieces; the counter finds the text fields' keys with one regex
and crosses their strings with :func:`.jsonskip.string_end` (``bytes.find``). A key can only match where JSON puts a
key: inside a string every quote is escaped, so ``"text":`` cannot be read out of one, and
the look-behind keeps a key that merely ends in an escaped ``\\"text`` out.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator

from .jsonskip import ESCAPE_PENDING, string_end

#: Bytes kept from the end of a piece, so that a key split across pieces is still found.
#: Longer than any text field's key with its quotes, colon and some whitespace; a key
#: followed by more whitespace than that, split just there, is missed (never miscounted).
KEY_CARRY = 64

_QUOTE = 0x22
_SIGNIFICANT = re.compile(rb"[^\s,]").search
# Inside an array of text: a run of whole strings and their separators, crossed in C
# (an array of a million one-letter strings must not take a Python step each).
_STRINGS_RUN = re.compile(rb'(?:[\s,]*"[^"\\]*(?:\\.[^"\\]*)*")*').match
_STRING_SUB = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"').subn


@functools.lru_cache(maxsize=16)
def _patterns(fields: frozenset[str]) -> tuple[Callable[..., Iterator[re.Match[bytes]]], Callable[..., re.Match[bytes] | None]]:
    """``finditer`` of a text field's key with its whole string (group 1) or an array's
    opening bracket (group 1 None), and ``search`` of the key with the value's first byte."""
    names = b"|".join(re.escape(f.encode()) for f in sorted(fields, key=len, reverse=True))
    # The look-behind comes after the first quote: a pattern that starts with a literal lets
    # the regex engine skip ahead to it (four times faster than a leading look-behind).
    key = rb'"(?<=[{,\s]")(?:' + names + rb')"\s*:\s*'
    return (
        re.compile(key + rb'(?:"([^"\\]*(?:\\.[^"\\]*)*)"|\[)').finditer,
        re.compile(key + rb'["\[]').search,
    )


class TextFieldCounter:
    """Counts the bytes of text-field strings in raw JSON fed piece by piece.

    :meth:`feed` takes consecutive bytes of one or more JSON values; :meth:`begin` may
    say that the next byte fed is inside a text string already (a text root whose value
    is itself the string, such as Ollama's ``response``). A text field whose value is an
    array counts the strings of the array (and of arrays nested in it) until an element
    that is neither. Whole strings are found by one regex in C (however many short fields
    a hostile body holds); only a string cut by the end of a piece, and arrays, take
    Python steps. Constant memory: a piece is never kept, only its last
    :data:`KEY_CARRY` bytes between keys.
    """

    __slots__ = ("bytes", "fields", "_values", "_find_key", "_in_text", "_escape", "_carry", "_depth")

    def __init__(self, fields: frozenset[str]) -> None:
        self.bytes = 0
        #: The field names whose values are text.
        self.fields = fields
        self._values, self._find_key = _patterns(fields)
        self._in_text = False
        self._escape = False  # the last piece ended inside an escape (odd backslashes)
        self._carry = b""
        self._depth = 0  # inside a text field's array (and arrays nested in it)

    def begin(self, key: object, first: int, at: int) -> int:
        """A value under ``key`` starts at ``at`` with the byte ``first`` (a text root's
        value, for the scanner): where its bytes are to be fed from, or -1 when it holds no
        text. A string or an array under a text field (Ollama's ``response``) is text
        itself, fed from after its first byte; any other container, from its first byte,
        for the text keys inside."""
        if key in self.fields and (first == _QUOTE or first == 0x5B):
            self._in_text = first == _QUOTE
            self._depth = 0 if self._in_text else 1
            self._escape = False
            self._carry = b""
            return at + 1
        return -1 if first == _QUOTE else at

    def end_value(self, data: bytes) -> None:
        """The last bytes of the value begun: what follows is another value, never its text."""
        self.feed(data)
        self._in_text = False
        self._escape = False
        self._carry = b""
        self._depth = 0

    @property
    def in_text(self) -> bool:
        """Inside a text string (fed so far): the scanner may let :meth:`cross` read it."""
        return self._in_text

    def cross(self, data: bytes) -> int:
        """Count the text string the counter is in from the start of ``data``: the position
        after its closing quote, or -1 if ``data`` ends inside it."""
        pos = self._string(data, 0, len(data))
        return -1 if self._in_text else pos

    def feed(self, data: bytes) -> None:
        if self._carry:
            data = self._carry + data
            self._carry = b""
        n = len(data)
        pos = 0
        while pos < n:
            if self._in_text:
                pos = self._string(data, pos, n)
            elif self._depth:
                end = _STRINGS_RUN(data, pos).end()  # type: ignore[union-attr]  # it always matches
                if end > pos:
                    rest, count = _STRING_SUB(b"", memoryview(data)[pos:end])  # no copy of the run
                    self.bytes += end - pos - len(rest) - 2 * count
                    pos = end
                m = _SIGNIFICANT(data, pos)
                if m is None:
                    return
                pos = m.start()
                c = data[pos]
                if c == _QUOTE:
                    self._in_text = True
                    self._escape = False
                elif c == 0x5B:  # [
                    self._depth += 1
                elif c == 0x5D:  # ]
                    self._depth -= 1
                else:  # an object or a scalar: not an array of text; its keys are looked at
                    self._depth = 0
                    continue
                pos += 1
            else:
                pos = self._whole(data, pos)
                if self._depth:
                    continue
                m = self._find_key(data, pos)  # a key whose string the piece cuts
                if m is None:
                    self._carry = data[max(pos, n - KEY_CARRY) :]
                    return
                pos = m.end()
                if data[pos - 1] == _QUOTE:
                    self._in_text = True
                    self._escape = False
                else:
                    self._depth = 1

    def _whole(self, data: bytes, pos: int) -> int:
        """Count the whole text strings from ``pos`` on; where the last ended, or where an
        array of text begins (then :attr:`_depth` is set and the rest waits for it)."""
        total = 0
        for m in self._values(data, pos):
            if m.start(1) < 0:  # an array: its strings are counted one by one
                self.bytes += total
                self._depth = 1
                return m.end()
            total += m.end(1) - m.start(1)
            pos = m.end()
        self.bytes += total
        return pos

    def _string(self, data: bytes, pos: int, n: int) -> int:
        """Count the text string's bytes from ``pos``; the position after it, or ``n``."""
        start = pos
        if self._escape:
            self._escape = False
            pos += 1  # the escaped byte (maybe a quote) is text
        q = string_end(data, pos)
        if q < 0:
            self._escape = q == ESCAPE_PENDING
            self.bytes += n - start
            return n
        self.bytes += q - start
        self._in_text = False
        return q + 1
