"""The wire fixtures themselves are well formed: files exist, JSON parses, SSE frames parse."""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct

import pytest

from .cases import BODIES, CASES, NON_LLM_CASES, NON_LLM_STATUS, UNBILLED_CASES, UNREPORTED_CASES, WireCase

ALL: list[WireCase] = [*CASES, *UNBILLED_CASES, *UNREPORTED_CASES, *NON_LLM_CASES, *(case for case, _ in NON_LLM_STATUS)]
IDS = [case.id for case in ALL]


def _sse_events(body: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) per SSE event, per the WHATWG parsing rules (CRLF, CR or LF; ':' comments)."""
    events: list[tuple[str | None, str]] = []
    name: str | None = None
    data: list[str] = []
    for line in re.split(r"\r\n|\r|\n", body.decode("utf-8")):
        if line == "":
            if data:
                events.append((name, "\n".join(data)))
            name, data = None, []
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if key == "data":
            data.append(value)
        elif key == "event":
            name = value
        elif key == "retry":
            assert value.isdigit(), f"retry: {value!r} is not a number of milliseconds"
        elif key == "id":
            assert "\0" not in value
        else:
            raise AssertionError(f"unexpected SSE field {key!r}")
    assert not data, "the last SSE event is not terminated by a blank line"
    return events


def _eventstream_payloads(body: bytes) -> list[tuple[str, bytes]]:
    """(event type, payload) per message of an AWS event stream, both CRCs checked."""
    out: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(body):
        total, header_length, prelude_crc = struct.unpack_from(">III", body, pos)
        assert binascii.crc32(body[pos : pos + 8]) == prelude_crc
        message = body[pos : pos + total]
        assert len(message) == total and binascii.crc32(message[:-4]) == struct.unpack(">I", message[-4:])[0]
        headers, hp, raw = {}, 0, message[12 : 12 + header_length]
        while hp < len(raw):
            n = raw[hp]
            name = raw[hp + 1 : hp + 1 + n].decode()
            assert raw[hp + 1 + n] == 7, "Bedrock headers are strings"
            (length,) = struct.unpack_from(">H", raw, hp + 2 + n)
            headers[name] = raw[hp + 4 + n : hp + 4 + n + length].decode()
            hp += 4 + n + length
        assert headers[":message-type"] == "event" and headers[":content-type"] == "application/json"
        out.append((headers[":event-type"], message[12 + header_length : -4]))
        pos += total
    return out


def test_ids_are_unique() -> None:
    assert len(IDS) == len(set(IDS))


def test_every_body_file_is_used_once() -> None:
    used = sorted(case.body_file for case in ALL)
    assert len(used) == len(set(used))
    assert used == sorted(p.name for p in BODIES.iterdir() if p.is_file())


@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_body_is_well_formed(case: WireCase) -> None:
    path = BODIES / case.body_file
    assert path.is_file(), path
    body = case.body
    assert 0 < len(body) <= 8192, f"{case.body_file} should stay small"
    if case.request_body:
        json.loads(case.request_body)
    ext = path.suffix
    if ext == ".json":
        json.loads(body)
    elif ext == ".ndjson":
        lines = body.decode("utf-8").split("\n")
        assert lines[-1] == "", "NDJSON ends with a newline"
        for line in lines[:-1]:
            json.loads(line)
    elif ext == ".sse":
        events = _sse_events(body)
        assert events
        for name, data in events:
            if data == "[DONE]":
                continue
            payload = json.loads(data)
            if name is not None and isinstance(payload, dict) and "type" in payload:
                assert payload["type"] == name, (name, payload["type"])
    elif ext == ".eventstream":
        for event_type, payload in _eventstream_payloads(body):
            obj = json.loads(payload)
            if event_type == "chunk":
                json.loads(base64.b64decode(obj["bytes"], validate=True))
    elif ext == ".html":
        assert body.lstrip().lower().startswith(b"<!doctype html")
    else:
        raise AssertionError(f"unknown body extension {ext}")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_expected_numbers_are_consistent(case: WireCase) -> None:
    assert case.provider and case.operation and case.method == "POST"
    assert case.path.startswith("/") and "?" not in case.path
    if case.estimated:
        assert (case.prompt_tokens, case.completion_tokens, case.total_tokens) == (0, 0, 0)
        assert b'"usage":{' not in case.body and b'"usageMetadata"' not in case.body
    else:
        assert case.total_tokens >= case.prompt_tokens + case.completion_tokens
        assert case.cached_tokens <= case.prompt_tokens
        assert case.reasoning_tokens <= case.completion_tokens
    if case.body_file.endswith(".sse"):
        assert case.content_type.startswith("text/event-stream")
    if case.body_file.endswith(".eventstream"):
        assert case.content_type == "application/vnd.amazon.eventstream"
    if case.operation == "streamGenerateContent":
        assert (case.query == "alt=sse") == case.body_file.endswith(".sse")
