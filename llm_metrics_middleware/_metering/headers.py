"""The response headers an outgoing call reads, from a client library's headers.

Content-Type and Content-Encoding decide how the body is read; the usage-reporting headers
(the provider table's ``facts.USAGE_HEADER_NAMES``: Bedrock's token counts) are the
provider's billing counts, authoritative over the body's (see
:meth:`~.metered_call.MeteredCall.response_start`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .._core.providers.facts import USAGE_HEADER_NAMES

__all__ = ["response_headers", "usage_headers_of"]

_USAGE_HEADERS_RAW = frozenset(name.encode("latin-1") for name in USAGE_HEADER_NAMES)


def response_headers(raw: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, str | None, dict[str, str] | None]:
    """Content-Type, Content-Encoding and the usage-reporting headers (see
    :func:`usage_headers_of`) of raw byte header pairs, for :meth:`MeteredCall.response_start`.

    One pass over the pairs: a client library's case-insensitive ``get`` scans every header
    per name asked for (httpx's lower-cases each), and a response start asks for six.
    """
    content_type = content_encoding = None
    usage: dict[str, str] | None = None
    for key, value in raw:
        key = key.lower()
        if key == b"content-type":
            content_type = value.decode("latin-1")
        elif key == b"content-encoding":
            content_encoding = value.decode("latin-1")
        elif key in _USAGE_HEADERS_RAW:
            if usage is None:
                usage = {}
            usage[key.decode("latin-1")] = value.decode("latin-1")
    return content_type, content_encoding, usage


def usage_headers_of(headers: Mapping[str, str]) -> dict[str, str] | None:
    """The usage-reporting headers among a client library's case-insensitive response
    headers (httpx, requests), lower-case, for :meth:`MeteredCall.response_start`."""
    found = {name: value for name in USAGE_HEADER_NAMES if (value := headers.get(name)) is not None}
    return found or None
