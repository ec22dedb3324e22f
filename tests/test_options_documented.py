"""The README's Options table and the middlewares' signature name the same options.

The option list lives in ``MiddlewareBase.__init__``; the README documents it. This test is
what keeps the two from drifting (a new option without its README row fails here).
"""

from __future__ import annotations

import inspect
import pathlib
import re

from llm_metrics_middleware import LLMMetricsMiddleware, LLMMetricsWSGIMiddleware
from llm_metrics_middleware._drivers.base import MiddlewareBase
from llm_metrics_middleware._metering.metering import Metering

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _readme_options() -> list[str]:
    section = README.read_text().split("## Options", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows, "the README has no Options table"
    names: list[str] = []
    for row in rows:
        names.extend(re.findall(r"`([a-z_]+)`", row.split("|")[1]))
    return names


def _keywords(fn: object) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]  # type: ignore[arg-type]


def test_every_option_has_its_readme_row_and_every_row_an_option() -> None:
    assert sorted(_readme_options()) == sorted(_keywords(MiddlewareBase.__init__))


def test_both_middlewares_take_the_base_options_unchanged() -> None:
    for cls in (LLMMetricsMiddleware, LLMMetricsWSGIMiddleware):
        assert cls.__init__ is MiddlewareBase.__init__


def test_the_metering_options_are_middleware_options() -> None:
    # Metering takes a subset (the rest are the driver's or the limiter's); a Metering
    # option the middlewares do not take could not be set by a user.
    assert set(_keywords(Metering.__init__)) <= set(_keywords(MiddlewareBase.__init__))
