"""Usage and model in one JSON object, wherever a known provider puts them (from the table)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..usage import Counts
from .table import PROVIDERS, FieldPath, Path, UsageShape


def _ordered(paths: list[Path]) -> tuple[Path, ...]:
    """Unique paths, shallow before deep (the object itself last), else table order."""
    unique = list(dict.fromkeys(paths))
    return tuple(sorted(unique, key=lambda p: (len(p) == 0, len(p), unique.index(p))))


def _containers() -> tuple[tuple[Path, tuple[tuple[UsageShape, str], ...]], ...]:
    # The first provider that declares a shape is the one it names.
    owner: dict[str, str] = {}
    for p in PROVIDERS:
        for _, shapes in p.usage:
            for shape in shapes:
                owner.setdefault(shape.name, p.name)
    out = []
    for path in _ordered([where for p in PROVIDERS for where, _ in p.usage]):
        found = dict.fromkeys(s for p in PROVIDERS for where, shapes in p.usage if where == path for s in shapes)
        out.append((path, tuple((s, owner[s.name]) for s in found)))
    return tuple(out)


#: (where, ((shape, provider), ...)) in the order they are tried.
USAGE_CONTAINERS = _containers()
MODEL_PATHS: tuple[Path, ...] = _ordered([where for p in PROVIDERS for where in p.model_at])

# The same, ready for the hot path: markers as sets (``isdisjoint`` walks the few keys
# of a usage object in C); each path as its first key (None: the object itself) and the
# rest, so that the usual one-key path is one ``get`` without a loop's steps.
_SHAPES_AT = tuple(
    (path[0] if path else None, path[1:], tuple((frozenset(s.markers), s.read, provider) for s, provider in shapes))
    for path, shapes in USAGE_CONTAINERS
)
#: MODEL_PATHS the same way (the object itself is never a model: no such path is kept).
_MODEL_AT = tuple((path[0], path[1:]) for path in MODEL_PATHS if path)

#: The fields read at an object's top level (Ollama's, Titan's and Llama's counts).
TOP_LEVEL_FIELDS: tuple[FieldPath, ...] = tuple(
    dict.fromkeys(f for path, shapes in USAGE_CONTAINERS if not path for s, _ in shapes for f in s.scanned)
)

#: (key, value) pairs of objects whose usage is not billed.
UNBILLED_OBJECTS: tuple[tuple[str, str], ...] = tuple(dict.fromkeys(m for p in PROVIDERS for m in p.unbilled_objects))

#: Object-relative paths the JSON scanner must capture for the functions below.
OBJECT_PATHS: Sequence[FieldPath] = (
    *(path for path, _ in USAGE_CONTAINERS if path),
    *MODEL_PATHS,
    *TOP_LEVEL_FIELDS,
    *dict.fromkeys((key,) for key, _ in UNBILLED_OBJECTS),
)


def _read_keys() -> tuple[frozenset[str], frozenset[str]] | None:
    """The keys an object must have for :func:`counts_from_object` to read anything: the
    first key of a container's path, and the top-level shapes' markers; None when a
    top-level shape has no markers (it is always tried: nothing can be ruled out)."""
    top = [s for path, shapes in USAGE_CONTAINERS if not path for s, _ in shapes]
    if not all(s.markers for s in top):
        return None
    markers = frozenset(m for s in top for m in s.markers)
    return frozenset(path[0] for path, _ in USAGE_CONTAINERS if path) | markers, markers


_READ_KEYS = _read_keys()
#: The top-level keys an object must have for :func:`counts_from_object` to read anything
#: (None: every object may hold usage), for a reader that decodes only some keys.
READ_KEYS: frozenset[str] | None = _READ_KEYS[0] if _READ_KEYS is not None else None


def counts_from_object(obj: Mapping[str, Any], rule_out: bool = True) -> tuple[Counts, str] | None:
    """The usage in one JSON object and the provider its shape names, or None.

    Raises :class:`~.usage.Invalid` when a usage object holds values we refuse to count.
    ``rule_out=False``: the caller found a usage key with an object in the object's bytes
    already (the SSE hint), so the first test below would only add to the cost.
    """
    if rule_out and _READ_KEYS is not None:
        # Most objects of a stream hold no usage container (OpenAI's chunks carry
        # ``"usage": null``): the keys that could lead to one are picked out in C, and
        # unless one of them is a top-level marker or holds an object, the loop below
        # would find nothing (its every path starts with one of those keys), without a
        # Python step per path (a third of the cost of reading such an object).
        keys, markers = _READ_KEYS
        for key in keys.intersection(obj):
            if key in markers or type(obj[key]) is dict:
                break
        else:
            return None
    for key, value in UNBILLED_OBJECTS:
        if obj.get(key) == value:
            return None
    for first, rest, shapes in _SHAPES_AT:
        node: Any = obj if first is None else obj.get(first)
        for key in rest:  # inline: this runs for every object of every body
            node = node.get(key) if type(node) is dict else None
        if type(node) is not dict:
            continue
        for markers, read, provider in shapes:
            if markers and markers.isdisjoint(node):
                continue
            counts = read(node)
            if counts is not None:
                return counts, provider
    return None


def model_from_object(obj: Mapping[str, Any]) -> str | None:
    for first, rest in _MODEL_AT:
        value: Any = obj.get(first)
        for key in rest:
            value = value.get(key) if type(value) is dict else None
        if isinstance(value, str) and value:
            return value
    return None
