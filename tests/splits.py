"""One way to test every incremental parser: whole, byte by byte, at every split point, and at
hypothesis-chosen splits (after h11's ``tests/test_io.py``).

``run(chunks)`` feeds the chunks to a fresh parser and returns what it made of them;
:func:`check_every_split` asserts that every way of cutting ``data`` gives ``expected``.
Chunks may be empty (a split at 0 or at the end): parsers must take those too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

T = TypeVar("T")

Run = Callable[[Sequence[bytes]], Any]


def cut(data: bytes, points: Sequence[int]) -> list[bytes]:
    """``data`` cut at the given offsets (sorted, duplicates give empty chunks)."""
    bounds = [0, *sorted(min(max(p, 0), len(data)) for p in points), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def pieces(data: bytes, sizes: Sequence[int] | None) -> list[bytes]:
    """``data`` whole (``sizes`` None), or in pieces of ``sizes`` then the rest (maybe empty)."""
    if sizes is None:
        return [data]
    out, pos = [], 0
    for size in sizes:
        out.append(data[pos : pos + size])
        pos += size
    return [*out, data[pos:]]


def ways(data: bytes, *, every_point: bool = True) -> Iterator[tuple[str, list[bytes]]]:
    """(how, chunks): whole, byte by byte, and (``every_point``) in two at every offset."""
    yield "whole", [data]
    yield "byte by byte", [data[i : i + 1] for i in range(len(data))]
    if every_point:
        for i in range(len(data) + 1):
            yield f"split at {i}", cut(data, [i])


def splits(data: bytes, max_cuts: int = 40) -> st.SearchStrategy[list[bytes]]:
    """A hypothesis strategy: ``data`` cut at up to ``max_cuts`` random offsets."""
    return st.lists(st.integers(0, len(data)), max_size=max_cuts).map(lambda points: cut(data, points))


def check_every_split(
    run: Run,
    data: bytes,
    expected: Any,
    *,
    every_point: bool = True,
    examples: int = 50,
) -> None:
    """Assert ``run`` gives ``expected`` for ``data`` however it is cut.

    ``every_point=False`` skips the two-piece splits for long inputs (they cost one run per
    byte); whole, byte by byte and the hypothesis splits always run.
    """
    for how, chunks in ways(data, every_point=every_point):
        got = run(chunks)
        assert got == expected, f"{how}: {got!r} != {expected!r}"

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(splits(data))
    def random_splits(chunks: list[bytes]) -> None:
        got = run(chunks)
        assert got == expected, f"{[len(c) for c in chunks]}: {got!r} != {expected!r}"

    random_splits()
