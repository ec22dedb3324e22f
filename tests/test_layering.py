"""The package's layers, checked from its imports: the sans-IO core reaches nothing above it.

``_core`` turns bytes into usage and must stay usable without any framework, exporter
library or driver (that is what lets the ASGI, WSGI and outgoing-client drivers share it).
The imports are read with ``ast``, so an import inside a function or under
``TYPE_CHECKING`` counts too.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "llm_metrics_middleware"

#: Third-party modules the core may never import (frameworks, servers, exporter libraries).
FORBIDDEN_LIBRARIES = (
    "asgiref",
    "werkzeug",
    "starlette",
    "fastapi",
    "flask",
    "django",
    "httpx",
    "httpx2",
    "prometheus_client",
    "opentelemetry",
    "azure",
    "redis",
    "limits",
    "requests",
    "aiohttp",
)
#: Our own layers above the core.
UPPER_LAYERS = ("_metering", "_drivers", "_exporters", "testing", "__main__")


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in ``path``; relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return found


CORE_FILES = sorted((PACKAGE / "_core").rglob("*.py"))


def test_the_core_exists() -> None:
    assert len(CORE_FILES) >= 5


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_imports_no_framework_exporter_or_driver(path: pathlib.Path) -> None:
    bad = []
    for line, module in _imports(path):
        top = module.split(".")[0]
        if top in FORBIDDEN_LIBRARIES:
            bad.append(f"{path.name}:{line} imports {module}")
        parts = module.split(".")
        if parts[0] == "llm_metrics_middleware" and len(parts) > 1 and parts[1] in UPPER_LAYERS:
            bad.append(f"{path.name}:{line} imports {module} (a layer above the core)")
    assert not bad, "the sans-IO core must not reach outward:\n" + "\n".join(bad)


def test_the_checker_sees_a_violation(tmp_path: pathlib.Path) -> None:
    # The check itself must be able to fail: a core file importing a driver is caught.
    fake = PACKAGE / "_core" / "__layering_probe__.py"
    fake.write_text("from ..\x5fdrivers.asgi import LLMMetricsMiddleware\nimport starlette\n")
    try:
        modules = [m for _, m in _imports(fake)]
    finally:
        fake.unlink()
    assert "llm_metrics_middleware._drivers.asgi" in modules
    assert "starlette" in modules


#: Module sizes past which a file holds more than one thing (issue "code health").
MAX_PACKAGE_LINES = 450
MAX_BENCH_LINES = 600


@pytest.mark.parametrize(
    ("folder", "limit"), [(PACKAGE, MAX_PACKAGE_LINES), (PACKAGE.parent / "bench", MAX_BENCH_LINES)], ids=["package", "bench"]
)
def test_no_module_outgrows_its_limit(folder: pathlib.Path, limit: int) -> None:
    sizes = {str(path.relative_to(folder)): len(path.read_text().splitlines()) for path in folder.rglob("*.py")}
    assert sizes, f"no modules under {folder}"
    too_long = {name: lines for name, lines in sizes.items() if lines > limit}
    assert too_long == {}, f"split these modules (over {limit} lines): {too_long}"
