"""Response bodies and a wrapped app that several test modules share."""

from __future__ import annotations

import json
from typing import Any

from llm_metrics_middleware import LLMMetricsMiddleware
from llm_metrics_middleware.testing import InMemoryExporter

from .drive import chunk_app

JSON_BODY = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there " * 50}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 100, "total_tokens": 112},
}).encode()

OPENAI_STREAM = (
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Hello"}}],"usage":null}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}\n\n'
    b"data: [DONE]\n\n"
)


class BrokenExporter:
    """An exporter whose every call record raises: what the metering must survive."""

    def bind(self, schema: Any) -> BrokenExporter:
        return self

    def record(self, call: Any) -> None:
        raise RuntimeError("exporter down")

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def shutdown(self) -> None:
        pass


def wrapped_asgi(status: int, headers: list[tuple[str, str]], chunks: list[bytes]) -> tuple[Any, InMemoryExporter]:
    """An app that sends ``chunks``, under the ASGI middleware with an in-memory exporter."""
    exporter = InMemoryExporter()
    return LLMMetricsMiddleware(chunk_app(status, headers, chunks), exporters=[exporter], dimensions=["User ID"]), exporter
