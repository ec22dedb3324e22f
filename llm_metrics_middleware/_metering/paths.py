"""Which request paths are metered: the known LLM paths, plus ``include_paths=``, minus ``exclude_paths=``.

A usage-shaped JSON object on any other path is not an LLM call: a ``GET /me/usage``
endpoint that reports a user's consumption must never be counted as tokens. So only the
providers' own operations (see :mod:`.._core.providers`) are read by default, and an app
that answers with a provider's body on a path of its own says so with ``include_paths=``.
``include_paths=["/"]`` brings back the old behaviour of reading every JSON and SSE
response for usage.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Union

#: One pattern: a path prefix (``"/api/llm"``, matched on segment boundaries) or a compiled
#: regular expression (``re.compile(r"^/agents/[^/]+/run$")``, matched with ``search``).
PathPattern = Union[str, "re.Pattern[str]"]
PathPatterns = Union[PathPattern, Sequence[PathPattern]]


def _compile(option: str, patterns: PathPatterns | None) -> tuple[tuple[str, ...], tuple[re.Pattern[str], ...]]:
    if patterns is None:
        return (), ()
    items: Sequence[PathPattern] = (
        [patterns] if isinstance(patterns, (str, re.Pattern)) or not isinstance(patterns, Sequence) else patterns
    )
    prefixes: list[str] = []
    regexes: list[re.Pattern[str]] = []
    for item in items:
        if isinstance(item, re.Pattern):
            regexes.append(item)
        elif isinstance(item, str) and item.startswith("/"):
            prefixes.append(item.rstrip("/"))
        else:
            raise ValueError(
                f"{option}= takes path prefixes starting with '/' or compiled regular expressions "
                f"(re.compile(...)), got {item!r}"
            )
    return tuple(prefixes), tuple(regexes)


def _matches(path: str, prefixes: tuple[str, ...], regexes: tuple[re.Pattern[str], ...]) -> bool:
    for prefix in prefixes:
        # "/api" matches "/api" and "/api/x", not "/apix"; "/" (stored as "") matches all.
        if not prefix or path == prefix or path.startswith(prefix + "/"):
            return True
    return any(regex.search(path) for regex in regexes)


class PathFilter:
    """The ``include_paths=`` / ``exclude_paths=`` options, checked once per request."""

    __slots__ = ("_include", "_exclude")

    def __init__(self, include_paths: PathPatterns | None = None, exclude_paths: PathPatterns | None = None) -> None:
        self._include = _compile("include_paths", include_paths)
        self._exclude = _compile("exclude_paths", exclude_paths)

    def meters(self, path: str, llm_path: bool) -> bool:
        """Whether a response to ``path`` is read; ``llm_path``: a known provider operation."""
        if (self._exclude[0] or self._exclude[1]) and _matches(path, *self._exclude):
            return False
        return llm_path or _matches(path, *self._include)
