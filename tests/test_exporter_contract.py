"""The contract for writing an exporter: Schema, Sink (with optional on_error), the one guard."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest

from llm_metrics_middleware import CallRecord, ErrorKind, LLMMetricsMiddleware, Schema
from llm_metrics_middleware.testing import InMemoryExporter

from .drive import chunk_app, request_json, run_asgi

JSON_HEADERS = [("content-type", "application/json")]
GOOD = b'{"model":"m","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}'


class Failing:
    """An exporter whose sink raises from record (and, if asked, from on_error)."""

    def __init__(self, on_error_fails: bool = False) -> None:
        self.on_error_fails = on_error_fails
        self.errors: list[str] = []

    def bind(self, schema: Schema) -> Failing:
        return self

    def record(self, call: CallRecord) -> None:
        raise RuntimeError("exporter down")

    def on_error(self, kind: ErrorKind) -> None:
        if self.on_error_fails:
            raise ValueError("error hook down")
        self.errors.append(kind)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def shutdown(self) -> None:
        pass


def test_schema_is_a_read_only_view_exporters_can_build() -> None:
    schema = Schema("llm", ("User ID",), ("user_id",))
    with pytest.raises(AttributeError):
        schema.namespace = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match="one label per name"):
        Schema("llm", ("User ID", "Model"), ("user_id",))


def test_bind_gets_the_namespace_names_and_labels() -> None:
    memory = InMemoryExporter()
    LLMMetricsMiddleware(chunk_app(200, JSON_HEADERS, [GOOD]), exporters=[memory], namespace="team a",
                         dimensions=["User ID", "Model"])
    [schema] = memory.schemas
    assert isinstance(schema, Schema)
    assert (schema.namespace, schema.names, schema.labels) == ("team a", ("User ID", "Model"), ("user_id", "model"))


def test_a_failing_sink_is_logged_once_counted_as_export_and_the_others_still_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken, good = Failing(), InMemoryExporter()
    app = LLMMetricsMiddleware(chunk_app(200, JSON_HEADERS, [GOOD]), exporters=[broken, good])
    with caplog.at_level(logging.DEBUG, logger="llm_metrics_middleware"):
        for _ in range(5):
            run_asgi(app, path="/v1/chat/completions", body=request_json(model="m"))
    assert len(good.calls) == 5
    assert app.metering.errors["export"] == 5
    assert good.errors == ["export"] * 5 and broken.errors == ["export"] * 5
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None  # one traceback, not one per request
    assert "failed to record a call" in errors[0].getMessage()
    assert sum("failed to record a call" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG) == 4


def test_a_failing_error_hook_does_not_feed_itself(caplog: pytest.LogCaptureFixture) -> None:
    broken, good = Failing(on_error_fails=True), InMemoryExporter()
    app = LLMMetricsMiddleware(chunk_app(200, JSON_HEADERS, [GOOD]), exporters=[broken, good])
    with caplog.at_level(logging.ERROR, logger="llm_metrics_middleware"):
        run_asgi(app, path="/v1/chat/completions", body=request_json(model="m"))
        run_asgi(app, path="/v1/chat/completions", body=request_json(model="m"))
    # Each request: record fails (1), then on_error("export") fails on the same sink (1).
    assert app.metering.errors["export"] == 4
    assert good.errors == ["export", "export"] and len(good.calls) == 2
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 2  # once per sink method


def test_on_error_is_optional() -> None:
    class RecordOnly:
        def __init__(self) -> None:
            self.calls: list[CallRecord] = []

        def bind(self, schema: Schema) -> Any:
            return self

        def record(self, call: CallRecord) -> None:
            self.calls.append(call)

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

        def shutdown(self) -> None:
            pass

    plain = RecordOnly()
    app = LLMMetricsMiddleware(chunk_app(200, JSON_HEADERS, [b"{not json"]), exporters=[plain])
    run_asgi(app, path="/v1/chat/completions", body=request_json(model="m"))
    assert app.metering.errors["malformed"] == 1 and len(plain.calls) == 1


def test_the_readme_example_exporter_runs_and_prints_what_it_says(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Writing an exporter\n.*?```python\n(.*?)```", readme, re.S | re.M)
    assert match, "README has no 'Writing an exporter' section with a python block"
    code = match.group(1)
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(code, "README.md#writing-an-exporter", "exec"), namespace)
    printed = capsys.readouterr().out.strip()
    promised = re.search(r"^print\(per_user\.tokens\)\s*# (.*)$", code, re.M)
    assert promised and printed == promised.group(1).strip()
    per_user = namespace["per_user"]
    assert per_user.tokens == {"alice": 18, "bob": 9}  # 2 calls and 1 call of 4 prompt + 5 completion tokens
    assert sum(per_user.errors.values()) == 0


def test_the_failure_log_stays_bounded_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    from llm_metrics_middleware._metering.failures import MAX_KINDS, FailureLog

    log = FailureLog()
    kinds = [type(f"Failure{i}", (Exception,), {}) for i in range(MAX_KINDS + 50)]
    with caplog.at_level(logging.DEBUG, logger="llm_metrics_middleware"):
        for kind in kinds:
            log.failed("exporter X", "record a call", kind("boom"))
        log.failed("exporter X", "record a call", kinds[0]("again"))
    assert len(log._seen) == MAX_KINDS
    levels = [r.levelno for r in caplog.records]
    assert levels.count(logging.ERROR) == MAX_KINDS and levels.count(logging.DEBUG) == 51
