"""The bodies the benchmark sends: a chat completion, OpenAI chat streams, large bodies.

Everything is generated, deterministic and reused: a large body is produced on the fly
from one piece, so the only memory that can grow while it passes is the middleware's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

_ANSWER = (
    "Tokens are the unit of cost for a language model, so a gateway that fronts one wants to "
    "count every token per user, per API and per model as the responses go by. Counting them "
    "after the fact from the provider's invoice is too late to enforce a quota, and counting "
    "them by re-parsing every response body in full costs memory and time that a proxy does "
    "not have to spare. Reading the usage object as the bytes pass is the cheap way: one scan, "
    "no copy, and the client sees no delay at all."
)

COMPLETION = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": _ANSWER, "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 52,
        "completion_tokens": 128,
        "total_tokens": 180,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_06737a9306",
}
COMPLETION_BODY = json.dumps(COMPLETION, separators=(",", ":")).encode()
COMPLETION_TOKENS = 180

_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Explain in one paragraph why a gateway should count LLM tokens per user."},
]


def request_body(stream: bool = False, include_usage: bool = False, max_tokens: int | None = None) -> bytes:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "user": "u1", "messages": _MESSAGES}
    if stream:
        body["stream"] = True
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return json.dumps(body, separators=(",", ":")).encode()


_WORDS = _ANSWER.split(" ")
_CHUNK_HEAD = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion.chunk",
    "created": 1741570283,
    "model": "gpt-4o-mini-2024-07-18",
    "system_fingerprint": "fp_06737a9306",
}


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def chat_chunks(n: int, include_usage: bool) -> tuple[list[bytes], int]:
    """``n`` SSE events of an OpenAI chat stream, one per element, and the usage total.

    With ``include_usage`` every chunk carries ``"usage":null`` and the last but one the
    usage object, as OpenAI sends them; the last is ``[DONE]``.
    """
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    content = n - 3 - (1 if include_usage else 0)
    events = [_event({**_CHUNK_HEAD, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None},
                                                    "logprobs": None, "finish_reason": None}], **extra})]
    for i in range(content):
        word = " " + _WORDS[i % len(_WORDS)]
        events.append(_event({**_CHUNK_HEAD, "choices": [{"index": 0, "delta": {"content": word}, "logprobs": None,
                                                            "finish_reason": None}], **extra}))
    events.append(_event({**_CHUNK_HEAD, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
                          **extra}))
    total = 52 + content
    if include_usage:
        events.append(_event({**_CHUNK_HEAD, "choices": [], "usage": {
            "prompt_tokens": 52, "completion_tokens": content, "total_tokens": total,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}}))
    events.append(b"data: [DONE]\n\n")
    assert len(events) == n
    return events, total


_EMBED_PIECE = b'{"object":"embedding","index":0,"embedding":[' + b"0.0123456789," * 5000 + b"0.5]},"
# A paragraph of generated text as it sits inside a JSON string written with
# ensure_ascii (Python's default): a "\\n" escape per line, "\\"" around a quotation,
# "\\uXXXX" for every dash, curly quote and accent.
_PARAGRAPH = (
    b"Counting tokens as the bytes pass costs one scan of the body and no copy of it.\\n"
    b"A gateway that buffers the body first needs memory for all of it, and its client\\n"
    b"waits for the last byte before it sees the first one \\u2014 which defeats streaming.\\n"
    b'As one operator put it, \\"we only noticed when the invoice arrived\\" (na\\u00efvet\\u00e9,\\n'
    b"she called it, or \\u201cthe caf\\u00e9 bill\\u201d).\\n\\n"
)
_TEXT_PIECE = _PARAGRAPH * (65536 // len(_PARAGRAPH))
_BIG_SSE_EVENT = _event({**_CHUNK_HEAD, "choices": [{"index": 0, "delta": {"content": " token"}, "logprobs": None,
                                                     "finish_reason": None}], "usage": None})

LARGE_KINDS = ("embeddings", "text", "sse")


def large_chunks(kind: str, size: int) -> Iterator[bytes]:
    """The body of a large-body case, generated on the fly from one reused piece.

    ``size`` is bytes for the JSON kinds and events for ``sse``.
    """
    if kind == "embeddings":
        yield b'{"object":"list","model":"text-embedding-3-small","data":['
        sent = 0
        while sent < size:
            yield _EMBED_PIECE
            sent += len(_EMBED_PIECE)
        yield b'{"object":"embedding","index":1,"embedding":[0.5]}],"usage":{"prompt_tokens":123,"total_tokens":123}}'
    elif kind == "text":
        yield (b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini-2024-07-18",'
               b'"choices":[{"index":0,"message":{"role":"assistant","content":"')
        sent = 0
        while sent < size:
            yield _TEXT_PIECE
            sent += len(_TEXT_PIECE)
        yield (b'"},"logprobs":null,"finish_reason":"stop"}],'
               b'"usage":{"prompt_tokens":12,"completion_tokens":40000000,"total_tokens":40000012}}')
    else:
        for _ in range(size):
            yield _BIG_SSE_EVENT
        yield _event({**_CHUNK_HEAD, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": size,
                                                             "total_tokens": size + 9}})
        yield b"data: [DONE]\n\n"


def large_expected(kind: str, size: int) -> int:
    return {"embeddings": 123, "text": 40000012}.get(kind, size + 9)
