"""Where OpenAI chat's usage shape stands in the provider table, for the readers that take
its commonest body straight to counts (:mod:`..whole`, :mod:`..typedevent`).

Those readers stand for the table's own order: they apply only while the first place tried
is the object's ``usage``, the first shape there OpenAI chat's (read by ``read_chat``), and
the first model path the object's ``model`` (tests/test_whole.py and tests/test_typedevent.py
check the answers either way).
"""

from __future__ import annotations

from ..usage import read_chat
from .objects import MODEL_PATHS, UNBILLED_OBJECTS, USAGE_CONTAINERS

_FIRST_PATH, _FIRST_SHAPES = USAGE_CONTAINERS[0]
#: Whether the table tries OpenAI chat's shape, under ``usage``, first, and ``model`` first.
CHAT_FIRST = _FIRST_PATH == ("usage",) and _FIRST_SHAPES[0][0].read is read_chat and MODEL_PATHS[0] == ("model",)
#: The provider that shape names.
CHAT_PROVIDER = _FIRST_SHAPES[0][1]
#: The keys of a usage object that make it that shape (any one of them).
CHAT_MARKERS = frozenset(_FIRST_SHAPES[0][0].markers)
#: The one (key, value) of an object whose usage is not billed, or None when the table has
#: another number of them.
CHAT_UNBILLED = UNBILLED_OBJECTS[0] if len(UNBILLED_OBJECTS) == 1 else None

__all__ = ["CHAT_FIRST", "CHAT_MARKERS", "CHAT_PROVIDER", "CHAT_UNBILLED"]
