"""Custom usage formats: where an upstream of your own puts its counts, as JSON pointers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..usage import Counts, as_count


def _parse_pointer(pointer: str) -> tuple[str, ...]:
    if pointer == "":
        raise ValueError("an empty JSON pointer points at the whole object; name a field such as '/usage/input'")
    if not pointer.startswith("/"):
        raise ValueError(
            f"JSON pointer {pointer!r} must start with '/', as in '/usage/prompt_tokens' (RFC 6901)"
        )
    return tuple(part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/"))


def _resolve(obj: Any, path: tuple[str, ...]) -> Any:
    node = obj
    for part in path:
        if isinstance(node, dict):
            if part in node:
                node = node[part]
            elif part.isdigit() and int(part) in node:
                node = node[int(part)]
            else:
                return None
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


@dataclass(frozen=True)
class UsagePointers:
    """A custom usage format: where the counts are, as JSON pointers (RFC 6901).

    Use it when an upstream (or your own endpoint) reports usage in a shape none of the
    built-in providers use, like Gravitee's CUSTOM provider type. Pointers are relative to
    each JSON obj: the body of a JSON response, each NDJSON line, each SSE event's data.
    ``total_tokens`` defaults to prompt + completion. The built-in shapes are still tried
    when an object has none of these fields.
    """

    prompt_tokens: str
    completion_tokens: str
    total_tokens: str | None = None
    model: str | None = None
    cached_tokens: str | None = None
    reasoning_tokens: str | None = None
    _paths: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        paths = {}
        for name in ("prompt_tokens", "completion_tokens", "total_tokens", "model", "cached_tokens", "reasoning_tokens"):
            pointer = getattr(self, name)
            if pointer is not None:
                if not isinstance(pointer, str):
                    raise TypeError(f"UsagePointers.{name} must be a JSON pointer string, got {pointer!r}")
                paths[name] = _parse_pointer(pointer)
        object.__setattr__(self, "_paths", paths)

    def scan_paths(self) -> list[tuple[str | int, ...]]:
        """Paths for the JSON scanner; a numeric part may be an array index or a key."""
        out: list[tuple[str | int, ...]] = []
        for path in self._paths.values():
            variants: list[tuple[str | int, ...]] = [()]
            for part in path:
                options: list[str | int] = [part, int(part)] if part.isdigit() else [part]
                variants = [v + (o,) for v in variants for o in options]
            out.extend(variants)
        return out

    @property
    def triggers(self) -> tuple[bytes, ...]:
        """Bytes that an SSE event must contain to be worth parsing."""
        return tuple(
            path[-1].encode() for name, path in self._paths.items() if name != "model"
        )

    def counts(self, obj: Mapping[str, Any]) -> Counts | None:
        values = {name: _resolve(obj, path) for name, path in self._paths.items() if name != "model"}
        if values.get("prompt_tokens") is None and values.get("completion_tokens") is None:
            return None
        counts = {name: as_count(value) for name, value in values.items()}
        for name, value in values.items():
            if value is not None and counts[name] is None:
                return None  # present but not a sane count: refuse the object
        return (
            counts.get("prompt_tokens"),
            counts.get("completion_tokens"),
            counts.get("total_tokens"),
            counts.get("cached_tokens"),
            counts.get("reasoning_tokens"),
            None,
            None,
        )

    def model_of(self, obj: Mapping[str, Any]) -> str | None:
        path = self._paths.get("model")
        if path is None:
            return None
        value = _resolve(obj, path)
        return value if isinstance(value, str) and value else None
