"""AWS event streams: the binary framing at every split, CRCs checked, memory capped; Bedrock's
payloads read, exceptions and guardrail traces not counted."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Sequence

import pytest

from llm_metrics_middleware._core import eventstream
from llm_metrics_middleware._core.eventstream import EventStreamDecoder, parse_headers
from llm_metrics_middleware._core.extractor import EVENTSTREAM, UsageExtractor, body_format

from .splits import check_every_split
from .wire.cases import BODIES


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message, encoded per the specification (string headers only)."""
    raw = b"".join(
        bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v.encode())) + v.encode() for k, v in headers.items()
    )
    total = 12 + len(raw) + len(payload) + 4
    prelude = struct.pack(">II", total, len(raw))
    head = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw + payload
    return head + struct.pack(">I", zlib.crc32(head))


def event(event_type: str, obj: object) -> bytes:
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return frame(headers, json.dumps(obj).encode())


def _messages(chunks: Sequence[bytes]) -> tuple[list[tuple[str, bytes]], bool, bool]:
    out: list[tuple[str, bytes]] = []
    decoder = EventStreamDecoder(lambda headers, payload: out.append((headers[":event-type"], payload)))
    for chunk in chunks:
        decoder.feed(chunk)
    return out, decoder.failed, decoder.idle


RECORDED = (BODIES / "bedrock-converse-stream-titan.eventstream").read_bytes()


def test_a_recorded_stream_at_every_split() -> None:
    messages, failed, idle = _messages([RECORDED])
    assert [name for name, _ in messages] == ["messageStart", "contentBlockDelta", "contentBlockStop", "messageStop", "metadata"]
    assert not failed and idle
    check_every_split(_messages, RECORDED, (messages, False, True))


def test_content_type() -> None:
    assert body_format("application/vnd.amazon.eventstream") == EVENTSTREAM


@pytest.mark.parametrize("offset", [0, 5, 9, 20, -1, -3])
def test_a_corrupt_byte_fails_the_crc(offset: int) -> None:
    data = bytearray(RECORDED)
    data[offset] ^= 0x01
    messages, failed, _ = _messages([bytes(data)])
    assert failed
    x = UsageExtractor(EVENTSTREAM)
    x.feed(bytes(data))
    assert x.close().error == "malformed"


def test_a_truncated_stream_is_not_idle() -> None:
    _, failed, idle = _messages([RECORDED[:-7]])
    assert not failed and not idle
    x = UsageExtractor(EVENTSTREAM)
    x.feed(RECORDED[:-7])  # the metadata event, with the usage, is cut
    result = x.close()
    assert result.usage is None and result.error == "truncated"


def test_a_message_over_the_limit_is_skipped_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventstream, "MESSAGE_LIMIT", 200)
    big = event("contentBlockDelta", {"delta": {"text": "x" * 1000}})
    usage = event("metadata", {"usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7}})
    for size in (1, 50, 10_000):
        decoder = EventStreamDecoder(lambda h, p: None)
        data = big + usage
        for i in range(0, len(data), size):
            decoder.feed(data[i : i + size])
            assert len(decoder._buffer) <= 200
        assert decoder.skipped == 1 and decoder.messages == 1 and decoder.idle


def test_headers_of_every_type_are_parsed_or_skipped() -> None:
    raw = (
        b"\x01a\x00" + b"\x01b\x01" + b"\x01c\x02\x07" + b"\x01d\x03\x00\x01" + b"\x01e\x04" + b"\x00" * 4
        + b"\x01f\x05" + b"\x00" * 8 + b"\x01g\x06\x00\x02hi" + b"\x01h\x08" + b"\x00" * 8 + b"\x01i\x09" + b"\x00" * 16
        + b"\x01s\x07\x00\x03str"
    )
    assert parse_headers(raw) == {"s": "str"}
    assert parse_headers(b"\x01a\x0f") is None  # unknown type
    assert parse_headers(b"\x01s\x07\x00\x09abc") is None  # value runs past the end


def _usage(chunks: Sequence[bytes]) -> tuple[int, int, int] | None:
    x = UsageExtractor(EVENTSTREAM)
    for chunk in chunks:
        x.feed(chunk)
    usage = x.close().usage
    return None if usage is None else (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)


def test_exceptions_and_guardrail_traces_are_not_the_calls_tokens() -> None:
    # Shapes from the Bedrock API reference (ConverseStreamMetadataEvent.trace.guardrail:
    # GuardrailAssessment.invocationMetrics.usage): guardrail units nested under trace,
    # beside the call's own usage. An exception message ends a stream with no usage.
    guardrail_usage = {"topicPolicyUnits": 1, "contentPolicyUnits": 1, "wordPolicyUnits": 1}
    metadata = {
        "usage": {"inputTokens": 11, "outputTokens": 5, "totalTokens": 16},
        "metrics": {"latencyMs": 400},
        "trace": {"guardrail": {"inputAssessment": {"g1": {"invocationMetrics": {
            "guardrailProcessingLatency": 90, "usage": guardrail_usage,
            "inputTokens": 999, "outputTokens": 999}}}}},
    }
    stream = event("messageStart", {"role": "assistant"}) + event("metadata", metadata)
    check_every_split(_usage, stream, (11, 5, 16), every_point=False)
    exception = frame({":exception-type": "throttlingException", ":content-type": "application/json",
                       ":message-type": "exception"}, b'{"message":"Too many requests","usage":{"inputTokens":7,"outputTokens":7}}')
    assert _usage([event("messageStart", {"role": "assistant"}) + exception]) is None


def test_invoke_chunks_carry_base64_payloads_and_bad_ones_are_malformed() -> None:
    inner = {"type": "message_delta", "usage": {"output_tokens": 4}}
    good = event("chunk", {"bytes": base64.b64encode(json.dumps(inner).encode()).decode()})
    start = {"type": "message_start", "message": {"model": "claude", "usage": {"input_tokens": 3, "output_tokens": 1}}}
    first = event("chunk", {"bytes": base64.b64encode(json.dumps(start).encode()).decode()})
    assert _usage([first + good]) == (3, 4, 7)
    x = UsageExtractor(EVENTSTREAM)
    x.feed(event("chunk", {"bytes": "not base64!"}))
    assert x.close().error == "malformed"
