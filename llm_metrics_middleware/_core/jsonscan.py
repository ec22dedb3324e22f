"""Incremental JSON scanner that captures a few values by path, in constant memory.

Why not ``json.loads``: a non-streamed LLM response can be hundreds of megabytes (a long
completion, a large embeddings batch), and the only parts we want are a usage object and a
model name of a few hundred bytes. The scanner walks the structure as the bytes pass and
copies out only the values whose path we asked for; everything else is crossed in C
(:mod:`.jsonskip`: strings and skipped containers, with ``bytes.find`` for long stretches
and regular expressions for dense ones; members whose keys we do not want by a member
regex), so the work stays a small multiple of reading the bytes once, however many short
strings, escapes, brackets or keys a hostile body holds.

Input may be one JSON value, several (NDJSON or any whitespace-separated sequence), or a
top-level array. Each object at the top level, and each object directly inside a top-level
array, is a *root*: paths are relative to it, and a finished object is handed to the
``on_object`` callback as a sparse nested ``dict`` that holds only the captured values.
Gemini's non-SSE ``streamGenerateContent`` (a JSON array of responses) and Ollama's NDJSON
are therefore read by the same code as a plain JSON body.

The scanner never raises on bad input: on the first structural error it sets ``failed``
and ignores the rest. It is not a validator; it is just strict enough to find keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable

from .jsonpaths import _CAPTURE, _DESCEND, JSONObject, Path, PathItem, _Frame, _put, plan_paths, string_bytes
from .jsonskip import ESCAPE_PENDING, Marks, close_run, open_run, run_text_bytes, skip_run, string_end
from .textfields import TextFieldCounter

__all__ = ["CAPTURE_LIMIT", "KEY_LIMIT", "JSONObject", "JSONScanner", "Path", "PathItem", "string_bytes"]

#: Largest captured value kept, in bytes. A usage object is well under 1 KB; a bigger value
#: at a captured path is not what we are looking for and is dropped (``overflowed`` is set).
CAPTURE_LIMIT = 16 * 1024
#: Longest object key remembered; longer keys are never among the captured paths.
KEY_LIMIT = 256

_SIGNIFICANT = re.compile(rb"[^ \t\r\n]")
# One object member whose key holds no escape and whose value is a string or a scalar,
# with the comma after it: members we do not care about are crossed by this regex, in C.
_MEMBER = re.compile(
    rb'[ \t\r\n]*"([^"\\]{0,256})"[ \t\r\n]*:[ \t\r\n]*'
    rb'(?:"[^"\\]*(?:\\.[^"\\]*)*"|-?[0-9][0-9.eE+-]*|true|false|null)[ \t\r\n]*,'
).match
_SCALAR_END = re.compile(rb"[,}\] \t\r\n]")

# States of the machine.
_VALUE = 0  # expecting a value
_KEY = 1  # in an object, expecting a key or "}"
_COLON = 2  # after a key
_AFTER = 3  # after a value, expecting "," or a closing bracket
_STRING = 4  # inside a string
_SKIP = 5  # inside a container we do not care about
_SCALAR = 6  # inside a number / true / false / null


_QUOTE = 0x22


class JSONScanner:
    """Feed bytes with :meth:`feed`; objects arrive through ``on_object``.

    ``paths`` are the object-relative paths to capture, as tuples of keys (``str``) and
    array indices (``int``). ``text_roots`` names top-level object keys whose string
    values are measured (total byte length) into :attr:`text_bytes`, for estimating
    prompt tokens without keeping them, or handed raw to a ``text_counter`` (an answer's).
    """

    __slots__ = (
        "_trie", "_on_object", "_text_roots", "_state", "_frames", "_object", "_pending",
        "_skip_depth", "_string_kind", "_string_escape", "_key", "_capture", "_capture_path",
        "_cap_from", "_counting", "_string_len", "_string_spaced", "text_bytes", "failed",
        "overflowed", "objects", "_members", "text_counter", "_forward_from",
    )

    def __init__(
        self,
        paths: Iterable[Path],
        on_object: Callable[[JSONObject], None],
        text_roots: Iterable[str] = (),
        text_counter: TextFieldCounter | None = None,
    ) -> None:
        self._text_roots = frozenset(text_roots)
        self.text_counter = text_counter
        self._forward_from = -1  # where the value text_counter takes starts in this chunk
        self._trie, self._members = plan_paths(paths, self._text_roots)
        self._on_object = on_object
        self._state = _VALUE
        self._frames: list[_Frame] = []
        self._object: JSONObject | None = None
        # Path of the value about to start (None: skip it).
        self._pending: Path | None = None
        self._skip_depth = 0
        # What the current string is: 0 skipped, 1 key, 2 a value (captured or not).
        self._string_kind = 0
        self._string_escape = False
        self._key = bytearray()
        self._capture: bytearray | None = None
        self._capture_path: Path | None = None
        self._cap_from = 0
        self._counting = False
        self._string_len = 0
        self._string_spaced = False
        self.text_bytes = 0
        self.failed = False
        self.overflowed = False
        self.objects = 0

    # -- public -------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self.failed or not data:
            return
        try:
            self._feed(data)
        except Exception:  # a bug here must never escape into the host app
            self.failed = True

    @property
    def partial(self) -> JSONObject | None:
        """The fields captured so far of the object still being read (None between objects)."""
        return self._object

    @property
    def idle(self) -> bool:
        """True between top-level values: everything fed so far was complete."""
        return not self._frames and self._state in (_VALUE, _AFTER) and not self.failed

    # -- machine --------------------------------------------------------------------------

    def _fail(self) -> int:
        self.failed = True
        self._capture = None
        return -1

    def _feed(self, buf: bytes) -> None:
        n = len(buf)
        pos = 0
        self._cap_from = 0
        marks: Marks | None = None
        if self._state == _STRING and self._forward_from == 0 and self.text_counter.in_text:  # type: ignore[union-attr]
            # Inside the text string the counter is in (a long answer across chunks): one
            # pass crosses it for both. The string's own escape state is the counter's.
            pos = self.text_counter.cross(buf)  # type: ignore[union-attr]
            if pos < 0:
                return  # still inside it: the next chunk starts the same way
            self._forward_from = pos
            self._end_string(buf, pos)
        while pos < n:
            state = self._state
            if state == _STRING:
                pos = self._scan_string(buf, pos, n)
                if pos < 0:
                    break
            elif state == _SKIP:
                end = skip_run(buf, pos)
                if end > pos and self._counting:
                    self.text_bytes += run_text_bytes(buf[pos:end])
                if end >= n:
                    break
                c = buf[end]
                if c == _QUOTE:  # a string the run does not take: string_end crosses it
                    pos = end + 1
                    self._begin_string(0)
                elif c == 0x7B or c == 0x5B:  # nested deeper than the run goes
                    pos, k = open_run(buf, end)
                    self._skip_depth += k
                elif c == 0x7D or c == 0x5D:
                    pos, k = close_run(buf, end, self._skip_depth)
                    self._skip_depth -= k
                    if self._skip_depth == 0:
                        self._end_value(buf, pos)
                else:  # a long flat run (the numbers of an embedding): memchr to its end
                    if marks is None:
                        marks = Marks()
                    pos = marks.next(buf, end)
            elif state == _SCALAR:
                m = _SCALAR_END.search(buf, pos)
                if m is None:
                    break
                # The delimiter belongs to the enclosing container: _AFTER reads it.
                pos = m.start()
                self._end_value(buf, pos)
            else:
                m = _SIGNIFICANT.search(buf, pos)
                if m is None:
                    break
                i = m.start()
                c = buf[i]
                pos = i + 1
                if state == _VALUE:
                    frames = self._frames
                    if c == 0x5D and frames and not frames[-1].is_object:
                        self._close()  # "]" right after "[" (or a trailing comma)
                    elif self._start_value(c, i) < 0:
                        return
                    elif self._state == _SCALAR:
                        pos = i
                elif state == _KEY:
                    if c == _QUOTE and self._frames:
                        keys = self._members.get(self._frames[-1].path)  # type: ignore[arg-type]
                        if keys is not None:
                            m = _MEMBER(buf, i)
                            if m is not None and m.group(1) not in keys:
                                while True:  # cross the members we do not care about
                                    pos = m.end()
                                    m = _MEMBER(buf, pos)
                                    if m is None or m.group(1) in keys:
                                        break
                                continue
                    if c == _QUOTE:
                        self._begin_string(1)
                    elif c == 0x7D:  # } of an empty object
                        self._close()
                    else:
                        self._fail()
                        return
                elif state == _COLON:
                    if c != 0x3A:
                        self._fail()
                        return
                    self._state = _VALUE
                else:  # _AFTER
                    frames = self._frames
                    if not frames:
                        # The next value of a top-level sequence (NDJSON).
                        self._state = _VALUE
                        pos = i
                    elif c == 0x2C:  # ,
                        top = frames[-1]
                        if top.is_object:
                            self._state = _KEY
                        else:
                            top.index += 1
                            self._set_pending_element(top)
                            self._state = _VALUE
                    elif (c == 0x7D and frames[-1].is_object) or (
                        c == 0x5D and not frames[-1].is_object
                    ):
                        self._close()
                    else:
                        self._fail()
                        return
        if self._capture is not None:
            self._append_capture(buf, self._cap_from, n)
        if self._forward_from >= 0:
            self.text_counter.feed(buf[self._forward_from :])  # type: ignore[union-attr]
            self._forward_from = 0

    def _append_capture(self, buf: bytes, start: int, end: int) -> None:
        cap = self._capture
        if cap is None:
            return
        if len(cap) + (end - start) > CAPTURE_LIMIT:
            # Not a usage object: drop it, keep scanning.
            self.overflowed = True
            self._capture = None
            self._capture_path = None
            return
        cap += buf[start:end]

    def _set_pending_element(self, frame: _Frame) -> None:
        if frame.is_top_array:
            self._pending = ()  # an element of a top-level array: a JSON object if an object
        elif frame.path is None:
            self._pending = None
        else:
            self._pending = frame.path + (frame.index,)

    def _start_value(self, c: int, at: int) -> int:
        """Begin the value whose first byte is ``c``; returns -1 on a structural error."""
        pending = self._pending
        self._pending = None
        frames = self._frames
        if not frames or (frames[-1].is_top_array and pending == ()):
            # A top-level value, or an element of a top-level array.
            if c == 0x7B:
                frames.append(_Frame(True, (), is_object_root=True))
                self._object = {}
                self._state = _KEY
                return 0
            if c == 0x5B and not frames:
                frame = _Frame(False, None, is_top_array=True)
                frames.append(frame)
                self._set_pending_element(frame)
                self._state = _VALUE
                return 0
            return self._skip_value(c)
        kind = self._trie.get(pending) if pending is not None else None
        if kind == _CAPTURE:
            self._capture = bytearray()
            self._capture_path = pending
            self._cap_from = at
            return self._skip_value(c)
        if kind == _DESCEND and (c == 0x7B or c == 0x5B):
            frame = _Frame(c == 0x7B, pending)
            frames.append(frame)
            if c == 0x7B:
                self._state = _KEY
            else:
                self._set_pending_element(frame)
                self._state = _VALUE
            return 0
        if (
            self._text_roots
            and pending
            and isinstance(pending[0], str)
            and pending[0] in self._text_roots
        ):
            if self.text_counter is None:
                self._counting = True
            else:  # from where the counter takes the value's bytes (-1: not at all)
                self._forward_from = self.text_counter.begin(pending[-1], c, at)
        return self._skip_value(c)

    def _skip_value(self, c: int) -> int:
        if c == 0x7B or c == 0x5B:
            self._skip_depth = 1
            self._state = _SKIP
        elif c == _QUOTE:
            self._begin_string(2)
        elif c in b"-0123456789tfn":
            self._state = _SCALAR
        else:
            return self._fail()
        return 0

    def _begin_string(self, kind: int) -> None:
        self._string_kind = kind
        self._string_escape = False
        self._string_len = 0
        self._string_spaced = False
        if kind == 1:
            del self._key[:]
        self._state = _STRING

    def _scan_string(self, buf: bytes, pos: int, n: int) -> int:
        """Find the closing quote; returns the position after it, or -1 if not in ``buf``."""
        start = pos
        if self._string_escape:
            self._string_escape = False
            pos += 1
            if pos > n:
                return -1
        q = string_end(buf, pos)
        if q < 0:
            self._string_escape = q == ESCAPE_PENDING
            self._string_piece(buf, start, n)
            return -1
        self._string_piece(buf, start, q)
        self._end_string(buf, q + 1)
        return q + 1

    def _string_piece(self, buf: bytes, start: int, end: int) -> None:
        kind = self._string_kind
        if kind == 1:
            if len(self._key) + (end - start) <= KEY_LIMIT:
                self._key += buf[start:end]
            else:
                self._key = bytearray(b"\x00" * (KEY_LIMIT + 1))  # never matches a path
        elif self._counting:
            self._string_len += end - start
            if not self._string_spaced and buf.find(b" ", start, end) >= 0:
                self._string_spaced = True

    def _end_string(self, buf: bytes, end: int) -> None:
        kind = self._string_kind
        if self._counting and kind != 1:
            # Long strings without a space are blobs (base64 images, data URIs), not text.
            if self._string_spaced or self._string_len <= 256:
                self.text_bytes += self._string_len
        if kind == 1:
            frame = self._frames[-1]
            try:
                key = json.loads(b'"' + bytes(self._key) + b'"') if b"\\" in self._key else self._key.decode()
            except (ValueError, UnicodeDecodeError):
                key = None
            self._pending = frame.path + (key,) if (frame.path is not None and key is not None) else None
            self._state = _COLON
        elif kind == 0:
            self._state = _SKIP
        else:
            self._end_value(buf, end)

    def _end_value(self, buf: bytes, end: int) -> None:
        """A value ended at ``end`` in ``buf``: finish a capture, move to _AFTER."""
        self._state = _AFTER
        self._counting = False
        if self._forward_from >= 0:
            self.text_counter.end_value(buf[self._forward_from : end])  # type: ignore[union-attr]
            self._forward_from = -1
        cap = self._capture
        if cap is None:
            return
        self._append_capture(buf, self._cap_from, end)
        cap, path = self._capture, self._capture_path
        self._capture = None
        self._capture_path = None
        if cap is None or path is None or self._object is None:
            return
        try:
            value = json.loads(bytes(cap))
        except (ValueError, RecursionError):  # not a usage object: drop it, keep scanning
            return
        _put(self._object, path, value)

    def _close(self) -> None:
        frame = self._frames.pop()
        self._state = _AFTER
        if frame.is_object_root:
            obj = self._object
            self._object = None
            self.objects += 1
            if obj is not None:
                self._on_object(obj)
