"""APIcast-style metric rules: count a usage field only for the calls a condition holds for.

3scale's APIcast policies increment a metric by rule: each rule names a metric, an
increment and a condition on the call. :class:`MetricRule` is that rule for our calls; the
3scale exporter reports each rule's metric to 3scale, the Prometheus exporter keeps a
counter per rule::

    MetricRule("gpt4o_tokens", usage="total_tokens", model=re.compile(r"gpt-4o"))
    MetricRule("failed_calls", usage="calls", status="5xx")
    MetricRule("beta_prompt_tokens", usage="prompt_tokens", headers={"x-beta": "1"})

Every condition given must hold (they are and-ed); a rule with none holds for every call.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

from .._metering.call import CallRecord

logger = logging.getLogger("llm_metrics_middleware")

#: What a rule can count: a field of the call's usage, or ``calls`` (1 per call).
USAGE_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cache_write_tokens",
    "calls",
)

_STATUS_CLASS = re.compile(r"^[1-5]xx$")
_METRIC_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

StatusCondition = Union[int, str, Collection[int]]
TextCondition = Union[str, "re.Pattern[str]"]


def usage_amount(call: CallRecord, usage_field: str) -> int:
    """The value of ``usage_field`` for one call (0 when the call has no usage)."""
    if usage_field == "calls":
        return 1
    usage = call.usage
    if usage is None:
        return 0
    value = getattr(usage, usage_field)
    return value if isinstance(value, int) else 0


def check_usage_field(name: str, value: object) -> str:
    if value not in USAGE_FIELDS:
        raise ValueError(f"{name}={value!r} is not a usage field; use one of {', '.join(USAGE_FIELDS)}")
    assert isinstance(value, str)
    return value


def _text_matches(condition: TextCondition, text: str | None, *, prefix: bool) -> bool:
    if text is None:
        return False
    if isinstance(condition, re.Pattern):
        return condition.search(text) is not None
    return text.startswith(condition) if prefix else text == condition


@dataclass(frozen=True)
class MetricRule:
    """Add the call's ``usage`` field to ``metric`` when every condition given holds.

    - ``usage``: ``prompt_tokens``, ``completion_tokens``, ``total_tokens`` (default),
      ``cached_tokens``, ``reasoning_tokens``, ``cache_write_tokens``, or ``calls`` (1).
    - ``status``: an HTTP status (``200``), a class (``"2xx"``), or a collection of them.
    - ``path``: a prefix of the request path, or a compiled regular expression searched in it.
    - ``headers``: request header name -> exact value, compiled regular expression, or
      None (the header is present); names are case-insensitive.
    - ``model``: the call's model (the response's, else the request's), exact or a
      prefix of it (``"gpt-4o"`` matches ``gpt-4o-2024-08-06``), or a compiled regular
      expression.
    - ``when``: a callable of the :class:`CallRecord` returning bool (an exception in it
      counts as False, and is logged once).
    """

    metric: str
    usage: str = "total_tokens"
    status: StatusCondition | None = None
    path: TextCondition | None = None
    headers: Mapping[str, TextCondition | None] | None = None
    model: TextCondition | None = None
    when: Callable[[CallRecord], bool] | None = None
    description: str | None = None
    _statuses: frozenset[int] = field(default=frozenset(), init=False, repr=False, compare=False)
    _classes: frozenset[int] = field(default=frozenset(), init=False, repr=False, compare=False)
    _failed: list[bool] = field(default_factory=lambda: [False], init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not _METRIC_NAME.match(self.metric):
            raise ValueError(
                f"MetricRule metric {self.metric!r} must be a name of letters, digits, '_', '.' or '-' such as 'gpt4_tokens'"
            )
        check_usage_field("MetricRule usage", self.usage)
        statuses: set[int] = set()
        classes: set[int] = set()
        if self.status is not None:
            items = [self.status] if isinstance(self.status, (int, str)) else list(self.status)
            for item in items:
                if isinstance(item, str) and _STATUS_CLASS.match(item):
                    classes.add(int(item[0]))
                elif isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
                    statuses.add(item)
                else:
                    raise ValueError(f"MetricRule status {item!r} is not an HTTP status (200) or a class ('2xx')")
        object.__setattr__(self, "_statuses", frozenset(statuses))
        object.__setattr__(self, "_classes", frozenset(classes))
        for name in ("path", "model"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, re.Pattern)):
                raise TypeError(f"MetricRule {name}= takes a str or a compiled re.Pattern, got {value!r}")
        if self.headers is not None:
            if not isinstance(self.headers, Mapping):
                raise TypeError(f"MetricRule headers= takes a mapping of header name to value, got {self.headers!r}")
            object.__setattr__(self, "headers", {str(k).lower(): v for k, v in self.headers.items()})
        if self.when is not None and not callable(self.when):
            raise TypeError(f"MetricRule when= takes a callable of the call, got {self.when!r}")

    def matches(self, call: CallRecord) -> bool:
        if self.status is not None and call.status not in self._statuses and call.status // 100 not in self._classes:
            return False
        request = call.request
        if self.path is not None and not _text_matches(self.path, request.path if request else None, prefix=True):
            return False
        if self.headers:
            if request is None:
                return False
            for name, wanted in self.headers.items():
                value = request.headers.get(name)
                if value is None:
                    return False
                if wanted is not None and not _text_matches(wanted, value, prefix=False):
                    return False
        if self.model is not None and not _text_matches(
            self.model, call.response_model or call.request_model, prefix=True
        ):
            return False
        if self.when is not None:
            try:
                return bool(self.when(call))
            except Exception:
                if not self._failed[0]:
                    self._failed[0] = True
                    logger.exception("llm-metrics: MetricRule %r: when= raised; the rule is taken as not holding", self.metric)
                return False
        return True

    def amount(self, call: CallRecord) -> int:
        """What this rule adds for ``call``: 0 unless its condition holds."""
        return usage_amount(call, self.usage) if self.matches(call) else 0


def check_rules(rules: Sequence[MetricRule] | None) -> tuple[MetricRule, ...]:
    if rules is None:
        return ()
    if isinstance(rules, MetricRule):
        rules = [rules]
    out = tuple(rules)
    for rule in out:
        if not isinstance(rule, MetricRule):
            raise TypeError(f"rules= takes a list of MetricRule(...), got {rule!r}")
    return out
