"""Estimates count the answer's text only: never ids, object names, roles, models, finish reasons.

The rule (README, "What is counted"): the strings of the provider table's text fields, as
they sit in the body (escapes as written), one token per 4 bytes rounded up. Each stream
below is shaped like its provider's recorded ones (tests/wire/bodies) but with ids, names and
roles hundreds of bytes long and a few bytes of text, so an estimate that counted anything
else would be off by tens of tokens, not by one.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_metrics_middleware import LLMMetricsMiddleware, LLMMetricsTransport, LLMMetricsWSGIMiddleware
from llm_metrics_middleware._core import readers
from llm_metrics_middleware._core.extractor import JSON, SSE, UsageExtractor
from llm_metrics_middleware._core.sse import EVENT_LIMIT
from llm_metrics_middleware.testing import InMemoryExporter

from .drive import chunk_app, request_json, run_asgi, run_wsgi, wsgi_chunk_app
from .servers import HOST, uvicorn_server
from .splits import check_every_split

LONG_ID = "chatcmpl-" + "Dx0XpqH8w09uBXwq1zFGYdETjtnEl" * 8
LONG_MODEL = "gpt-4o-mini-2024-07-18-" + "finetuned-organisation-name-" * 6
LONG_ROLE = "assistant-" * 20  # a role no provider sends: what matters is that it is not counted


def tokens(text_bytes: int) -> int:
    """The default estimator's rule: a token per 4 bytes, rounded up."""
    return -(-text_bytes // 4)


def raw_len(text: str) -> int:
    """A string's bytes as a compact JSON encoder writes them, without the quotes."""
    return len(json.dumps(text, ensure_ascii=False).encode()) - 2


def sse(obj: Any, event: str | None = None) -> bytes:
    line = b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"
    return (b"event: " + event.encode() + b"\n" + line) if event else line


def text_tokens(chunks: Sequence[bytes], fmt: str = SSE, operation: str | None = None) -> int:
    x = UsageExtractor(fmt, want_text=True, operation=operation)  # type: ignore[arg-type]
    for chunk in chunks:
        x.feed(chunk)
    return x.close().text_tokens


# -- the streams ----------------------------------------------------------------------------

CHAT_TEXT = ["Hi", " there", ", \"quoted\"", " é", "\n"]
CHAT_ARGS = ['{"', "city", '":"', "Paris", '"}']


def openai_chat_stream() -> tuple[bytes, int]:
    head = {"id": LONG_ID, "object": "chat.completion.chunk", "created": 1782955817, "model": LONG_MODEL,
            "service_tier": "default", "system_fingerprint": "fp_" + "d0469e1700" * 10}
    events = [sse({**head, "choices": [{"index": 0, "delta": {"role": LONG_ROLE, "content": "", "refusal": None},
                                        "logprobs": None, "finish_reason": None}], "obfuscation": "C63r" * 20})]
    events += [sse({**head, "choices": [{"index": 0, "delta": {"content": t}, "logprobs": None, "finish_reason": None}]})
               for t in CHAT_TEXT]
    call = {"index": 0, "id": "call_" + "ZR5UUuTt3pf61kjwAJIYdVMj" * 8, "type": "function",
            "function": {"name": "get_capital_of_a_country_" * 8, "arguments": ""}}
    events.append(sse({**head, "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}))
    events += [sse({**head, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": a}}]},
                                         "finish_reason": None}]}) for a in CHAT_ARGS]
    events.append(sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls_" * 10}]}))
    events.append(b"data: [DONE]\n\n")
    return b"".join(events), sum(map(raw_len, CHAT_TEXT + CHAT_ARGS))


RESPONSES_TEXT = ["OK", ", done", " \\o/"]


def responses_stream() -> tuple[bytes, int]:
    """Cut before ``response.completed``: every ``.done`` event repeats the text whole."""
    rid, mid = "resp_" + "sanitized_streaming" * 10, "msg_" + "sanitized_streaming" * 10
    full = "".join(RESPONSES_TEXT)
    response = {"id": rid, "object": "response", "status": "in_progress", "model": LONG_MODEL, "output": [],
                "instructions": None, "text": {"format": {"type": "text"}}, "usage": None}
    ev = [sse({"type": "response.created", "response": response, "sequence_number": 0}, "response.created")]
    item = {"id": mid, "type": "message", "status": "in_progress", "content": [], "role": LONG_ROLE}
    ev.append(sse({"type": "response.output_item.added", "item": item, "output_index": 0, "sequence_number": 1},
                  "response.output_item.added"))
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    ev.append(sse({"type": "response.content_part.added", "item_id": mid, "output_index": 0, "content_index": 0,
                   "part": part, "sequence_number": 2}, "response.content_part.added"))
    for i, t in enumerate(RESPONSES_TEXT):
        ev.append(sse({"type": "response.output_text.delta", "item_id": mid, "output_index": 0, "content_index": 0,
                       "delta": t, "logprobs": [], "sequence_number": 3 + i}, "response.output_text.delta"))
    ev.append(sse({"type": "response.output_text.done", "item_id": mid, "output_index": 0, "content_index": 0,
                   "text": full, "logprobs": [], "sequence_number": 10}, "response.output_text.done"))
    ev.append(sse({"type": "response.content_part.done", "item_id": mid, "output_index": 0, "content_index": 0,
                   "part": {**part, "text": full}, "sequence_number": 11}, "response.content_part.done"))
    done = {**item, "status": "completed", "content": [{**part, "text": full}]}
    ev.append(sse({"type": "response.output_item.done", "item": done, "output_index": 0, "sequence_number": 12},
                  "response.output_item.done"))
    return b"".join(ev), sum(map(raw_len, RESPONSES_TEXT))


ANTHROPIC_THINKING = ["This", " is a straight", "forward question"]
ANTHROPIC_TEXT = ["Look", " both ways."]
ANTHROPIC_JSON = ['{"location": ', '"San Francisco"}']


def anthropic_stream() -> tuple[bytes, int]:
    message = {"model": LONG_MODEL, "id": "msg_" + "01A6gwM9ZYySVuWAZxJ5Keko" * 8, "type": "message",
               "role": LONG_ROLE, "content": [], "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": 43, "output_tokens": 1}}
    ev = [sse({"type": "message_start", "message": message}, "message_start")]
    ev.append(sse({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "thinking", "thinking": "", "signature": ""}}, "content_block_start"))
    ev += [sse({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": t}},
               "content_block_delta") for t in ANTHROPIC_THINKING]
    ev.append(sse({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "signature_delta", "signature": "Eu4CCkYICxgCKkCptg1Gj6hlyXcXwEx" * 20}},
                  "content_block_delta"))
    ev.append(sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    ev.append(sse({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
                  "content_block_start"))
    ev += [sse({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": t}},
               "content_block_delta") for t in ANTHROPIC_TEXT]
    ev.append(sse({"type": "content_block_start", "index": 2, "content_block": {
        "type": "tool_use", "id": "toolu_" + "01T1x1fJ34qAmk2tNTrN7Up6" * 8, "name": "get_weather_" * 10, "input": {}}},
        "content_block_start"))
    ev += [sse({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": j}},
               "content_block_delta") for j in ANTHROPIC_JSON]
    ev.append(sse({"type": "message_delta", "delta": {"stop_reason": "tool_use_" * 10, "stop_sequence": None},
                   "usage": {"output_tokens": 89}}, "message_delta"))
    ev.append(sse({"type": "message_stop"}, "message_stop"))
    return b"".join(ev), sum(map(raw_len, ANTHROPIC_THINKING + ANTHROPIC_TEXT + ANTHROPIC_JSON))


GEMINI_TEXT = ["The weather", " in Tokyo", " is\tmild."]


def gemini_stream() -> tuple[bytes, int]:
    tail = {"modelVersion": LONG_MODEL, "responseId": "tEIRaa6sL_" + "DGz7IPpq7H0A8" * 10}
    ev = [sse({"candidates": [{"content": {"parts": [{"text": t}], "role": LONG_ROLE}, "index": 0}], **tail})
          for t in GEMINI_TEXT]
    ev.append(sse({"candidates": [{"content": {"parts": [{"functionCall": {"name": "getWeather" * 20,
                                                                            "args": {"location": "Tokyo"}},
                                                           "thoughtSignature": "CikBcsjafFK168Ib" * 30}],
                                               "role": LONG_ROLE},
                                   "finishReason": "STOP" * 20, "index": 0,
                                   "finishMessage": "Model generated function call(s)."}], **tail}))
    return b"".join(ev), sum(map(raw_len, GEMINI_TEXT))


STREAMS = {
    "openai-chat": (openai_chat_stream, "chat.completions"),
    "openai-responses": (responses_stream, "responses"),
    "anthropic-messages": (anthropic_stream, "messages"),
    "gemini-stream": (gemini_stream, "streamGenerateContent"),
}


def per_event(body: bytes) -> list[bytes]:
    return [e + b"\n\n" for e in body.split(b"\n\n") if e]


@pytest.mark.parametrize("name", list(STREAMS))
def test_a_stream_is_estimated_from_its_text_alone(name: str) -> None:
    make, operation = STREAMS[name]
    body, text = make()
    assert len(body) > 20 * text  # ids, names and roles outweigh the text many times
    expected = tokens(text)
    # One event per write (the skimming template learns the chunks' shape), then any cut.
    assert text_tokens(per_event(body), operation=operation) == expected
    check_every_split(lambda chunks: text_tokens(chunks, operation=operation), body, expected,
                      every_point=False, examples=20)


def test_the_middleware_estimates_a_chat_stream_from_its_text_alone() -> None:
    body, text = openai_chat_stream()
    request = request_json(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
    headers = [("content-type", "text/event-stream")]
    for driver in ("asgi", "wsgi"):
        exporter = InMemoryExporter()
        if driver == "asgi":
            run_asgi(LLMMetricsMiddleware(chunk_app(200, headers, per_event(body)), exporters=[exporter]), body=request)
        else:
            run_wsgi(LLMMetricsWSGIMiddleware(wsgi_chunk_app("200 OK", headers, per_event(body)), exporters=[exporter]),
                     body=request)
        [call] = exporter.calls
        assert call.usage_source == "estimated", driver
        assert call.usage is not None and call.usage.completion_tokens == tokens(text), driver


@pytest.mark.parametrize("text", ['a \\"key\\": \\"x\\"', "ends with \\\\", "\\u00e9\\ud83d\\ude00", "日本語のテキスト", ""])
def test_odd_text_is_counted_as_written(text: str) -> None:
    # Escaped quotes that read like a key, a trailing escaped backslash, escapes of odd
    # Unicode, raw multi-byte UTF-8 (cut anywhere, mid-character included).
    head = '{"id":"' + LONG_ID + '","model":"' + LONG_MODEL + '","choices":[{"index":0,"delta":{"content":"'
    chunks = [(f"data: {head}word{i}\"}}}}]}}\n\n").encode() for i in range(12)]
    chunks.insert(6, f"data: {head}{text}\"}}}}]}}\n\n".encode())
    expected = tokens(sum(len(f"word{i}") for i in range(12)) + len(text.encode()))
    assert text_tokens(chunks) == expected
    check_every_split(text_tokens, b"".join(chunks), expected, every_point=False, examples=10)


def test_a_key_that_ends_in_an_escaped_quote_is_not_a_text_field() -> None:
    # A key '\"content' (the bytes "\"content") is no "content" key: its value is not text.
    body = b'data: {"id":"x","\\"content":"not text at all","choices":[{"delta":{"content":"yes"}}]}\n\n'
    assert text_tokens([body]) == tokens(3)


def test_an_event_too_large_to_keep_still_counts_its_text_only() -> None:
    text = "word " * (EVENT_LIMIT // 2)  # 40 KB of text in one delta, past the decoder's cap
    event = sse({"id": LONG_ID, "model": LONG_MODEL, "choices": [{"index": 0, "delta": {"role": LONG_ROLE,
                                                                                         "content": text}}]})
    assert len(event) > EVENT_LIMIT
    small = sse({"id": LONG_ID, "choices": [{"index": 0, "delta": {"content": "end"}}]})
    expected = tokens(len(text) + 3)
    assert text_tokens([event, small]) == expected
    assert text_tokens([event[i : i + 4096] for i in range(0, len(event), 4096)] + [small]) == expected


# -- whole JSON bodies ---------------------------------------------------------------------

OPENAI_JSON_TEXT = ["The capital of France is Paris.", "Thinking \"hard\" about it", '{"city":"Paris"}']


def openai_chat_json(usage: bool) -> bytes:
    message = {"role": LONG_ROLE, "content": OPENAI_JSON_TEXT[0], "reasoning_content": OPENAI_JSON_TEXT[1],
               "refusal": None, "annotations": [],
               "tool_calls": [{"id": "call_" + "ZR5UUuTt3pf61kjw" * 10, "type": "function",
                               "function": {"name": "get_capital_" * 10, "arguments": OPENAI_JSON_TEXT[2]}}]}
    obj: dict[str, Any] = {"id": LONG_ID, "object": "chat.completion", "created": 1782955817, "model": LONG_MODEL,
                           "choices": [{"index": 0, "message": message, "logprobs": None,
                                        "finish_reason": "tool_calls_" * 10}],
                           "system_fingerprint": "fp_" + "d0469e1700" * 10}
    if usage:
        obj["usage"] = {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
    return json.dumps(obj, indent=2).encode()


@pytest.mark.parametrize("small_body", [readers.SMALL_BODY, 0], ids=["json.loads", "scanner"])
def test_a_whole_json_answer_is_estimated_from_its_text_fields(small_body: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "SMALL_BODY", small_body)
    body = openai_chat_json(usage=False)
    expected = tokens(sum(map(raw_len, OPENAI_JSON_TEXT)))
    check_every_split(lambda chunks: text_tokens(chunks, JSON), body, expected, every_point=False, examples=20)


def test_a_text_root_that_is_a_string_counts_and_other_roots_do_not() -> None:
    # Ollama's generate answer is the root "response" itself; "context" and "model" are not text.
    body = json.dumps({"model": LONG_MODEL, "created_at": "2024-01-01T00:00:00Z", "response": "Hello \"you\"",
                       "done": True, "context": [1, 2, 3], "done_reason": "stop" * 30}).encode()
    check_every_split(lambda chunks: text_tokens(chunks, JSON), body, tokens(raw_len('Hello "you"')))


# -- a non-streamed body cut short, through real servers -------------------------------------
#
# A JSON answer cut in the middle (the upstream's connection dropped, or the client left) is
# estimated from the answer text that got through, a string cut midway included, and never
# from its other bytes; cut before any text, it is not estimated at all.

RECORDED = (Path(__file__).parent / "wire" / "bodies" / "openai-chat-json.json").read_bytes()
_CONTENT_AT = RECORDED.index(b'"content": "') + len(b'"content": "')
_CONTENT_END = RECORDED.index(b'",\n        "refusal"')
CUTS = {
    # where the body stops: the completion tokens expected (None: not estimated)
    "in the middle of the text": (RECORDED.index(b"Galaxy Day fosters"), tokens(RECORDED.index(b"Galaxy Day fosters") - _CONTENT_AT)),
    "after the text, before the usage": (RECORDED.index(b'"usage"'), tokens(_CONTENT_END - _CONTENT_AT)),
    "before any text": (_CONTENT_AT - 3, None),
}
CHAT_REQUEST = request_json(model="gpt-4.1-nano", messages=[{"role": "user", "content": "Invent a holiday"}])


def _check_cut(exporter: InMemoryExporter, expected: int | None, outcomes: tuple[str, ...]) -> None:
    deadline = time.monotonic() + 10
    while not exporter.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    [call] = exporter.calls
    assert call.outcome in outcomes, call
    assert exporter.errors == ["truncated"]
    if expected is None:
        assert call.usage_source == "none" and call.usage is None, call
    else:
        assert call.usage_source == "estimated" and call.usage is not None, call
        assert call.usage.completion_tokens == expected


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cut", list(CUTS))
def test_a_client_that_leaves_mid_body_is_estimated_from_the_text_it_got(cut: str) -> None:
    at, expected = CUTS[cut]
    sent = threading.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": RECORDED[:at], "more_body": True})
        sent.set()
        await asyncio.wait_for(receive(), 20)  # http.disconnect: the client is gone, the rest is not sent

    exporter = InMemoryExporter()
    with uvicorn_server(LLMMetricsMiddleware(app, exporters=[exporter])) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as client:
            client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                           b"content-length: %d\r\n\r\n%s" % (len(CHAT_REQUEST), CHAT_REQUEST))
            got = b""
            while RECORDED[:at][-40:] not in got:  # read until the first part has arrived
                piece = client.recv(65536)
                assert piece, got
                got += piece
            assert sent.wait(10)
        _check_cut(exporter, expected, ("disconnected",))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cut", list(CUTS))
def test_an_upstream_that_drops_the_connection_mid_body_is_estimated_from_the_text_it_sent(cut: str) -> None:
    at, expected = CUTS[cut]
    with socket.create_server((HOST, 0)) as server:
        server.settimeout(20)

        def upstream() -> None:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(10)
                request = b""
                while not request.endswith(CHAT_REQUEST):
                    request += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(RECORDED), RECORDED[:at]))
            # Closed with the body short of its Content-Length: the connection was cut.

        thread = threading.Thread(target=upstream, daemon=True)
        thread.start()
        exporter = InMemoryExporter()
        url = f"http://{HOST}:{server.getsockname()[1]}"
        transport = LLMMetricsTransport(exporters=[exporter])
        with httpx.Client(base_url=url, transport=transport, timeout=10) as client, pytest.raises(httpx.RemoteProtocolError):
            client.post("/v1/chat/completions", content=CHAT_REQUEST, headers={"content-type": "application/json"})
        thread.join(20)
        _check_cut(exporter, expected, ("error",))  # the read failed: the call ended in error


def test_an_audio_answer_is_estimated_from_its_transcript_not_its_audio() -> None:
    # A recorded audio answer (tests/wire/bodies): base64 audio, ids and expiry are no text.
    body = (Path(__file__).parent / "wire" / "bodies" / "openai-chat-json-audio-output.json").read_bytes()
    without_usage = json.dumps({k: v for k, v in json.loads(body).items() if k != "usage"}).encode()
    expected = tokens(len("Hello! How can I assist you today?"))
    check_every_split(lambda chunks: text_tokens(chunks, JSON), without_usage, expected, every_point=False, examples=10)
