"""Settings from the environment, for deployments that configure by variables.

OpenTelemetry's SDK (``OTEL_SDK_DISABLED``, ``OTEL_PYTHON_*_EXCLUDED_URLS``) and
prometheus-fastapi-instrumentator (``ENABLE_METRICS``) let operators switch
instrumentation and its shape without a code change; these do the same for ours:

=============================  ==============================================================
``LLM_METRICS_ENABLED``        ``false`` / ``0`` / ``no`` / ``off``: the middleware meters
                               nothing and passes every request straight to the app
                               (``metrics_path`` still answers, so scrapes keep working)
``LLM_METRICS_DIMENSIONS``     comma-separated dimension names, used when ``dimensions=`` is
                               not given: ``"API ID, User ID, Model"``; ``name=value`` is a
                               fixed custom dimension (``"User ID, region=eu"``)
``LLM_METRICS_NAMESPACE``      the namespace when ``namespace=`` is not given
``LLM_METRICS_EXCLUDE_PATHS``  comma-separated, when ``exclude_paths=`` is not given: paths
                               never metered; ``/prefix`` entries are path prefixes, any
                               other entry a regular expression (``OTEL_PYTHON_*_EXCLUDED_URLS``
                               style): ``"/health, /internal, ^/admin/.*/usage$"``
``LLM_METRICS_INCLUDE_PATHS``  the same for ``include_paths=`` (more paths to read)
``LLM_METRICS_AUTH``           credentials for ``/metrics`` (see ``_exporters/endpoint.py``)
``LLM_METRICS_NO_EXTENSIONS``  ``true``: the pure-Python code where a compiled twin exists
                               (read at import, see ``_core/extensions.py``; checked here)
=============================  ==============================================================

Arguments given in code win over the environment, as in OpenTelemetry. Variables are read
when the middleware is built, never per request. A value we cannot read is a
``ValueError`` at start-up that names the variable, not a silent default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .._core.extensions import FALSE_WORDS, NO_EXTENSIONS_VARIABLE, TRUE_WORDS
from .._core.extensions import flag as on_off
from .._metering.dimensions import Dimension
from .._metering.paths import PathPattern, PathPatterns

ENABLED = "LLM_METRICS_ENABLED"
DIMENSIONS = "LLM_METRICS_DIMENSIONS"
NAMESPACE = "LLM_METRICS_NAMESPACE"
EXCLUDE_PATHS = "LLM_METRICS_EXCLUDE_PATHS"
INCLUDE_PATHS = "LLM_METRICS_INCLUDE_PATHS"
DEFAULT_NAMESPACE = "llm"

_TRUE = TRUE_WORDS
_FALSE = FALSE_WORDS


@dataclass(frozen=True)
class Settings:
    enabled: bool
    dimensions: Sequence[Dimension | str] | None
    namespace: str
    include_paths: PathPatterns | None = None
    exclude_paths: PathPatterns | None = None


def read(
    *,
    dimensions: Sequence[Dimension | str] | None,
    namespace: str | None,
    include_paths: PathPatterns | None = None,
    exclude_paths: PathPatterns | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """The options as given, with what was not given taken from the environment."""
    env = os.environ if environ is None else environ
    flag = env.get(ENABLED, "").strip().lower()
    if flag and flag not in _TRUE + _FALSE:
        raise ValueError(f"{ENABLED}={env[ENABLED]!r}: use true or false")
    if on_off(env.get(NO_EXTENSIONS_VARIABLE, "")) is None:
        raise ValueError(f"{NO_EXTENSIONS_VARIABLE}={env[NO_EXTENSIONS_VARIABLE]!r}: use true or false")
    if dimensions is None and env.get(DIMENSIONS, "").strip():
        dimensions = _dimensions(env[DIMENSIONS])
    if namespace is None:
        namespace = env.get(NAMESPACE, "").strip() or DEFAULT_NAMESPACE
    if include_paths is None and env.get(INCLUDE_PATHS, "").strip():
        include_paths = path_patterns(INCLUDE_PATHS, env[INCLUDE_PATHS])
    if exclude_paths is None and env.get(EXCLUDE_PATHS, "").strip():
        exclude_paths = path_patterns(EXCLUDE_PATHS, env[EXCLUDE_PATHS])
    return Settings(enabled=flag not in _FALSE, dimensions=dimensions, namespace=namespace,
                    include_paths=include_paths, exclude_paths=exclude_paths)


def path_patterns(variable: str, value: str) -> list[PathPattern]:
    """``"/health, ^/admin/.*$"`` -> ``["/health", re.compile("^/admin/.*$")]``."""
    out: list[PathPattern] = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("/"):
            out.append(item)
            continue
        try:
            out.append(re.compile(item))
        except re.error as error:
            raise ValueError(f"{variable}: {item!r} is neither a path prefix starting with '/' nor a regular "
                             f"expression ({error})") from None
    return out


def _dimensions(value: str) -> list[Dimension | str]:
    out: list[Dimension | str] = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        name, equals, fixed = item.partition("=")
        if equals:
            if not name.strip() or not fixed.strip():
                raise ValueError(f"{DIMENSIONS}: {item!r} must be 'name=value', both non-empty")
            out.append(Dimension(name.strip(), fixed.strip()))
        else:
            out.append(name)
    if not out:
        raise ValueError(f"{DIMENSIONS}={value!r} names no dimension; unset it for the defaults")
    return out
