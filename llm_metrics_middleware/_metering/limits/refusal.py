"""What a client sees of a limit: the 429 or 503 answer and the remaining-tokens headers.

Refusals are shaped as OpenAI's errors (``{"error": {"message", "type", "param", "code"}}``)
with ``Retry-After``, so the official SDKs raise their ``RateLimitError`` and back off by
themselves; the message says which limit, how much was used and when to try again. The
optional headers are OpenAI's ``x-ratelimit-*-tokens`` or names of the user's own (API
Management's ``remaining-tokens-header-name``). Everything here is pure: the limiter
passes in what the store answered.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Literal, Union

from .declaration import Applied, BoundLimit, Verdict

#: ``limit_headers=``: None, ``"openai"``, or a mapping of ``limit`` / ``remaining`` /
#: ``reset`` to header names of your own (API Management's ``remaining-tokens-header-name``).
HeaderNames = Union[Literal["openai"], Mapping[str, str], None]

OPENAI_HEADERS: Mapping[str, str] = {
    "limit": "x-ratelimit-limit-tokens",
    "remaining": "x-ratelimit-remaining-tokens",
    "reset": "x-ratelimit-reset-tokens",
}

#: An HTTP header name (RFC 9110 token).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def header_names(headers: HeaderNames) -> dict[str, str] | None:
    """``limit_headers=`` checked: which of limit / remaining / reset to send, under which names."""
    if headers is None:
        return None
    if headers == "openai":
        return dict(OPENAI_HEADERS)
    if isinstance(headers, Mapping):
        unknown = set(headers) - set(OPENAI_HEADERS)
        if unknown or not headers or not all(isinstance(v, str) and _TOKEN.fullmatch(v) for v in headers.values()):
            raise ValueError(
                "limit_headers= mapping takes header names for 'limit', 'remaining' and/or 'reset', "
                f"e.g. {{'remaining': 'remaining-tokens'}}, got {dict(headers)!r}"
            )
        return dict(headers)
    raise ValueError(f"limit_headers= takes None, 'openai' or a mapping of header names, got {headers!r}")


def status_line(status: int) -> str:
    """The WSGI status line of a refusal (429 or 503)."""
    return f"{status} {'Too Many Requests' if status == 429 else 'Service Unavailable'}"


def _error_body(message: str, kind: str, code: str) -> bytes:
    # OpenAI's error shape, as its SDKs parse it into RateLimitError.
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


def _reset_text(seconds: float) -> str:
    """OpenAI's ``x-ratelimit-reset-tokens`` form: ``1s``, ``6m0s``, ``1h2m3s``."""
    whole = max(0, math.ceil(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def unavailable(fail_closed: bool) -> Verdict:
    """The answer while the store cannot be asked: pass, or 503 with ``fail_closed=True``."""
    if not fail_closed:
        return Verdict(True)
    body = _error_body(
        "The token limit store is unavailable, so the request could not be checked. Try again shortly.",
        "service_unavailable",
        "limit_storage_unavailable",
    )
    return Verdict(False, 503, [("retry-after", "1")], body)


def too_many(bound: BoundLimit, used: int, cost: int, retry: int, headers: list[tuple[str, str]]) -> Verdict:
    """The 429 for ``bound``, which has ``used`` tokens and was asked ``cost`` more.

    A prompt estimated above the whole budget can never pass: the message says to shorten
    it rather than to wait.
    """
    per = bound.limit.per if isinstance(bound.limit.per, str) else f"{bound.window_seconds} s"
    if cost > bound.tokens:
        message = (
            f"Token limit {bound.name!r}: the prompt alone is about {cost} tokens, more than the "
            f"{bound.tokens} tokens per {per} this limit allows. Send a shorter prompt."
        )
    else:
        message = (
            f"Token limit {bound.name!r} reached: {bound.tokens} tokens per {per}, "
            f"{used} used" + (f", about {cost} more asked" if cost > 1 else "")
            + f". Try again in {retry} s."
        )
    return Verdict(False, 429, [("retry-after", str(retry)), *headers], _error_body(message, "tokens", "rate_limit_exceeded"))


def remaining_headers(
    names: dict[str, str] | None, plan: list[Applied], used: list[int], resets: list[float | None], now: float
) -> list[tuple[str, str]]:
    """The configured headers for the most constraining limit (the fewest tokens left)."""
    if names is None or not plan:
        return []
    i = min(range(len(plan)), key=lambda j: plan[j].bound.tokens - used[j])
    bound = plan[i].bound
    out: list[tuple[str, str]] = []
    if "limit" in names:
        out.append((names["limit"], str(bound.tokens)))
    if "remaining" in names:
        out.append((names["remaining"], str(max(0, bound.tokens - used[i]))))
    if "reset" in names:
        reset = resets[i]
        wait = (reset - now) if reset is not None and used[i] else bound.window_seconds
        out.append((names["reset"], _reset_text(wait)))
    return out
