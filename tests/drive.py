"""Drive ASGI and WSGI apps in-process, recording exactly what reaches the client."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any


def split(data: bytes, sizes: Sequence[int] | int) -> list[bytes]:
    """``data`` cut into pieces of the given sizes (cycled), the last piece the remainder."""
    if isinstance(sizes, int):
        sizes = [sizes]
    out, pos, i = [], 0, 0
    while pos < len(data):
        size = max(1, sizes[i % len(sizes)])
        out.append(data[pos : pos + size])
        pos += size
        i += 1
    return out


async def receive_body(receive: Callable[[], Any]) -> bytes:
    """The whole request body of an ASGI app's ``receive``, message by message."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def chunk_app(status: int, headers: list[tuple[str, str]], chunks: Sequence[bytes], read_body: bool = True) -> Any:
    """An ASGI app that reads the request body, then sends ``chunks`` one message each."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if read_body:
            await receive_body(receive)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode(), v.encode()) for k, v in headers]})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def run_asgi(
    app: Any,
    method: str = "POST",
    path: str = "/v1/chat/completions",
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (("content-type", "application/json"),),
    query: str = "",
    body_chunks: int = 3,
    disconnect_after: int | None = None,
) -> list[dict[str, Any]]:
    """Run one request; returns the messages the server received from the app."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
        "root_path": "", "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80),
    }
    pieces = split(body, max(1, len(body) // body_chunks + 1)) if body else [b""]
    incoming = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        await asyncio.sleep(3600)  # a client that waits; the app must not need this
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if disconnect_after is not None and len(sent) >= disconnect_after:
            raise OSError("client went away")
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def body_of(messages: list[dict[str, Any]]) -> list[bytes]:
    return [m.get("body", b"") for m in messages if m["type"] == "http.response.body"]


def wsgi_chunk_app(status: str, headers: list[tuple[str, str]], chunks: Sequence[bytes], use_write: bool = False) -> Any:
    def app(environ: Any, start_response: Any) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        environ["wsgi.input"].read(length)
        write = start_response(status, headers)
        if use_write:
            for chunk in chunks:
                write(chunk)
            return []

        def gen() -> Iterator[bytes]:
            yield from chunks

        return gen()

    return app


def run_wsgi(
    app: Any,
    method: str = "POST",
    path: str = "/v1/chat/completions",
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (("content-type", "application/json"),),
    query: str = "",
    stop_after: int | None = None,
) -> tuple[str, list[tuple[str, str]], list[bytes]]:
    """Run one request as a WSGI server would; returns status, headers and each block."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "SCRIPT_NAME": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(), "wsgi.multithread": False, "wsgi.multiprocess": False,
        "wsgi.run_once": False, "CONTENT_LENGTH": str(len(body)),
    }
    for key, value in headers:
        if key.lower() == "content-type":
            environ["CONTENT_TYPE"] = value
        else:
            environ["HTTP_" + key.upper().replace("-", "_")] = value
    got: dict[str, Any] = {}
    blocks: list[bytes] = []

    def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        got["status"], got["headers"] = status, response_headers
        return blocks.append

    iterable = app(environ, start_response)
    try:
        for i, block in enumerate(iterable):
            if stop_after is not None and i >= stop_after:
                break
            blocks.append(block)
    finally:
        close = getattr(iterable, "close", None)
        if close is not None:
            close()
    return got["status"], got["headers"], blocks


def request_json(**fields: Any) -> bytes:
    return json.dumps(fields).encode()
