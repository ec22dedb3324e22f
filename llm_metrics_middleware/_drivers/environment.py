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
``LLM_METRICS_AUTH``           credentials for ``/metrics`` (see ``_exporters/endpoint.py``)
=============================  ==============================================================

Arguments given in code win over the environment, as in OpenTelemetry. Variables are read
when the middleware is built, never per request. A value we cannot read is a
``ValueError`` at start-up that names the variable, not a silent default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .._metering.dimensions import Dimension

ENABLED = "LLM_METRICS_ENABLED"
DIMENSIONS = "LLM_METRICS_DIMENSIONS"
NAMESPACE = "LLM_METRICS_NAMESPACE"
DEFAULT_NAMESPACE = "llm"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Settings:
    enabled: bool
    dimensions: Sequence[Dimension | str] | None
    namespace: str


def read(
    *,
    dimensions: Sequence[Dimension | str] | None,
    namespace: str | None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """The options as given, with what was not given taken from the environment."""
    env = os.environ if environ is None else environ
    flag = env.get(ENABLED, "").strip().lower()
    if flag and flag not in _TRUE + _FALSE:
        raise ValueError(f"{ENABLED}={env[ENABLED]!r}: use true or false")
    if dimensions is None and env.get(DIMENSIONS, "").strip():
        dimensions = _dimensions(env[DIMENSIONS])
    if namespace is None:
        namespace = env.get(NAMESPACE, "").strip() or DEFAULT_NAMESPACE
    return Settings(enabled=flag not in _FALSE, dimensions=dimensions, namespace=namespace)


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
