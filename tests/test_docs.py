"""The documentation site builds with ``mkdocs build --strict``: the README (its home page)
and the API reference generated from the docstrings have no broken link or reference."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import llm_metrics_middleware
from tests.servers import ROOT

pytestmark = pytest.mark.slow


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason='the docs extra is not installed: pip install ".[docs]" (.ci/run does)')
    pytest.importorskip("mkdocstrings", reason='the docs extra is not installed: pip install ".[docs]"')
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    home = (site / "index.html").read_text()
    assert "Quickstart" in home and "metrics_auth" in home  # the README is the home page
    reference = (site / "reference" / "index.html").read_text()
    for name in ("LLMMetricsMiddleware", "PrometheusExporter", "asgi_app", "SimulatedLLM", "llm_metrics_exporter"):
        assert name in reference, name
    # The reference says it holds everything importable from the package: each name has an entry.
    documented = set(re.findall(r'id="llm_metrics_middleware\.[\w.]*?\.(\w+)"', reference))
    assert sorted(set(llm_metrics_middleware.__all__) - documented) == []
