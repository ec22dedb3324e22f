"""Text whose measure an SSE stream puts off: the same estimate when asked, bounded memory.

The few events of a stream that its template does not skim (the first, the finish, the
usage) are measured only when the text is asked for (``Findings.pending``); a caller
that wants the text only to estimate a body without usage (``close(estimate_only=True)``,
the metered call) never asks when usage came.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_metrics_middleware._core.extractor import SSE, UsageExtractor
from llm_metrics_middleware._core.findings import PENDING_TEXT
from llm_metrics_middleware._core.providers.facts import TEXT_FIELD

BODIES = Path(__file__).parent / "wire" / "bodies"
SSE_BODIES = sorted(p.name for p in BODIES.glob("*.sse"))


def events_of(body: bytes) -> list[bytes]:
    sep = b"\r\n\r\n" if b"\r\n\r\n" in body else b"\n\n"
    return [e + sep for e in body.split(sep) if e.strip()]


def read(chunks: list[bytes], **close: bool) -> tuple[UsageExtractor, object]:
    x = UsageExtractor(SSE, want_text=True)
    for c in chunks:
        x.feed(c)
    return x, x.close(**close)


@pytest.mark.parametrize("name", SSE_BODIES)
@pytest.mark.parametrize("split", ["events", "whole"])
def test_estimate_only_changes_nothing_but_the_text_of_a_body_with_usage(name: str, split: str) -> None:
    body = (BODIES / name).read_bytes()
    chunks = events_of(body) if split == "events" else [body]
    _, full = read(chunks)
    _, estimate_only = read(chunks, estimate_only=True)
    assert full.usage == estimate_only.usage and full.model == estimate_only.model  # type: ignore[attr-defined]
    assert full.provider == estimate_only.provider and full.error == estimate_only.error  # type: ignore[attr-defined]
    expected = full.text_tokens if full.usage is None else 0  # type: ignore[attr-defined]
    assert estimate_only.text_tokens == expected  # type: ignore[attr-defined]


def chunk(text: str, i: int) -> bytes:
    # Two text strings per chunk: no template is ever learnt, every chunk is read.
    obj = {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": text, "reasoning_content": f" r{i}"}}]}
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def test_the_text_put_off_is_bounded_and_still_counted() -> None:
    chunks = [chunk(f" word {i}", i) for i in range(2000)]
    x = UsageExtractor(SSE, want_text=True)
    for c in chunks:
        x.feed(c)
        assert sum(map(len, x._found.pending)) <= PENDING_TEXT
    expected = sum(len(m.group(1)) for c in chunks for m in TEXT_FIELD.finditer(c))
    assert x.close().text_tokens == -(-expected // 4) > 0
    assert x._found.pending == []


def test_a_tokenizer_measures_as_the_text_comes() -> None:
    seen: list[str] = []

    def counter(text: str) -> int:
        seen.append(text)
        return len(text.split())

    x = UsageExtractor(SSE, want_text=True, token_counter=counter)
    for i in range(3):
        x.feed(chunk(f" w{i}", i))
    assert x._found.pending == []  # in order, for the tokenizer's batches
    assert x.close(estimate_only=True).text_tokens == 6


def test_a_stream_of_whole_events_never_builds_a_decoder() -> None:
    chunks = events_of((BODIES / SSE_BODIES[0]).read_bytes())
    x = UsageExtractor(SSE, want_text=True)
    for c in [chunk("a", 1), chunk("b", 2)]:
        x.feed(c)
    assert x._reader._decoder is None  # type: ignore[attr-defined]
    x.feed(chunks[0][:5])  # a chunk that is not one whole event: now the decoder reads
    assert x._reader._decoder is not None  # type: ignore[attr-defined]
    x.close()
