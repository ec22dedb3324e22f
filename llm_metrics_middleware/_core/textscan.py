"""The two searches of a streamed event that its template did not account for.

A stream's events mostly match its learnt template (:mod:`.template`) and are counted
without being read. The others (the first ones, the finish, the usage, a new shape) are
searched, raw, for two things before anything parses them:

* :class:`TextFields`: where the strings of the generated-text fields are (``content``,
  ``delta``...), to count their bytes for an estimate and to learn a template from a chunk
  that has exactly one. A key can only match where JSON puts a key: inside a string every
  quote is escaped, so the quote before a name must follow ``{``, ``,`` or whitespace.
* :class:`UsageHint`: whether the event can hold usage at all (a usage key followed by
  anything but null, or a marker of top-level counts such as Ollama's ``eval_count"``):
  an event that cannot is not parsed.

The patterns here are the reference. Both searches also exist compiled
(``_textscan.c``, built with the package where a C compiler is present), which finds the
same matches in a few hundred instructions where the regular expression engine spends about
twenty thousand (it tries every name at every quote of an event); the compiled ones are used
unless ``LLM_METRICS_NO_EXTENSIONS`` is true (see :mod:`.extensions`), and
``tests/test_textscan.py`` holds the two to the same answers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Protocol

from .extensions import extensions_enabled

Data = bytes | bytearray | memoryview


def text_field_pattern(names: Iterable[str]) -> re.Pattern[bytes]:
    """The text strings of ``names`` in event data (group 1: the string as written,
    escapes included). The look-behind refuses a key that ends in an escaped quote; it is
    written after the quote, so that the engine still skips ahead to a quote."""
    alternatives = b"|".join(re.escape(name).encode() for name in names)
    return re.compile(rb'"(?<=[{,\s]")(?:' + alternatives + rb')"\s*:\s*"((?:[^"\\]|\\.)*)"', re.S)


def usage_hint_pattern(keys: Iterable[str]) -> re.Pattern[bytes]:
    """A usage key followed by anything but null: an object, or the end of a data line
    whose next line opens it (raw chunks still hold the ``data:`` between them). Keys are
    factored by their common prefix, so that the pattern starts with a literal the engine
    skips ahead to."""
    ordered = sorted(set(keys))
    prefix = os.path.commonprefix(ordered)
    rests = "|".join(re.escape(k[len(prefix) :]) for k in sorted(ordered, key=len, reverse=True))
    return re.compile(f'{re.escape(prefix)}(?:{rests})"\\s*:(?!\\s*null)'.encode())


class TextFieldsType(Protocol):
    """What :class:`TextFields` is, compiled or not."""

    def __init__(self, names: tuple[bytes, ...], /) -> None: ...

    def spans(self, data: Data, /) -> list[tuple[int, int]]: ...


class UsageHintType(Protocol):
    """What :class:`UsageHint` is, compiled or not."""

    def __init__(self, keys: tuple[bytes, ...], markers: tuple[bytes, ...], /) -> None: ...

    def seen(self, data: Data, /) -> bool: ...


class PyTextFields:
    """The text fields of event data, found with :func:`text_field_pattern` (the reference)."""

    __slots__ = ("_finditer", "names")

    def __init__(self, names: tuple[bytes, ...]) -> None:
        self.names = names
        self._finditer = text_field_pattern(name.decode("ascii") for name in names).finditer

    def spans(self, data: Data) -> list[tuple[int, int]]:
        """The (start, end) of every text field's string in ``data``, in order."""
        return [m.span(1) for m in self._finditer(data)]


class PyUsageHint:
    """Whether event data may hold usage, found with :func:`usage_hint_pattern` and a
    pattern of the markers (the reference)."""

    __slots__ = ("_hint", "_marker")

    def __init__(self, keys: tuple[bytes, ...], markers: tuple[bytes, ...]) -> None:
        self._hint = usage_hint_pattern(key.decode("ascii") for key in keys).search
        self._marker = re.compile(b"|".join(re.escape(m) for m in markers)).search if markers else None

    def seen(self, data: Data) -> bool:
        """Whether ``data`` holds a usage key with a value that is not null, or a marker."""
        if self._hint(data) is not None:
            return True
        return self._marker is not None and self._marker(data) is not None


def _compiled() -> tuple[type[TextFieldsType], type[UsageHintType]] | None:
    """The compiled searches, or None where they were not built or are turned off."""
    if not extensions_enabled():
        return None
    try:
        from ._textscan import TextFields as fields
        from ._textscan import UsageHint as hint
    except ImportError:
        return None
    return fields, hint


_COMPILED = _compiled()
#: The compiled searches where they were built and not turned off, else None.
CTextFields: type[TextFieldsType] | None = _COMPILED[0] if _COMPILED else None
CUsageHint: type[UsageHintType] | None = _COMPILED[1] if _COMPILED else None

#: The searches in use.
TextFields: type[TextFieldsType] = CTextFields if CTextFields is not None else PyTextFields
UsageHint: type[UsageHintType] = CUsageHint if CUsageHint is not None else PyUsageHint

__all__ = [
    "CTextFields",
    "CUsageHint",
    "PyTextFields",
    "PyUsageHint",
    "TextFields",
    "UsageHint",
    "text_field_pattern",
    "usage_hint_pattern",
]
