"""The peek at a JSON request body: a few fields and the prompt's size, as the app reads it.

Dimension values are resolved when the response ends, so by then the app has read the
request body and the peek has seen the fields we want (``model``, ``stream``, ``user``...).
The peek tees the app's own reads: it never reads ahead, never changes what the app gets,
and keeps only those few fields (plus a byte count of the prompt text for estimates).
"""

from __future__ import annotations

from typing import Any

from .fastjson import first, value_or_none
from .jsonscan import JSONObject, JSONScanner, string_bytes
from .providers.facts import PROMPT_ROOTS as _PROMPT_ROOTS
from .providers.facts import REQUEST_FIELDS as _BODY_PATHS
from .typed import request_fields

# The fields, split for the json.loads path: top-level ones, and (parent, key) pairs.
_TOP_FIELDS = tuple(path[0] for path in _BODY_PATHS if len(path) == 1)
_NESTED_FIELDS = tuple((path[0], path[1]) for path in _BODY_PATHS if len(path) == 2)
assert len(_TOP_FIELDS) + len(_NESTED_FIELDS) == len(_BODY_PATHS), "request fields are at most two deep"


#: Request bodies up to this size are kept and parsed with json.loads when first needed;
#: larger ones stream through the incremental scanner and only the fields are kept.
SMALL_REQUEST = 16 * 1024


#: The types of a parsed JSON scalar other than null (json.loads and orjson give these only).
_SCALARS = frozenset((str, int, float, bool))


class BodyPeek:
    """Sees the JSON request body as the app reads it; keeps only a few of its fields."""

    __slots__ = ("_scanner", "_first", "_small", "_kept", "_fields", "_prompt_bytes", "_value", "_data", "done", "final")

    def __init__(self) -> None:
        # While the body is small it is kept: its first chunk as it came (most request
        # bodies come in one piece; copying it would be the only work), then a buffer.
        self._kept = True
        self._first: bytes | None = None
        self._small: bytearray | None = None
        self._scanner: JSONScanner | None = None
        self._fields: JSONObject | None = None
        self._prompt_bytes: int | None = None
        self._value: Any = None
        # A small body whose fields a typed decode read: parsed in full only if its prompt
        # is measured (an estimate, a limit's cost), which most calls never ask for.
        self._data: bytes | bytearray | None = None
        self.done = False
        #: True once :attr:`fields` can no longer change (the small body parsed, or the
        #: scanner's object complete): a reader may keep what it returned.
        self.final = False

    def feed(self, chunk: bytes) -> None:
        if self.done or not chunk:
            return
        if self._kept:
            small = self._small
            if small is None:
                first = self._first
                if first is None:
                    if len(chunk) <= SMALL_REQUEST:
                        self._first = chunk
                        return
                    small = bytearray()
                else:
                    small = self._small = bytearray(first)
                    self._first = None
            if len(small) + len(chunk) <= SMALL_REQUEST:
                small += chunk
                return
            self._kept = False
            self._first = self._small = None
            self._scanner = JSONScanner(_BODY_PATHS, self._on_object, text_roots=_PROMPT_ROOTS)
            self._scanner.feed(bytes(small))
        scanner = self._scanner
        if scanner is not None:
            scanner.feed(chunk)
            if scanner.failed:
                self.done = True

    def _on_object(self, obj: JSONObject) -> None:
        if self._fields is None:
            self._fields = obj
        self.done = True
        self.final = True
        scanner = self._scanner
        if scanner is not None:
            # Read to its end: keep the count, not the scanner, whose callback is this
            # method (a reference cycle per large request, left to the garbage collector).
            self._prompt_bytes = scanner.text_bytes
            self._scanner = None

    def _parse_small(self) -> None:
        data: bytes | bytearray = self._small if self._small is not None else (self._first or b"")
        self._kept = False
        self._first = self._small = None
        self._fields = {}
        self.final = True  # whatever follows, these are the fields (set before any reader runs)
        if not data or data.isspace():
            return
        typed = request_fields(data)  # only the fields built, when msgspec is sure
        if typed is not None:
            self._fields = typed
            self._data = data
            return
        try:  # value_or_none's first step inline; what the first parser refuses, it decides
            value = first(data)
        except ValueError:
            value = value_or_none(data)
        except RecursionError:
            return
        if type(value) is not dict:
            return
        # The same sparse object the scanner builds from _BODY_PATHS, without its loops. A
        # parsed JSON value that is neither None nor an object nor an array is one of
        # _SCALARS: one set look-up instead of _scalar's three tests.
        fields: JSONObject = {}
        get = value.get
        for key in _TOP_FIELDS:
            field = get(key)
            if field.__class__ in _SCALARS:
                fields[key] = field
        for parent, key in _NESTED_FIELDS:
            node = get(parent)
            if node.__class__ is dict:
                field = node.get(key)
                if field.__class__ in _SCALARS:
                    fields.setdefault(parent, {})[key] = field
        self._fields = fields
        self._value = value  # at most SMALL_REQUEST bytes' worth, until the call ends

    @property
    def fields(self) -> JSONObject:
        if self._kept:
            self._parse_small()
        fields = self._fields
        if fields is None and self._scanner is not None:
            # Not read to its end yet (the limit check reads only the body's start): the
            # fields seen so far.
            return self._scanner.partial or {}
        return fields if fields is not None else {}

    @property
    def prompt_bytes(self) -> int:
        if self._kept:
            self._parse_small()
        if self._scanner is not None:
            return self._scanner.text_bytes
        if self._prompt_bytes is None:
            value = self._value
            if value is None and self._data is not None:
                value = value_or_none(self._data)
                self._data = None
            self._prompt_bytes = sum(string_bytes(value.get(root)) for root in _PROMPT_ROOTS) if isinstance(value, dict) else 0
        return self._prompt_bytes
