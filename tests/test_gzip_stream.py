"""A gzip event stream flushed once per event, through a real uvicorn.

A server (or a proxy passing one on) that compresses an event stream must flush the
compressor after every event (``Z_SYNC_FLUSH``), or the client sees nothing until the
compressor's buffer fills. The middleware decompresses its copy chunk by chunk, so each
event is read as it arrives: the usage is known while the stream still runs, and the
response leaves compressed, byte for byte, unbuffered.
"""

from __future__ import annotations

import asyncio
import threading
import zlib
from typing import Any

import httpx

from llm_metrics_middleware import LLMMetricsMiddleware
from llm_metrics_middleware._core.extractor import SSE, UsageExtractor
from llm_metrics_middleware._core.usage import Usage
from llm_metrics_middleware._metering.context import CURRENT
from llm_metrics_middleware.testing import InMemoryExporter

from .servers import uvicorn_server
from .wire.cases import CASES

CASE = next(c for c in CASES if c.id == "anthropic-messages-stream")
EVENTS = [event + b"\n\n" for event in CASE.body.split(b"\n\n")[:-1]]
#: The event after which the stream pauses until the client has decoded it: message_start,
#: whose usage (the input tokens) comes first; the output count comes at the end.
PAUSE_AFTER = 0


class GzipPerEvent:
    """Sends the recorded stream gzipped, one sync-flushed piece per event; after each piece
    notes what the middleware's call has counted so far (the middleware reads a chunk once
    its send has returned: the first before ``send`` returns here, a later one when the app
    sends the next, see ``_drivers/asgi.py``)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.counted: list[Usage | None] = []
        self.client_has_first = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        while (await receive()).get("more_body"):
            pass
        call = CURRENT.get()
        assert call is not None and call.extractor is None
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", CASE.content_type.encode()), (b"content-encoding", b"gzip")]})
        assert call.extractor is not None
        gzip = zlib.compressobj(wbits=31)
        for i, event in enumerate(EVENTS):
            piece = gzip.compress(event) + gzip.flush(zlib.Z_SYNC_FLUSH)
            self.sent.append(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            self.counted.append(call.extractor.usage_so_far)
            if i == PAUSE_AFTER:
                # The stream stays open until the client has decoded the first event: it
                # left the server as it was written, and what was counted is known now.
                assert await asyncio.to_thread(self.client_has_first.wait, 10)
        tail = gzip.flush()
        self.sent.append(tail)
        await send({"type": "http.response.body", "body": tail, "more_body": False})


def _progression() -> list[Usage | None]:
    """What an uncompressed reading of the same events has counted after each one."""
    extractor = UsageExtractor(SSE)
    out = []
    for event in EVENTS:
        extractor.feed(event)
        out.append(extractor.usage_so_far)
    return out


def test_gzip_flushed_per_event_is_counted_event_by_event() -> None:
    upstream = GzipPerEvent()
    exporter = InMemoryExporter()
    app = LLMMetricsMiddleware(upstream, exporters=[exporter], dimensions=["Provider"])
    with uvicorn_server(app) as url, httpx.Client(base_url=url, timeout=20) as client:
        headers = {"content-type": "application/json", **dict(CASE.request_headers)}
        with client.stream("POST", CASE.path, content=CASE.request_body, headers=headers) as response:
            assert response.headers["content-encoding"] == "gzip"
            raw: list[bytes] = []
            decoded = b""
            inflate = zlib.decompressobj(wbits=31)
            for chunk in response.iter_raw():
                raw.append(chunk)
                decoded += inflate.decompress(chunk)
                if decoded.startswith(EVENTS[0]):
                    upstream.client_has_first.set()
            assert inflate.eof
        assert b"".join(raw) == b"".join(upstream.sent)  # still compressed, unchanged
        assert decoded == CASE.body

    # Counted as each event arrived, exactly as the plain stream is (after each send, what
    # was sent before it: a chunk is read when the app comes back from its send); the input
    # tokens were known while the stream was paused after message_start, the output count
    # only at its end.
    expected = _progression()
    assert upstream.counted == [expected[0], *expected[:-1]]
    first, final = upstream.counted[PAUSE_AFTER], expected[-1]
    assert first is not None and first.prompt_tokens == CASE.prompt_tokens
    assert final is not None and first.completion_tokens < final.completion_tokens == CASE.completion_tokens

    [call] = exporter.calls
    assert call.usage is not None and call.usage_source == "reported" and call.parse_error is None
    assert (call.usage.prompt_tokens, call.usage.completion_tokens, call.usage.total_tokens) == (
        CASE.prompt_tokens, CASE.completion_tokens, CASE.total_tokens)
