"""The request peek: the fields we keep from a JSON request body, however the app reads it."""

from __future__ import annotations

import json
from collections.abc import Sequence

from llm_metrics_middleware._core.peek import BodyPeek
from llm_metrics_middleware._core.providers.facts import REQUEST_FIELDS

from .splits import check_every_split

REQUEST = json.dumps({
    "model": "gpt-4o", "stream": True, "user": "alice", "temperature": 0.2,
    "stream_options": {"include_usage": True, "other": 1},
    "metadata": {"user_id": "u-7", "note": "x"},
    "messages": [{"role": "user", "content": "Say \"hi\" \\ é"}],
}, ensure_ascii=False).encode()
FIELDS = {
    "model": "gpt-4o", "stream": True, "user": "alice",
    "stream_options": {"include_usage": True}, "metadata": {"user_id": "u-7"},
}


def _peek(chunks: Sequence[bytes]) -> dict:
    peek = BodyPeek()
    for chunk in chunks:
        peek.feed(chunk)
    assert peek.prompt_bytes > 0
    return peek.fields


def test_fields_however_the_body_is_read(parse_path: str) -> None:
    check_every_split(_peek, REQUEST, FIELDS, examples=30)


def test_the_kept_fields_are_the_tables() -> None:
    assert set(REQUEST_FIELDS) == {("model",), ("stream",), ("user",), ("stream_options", "include_usage"), ("metadata", "user_id")}


def test_not_json_keeps_nothing(parse_path: str) -> None:
    for body in (b"", b"[1, 2]", b"not json", b'{"model": '):
        assert _peek_fields(body) == {}


def _peek_fields(body: bytes) -> dict:
    peek = BodyPeek()
    peek.feed(body)
    return peek.fields
