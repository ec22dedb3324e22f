"""What every exporter's ``bind`` checks: its own keys free, one namespace, one dimension set.

An exporter is built once and shared by several middlewares; each middleware namespace gets
its own metrics (a Prometheus family, an OpenTelemetry meter, an Azure metric namespace).
Two middlewares may share a namespace only with the same dimensions, since one metric has
one set of labels. The three exporters used to write these checks each in their own words.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


def check_reserved(names: Iterable[str], reserved: tuple[str, ...], adds: str) -> None:
    """A ``ValueError`` when a dimension takes a key the exporter adds itself (``adds``
    says what kind of key, and whose: "a label the Prometheus exporter adds")."""
    for name in names:
        if name in reserved:
            raise ValueError(
                f"{name!r} (of a dimension) clashes with {adds} ({', '.join(map(repr, reserved))}); rename the dimension"
            )


class Namespaces(Generic[T]):
    """One exporter's state per namespace (``T``), built on first ``bind``, thread-safe."""

    def __init__(self, exporter: str, remedy: str = "another namespace= or the same dimensions") -> None:
        self._exporter = exporter
        self._remedy = remedy
        self._bound: dict[str, tuple[tuple[str, ...], T]] = {}
        self._lock = threading.Lock()

    def bind(self, namespace: str, dimensions: tuple[str, ...], build: Callable[[], T], *, key: str | None = None) -> T:
        """The state of ``namespace`` (stored under ``key``, default the namespace itself),
        built by ``build`` the first time; a ``ValueError`` when it was bound before with other
        ``dimensions``."""
        key = namespace if key is None else key
        with self._lock:
            entry = self._bound.get(key)
            if entry is None:
                state = build()
                self._bound[key] = (dimensions, state)
                return state
            if entry[0] != dimensions:
                raise ValueError(
                    f"namespace {namespace!r} is already bound to this {self._exporter} with dimensions "
                    f"{entry[0]}; give this middleware {self._remedy}"
                )
            return entry[1]

    def states(self) -> list[T]:
        with self._lock:
            return [state for _, state in self._bound.values()]
