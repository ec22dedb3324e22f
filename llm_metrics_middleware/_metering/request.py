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

_new = object.__new__


class RequestView:
    """What a dimension callable gets: ``method``, ``path``, ``headers`` and a bit more.

    ``headers`` is a case-insensitive mapping of ``str`` to ``str``. ``body`` holds the
    fields of the JSON request body that the middleware peeked at (``model``, ``stream``,
    ``user``, ``metadata.user_id``...), empty for other bodies. ``scope`` (ASGI) or
    ``environ`` (WSGI) give the raw request for anything else.
    """

    __slots__ = (
        "method", "path", "query_string", "root_path", "scope", "environ", "_headers", "_peek", "_raw_headers", "limits",
        "_query", "_body",
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
        self._query: dict[str, str] | None = None
        self._body: Mapping[str, Any] | None = None
        #: The token limits that apply to this request, with its keys (set by the limit check).
        self.limits: Any = None

    @classmethod
    def from_scope(cls, scope: HTTPScope) -> RequestView:
        # Slots filled directly: the keyword call to __init__ is a third of this on the
        # request path, and every ASGI request builds one.
        view = _new(cls)
        qs = scope.get("query_string", b"")
        view.method = scope.get("method", "GET")
        view.path = scope.get("path", "/")
        view.query_string = qs.decode("latin-1") if qs else ""
        view.root_path = scope.get("root_path", "") or ""
        view.scope = scope
        view.environ = None
        view._raw_headers = scope.get("headers", ())
        view._headers = None
        view._peek = None
        view._query = None
        view._body = None
        view.limits = None
        return view

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
        """Query parameters, the first value of each (parsed once per request: do not change
        the dict returned)."""
        out = self._query
        if out is None:
            out = {}
            if self.query_string:
                for key, value in parse_qsl(self.query_string, keep_blank_values=True):
                    out.setdefault(key, value)
            self._query = out
        return out

    @property
    def body(self) -> Mapping[str, Any]:
        body = self._body
        if body is None:
            peek = self._peek
            if peek is None:
                return {}
            body = peek.fields
            if peek.final:  # read three times a call or more: kept once it cannot change
                self._body = body
        return body

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
                return value if value.__class__ is bytes else bytes(value)
        return None

    def start_peek(self) -> BodyPeek | None:
        """Begin peeking at the body if it is JSON; returns the peek to feed, or None."""
        if self.method not in _BODY_METHODS:
            return None
        content_type: str | bytes
        if self.environ is not None:
            content_type = self.environ.get("CONTENT_TYPE", "")
        else:
            content_type = b""
            for key, value in self._raw_headers or ():
                if key == b"content-type":
                    content_type = value if value.__class__ is bytes else bytes(value)  # bytes() is a costly no-op
                    break
        json_like = _JSON_LIKE.get(content_type)
        if json_like is None:
            json_like = _json_like(content_type)
        if not json_like:
            return None
        self._peek = BodyPeek()
        return self._peek


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
#: Content-Type header value (str from WSGI, bytes from ASGI) -> whether the body may be JSON.
#: Clients choose the header, so the cache is bounded; a typical app sees one or two values.
_JSON_LIKE: dict[str | bytes, bool] = {}
_JSON_LIKE_SIZE = 64


def _json_like(content_type: str | bytes) -> bool:
    text = content_type.decode("latin-1") if isinstance(content_type, bytes) else content_type
    media = text.split(";", 1)[0].strip().lower()
    json_like = not media or media == "application/json" or media.endswith("+json") or media == "text/plain"
    if len(_JSON_LIKE) >= _JSON_LIKE_SIZE:
        _JSON_LIKE.clear()
    _JSON_LIKE[content_type] = json_like
    return json_like
