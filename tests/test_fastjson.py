"""The optional orjson parser answers exactly as json.loads does; the fast Usage builder builds the same Usage."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_metrics_middleware._core import fastjson

CASES = [
    b'{"usage": {"prompt_tokens": 3, "completion_tokens": 4}}',
    b'{"a": 1, "a": 2}',
    b'NaN',
    b'{"x": Infinity}',
    b'"\\ud800"',
    b'1e400',
    b'[' * 2000 + b']' * 2000,
    b'{"model": "caf\xc3\xa9"}',
    b'{"model": "\xff"}',
    b'{"a": 1}\n{"b": 2}\n',
    b'',
    b'  {"k": [1, 2.5, true, null, "s"]}  ',
]


def outcome(fn: Any, data: bytes) -> Any:
    try:
        return ("value", fn(data))
    except (ValueError, RecursionError) as exc:
        return ("refused", type(exc) is RecursionError)


@pytest.mark.parametrize("data", CASES)
def test_loads_agrees_with_json(data: bytes) -> None:
    expected = outcome(lambda d: json.loads(d.decode("utf-8")), data)
    assert outcome(fastjson.loads, data) == expected
    assert outcome(fastjson._loads_stdlib, data) == expected


def test_backend_is_reported() -> None:
    assert fastjson.BACKEND in ("orjson", "json")


def test_make_usage_builds_the_same_frozen_usage() -> None:
    import dataclasses

    from llm_metrics_middleware._core.usage import Usage, make_usage

    fast = make_usage(3, 4, 7, 1, 2, True, 2, 1)
    assert fast == Usage(3, 4, 7, 1, 2, True, 2, 1) and hash(fast) == hash(Usage(3, 4, 7, 1, 2, True, 2, 1))
    assert [f.name for f in dataclasses.fields(Usage)] == list(vars(fast))  # every field, in order
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.prompt_tokens = 1  # type: ignore[misc]


def test_usage_of_builds_the_same_frozen_usage() -> None:
    """usage_of fills the Usage itself (make_usage's body, inline): the same object."""
    import dataclasses

    from llm_metrics_middleware._core.usage import Usage, usage_of

    fast = usage_of((10, 4, 20, 3, 2, 5, 1))
    assert fast == Usage(10, 4, 20, 3, 2, False, 5, 1) and hash(fast) == hash(Usage(10, 4, 20, 3, 2, False, 5, 1))
    assert [f.name for f in dataclasses.fields(Usage)] == list(vars(fast))  # every field, in order
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.total_tokens = 1  # type: ignore[misc]
