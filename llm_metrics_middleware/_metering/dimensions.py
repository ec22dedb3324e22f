"""Dimensions: what every token data point is split by, and where each value comes from.

The seven default names are Azure API Management's ``llm-emit-token-metric`` defaults.
Their sources (see the README's dimension reference for the trust model of each):

=================  ==========================================================================
API ID             the mount point plus the first path segment (``/v1``, ``/openai``...)
Operation ID       the LLM operation (``chat.completions``, ``messages``...), else the path
Product ID         the ``X-Product-Id`` request header
User ID            the authenticated user (ASGI ``scope["user"]``, WSGI ``REMOTE_USER``),
                   else the request body's ``user`` (OpenAI) or ``metadata.user_id``
                   (Anthropic), else the ``X-User-Id`` header
Subscription ID    a keyed hash (HMAC-SHA256, 16 hex digits) of the request's API key;
                   never the key itself
Location           ``location=`` of the middleware, else ``LLM_METRICS_LOCATION``, else
                   ``REGION_NAME`` / ``WEBSITE_REGION`` / ``AWS_REGION`` from the environment
Gateway ID         the host name of the machine (``socket.gethostname()``)
=================  ==========================================================================

``"Model"`` and ``"Provider"`` are built in as well and do not count as custom dimensions.
A value nobody supplied is exported as ``"unknown"``.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

from .call import ErrorKind, Schema
from .names import LABEL, safe_name
from .request import RequestView
from .subscription import SubscriptionHasher

logger = logging.getLogger("llm_metrics_middleware")

DEFAULT_NAMES = (
    "API ID",
    "Operation ID",
    "Product ID",
    "User ID",
    "Subscription ID",
    "Location",
    "Gateway ID",
)
#: Dimensions the middleware knows besides the seven defaults; they are not "custom".
BUILTIN_NAMES = ("Model", "Provider")
MAX_CUSTOM = 10
#: Longest exported label value; longer ones are cut (and end with "…").
MAX_VALUE_LENGTH = 128
UNKNOWN = "unknown"
OVERFLOW = "__overflow__"

ValueSource = Union[str, Callable[[RequestView], str | None], None]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Lone surrogates ("\\ud800" in a JSON body decodes to one) cannot be encoded as UTF-8: one
# in a label value makes every later Prometheus scrape fail, and in multiprocess mode the
# value is stored in the shared files, so the failure outlives the worker that wrote it.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def safe_text(value: str | None) -> str | None:
    """``value`` with its lone surrogates replaced by U+FFFD: always encodable as UTF-8.

    For the strings that reach exporters outside the dimensions (request and response
    model, provider); :func:`sanitize` applies it to every dimension value.
    """
    if not isinstance(value, str):
        return None
    if value.isascii():
        return value
    return _SURROGATE.sub(REPLACEMENT, value)


@dataclass(frozen=True)
class Dimension:
    """One dimension of every token metric.

    ``Dimension("User ID")`` uses a default name's documented source.
    ``Dimension("User ID", lambda r: r.headers.get("x-client"))`` overrides it.
    ``Dimension("tier", "gold")`` is a custom dimension with a fixed value, and
    ``Dimension("team", lambda r: r.headers.get("x-team"))`` one read from each request.
    """

    name: str
    value: ValueSource = None


def label_name(name: str) -> str:
    """``"API ID"`` -> ``api_id``: the Prometheus label (and OpenTelemetry-safe) form."""
    return safe_name(name, LABEL)


def sanitize(value: object) -> str:
    """A label value from untrusted input: a short, printable string."""
    if value is None:
        return UNKNOWN
    text = value if isinstance(value, str) else str(value)
    if not text:
        return UNKNOWN
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
    if not text.isascii() and _SURROGATE.search(text):
        text = _SURROGATE.sub(REPLACEMENT, text)
    if len(text) > MAX_VALUE_LENGTH:
        text = text[: MAX_VALUE_LENGTH - 1] + "…"
    return text or UNKNOWN


class CallContext:
    """What the middleware learnt about the call, for the built-in sources.

    A plain slotted class, not a dataclass, so that :class:`~.metered_call.MeteredCall`
    can be one: a finishing call sets its own three fields and is handed to the sources
    itself, instead of building a context object per call.
    """

    __slots__ = ("provider", "operation", "model")

    def __init__(self, provider: str | None = None, operation: str | None = None, model: str | None = None) -> None:
        self.provider = provider
        self.operation = operation
        self.model = model

    def __repr__(self) -> str:
        return f"CallContext(provider={self.provider!r}, operation={self.operation!r}, model={self.model!r})"


Source = Callable[[RequestView, CallContext], str | None]



def _api_id(request: RequestView, ctx: CallContext) -> str:
    root_path = request.root_path
    path = request.path
    key = (root_path, path)
    value = _API_IDS.get(key)
    if value is None:
        value = _api_id_of(root_path, path)
        if len(_API_IDS) >= _API_IDS_SIZE:  # clients choose paths: bounded
            _API_IDS.clear()
        _API_IDS[key] = value
    return value


#: (root_path, path) -> API ID, so each path is cut once, not on every request.
_API_IDS: dict[tuple[str, str], str] = {}
_API_IDS_SIZE = 1024


def _api_id_of(root_path: str, path: str) -> str:
    root = root_path.rstrip("/")
    # ASGI's path includes root_path (a mount prefix); WSGI's PATH_INFO excludes SCRIPT_NAME.
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    end = path.find("/", 1)
    first = path if end < 0 else path[:end]
    return (root + first) or "/"


def _operation_id(request: RequestView, ctx: CallContext) -> str:
    return ctx.operation or request.path


def _product_id(request: RequestView, ctx: CallContext) -> str | None:
    return request.headers.get("X-Product-Id")


def _user_id(request: RequestView, ctx: CallContext) -> str | None:
    scope = request.scope
    if scope is None or "user" in scope:  # else no authenticated user: RequestView.user is None
        user = request.user
        if user:
            return user
    body = request._body  # kept by the view once final: the property only when not
    if body is None:
        body = request.body
    value = body.get("user")
    if isinstance(value, str) and value:
        return value
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        value = metadata.get("user_id")
        if isinstance(value, str) and value:
            return value
    return request.headers.get("X-User-Id")


def default_location() -> str | None:
    for var in ("LLM_METRICS_LOCATION", "REGION_NAME", "WEBSITE_REGION", "AWS_REGION", "GOOGLE_CLOUD_REGION"):
        value = os.environ.get(var)
        if value:
            return value
    return None


#: Label values seen to need no sanitising (a pure property of the string, so shared by
#: every schema); emptied when full.
_CLEAN: set[str] = set()
_CLEAN_SIZE = 4096


@dataclass(frozen=True)
class BoundDimension:
    name: str
    label: str
    source: Source
    #: For a built-in source that only reads the call context (Model, Provider, Operation
    #: ID): the same as a Python expression of ``request`` and ``ctx``, which
    #: :func:`_compile_values` writes in place of the call.
    inline: str | None = None


#: The built-in sources that :func:`_compile_values` inlines, as expressions (they cannot
#: raise: ``ctx`` is a CallContext, ``request.path`` always set).
_INLINE = {"Operation ID": "ctx.operation or request.path", "Model": "ctx.model", "Provider": "ctx.provider"}


def _checked(value: object) -> str:
    """A value not known clean: kept (and remembered) when it needs no sanitising
    (isprintable() is False for every character _CONTROL removes), else sanitised."""
    if value.__class__ is str and 0 < len(value) <= MAX_VALUE_LENGTH and value.isprintable():
        if len(_CLEAN) >= _CLEAN_SIZE:  # values come from requests: bounded
            _CLEAN.clear()
        _CLEAN.add(value)
        return value
    return sanitize(value)


def _compile_values(schema: BoundSchema) -> Callable[[RequestView, CallContext, Callable[[ErrorKind], None] | None], tuple[str, ...]]:
    """The schema's ``values`` as one function written for its dimensions, as dataclasses
    writes ``__init__``: each source called (a context-only built-in's expression inline,
    the API ID's cache read first) and its value checked, without a loop, a list or a call
    per built-in. A source that raises gives ``None`` ("unknown"), counted and logged once
    by ``_failed_source``; a value seen clean already (the same few models, paths, users:
    :data:`_CLEAN`) skips the checks."""
    namespace: dict[str, object] = {
        "clean": _CLEAN, "checked": _checked, "failed": schema._failed_source, "api_ids": _API_IDS, "api_id": _api_id,
    }
    lines = ["def values(request, ctx, count_error=None):"]
    for i, dim in enumerate(schema.dimensions):
        if dim.inline is not None:
            lines.append(f"    v{i} = {dim.inline}")
        elif dim.source is _api_id:
            # Its cache read in place of the call (the source runs for a path not met yet);
            # neither raises: root_path and path are always str.
            lines.append(f"    v{i} = api_ids.get((request.root_path, request.path)) or api_id(request, ctx)")
        else:
            namespace[f"s{i}"] = dim.source
            lines += [
                "    try:",
                f"        v{i} = s{i}(request, ctx)",
                "    except Exception:",
                f"        failed(s{i}, count_error)",
                f"        v{i} = None",
            ]
        lines += [f"    if v{i}.__class__ is not str or v{i} not in clean:", f"        v{i} = checked(v{i})"]
    lines.append(f"    return ({''.join(f'v{i}, ' for i in range(len(schema.dimensions)))})")
    exec("\n".join(lines), namespace)  # noqa: S102 - our own text, from the dimension indices
    return namespace["values"]  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class BoundSchema(Schema):
    """The :class:`Schema` exporters see, with each dimension's source: the middleware's copy."""

    dimensions: tuple[BoundDimension, ...]
    #: Dimensions whose failure was logged (once each, not per request).
    _failed: set[str] = field(default_factory=set, compare=False, repr=False)
    #: What :meth:`values` does, written for these dimensions (see :func:`_compile_values`).
    values_of: Callable[[RequestView, CallContext, Callable[[ErrorKind], None] | None], tuple[str, ...]] = field(
        default=lambda request, ctx, count_error=None: (), compare=False, repr=False
    )

    def __post_init__(self) -> None:
        Schema.__post_init__(self)
        object.__setattr__(self, "values_of", _compile_values(self))

    def values(
        self, request: RequestView, ctx: CallContext, count_error: Callable[[ErrorKind], None] | None = None
    ) -> tuple[str, ...]:
        """The dimension values of one call. A value callable that raises exports
        ``"unknown"``, is counted as ``kind="dimension"`` and logged once per dimension
        (with its traceback), not once per request. The request path calls
        :attr:`values_of` itself (the same function, one call fewer)."""
        return self.values_of(request, ctx, count_error)

    def _failed_source(self, source: Source, count_error: Callable[[ErrorKind], None] | None) -> None:
        name = next(dim.name for dim in self.dimensions if dim.source is source)
        if name not in self._failed:
            self._failed.add(name)
            logger.warning("dimension %r failed; exported as %r (logged once, counted in "
                           "llm_metering_errors_total{kind=\"dimension\"})", name, UNKNOWN, exc_info=True)
        if count_error is not None:
            count_error("dimension")

    def override(self, values: tuple[str, ...], overrides: Mapping[str, str]) -> tuple[str, ...]:
        """``values`` with the dimensions ``overrides`` names (by label) replaced."""
        out = list(values)
        for i, dim in enumerate(self.dimensions):
            value = overrides.get(dim.label)
            if value is not None:
                out[i] = sanitize(value)
        return tuple(out)


def _user_source(fn: Callable[[RequestView], str | None]) -> Source:
    def source(request: RequestView, ctx: CallContext) -> str | None:
        return fn(request)

    return source


def _env_location(value: str | None) -> Source:
    def source(request: RequestView, ctx: CallContext) -> str | None:
        return value

    return source


def _fixed(value: str) -> Source:
    def source(request: RequestView, ctx: CallContext) -> str:
        return value

    return source


def build_schema(
    namespace: str,
    dimensions: Sequence[Dimension | str] | None,
    *,
    location: str | None = None,
    gateway_id: str | None = None,
    subscription_secret: bytes | str | None = None,
) -> BoundSchema:
    """Check the configured dimensions and bind each to its source; errors say what to fix."""
    if dimensions is None:
        dimensions = [*DEFAULT_NAMES, "Model"]
    if isinstance(dimensions, (str, Dimension)):
        raise TypeError("dimensions= takes a list, e.g. dimensions=['User ID', Dimension('tier', 'gold')]")
    builtin: dict[str, Source] = {
        "API ID": _api_id,
        "Operation ID": _operation_id,
        "Product ID": _product_id,
        "User ID": _user_id,
        "Subscription ID": SubscriptionHasher(subscription_secret),
        "Location": _fixed(location) if location else _env_location(default_location()),
        "Gateway ID": _fixed(gateway_id or socket.gethostname()),
        "Model": lambda r, c: c.model,
        "Provider": lambda r, c: c.provider,
    }
    bound: list[BoundDimension] = []
    seen_labels: dict[str, str] = {}
    custom = 0
    for item in dimensions:
        dim = Dimension(item) if isinstance(item, str) else item
        if not isinstance(dim, Dimension):
            raise TypeError(f"dimensions= items are Dimension or str, got {item!r}")
        if not isinstance(dim.name, str) or not dim.name.strip():
            raise ValueError(f"a dimension needs a non-empty name, got {dim.name!r}")
        is_builtin = dim.name in builtin
        if not is_builtin:
            custom += 1
            if custom > MAX_CUSTOM:
                raise ValueError(
                    f"at most {MAX_CUSTOM} custom dimensions are allowed (as in Azure API "
                    f"Management's llm-emit-token-metric); {dim.name!r} is the {custom}th. "
                    "Drop one or fold two into one value."
                )
        if dim.value is None:
            if not is_builtin:
                raise ValueError(
                    f"custom dimension {dim.name!r} needs a value: a str or a callable of the "
                    f"request view. Only the default names {', '.join(DEFAULT_NAMES + BUILTIN_NAMES)} "
                    "may be used without one."
                )
            source = builtin[dim.name]
        elif isinstance(dim.value, str):
            source = _fixed(dim.value)
        elif callable(dim.value):
            source = _user_source(dim.value)
        else:
            raise TypeError(
                f"Dimension({dim.name!r}) value must be None, a str or a callable taking the "
                f"request view, got {dim.value!r}"
            )
        label = label_name(dim.name)
        if label in seen_labels:
            raise ValueError(
                f"dimensions {seen_labels[label]!r} and {dim.name!r} both become label {label!r}; rename one"
            )
        seen_labels[label] = dim.name
        bound.append(BoundDimension(dim.name, label, source, _INLINE.get(dim.name) if dim.value is None else None))
    return BoundSchema(
        namespace, tuple(d.name for d in bound), tuple(d.label for d in bound), dimensions=tuple(bound)
    )
