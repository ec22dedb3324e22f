"""The response headers a call reads, from raw byte pairs (ASGI, httpx, aiohttp) or a
client library's case-insensitive headers (requests).

Content-Type and Content-Encoding decide how the body is read; the usage-reporting headers
(the provider table's ``facts.USAGE_HEADER_NAMES``: Bedrock's token counts) are the
provider's billing counts, authoritative over the body's (see
:meth:`~.metered_call.MeteredCall.response_start`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .._core.providers.facts import USAGE_HEADER_NAMES

__all__ = ["RESPONSE_HEADER_KINDS", "response_headers", "usage_headers_of"]

_USAGE_HEADERS_RAW = frozenset(name.encode("latin-1") for name in USAGE_HEADER_NAMES)

#: Raw response header name, as the app spells it -> what it is to us: 0 nothing, 1
#: Content-Type, 2 Content-Encoding, 3 a usage-reporting header. Filled as names are met
#: (:func:`header_kind`), so :func:`response_headers` tells a header's kind with one
#: look-up and lower-cases no name it has seen before. The app chooses its header names (a proxy
#: passes its upstream's), so the table is bounded: emptied when full.
RESPONSE_HEADER_KINDS: dict[bytes, int] = {b"content-type": 1, b"content-encoding": 2}
RESPONSE_HEADER_KINDS.update((name, 3) for name in _USAGE_HEADERS_RAW)
_KINDS_SIZE = 512
_KNOWN_KINDS = dict(RESPONSE_HEADER_KINDS)


def header_kind(name: bytes) -> int:
    """The kind of a header name not yet in :data:`RESPONSE_HEADER_KINDS`; kept there."""
    kind = _KNOWN_KINDS.get(name.lower(), 0)
    if len(RESPONSE_HEADER_KINDS) >= _KINDS_SIZE:
        RESPONSE_HEADER_KINDS.clear()
        RESPONSE_HEADER_KINDS.update(_KNOWN_KINDS)
    RESPONSE_HEADER_KINDS[bytes(name)] = kind
    return kind


def response_headers(
    raw: Iterable[tuple[bytes, bytes]],
) -> tuple[bytes | str | None, str | None, dict[str, str] | None]:
    """Content-Type, Content-Encoding and the usage-reporting headers (see
    :func:`usage_headers_of`) of raw byte header pairs, for :meth:`MeteredCall.response_start`
    (ASGI, httpx, aiohttp).

    One pass over the pairs: a client library's case-insensitive ``get`` scans every header
    per name asked for (httpx's lower-cases each), and a response start asks for six. A
    name's kind is one look-up in :data:`RESPONSE_HEADER_KINDS`; the Content-Type goes on
    as bytes, which ``response_start`` maps to a body format without decoding them. Names
    that are not bytes (a bytearray) are lower-cased one by one instead.
    """
    content_type: bytes | str | None = None
    content_encoding: str | None = None
    usage: dict[str, str] | None = None
    kinds = RESPONSE_HEADER_KINDS
    pairs = raw if raw.__class__ is list else list(raw)  # read twice at most, below
    try:
        for key, value in pairs:
            what = kinds[key] if key in kinds else header_kind(key)
            if what:
                if what == 1:
                    content_type = value if value.__class__ is bytes else bytes(value)
                elif what == 2:
                    content_encoding = value.decode("latin-1")
                else:
                    if usage is None:
                        usage = {}
                    usage[key.lower().decode("latin-1")] = value.decode("latin-1")
    except TypeError:  # an unhashable name (a bytearray)
        return _lowering(pairs)
    return content_type, content_encoding, usage


def _lowering(raw: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, str | None, dict[str, str] | None]:
    """:func:`response_headers` for names of any bytes-like type, lower-casing each."""
    content_type = content_encoding = None
    usage: dict[str, str] | None = None
    for key, value in raw:
        key = bytes(key).lower()
        if key == b"content-type":
            content_type = bytes(value).decode("latin-1")
        elif key == b"content-encoding":
            content_encoding = bytes(value).decode("latin-1")
        elif key in _USAGE_HEADERS_RAW:
            if usage is None:
                usage = {}
            usage[key.decode("latin-1")] = bytes(value).decode("latin-1")
    return content_type, content_encoding, usage


def usage_headers_of(headers: Mapping[str, str]) -> dict[str, str] | None:
    """The usage-reporting headers among a client library's case-insensitive response
    headers (httpx, requests), lower-case, for :meth:`MeteredCall.response_start`."""
    found = {name: value for name in USAGE_HEADER_NAMES if (value := headers.get(name)) is not None}
    return found or None
