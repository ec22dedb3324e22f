"""The three outgoing HTTP clients we instrument, each sending one POST the same way, for
the tests that check a behaviour through every client library."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import NamedTuple

import aiohttp
import httpx
import requests

from llm_metrics_middleware import (
    instrument_aiohttp,
    instrument_httpx,
    instrument_requests,
    uninstrument_aiohttp,
    uninstrument_httpx,
    uninstrument_requests,
)


def _send_httpx(url: str, body: bytes, headers: dict[str, str], proxy: str | None) -> bytes:
    with httpx.Client(proxy=proxy, timeout=20) as client:
        return client.post(url, content=body, headers=headers).content


def _send_requests(url: str, body: bytes, headers: dict[str, str], proxy: str | None) -> bytes:
    with requests.Session() as session:
        proxies = {"http": proxy} if proxy else None
        return session.post(url, data=body, headers=headers, proxies=proxies, timeout=20).content


def _send_aiohttp(url: str, body: bytes, headers: dict[str, str], proxy: str | None) -> bytes:
    async def run() -> bytes:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session, session.post(
            url, data=body, headers=headers, proxy=proxy,
        ) as response:
            return await response.read()

    return asyncio.run(asyncio.wait_for(run(), 30))


class Client(NamedTuple):
    name: str
    instrument: Callable[..., None]
    uninstrument: Callable[[], None]
    #: (url, body, headers, proxy or None) -> the response body the client read.
    send: Callable[[str, bytes, dict[str, str], str | None], bytes]


CLIENTS = [
    Client("httpx", instrument_httpx, uninstrument_httpx, _send_httpx),
    Client("requests", instrument_requests, uninstrument_requests, _send_requests),
    Client("aiohttp", instrument_aiohttp, uninstrument_aiohttp, _send_aiohttp),
]
CLIENT_IDS = [client.name for client in CLIENTS]
