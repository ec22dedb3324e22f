"""Names built from what users configure: label names, metric and instrument prefixes.

One function, :func:`safe_name`, turns a dimension name or a namespace into a name a
metrics backend accepts; each backend's grammar is one :class:`NameRule`. They used to be
three hand-written functions that differed in small ways (which characters survive, what
a leading digit gets), and those differences are now the rules' fields, side by side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class NameRule:
    """One backend's name grammar, and what to say when a name has nothing usable."""

    #: Characters kept besides ASCII letters and digits; every run of others becomes ``_``.
    keep: str
    #: Characters stripped from both ends after the replacement.
    strip: str
    #: Put before a name that starts with a digit (no backend accepts one).
    digit_prefix: str
    #: What the name is for, in the error message ("a Prometheus name").
    target: str
    #: What the input is, in the error message ("namespace").
    subject: str
    #: A name to suggest instead.
    example: str
    lower: bool = False
    max_length: int | None = None
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_pattern", re.compile(f"[^0-9a-zA-Z{re.escape(self.keep)}]+"))


#: Prometheus label names, also used as OpenTelemetry attribute keys: ``"API ID"`` -> ``api_id``.
LABEL = NameRule(
    keep="", strip="_", digit_prefix="_", target="a label name", subject="dimension name", example="team", lower=True
)
#: Prometheus metric name prefixes (``[a-zA-Z_:][a-zA-Z0-9_:]*``): ``"LLM gateway"`` -> ``LLM_gateway``.
PROMETHEUS = NameRule(
    keep="_:", strip="_", digit_prefix="_", target="a Prometheus name", subject="namespace", example="llm"
)
#: OpenTelemetry instrument name prefixes (``[A-Za-z][A-Za-z0-9_./-]{0,254}``, leaving room
#: for the instrument's own part): ``"2fast"`` -> ``ns_2fast``.
OTEL = NameRule(
    keep="_./-",
    strip="_./-",
    digit_prefix="ns_",
    target="an OpenTelemetry instrument name",
    subject="namespace",
    example="llm",
    max_length=200,
)


def safe_name(text: str, rule: NameRule) -> str:
    """``text`` as a name that ``rule``'s backend accepts; a ``ValueError`` if nothing is left."""
    name = rule._pattern.sub("_", text).strip(rule.strip)
    if rule.lower:
        name = name.lower()
    if not name:
        raise ValueError(
            f"{rule.subject} {text!r} has no letters or digits to make {rule.target} of; "
            f"give it a name such as {rule.example!r}"
        )
    if name[0].isdigit():
        name = rule.digit_prefix + name
    return name if rule.max_length is None else name[: rule.max_length]
