"""How a finishing or starting call reads what it was given: the body format of a
Content-Type, the usage the response headers report over the body's, the error label of a
body not read, the provider told by request headers.

Helpers of :class:`~.metered_call.MeteredCall`, kept apart so that it holds the per-call
state and its steps only.
"""

from __future__ import annotations

from .._core.extractor import EVENTSTREAM, SSE, BodyFormat, body_format
from .._core.providers.facts import provider_from_headers
from .._core.usage import Counts, Usage, UsageAccumulator
from .call import ErrorKind, is_error_kind
from .request import RequestView

__all__ = ["FORMATS", "STREAM_FORMATS", "body_error", "format_of", "provider_by_headers", "with_header_counts"]


def provider_by_headers(view: RequestView) -> str | None:
    """Headers only one provider's clients send, for paths we do not recognise."""
    return provider_from_headers(view.headers, view.query)


def with_header_counts(usage: Usage | None, counts: Counts) -> Usage | None:
    """The body's usage with the headers' counts over it: the headers are authoritative
    (the provider's billing counts); the body may add what they lack (cached, reasoning)."""
    acc = UsageAccumulator()
    if usage is not None:
        u = usage
        acc.update((u.prompt_tokens, u.completion_tokens, u.total_tokens, u.cached_tokens, u.reasoning_tokens,
                    u.cache_write_tokens, u.cache_write_1h_tokens))
    acc.update(counts)
    return acc.result()


def body_error(error: str) -> ErrorKind:
    """The ``kind`` label for why the core could not read a body. The label set stays closed
    even if the core ever names a reason not in :data:`ErrorKind` (a bug that
    ``tests/test_vocabulary.py`` catches first): that one is counted as ``internal``."""
    return error if is_error_kind(error) else "internal"


#: Response Content-Type -> body format, so the media type is parsed once per value, not per
#: response. The app chooses the header (a proxy passes its upstream's), so it is bounded.
FORMATS: dict[str | bytes | None, BodyFormat] = {}
FORMATS_SIZE = 64


#: The formats of a streamed body (a JSON body may be one too: see MeteredCall.finish).
STREAM_FORMATS = frozenset((SSE, EVENTSTREAM))


def format_of(content_type: str | bytes | None) -> BodyFormat:
    """The body format of a Content-Type not in :data:`FORMATS` yet (a str, or an ASGI
    header's raw bytes); kept there."""
    fmt = body_format(content_type.decode("latin-1") if isinstance(content_type, bytes) else content_type)
    if len(FORMATS) >= FORMATS_SIZE:
        FORMATS.clear()
    FORMATS[content_type] = fmt
    return fmt
