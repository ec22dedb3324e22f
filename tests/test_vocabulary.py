"""The closed sets (label values) are Literal types, and the README's lists say the same.

A value added to ``Outcome``, ``UsageSource`` or ``ErrorKind`` without a README line (or a
README line for a value the code never emits) fails here, and so does an error name the
core writes that ``ErrorKind`` does not list (it would be counted as ``internal``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import get_args

import pytest

import llm_metrics_middleware
from llm_metrics_middleware import ErrorKind, Outcome, UsageSource
from llm_metrics_middleware._core.extractor import BODY_FORMATS, BodyFormat, body_format
from llm_metrics_middleware._metering.metered_call import body_error

ROOT = Path(__file__).resolve().parent.parent
CORE = Path(llm_metrics_middleware.__file__).parent / "_core"


def readme_tables(heading: str) -> dict[str, list[str]]:
    """The tables of one README section: the first header cell's name -> its first column."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^#+ )", text, re.S | re.M)
    assert match, f"README has no section {heading!r}"
    tables: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in match.group(1).splitlines():
        if not line.startswith("|"):
            current = None
            continue
        first = line.split("|")[1].strip()
        if current is None:
            current = tables.setdefault(first.strip("`"), [])
        elif not set(first) <= {"-", ":", " "}:
            assert first.startswith("`") and first.endswith("`"), f"README row {line!r}: value not in backticks"
            current.append(first.strip("`"))
    return tables


@pytest.mark.parametrize(
    ("column", "literal"), [("outcome", Outcome), ("usage", UsageSource), ("kind", ErrorKind)]
)
def test_readme_lists_every_label_value_and_no_other(column: str, literal: object) -> None:
    tables = readme_tables("Label values")
    assert column in tables, f"README 'Label values' has no `{column}` table (tables: {sorted(tables)})"
    assert tables[column] == list(get_args(literal))  # same values, same order


def _error_names_in_core() -> set[str]:
    """Every string the core assigns to an ``error`` / ``_error`` attribute, passes as
    ``error=`` or to a ``fail(...)`` method: the names it gives to why a body was not read."""
    names: set[str] = set()

    def strings(node: ast.AST) -> set[str]:
        return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}

    for path in sorted(CORE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, (ast.Attribute, ast.Name)) and getattr(t, "attr", getattr(t, "id", "")).lstrip("_")
                       == "error" for t in targets):
                    names |= strings(node.value)
            elif isinstance(node, ast.keyword) and node.arg == "error":
                names |= strings(node.value)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "fail":
                for arg in node.args:
                    names |= strings(arg)
    return names


def test_every_error_the_core_names_is_an_error_kind() -> None:
    named = _error_names_in_core()
    assert {"malformed", "truncated", "invalid_usage", "too_large", "decompression_bomb", "bad_compression"} <= named
    assert named <= set(get_args(ErrorKind)), named - set(get_args(ErrorKind))


def test_an_unknown_body_error_keeps_the_label_set_closed() -> None:
    assert body_error("malformed") == "malformed"
    assert body_error("something new") == "internal"


def test_body_formats() -> None:
    assert BODY_FORMATS == get_args(BodyFormat) == ("none", "sse", "json", "sniff", "eventstream")
    assert body_format("application/vnd.amazon.eventstream") == "eventstream"
    assert body_format("text/event-stream; charset=utf-8") == "sse"
    assert body_format("application/vnd.api+json") == "json"
    assert body_format(None) == "sniff"
    assert body_format("image/png") == "none"
