"""The typed reading of an SSE event (``_core/typedevent.py``) answers as the full parse.

:func:`~llm_metrics_middleware._core.typedevent.read_event` says ``(model, counts)`` of one
event's data, or None. Where it answers, the answer must be what
:meth:`Findings.on_object` takes from the parsed object (its model, counts and provider):
checked on every data line of the recorded SSE streams of the wire corpus, on hostile
events (duplicate keys, huge numbers, floats, bools, nulls, non-ASCII and invalid UTF-8,
nesting, a key of the table's other usage places, the unbilled object) and on random
mutations of real OpenAI chunks. Whole streams then read the same with it and without it,
and it does answer the events it is for (so that the comparison cannot pass on a reader
that answers nothing).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from llm_metrics_middleware._core import readers, typed, typedevent
from llm_metrics_middleware._core.extractor import SSE, UsageExtractor
from llm_metrics_middleware._core.fastjson import value_or_none
from llm_metrics_middleware._core.findings import Findings
from llm_metrics_middleware._core.providers.facts import RESPONSE_TEXT_ROOTS
from llm_metrics_middleware._core.providers.objects import READ_KEYS
from llm_metrics_middleware._core.typedevent import PROVIDER, read_event
from llm_metrics_middleware._core.usage import Invalid

from .mutations import mutated
from .wire.cases import CASES

needs_typed = pytest.mark.skipif(
    typedevent._decode is None, reason="the typed path needs msgspec and orjson (the accel extra)"
)

ROLE = (
    b'{"id":"chatcmpl-B9","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-mini-2024-07-18",'
    b'"system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"role":"assistant","content":"",'
    b'"refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}'
)
USAGE = (
    b'{"id":"chatcmpl-B9","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-mini-2024-07-18",'
    b'"choices":[],"usage":{"prompt_tokens":52,"completion_tokens":60,"total_tokens":112,'
    b'"prompt_tokens_details":{"cached_tokens":3,"audio_tokens":0},'
    b'"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0}}}'
)


def full_answer(data: bytes) -> tuple[Any, Any, Any] | None:
    """(model, counts, provider) that the full parse and on_object give, or None when the
    data is no JSON object or on_object judged its usage invalid."""
    obj = value_or_none(data)
    if type(obj) is not dict:
        return None
    found = Findings(None, None, RESPONSE_TEXT_ROOTS)
    try:
        found.on_object(obj)
    except Invalid:
        return None
    if found.error is not None:
        return None
    return found.model, found.counts, found.provider


def check(data: bytes) -> bool:
    """read_event agrees with the full parse wherever it answers; True when it answered."""
    answer = read_event(data)
    if answer is None:
        return False
    model, counts = answer
    assert full_answer(data) == (model, counts, PROVIDER if counts is not None else None), data
    return True


def sse_data(body: bytes) -> list[bytes]:
    """The data of every event of an SSE body (one data line per event, as the corpus has)."""
    out = []
    for line in body.replace(b"\r\n", b"\n").split(b"\n"):
        if line.startswith(b"data:"):
            out.append(line[5:].lstrip(b" "))
    return out


SSE_CASES = [case for case in CASES if case.content_type.startswith("text/event-stream")]


@needs_typed
def test_it_answers_the_events_it_is_for() -> None:
    assert read_event(ROLE) == ("gpt-4o-mini-2024-07-18", None)
    assert read_event(USAGE) == ("gpt-4o-mini-2024-07-18", (52, 60, 112, 3, 0, None, None))
    assert check(ROLE) and check(USAGE)


@needs_typed
@pytest.mark.parametrize("case", SSE_CASES, ids=lambda c: c.id)
def test_recorded_events_agree(case: Any) -> None:
    for data in sse_data(case.body):
        check(data)


def _with(base: bytes, **changes: Any) -> bytes:
    obj = json.loads(base)
    obj.update(changes)
    return json.dumps(obj).encode()


def _usage(**changes: Any) -> bytes:
    obj = json.loads(USAGE)
    obj["usage"].update(changes)
    return json.dumps(obj).encode()


HOSTILE = [
    ROLE.replace(b'"usage":null', b'"usage":null,"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}'),
    USAGE.replace(b'"choices":[]', b'"usage":null,"choices":[]'),
    USAGE.replace(b'"model":"gpt-4o-mini-2024-07-18"', b'"model":"a","model":"b"'),
    ROLE.replace(b'"model":"gpt-4o-mini-2024-07-18"', b'"model":""'),
    ROLE.replace(b'"model":"gpt-4o-mini-2024-07-18"', b'"model":null'),
    ROLE.replace(b'"model":"gpt-4o-mini-2024-07-18"', b'"model":7'),
    ROLE.replace(b'"model":"gpt-4o-mini-2024-07-18",', b""),
    ROLE.replace(b'"model":"gpt-4o-mini-2024-07-18"', '"model":"gpt-\u00e9"'.encode()),
    ROLE.replace(b'"model":"gpt-4o-mini-2024-07-18"', b'"model":"gpt-\xff"'),
    ROLE.replace(b'"refusal":null', b'"refusal":"\xc3\xa9\xed\xa0\x80"'),
    ROLE.replace(b'"refusal":null', b'"refusal":"\\ud800"'),
    ROLE.replace(b'"created":1741570283', b'"created":1e400'),
    ROLE.replace(b'"created":1741570283', b'"created":123456789012345678901234567890'),
    ROLE.replace(b'"created":1741570283', b'"created":NaN'),
    ROLE.replace(b'"usage":null', b'"us\\u0061ge":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}'),
    ROLE.replace(b'"usage":null', b'"usage":[]'),
    ROLE.replace(b'"usage":null', b'"usage":{}'),
    ROLE + b" ",
    ROLE[:-1],
    b"[" + ROLE + b"]",
    b"\xef\xbb\xbf" + ROLE,
    ROLE.replace(b'"choices":[', b'"choices":' + b"[" * 600 + b"]" * 600 + b",\"x\":["),
    _with(ROLE, type="response.failed"),
    _with(USAGE, type="response.failed"),
    _with(USAGE, type="other"),
    _usage(prompt_tokens=1.0),
    _usage(prompt_tokens=True),
    _usage(prompt_tokens=-1),
    _usage(prompt_tokens=10**12),
    _usage(prompt_tokens=10**30),
    _usage(prompt_tokens=None),
    _usage(total_tokens=None),
    _usage(completion_tokens_details=None),
    _usage(completion_tokens_details={"reasoning_tokens": 30}),
    _usage(completion_tokens_details={"reasoning_tokens": 30}, total_tokens=142),
    _usage(prompt_tokens_details={"cached_tokens": 999}),
    _usage(prompt_tokens_details={}),
    _usage(prompt_tokens_details=[]),
    _usage(prompt_cache_hit_tokens=5),
    _usage(input_tokens=5),
    json.dumps({"model": "m", "usage": {"input_tokens": 3, "output_tokens": 4}}).encode(),
    *(_with(ROLE, **{key: {"usage": {"prompt_tokens": 1, "completion_tokens": 2}}}) for key in sorted(READ_KEYS or ())),
    *(_with(ROLE, **{key: 5}) for key in sorted(READ_KEYS or ())),
    *(_with(ROLE, **{key: None}) for key in sorted(READ_KEYS or ())),
]


@needs_typed
@pytest.mark.parametrize("data", HOSTILE)
def test_hostile_events_agree(data: bytes) -> None:
    check(data)


@needs_typed
def test_what_it_must_leave_to_the_full_parse() -> None:
    """Events whose answer needs the table's other readers, or that msgspec could read
    otherwise: left alone (None), whatever the full parse then says."""
    left = [
        HOSTILE[14],  # an escaped usage key: the full parse counts it
        _with(ROLE, message={"model": "x"}),
        _with(ROLE, eval_count=5),
        _with(USAGE, type="response.failed"),
        _usage(prompt_tokens=1.0),
        _usage(completion_tokens_details=None),
        ROLE.replace(b'"model":"gpt-4o-mini-2024-07-18"', b'"model":""'),
        ROLE.replace(b'"model":"gpt-4o-mini-2024-07-18"', b'"model":"gpt-\xff"'),
        b"[" + ROLE + b"]",
        ROLE[:-1],
    ]
    for data in left:
        assert read_event(data) is None, data


@needs_typed
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated([ROLE, USAGE, *HOSTILE[:3]]))
def test_mutated_events_agree(data: bytes) -> None:
    check(data)


def _read_stream(body: bytes, want_text: bool, operation: str | None) -> Any:
    extractor = UsageExtractor(SSE, want_text=want_text, operation=operation)
    for piece in body.splitlines(keepends=True):
        extractor.feed(piece)
    extractor.feed(b"")
    return extractor.close()


@pytest.mark.parametrize("case", SSE_CASES, ids=lambda c: c.id)
def test_streams_read_the_same_without_it(case: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every recorded SSE stream, fed line by line and whole: the same Extraction with
    the typed reading and with it off."""
    for want_text in (False, True):
        on = [_read_stream(case.body, want_text, case.operation or None)]
        whole = UsageExtractor(SSE, want_text=want_text, operation=case.operation or None)
        whole.feed(case.body)
        on.append(whole.close())
        with monkeypatch.context() as patch:
            patch.setattr(readers, "_read_event", lambda data: None)
            off = [_read_stream(case.body, want_text, case.operation or None)]
            whole = UsageExtractor(SSE, want_text=want_text, operation=case.operation or None)
            whole.feed(case.body)
            off.append(whole.close())
        assert on == off, case.id


def test_off_without_the_accelerators() -> None:
    """Where typed decoding is off, read_event answers nothing (the full parse reads all)."""
    if typed.ENABLED:
        assert typedevent._decode is not None
    else:
        assert read_event(ROLE) is None
