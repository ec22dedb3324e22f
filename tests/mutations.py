"""Random byte mutations of real JSON bodies, for the tests that hold a fast reader to the
full parse (tests/test_typed.py, tests/test_typedevent.py)."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

#: The bytes a mutation puts in: JSON's structure, number and literal letters, and bytes
#: that are not valid where they land (controls, a lone UTF-8 lead or continuation byte).
MUTATION_BYTES = st.sampled_from(list(b'{}[]":,\\ 0123456789eE+-.tfnulaNIy') + [0x00, 0x1F, 0x7F, 0xC3, 0xA9, 0xFF, 0xED])


def mutated(seeds: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """One of ``seeds`` with one to four bytes inserted, deleted or replaced."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        body = bytearray(draw(st.sampled_from(list(seeds))))
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(body)))
            action = draw(st.sampled_from(("insert", "delete", "replace")))
            if action == "insert":
                body[at:at] = bytes([draw(MUTATION_BYTES)])
            elif at < len(body):
                body[at : at + 1] = b"" if action == "delete" else bytes([draw(MUTATION_BYTES)])
        return bytes(body)

    return mutate()
