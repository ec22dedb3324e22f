"""The paths side of :mod:`.jsonscan`: the types of paths and captured objects, the plan the
scanner follows (which prefixes to descend, which paths to capture, which members to read
one by one), the frames of its stack, the sparse dict a captured value is stored in, and
the measure of a run of strings under a text root.

Kept apart from the scanner so that its module holds only the state machine and its
regular expressions (the hot loop, measured at GB/s); nothing here runs per byte: the plan
is made once per scanner, a frame once per container on a captured path, and ``_put`` once
per captured value.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Union

PathItem = Union[str, int]
Path = tuple[PathItem, ...]
JSONObject = dict[str, Any]

_CAPTURE = 1
_DESCEND = 2



def plan_paths(
    paths: Iterable[Path], text_roots: frozenset[str]
) -> tuple[dict[Path, int], dict[Path, frozenset[bytes] | None]]:
    """The scanner's plan for ``paths``: the trie (each prefix of a path -> descend, each
    path -> capture) and, for each object on a descended path, the raw keys whose members
    must be read one by one (None: all of them, text is counted inside)."""
    trie: dict[Path, int] = {}
    for path in paths:
        path = tuple(path)
        for i in range(1, len(path)):
            trie.setdefault(path[:i], _DESCEND)
        trie[path] = _CAPTURE
    # For each object on a descended path: the raw keys whose members must be read one
    # by one (captured or descended into, or counted text); the others are crossed
    # by _MEMBER. None: every member of that object is read one by one (text inside).
    members: dict[Path, frozenset[bytes] | None] = {(): frozenset()}
    for path in trie:
        members.setdefault(path, frozenset())
    for path in list(members):
        if path and isinstance(path[0], str) and path[0] in text_roots:
            members[path] = None
    for path in trie:
        parent, key = path[:-1], path[-1]
        keys = members.get(parent)
        if isinstance(key, str) and keys is not None:
            members[parent] = keys | {key.encode()}
    root = members[()]
    if root is not None:
        members[()] = root | {k.encode() for k in text_roots}
    return trie, members


class _Frame:
    """A container on the way to a captured path (or the object / top-level array)."""

    __slots__ = ("is_object", "path", "index", "is_object_root", "is_top_array")

    def __init__(
        self,
        is_object: bool,
        path: Path | None,
        is_object_root: bool = False,
        is_top_array: bool = False,
    ) -> None:
        self.is_object = is_object
        self.path = path
        self.index = 0
        self.is_object_root = is_object_root
        self.is_top_array = is_top_array


def string_bytes(value: Any) -> int:
    """Length of the strings in a parsed JSON value, keys included (for estimates).

    Iterative: a request or response nested thousands deep (json.loads accepts up to about
    a thousand levels) must not exhaust the stack of the thread that serves it.
    """
    total = 0
    stack = [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            for key in item:
                total += len(key)
            extend(item.values())
        elif isinstance(item, list):
            extend(item)
    return total


def _put(obj: JSONObject, path: Path, value: Any) -> None:
    """Store ``value`` at ``path`` in a sparse nested dict (list indices become dict keys)."""
    node: Any = obj
    for item in path[:-1]:
        child = node.get(item)
        if not isinstance(child, dict):
            child = {}
            node[item] = child
        node = child
    node[path[-1]] = value
