"""What stands in front of the ``/metrics`` app: GET and HEAD only, optional authentication.

The metrics publish per-user token usage (``user_id`` labels, costs, limits), so the
endpoint must be as closed as the rest of the app when it is reachable from outside. It
answers ``GET`` and ``HEAD`` (405 with ``Allow: GET, HEAD`` otherwise, as RFC 9110 asks),
and, when credentials are configured, only requests that carry them (401 with a
``WWW-Authenticate`` challenge otherwise). Prometheus sends them with ``authorization:
{credentials: ...}`` (bearer) or ``basic_auth:`` in its scrape config.

Credentials come from ``metrics_auth=`` or, when that is not given, from the
``LLM_METRICS_AUTH`` environment variable, both written as the ``Authorization`` header
is: ``"Bearer <token>"`` or ``"Basic <user>:<password>"``; a ``(user, password)`` tuple is
basic auth too. Comparisons are constant-time.

The guards wrap any ASGI or WSGI metrics app (they know nothing of how it renders), so
they work the same for ``metrics_path=`` and for ``PrometheusExporter.asgi_app()`` /
``wsgi_app()`` mounted by hand.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Union

ENV_VAR = "LLM_METRICS_AUTH"
ALLOW = "GET, HEAD"

#: What ``metrics_auth=`` takes: ``"Bearer <token>"``, ``"Basic <user>:<password>"``, or
#: ``(user, password)``.
MetricsAuthOption = Union[str, "tuple[str, str]", None]


@dataclass(frozen=True)
class MetricsAuth:
    """The credentials a scrape must present: one ``Authorization`` header value."""

    scheme: str  # "Bearer" or "Basic"
    expected: bytes  # the header value that is accepted, encoded

    def allows(self, authorization: str | None) -> bool:
        if authorization is None:
            return False
        # The scheme is case-insensitive (RFC 9110 section 11.1); the credentials are not.
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != self.scheme.lower():
            return False
        return hmac.compare_digest(credentials.strip().encode("utf-8", "surrogateescape"), self.expected)

    @property
    def challenge(self) -> str:
        return f'{self.scheme} realm="metrics", charset="UTF-8"'


def metrics_auth(option: MetricsAuthOption = None, *, environ: Any = None) -> MetricsAuth | None:
    """The credentials of ``option``, else of ``$LLM_METRICS_AUTH``, else ``None`` (open)."""
    source = "metrics_auth="
    if option is None:
        option = (environ if environ is not None else os.environ).get(ENV_VAR) or None
        source = ENV_VAR
        if option is None:
            return None
    if isinstance(option, tuple):
        if len(option) != 2 or not all(isinstance(part, str) and part for part in option) or ":" in option[0]:
            raise ValueError(f"{source} as a tuple must be (user, password), two non-empty strings, "
                             "the user without ':'")
        user, password = option
        return MetricsAuth("Basic", base64.b64encode(f"{user}:{password}".encode()))
    if not isinstance(option, str):
        raise TypeError(f"{source} must be 'Bearer <token>', 'Basic <user>:<password>' or (user, password), "
                        f"got {type(option).__name__}")
    scheme, _, credentials = option.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        return MetricsAuth("Bearer", credentials.encode())
    if scheme.lower() == "basic" and credentials:
        user, colon, password = credentials.partition(":")
        if not colon or not user or not password:
            # Already base64, as a header would carry it? Accept it when it decodes to user:password.
            try:
                decoded = base64.b64decode(credentials, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            if ":" not in decoded:
                raise ValueError(f"{source}: write basic auth as 'Basic <user>:<password>'")
            return MetricsAuth("Basic", credentials.encode())
        return MetricsAuth("Basic", base64.b64encode(credentials.encode()))
    # Never echo the value: it is a secret.
    raise ValueError(f"{source} must start with its scheme: 'Bearer <token>' or 'Basic <user>:<password>'")


def _refusal(method: str, auth: MetricsAuth | None, authorization: str | None) -> tuple[str, list[tuple[str, str]], bytes] | None:
    """(status, headers, body) when the request may not read the metrics, else None."""
    if method not in ("GET", "HEAD"):
        body = f"{method} is not allowed on the metrics endpoint; use GET or HEAD\n".encode()
        return "405 Method Not Allowed", [("Allow", ALLOW), ("Content-Type", "text/plain; charset=utf-8"),
                                          ("Content-Length", str(len(body)))], body
    if auth is not None and not auth.allows(authorization):
        body = b"the metrics endpoint needs credentials (Authorization header)\n"
        return "401 Unauthorized", [("WWW-Authenticate", auth.challenge), ("Content-Type", "text/plain; charset=utf-8"),
                                    ("Content-Length", str(len(body)))], body
    return None


def guard_asgi(app: Callable[..., Any], auth: MetricsAuth | None) -> Callable[..., Any]:
    """``app`` (an ASGI metrics app) behind the method check and ``auth``."""

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        authorization = None
        for key, value in scope.get("headers", ()):
            if key.lower() == b"authorization":
                authorization = value.decode("latin-1")
                break
        method = scope.get("method", "GET")
        refusal = _refusal(method, auth, authorization)
        if refusal is not None:
            status, headers, body = refusal
            await send({"type": "http.response.start", "status": int(status[:3]),
                        "headers": [(k.lower().encode(), v.encode()) for k, v in headers]})
            await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
            return
        if method == "GET":
            await app(scope, receive, send)
            return
        # HEAD: render as GET, send the headers (with the length GET would have) and no body.
        start: dict[str, Any] = {}
        length = 0

        async def headers_only(message: Any) -> None:
            nonlocal start, length
            if message["type"] == "http.response.start":
                start = dict(message)
            elif message["type"] == "http.response.body":
                length += len(message.get("body", b""))
                if not message.get("more_body", False):
                    headers = list(start.get("headers", ()))
                    if not any(k.lower() == b"content-length" for k, _ in headers):
                        headers.append((b"content-length", str(length).encode()))
                    await send({**start, "headers": headers})
                    await send({"type": "http.response.body", "body": b""})

        await app({**scope, "method": "GET"}, receive, headers_only)

    return guarded


def guard_wsgi(app: Callable[..., Any], auth: MetricsAuth | None) -> Callable[..., Any]:
    """``app`` (a WSGI metrics app) behind the method check and ``auth``."""

    def guarded(environ: Any, start_response: Any) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        refusal = _refusal(method, auth, environ.get("HTTP_AUTHORIZATION"))
        if refusal is not None:
            status, headers, body = refusal
            start_response(status, headers)
            return [b"" if method == "HEAD" else body]
        if method == "GET":
            result: Iterable[bytes] = app(environ, start_response)
            return result
        # HEAD: render as GET, keep the headers (with GET's length), drop the body.
        captured: list[Any] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], object]:
            captured[:] = [status, list(headers), exc_info]
            return lambda data: None

        body_iter = app({**environ, "REQUEST_METHOD": "GET"}, capture)
        try:
            length = sum(len(chunk) for chunk in body_iter)
        finally:
            close = getattr(body_iter, "close", None)
            if close is not None:
                close()
        status, headers, exc_info = captured
        if not any(k.lower() == "content-length" for k, _ in headers):
            headers.append(("Content-Length", str(length)))
        start_response(status, headers, exc_info)
        return [b""]

    return guarded
