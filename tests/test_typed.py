"""msgspec's typed decoding answers exactly as the full parse does, or leaves the body to it.

The request peek and the whole-body reading of a response try :mod:`~llm_metrics_middleware._core.typed`
first (msgspec and orjson installed, the ``accel`` extra). Every body here is read twice:
with the typed path, and with it switched off (the full parse of ``fastjson``, which
decides); the fields, the prompt size and the Extraction must be the same. The bodies are
the wire corpus's requests and responses and hostile ones (duplicate keys, huge numbers,
NaN, lone surrogates, bytes that are not UTF-8 inside a skipped string, a byte order mark,
nesting around every parser's limit, wanted fields of the wrong type, top-level arrays),
plus random mutations of real bodies. The same modules' tests then run with msgspec, and
with both accelerators, made unimportable.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from llm_metrics_middleware._core import peek, typed, whole
from llm_metrics_middleware._core.peek import BodyPeek
from llm_metrics_middleware._core.whole import extract_whole_json

from .mutations import mutated
from .wire.cases import CASES, NON_LLM_CASES

needs_typed = pytest.mark.skipif(not typed.ENABLED, reason="the typed path needs msgspec and orjson (the accel extra)")

_USAGE = '"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}'


def _nest(n: int, inner: str = "") -> str:
    return "[" * n + inner + "]" * n


#: Request bodies: each is peeked with and without the typed path.
HOSTILE_REQUESTS = [
    '{"model":"a","model":"b","user":"u","user":7}',
    '{"stream_options":{"include_usage":true},"stream_options":{"x":1}}',
    '{"metadata":{"user_id":"a","user_id":"b"},"metadata":{"user_id":"c"}}',
    '{"model":"m","user":123456789012345678901234567890}',
    '{"model":"m","user":9223372036854775807}',
    '{"model":"m","user":9223372036854775808}',
    '{"model":"m","user":18446744073709551616}',
    '{"model":"m","user":-9223372036854775809}',
    '{"model":"m","n":1234567890123456789012345678901234567890}',
    '{"model":"m","temperature":NaN}',
    '{"model":"m","x":-Infinity}',
    '{"model":"m","user":Infinity}',
    '{"model":"m","x":1e400}',
    '{"model":"m","x":-1e400,"y":1e-400}',
    '{"model":1e400}',
    '{"model":"m","messages":[{"content":"\\ud800"}]}',
    '{"user":"\\udc00"}',
    '{"user":"\\ud83d\\ude00","model":"caf\\u00e9"}',
    '{"model":"m","messages":[{"content":"caf\u00e9 \u2615 \U0001f600"}]}',
    '{"mod\\u0065l":"m","model\\u0000":"n"}',
    '{"model":5}', '{"model":1.5}', '{"model":null}', '{"model":["a"]}', '{"model":{"a":1}}', '{"model":true}',
    '{"stream":"yes"}', '{"stream":1}', '{"stream":0.0}', '{"stream":-0}', '{"stream":1E2}', '{"stream":false}',
    '{"stream_options":"x"}', '{"stream_options":null}', '{"stream_options":[1]}', '{"stream_options":{}}',
    '{"stream_options":{"include_usage":"yes"}}', '{"stream_options":{"include_usage":null}}',
    '{"metadata":{"user_id":5}}', '{"metadata":{"user_id":null}}', '{"metadata":{}}', '{"metadata":{"user_id":1.5}}',
    '{"metadata":{"user_id":[1]}}', '{"metadata":{"other":{"user_id":"deeper"}}}',
    '[{"model":"m"}]', '"m"', '5', 'null', 'true', '[]', '{}',
    ' \t\n\r{"model":"m"} \n', '\x0c{"model":"m"}', '{"model":"m"}x', '{"model":"m"},', '{"model":"m"}{"a":1}',
    '{"model":"a\x01"}', '{"model":"m","x":"a\tb"}', '{"model":"m","x":"a\x7fb"}',
    '{"model":"m","x":[1,]}', '{"model":"m","x":01}', '{"model":"m","x":tru}', '{"model":"m","x":"\\x"}',
    '{"model":"m","x":{1:2}}', '{"model":"m",}', '{"model":"m" "x":1}', '{"model":"m","x":"\\u12g4"}',
    '{"model":"m","x":.5}', '{"model":"m","x":+1}', '{"model":"m","x":-}', '{"model":"m","x":1.}', '{"model":"m","x":[1',
    '{"model":"m","x":' + _nest(20) + '}',
] + [
    '{"model":"m","x":' + _nest(n) + '}' for n in (500, 980, 985, 990, 993, 995, 997, 998, 1000, 1020, 1023, 1024, 1025, 1100, 3000)
] + [
    '{"model":"m","metadata":{"x":' + _nest(n) + ',"user_id":"u"}}' for n in (990, 995, 1000, 1023, 1024)
] + [
    '{"model":"m","x":' + _nest(n, "1e400") + '}' for n in (10, 985, 990, 995, 1000, 1023, 1030)
] + [
    '{"model":"m","x":' + _nest(n, "NaN") + '}' for n in (10, 995)
]
HOSTILE_REQUEST_BYTES = [body.encode() for body in HOSTILE_REQUESTS] + [
    b'\xef\xbb\xbf{"model":"m"}',
    b'{"model":"m","messages":[{"content":"\xff"}]}',
    b'{"model":"m","messages":[{"content":"\xc0\xaf"}]}',
    b'{"model":"m","messages":[{"content":"\xed\xa0\x80"}]}',
    b'{"model":"m","messages":[{"content":"\xf4\x90\x80\x80"}]}',
    b'{"model":"m","messages":[{"content":"\xe2\x82"}]}',
    b'{"model":"\xff"}',
    b'{"model":"m","x":"\xe2\x82\xac"}',
]

#: Response bodies: each is read whole with and without the typed path.
HOSTILE_RESPONSES = [
    '{"model":"m",' + _USAGE + '}',
    '{"model":"m",' + _USAGE + ',' + _USAGE.replace("3", "5") + '}',
    '{"model":"m","usage":{"prompt_tokens":3,"prompt_tokens":4,"completion_tokens":4,"total_tokens":7}}',
    '{"model":"m","model":"n",' + _USAGE + '}',
    '{"model":"m","usage":"x"}', '{"model":"m","usage":null}', '{"model":"m","usage":[1]}', '{"model":"m","usage":{}}',
    '{"model":5,' + _USAGE + '}', '{"model":null,' + _USAGE + '}', '{"model":["m"],' + _USAGE + '}', '{' + _USAGE + '}',
    '{"model":"m","usage":{"prompt_tokens":3.0,"completion_tokens":4,"total_tokens":7}}',
    '{"model":"m","usage":{"prompt_tokens":true,"completion_tokens":4,"total_tokens":7}}',
    '{"model":"m","usage":{"prompt_tokens":"3","completion_tokens":4,"total_tokens":7}}',
    '{"model":"m","usage":{"prompt_tokens":1e400,"completion_tokens":4,"total_tokens":7}}',
    '{"model":"m","usage":{"prompt_tokens":NaN,"completion_tokens":4,"total_tokens":7}}',
    '{"model":"m","usage":{"prompt_tokens":123456789012345678901234567890,"completion_tokens":4,"total_tokens":7}}',
    '{"model":"m","usage":{"prompt_tokens":18446744073709551616,"completion_tokens":4,"total_tokens":7}}',
    '{"model":"m","usage":{"prompt_tokens":-3,"completion_tokens":4,"total_tokens":7}}',
    '{"model":"m","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":null}}',
    '{"model":"m","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":[1]}}',
    '{"model":"m","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":"x"}}',
    '{"model":"m","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":null}}}',
    '{"model":"m","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":2.0}}}',
    '{"model":"m","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{}},"x":1}',
    '{"model":"m","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":null},'
    '"prompt_cache_hit_tokens":1}}',
    '{"model":"m","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_cache_hit_tokens":null}}',
    '{"model":"m","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":11,"completion_tokens_details":{"reasoning_tokens":4}}}',
    '{"model":"m","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"completion_tokens_details":{"reasoning_tokens":null}}}',
    '{"model":"m","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"completion_tokens_details":null}}',
    '{"model":"m","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"completion_tokens_details":{"reasoning_tokens":"1"}}}',
    '{"type":"response.failed","model":"m",' + _USAGE + '}', '{"type":5,"model":"m",' + _USAGE + '}',
    '{"type":null,"model":"m",' + _USAGE + '}', '{"type":"response.failed","type":"x","model":"m",' + _USAGE + '}',
    '{"model":"m",' + _USAGE + ',"x":NaN}', '{"model":"m",' + _USAGE + ',"x":1e400}',
    '{"model":"m",' + _USAGE + ',"choices":[{"message":{"content":"\\ud800"}}]}',
    '{"model":"m",' + _USAGE + ',"choices":[{"message":{"content":"caf\u00e9 \U0001f600"}}]}',
    '[{"model":"m",' + _USAGE + '}]', '5', 'null', '{"model":"m",' + _USAGE + '} x',
    '{"model":"m",' + _USAGE + '}\n{"model":"m",' + _USAGE + '}\n',
    '{"model":"m",' + _USAGE + ',"x":[1,]}', '{"model":"m",' + _USAGE + ',"x":"\\x"}',
] + [
    '{"model":"m",' + _USAGE + ',"x":' + _nest(n) + '}' for n in (500, 985, 990, 995, 998, 1000, 1023, 1024, 1025, 3000)
] + [
    '{"model":"m",' + _USAGE + ',"x":' + _nest(n, "1e400") + '}' for n in (10, 985, 990, 995, 1000, 1023)
]
HOSTILE_RESPONSE_BYTES = [body.encode() for body in HOSTILE_RESPONSES] + [
    b'\xef\xbb\xbf{"model":"m",' + _USAGE.encode() + b'}',
    b'{"model":"m",' + _USAGE.encode() + b',"choices":[{"message":{"content":"\xff"}}]}',
    b'{"model":"m",' + _USAGE.encode() + b',"choices":[{"message":{"content":"\xed\xa0\x80"}}]}',
    b'{"model":"m",' + _USAGE.encode() + b',"choices":[{"message":{"content":"\xe2\x82"}}]}',
    b'{"model":"\xff",' + _USAGE.encode() + b'}',
]

WIRE_REQUESTS = [c.request_body for c in CASES if c.request_body]
WIRE_RESPONSES = [c.body for c in CASES if c.content_type.startswith("application/json")] + [c.body for c in NON_LLM_CASES]


def _peeked(body: bytes) -> tuple[Any, ...]:
    """What the peek says of ``body`` fed in one chunk: fields, whether final, prompt size."""
    view = BodyPeek()
    view.feed(body)
    fields = view.fields
    return fields, view.final, view.prompt_bytes, view.fields


def _peek_both(body: bytes) -> tuple[Any, Any]:
    """The peek of ``body`` with the typed path and without it, from the same stack depth
    (the recursion limit json.loads meets is the stack's)."""
    typed_on = _peeked(body)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(peek, "request_fields", lambda data: None)
        full = _peeked(body)
    return typed_on, full


def _read(body: bytes, want_text: bool, counter: Any) -> Any:
    return extract_whole_json(body, want_text=want_text, token_counter=counter, operation="chat.completions")


def _read_both(body: bytes, want_text: bool = False, counter: Any = None) -> tuple[Any, Any]:
    """The whole-body reading of ``body`` with the typed path and without it."""
    typed_on = _read(body, want_text, counter)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(whole, "_decode_chat", None)
        full = _read(body, want_text, counter)
    return typed_on, full


def _same_request(body: bytes) -> bool:
    """The peek agrees with and without the typed path; True when the typed path answered."""
    typed_on, full = _peek_both(body)
    assert typed_on == full
    answered = typed.request_fields(body)
    if answered is not None:
        assert answered == full[0]
    return answered is not None


def _same_response(body: bytes) -> bool:
    """The whole-body reading agrees with and without the typed path; True when it answered."""
    for want_text in (False, True):
        for counter in (None, len):
            typed_on, full = _read_both(body, want_text, counter)
            assert typed_on == full
    answered = whole._typed_chat(body) if whole._decode_chat is not None else None
    if answered is not None:
        assert answered == _read_both(body)[1]
    return answered is not None


@needs_typed
@pytest.mark.parametrize("body", WIRE_REQUESTS + HOSTILE_REQUEST_BYTES)
def test_request_fields_are_the_full_parses(body: bytes) -> None:
    _same_request(body)


@needs_typed
@pytest.mark.parametrize("body", WIRE_RESPONSES + HOSTILE_RESPONSE_BYTES)
def test_response_reading_is_the_full_parses(body: bytes) -> None:
    _same_response(body)


@needs_typed
def test_the_typed_path_answers_the_common_bodies() -> None:
    """Not a path that never runs: it answers the wire corpus's OpenAI chat calls."""
    chat = [c for c in CASES if c.operation == "chat.completions" and c.content_type.startswith("application/json")]
    assert chat and all(_same_request(c.request_body) for c in chat)
    assert all(_same_response(c.body) for c in chat)


@needs_typed
@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"m","messages":[{"content":"\xff"}]}',  # msgspec skips strings without checking UTF-8
        b'{"model":"m","user":18446744073709551616}',  # orjson: a float
        b'{"model":1.5}',
        b'{"model":"m","temperature":NaN}',
        b'{"model":"m","x":' + _nest(1025).encode() + b"}",
        b"[1]",
    ],
)
def test_what_msgspec_might_read_otherwise_goes_to_the_full_parse(body: bytes) -> None:
    assert typed.request_fields(body) is None
    assert whole._typed_chat(body.replace(b'"model"', b'"usage":{},"model"', 1)) is None


@needs_typed
def test_a_long_body_is_typed_only_while_the_recursion_limit_binds_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past 2 KB a body could nest past orjson's 1,024 levels: msgspec may read it only while
    the interpreter's recursion limit (which stops msgspec) is lower."""
    body = ('{"model":"m","pad":"' + "x" * 3000 + '"}').encode()
    monkeypatch.setattr(sys, "getrecursionlimit", lambda: 1000)
    assert typed.request_fields(body) == ({"model": "m"} if typed._LIMIT_FIRST else None)
    monkeypatch.setattr(sys, "getrecursionlimit", lambda: 5000)
    assert typed.request_fields(body) is None
    assert typed.request_fields(body[:2000] + b'"}') == {"model": "m"}


def _objects(n: int, inner: str) -> str:
    return '{"a":' * n + inner + "}" * n


#: Bodies nested ``n`` deep around a number orjson refuses, so that json.loads decides.
_DEEP_SHAPES = [
    lambda n: '{"model":"m","x":' + _nest(n, "1e400") + "}",
    lambda n: '{"model":"m","x":' + _objects(n, "1e400") + "}",
    lambda n: '{"x":' + _nest(n, "-1e400") + ',"model":"m"}',
    lambda n: '{"model":"m","metadata":{"user_id":"u","x":' + _nest(n, "1e400") + "}}",
]


def _at_stack_depth(frames: int, check: Any) -> Any:
    return _at_stack_depth(frames - 1, check) if frames else check()


@needs_typed
@pytest.mark.parametrize("frames", [0, 150])
def test_the_nesting_limit_is_json_loads_at_any_stack_depth(frames: int) -> None:
    """Where orjson refuses a body (a number beyond a double's range), json.loads decides,
    and refuses it nested past the recursion limit: the typed path must refuse it too,
    wherever the stack stands (the limit is the stack's). Every depth around the limit."""

    def check() -> list[tuple[int, int]]:
        wrong = []
        for i, shape in enumerate(_DEEP_SHAPES):
            for n in range(1000 - frames - 90, 1000 - frames + 10):
                body = shape(n).encode()
                typed_on, full = _peek_both(body)
                if typed_on != full:
                    wrong.append((i, n))
                typed_on, full = _read_both(body.replace(b'"model":"m"', b'"model":"m",' + _USAGE.encode(), 1))
                if typed_on != full:
                    wrong.append((i, -n))
        return wrong

    assert _at_stack_depth(frames, check) == []


_SEEDS = [
    json.dumps({"model": "gpt-4o", "user": "u", "stream": True, "stream_options": {"include_usage": True},
                "metadata": {"user_id": "7"}, "messages": [{"role": "user", "content": "hi \u00e9"}]}).encode(),
    b'{"id":"c","object":"chat.completion","model":"m","choices":[{"message":{"content":"a\\"b"}}],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":1},'
    b'"completion_tokens_details":{"reasoning_tokens":2}}}',
]
@needs_typed
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(_SEEDS))
def test_mutated_bodies_agree(body: bytes) -> None:
    _same_request(body)
    _same_response(body)


_BLOCK = "import sys; sys.modules.update(dict.fromkeys({names!r})); import pytest; sys.exit(pytest.main({args!r}))"


@pytest.mark.parametrize("blocked", [("msgspec",), ("orjson",), ("msgspec", "orjson")])
def test_the_package_reads_the_same_without_the_accelerators(blocked: tuple[str, ...]) -> None:
    """The peek's and the whole-body reader's tests, with ``blocked`` unimportable (a
    ``sys.modules`` entry of None makes ``import`` raise ImportError): the typed path is
    off, and every answer is the full parse's."""
    tests = Path(__file__).parent
    args = ["-q", "-x", "-p", "no:cacheprovider", "--timeout=120", "-W", "error",
            *(str(tests / name) for name in ("test_peek.py", "test_whole.py", "test_fastjson.py", "test_typed.py")),
            "-k", "not without_the_accelerators"]
    check = (
        "import sys; sys.modules.update(dict.fromkeys({names!r})); "
        "from llm_metrics_middleware._core import fastjson, typed, whole; "
        "assert not typed.ENABLED and whole._decode_chat is None and typed.request_fields(b'{{}}') is None; "
        "assert fastjson.BACKEND == ({backend!r})"
    ).format(names=blocked, backend="json" if "orjson" in blocked else "orjson")
    subprocess.run([sys.executable, "-c", check], check=True, timeout=60, cwd=tests.parent)
    done = subprocess.run([sys.executable, "-c", _BLOCK.format(names=blocked, args=args)], timeout=600, cwd=tests.parent,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
