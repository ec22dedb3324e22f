"""TextFieldCounter: the bytes of text-field strings in raw JSON, however the JSON is cut."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from llm_metrics_middleware._core.textfields import KEY_CARRY, TextFieldCounter

from .splits import check_every_split, splits

FIELDS = frozenset({"content", "text", "arguments"})


def raw_len(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False).encode()) - 2


def expected(value: Any) -> int:
    """The rule, on the parsed value: strings under a text field, or in arrays (nested
    too) under one up to the first element that is neither; every object is looked into."""
    sizes: list[int] = []

    def array(items: list[Any]) -> bool:
        for item in items:
            if isinstance(item, str):
                sizes.append(raw_len(item))
            elif not isinstance(item, list) or not array(item):
                return False
        return True

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, item in node.items():
                if key in FIELDS and isinstance(item, str):
                    sizes.append(raw_len(item))
                elif key in FIELDS and isinstance(item, list):
                    array(item)
                walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(value)
    return sum(sizes)


def count(chunks: Sequence[bytes]) -> int:
    counter = TextFieldCounter(FIELDS)
    for chunk in chunks:
        counter.feed(chunk)
    return counter.bytes


TRICKY = ['plain', '', 'a "quoted" word', 'back\\slash\\', '\\"content\\": \\"x\\"', '"text": "no"', 'é日本\u2028\U0001f600',
          'tab\tnew\nline', 'x' * 300]

BODIES = [
    {"id": "chatcmpl-" + "x" * 200, "choices": [{"index": 0, "message": {"role": "assistant", "content": t}}]}
    for t in TRICKY
] + [
    {"content": [["a", ["b"]], "c", {"text": "d"}, "not counted"], "text": {"content": "e"}},
    {"arguments": "{\"city\": \"Paris\"}", "name": "get_weather", "content": None, "text": 12},
    {"\"content": "a key that ends in an escaped quote is no text field", "content": "yes"},
    {"content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}], "role": "user"},
]


def test_recorded_shapes_and_odd_strings_at_every_split() -> None:
    for value in BODIES:
        body = json.dumps(value, ensure_ascii=False).encode()
        check_every_split(count, body, expected(value), examples=20)


def test_whitespace_between_key_and_value_within_the_carry_is_still_read() -> None:
    body = b'{"content"' + b" " * (KEY_CARRY - 20) + b': "hello"}'
    check_every_split(count, body, 5)


json_values = st.recursive(
    st.none() | st.integers() | st.sampled_from(TRICKY),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["content", "text", "arguments", "id", "role", "texts", '"text']), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, database=None)
@given(st.data())
def test_any_json_at_any_split(data: st.DataObject) -> None:
    value = data.draw(json_values)
    body = json.dumps(value, ensure_ascii=False, indent=data.draw(st.sampled_from([None, 1]))).encode()
    chunks = data.draw(splits(body, max_cuts=20))
    assert count(chunks) == expected(value), chunks


@settings(max_examples=150, deadline=None, database=None)
@given(st.data())
def test_the_scanner_hands_the_counter_only_its_text_roots(data: st.DataObject) -> None:
    # "choices" and "text" are text roots ("text" is a text field too: a string there is
    # text itself); "other" is not, whatever it holds.
    from llm_metrics_middleware._core.jsonscan import JSONScanner

    choices, text, other = data.draw(json_values), data.draw(json_values), data.draw(json_values)
    body = json.dumps({"id": "x" * 40, "other": other, "choices": choices, "text": text, "model": "m"},
                      ensure_ascii=False).encode()
    want = expected(choices) + (raw_len(text) if isinstance(text, str) else expected({"text": text}))
    chunks = data.draw(splits(body, max_cuts=20))
    counter = TextFieldCounter(FIELDS)
    scanner = JSONScanner([("usage",)], lambda obj: None, text_roots=("choices", "text"), text_counter=counter)
    for chunk in chunks:
        scanner.feed(chunk)
    assert not scanner.failed and scanner.idle
    assert counter.bytes == want, [len(c) for c in chunks]


def test_a_long_array_of_text_is_crossed_whole() -> None:
    value = {"content": ["a", "b c", 'd "e"', "f\\"] * 300 + [["g"]], "text": ["h", {"text": "i"}, "not counted"]}
    body = json.dumps(value, ensure_ascii=False).encode()
    check_every_split(count, body, expected(value), every_point=False, examples=20)
