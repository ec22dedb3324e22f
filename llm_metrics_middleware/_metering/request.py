"""The request as dimension callables see it: method, path, headers, the peeked body fields.

Built by each driver from its own request type (an ASGI scope, a WSGI environ); everything
after that sees only this view.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from werkzeug.datastructures import EnvironHeaders, Headers

from .._core.peek import BodyPeek

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment
    from asgiref.typing import HTTPScope


class RequestView:
    """What a dimension callable gets: ``method``, ``path``, ``headers`` and a bit more.

    ``headers`` is a case-insensitive mapping of ``str`` to ``str``. ``body`` holds the
    fields of the JSON request body that the middleware peeked at (``model``, ``stream``,
    ``user``, ``metadata.user_id``...), empty for other bodies. ``scope`` (ASGI) or
    ``environ`` (WSGI) give the raw request for anything else.
    """

    __slots__ = (
        "method", "path", "query_string", "root_path", "scope", "environ", "_headers", "_peek", "_raw_headers", "limits",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query_string: str,
        root_path: str,
        *,
        scope: HTTPScope | None = None,
        environ: WSGIEnvironment | None = None,
        raw_headers: Any = None,
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.root_path = root_path
        self.scope = scope
        self.environ = environ
        self._raw_headers = raw_headers
        self._headers: Mapping[str, str] | None = None
        self._peek: BodyPeek | None = None
        #: The token limits that apply to this request, with its keys (set by the limit check).
        self.limits: Any = None

    @classmethod
    def from_scope(cls, scope: HTTPScope) -> RequestView:
        qs = scope.get("query_string", b"")
        return cls(
            scope.get("method", "GET"),
            scope.get("path", "/"),
            qs.decode("latin-1") if qs else "",
            scope.get("root_path", "") or "",
            scope=scope,
            raw_headers=scope.get("headers", ()),
        )

    @classmethod
    def from_environ(cls, environ: WSGIEnvironment) -> RequestView:
        # PEP 3333 hands PATH_INFO over as latin-1 decoded bytes; recover the UTF-8 path.
        path = environ.get("PATH_INFO", "") or "/"
        try:
            path = path.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
        return cls(
            environ.get("REQUEST_METHOD", "GET"),
            path,
            environ.get("QUERY_STRING", ""),
            environ.get("SCRIPT_NAME", ""),
            environ=environ,
        )

    @property
    def headers(self) -> Mapping[str, str]:
        headers = self._headers
        if headers is None:
            built: Any
            if self.environ is not None:
                built = EnvironHeaders(self.environ)
            else:
                built = Headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in self._raw_headers or ()])
            self._headers = headers = built
        return headers

    @property
    def query(self) -> dict[str, str]:
        """Query parameters, the first value of each."""
        out: dict[str, str] = {}
        for key, value in parse_qsl(self.query_string, keep_blank_values=True):
            out.setdefault(key, value)
        return out

    @property
    def body(self) -> Mapping[str, Any]:
        return self._peek.fields if self._peek is not None else {}

    @property
    def prompt_bytes(self) -> int:
        return self._peek.prompt_bytes if self._peek is not None else 0

    @property
    def user(self) -> str | None:
        """The authenticated user the server or an auth middleware put on the request."""
        if self.environ is not None:
            remote = self.environ.get("REMOTE_USER")
            return remote if isinstance(remote, str) and remote else None
        if self.scope is not None and "user" in self.scope:
            user: Any = self.scope["user"]  # type: ignore[typeddict-item]
            if getattr(user, "is_authenticated", True) is False:
                return None
            for attr in ("identity", "username", "display_name"):
                value = getattr(user, attr, None)
                if isinstance(value, str) and value:
                    return value
            if isinstance(user, str) and user:
                return user
        return None

    def header_bytes(self, name: bytes) -> bytes | None:
        """A raw ASGI header by lower-case name, without building the mapping."""
        for key, value in self._raw_headers or ():
            if key == name:
                return bytes(value)
        return None

    def start_peek(self) -> BodyPeek | None:
        """Begin peeking at the body if it is JSON; returns the peek to feed, or None."""
        if self.method not in ("POST", "PUT", "PATCH"):
            return None
        if self.environ is not None:
            content_type = self.environ.get("CONTENT_TYPE", "")
        else:
            raw = self.header_bytes(b"content-type")
            content_type = raw.decode("latin-1") if raw else ""
        media = content_type.split(";", 1)[0].strip().lower()
        if media and media != "application/json" and not media.endswith("+json") and media != "text/plain":
            return None
        self._peek = BodyPeek()
        return self._peek
