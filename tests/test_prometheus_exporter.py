"""The Prometheus exporter: series budget, scrape-time rendering, exact sums, multiprocess mode."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from llm_metrics_middleware import CallRecord, LLMMetricsMiddleware, PrometheusExporter, Usage
from llm_metrics_middleware._exporters.prometheus import DURATION_BUCKETS, FIRST_CHUNK_BUCKETS
from llm_metrics_middleware._metering.dimensions import Dimension, build_schema

from .drive import chunk_app, request_json, run_asgi
from .test_asgi_middleware import OPENAI_STREAM
from .wire.cases import CASES, WireCase

FOUR = ["API ID", "Operation ID", "User ID", "Model"]
COMPLETION = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
}).encode()


def series_of(registry: CollectorRegistry) -> list[str]:
    """The sample lines of the text exposition (one line per series)."""
    return [line for line in generate_latest(registry).decode().splitlines() if line and not line.startswith("#")]


def call(dims: tuple[str, ...] = ("x",), **kw: Any) -> CallRecord:
    fields: dict[str, Any] = dict(
        dimensions=dims, usage=Usage(10, 5, 15), usage_source="reported", provider="openai",
        operation="chat.completions", request_model="m", response_model="m", status=200, outcome="completed",
        streamed=False, duration_s=0.3, time_to_first_chunk_s=None,
    )
    fields.update(kw)
    return CallRecord(**fields)


def bound_sink(registry: CollectorRegistry, dims: list[str | Dimension] | None = None, **kw: Any) -> Any:
    schema = build_schema("llm", dims if dims is not None else [Dimension("tier", "x")])
    return PrometheusExporter(registry, **kw).bind(schema)


# -- the series budget ------------------------------------------------------------------


def test_one_plain_call_with_four_dimensions_makes_17_series() -> None:
    registry = CollectorRegistry()
    app = LLMMetricsMiddleware(chunk_app(200, [("content-type", "application/json")], [COMPLETION]),
                               exporters=[PrometheusExporter(registry)], dimensions=FOUR)
    run_asgi(app, body=request_json(model="gpt-4o", user="u1"))
    lines = series_of(registry)
    # 3 token counters + 1 requests + duration histogram (10 buckets, +Inf, _sum, _count).
    assert len(DURATION_BUCKETS) == 10
    assert len(lines) == 3 + 1 + (len(DURATION_BUCKETS) + 3) == 17
    assert len(lines) <= 20  # issue 14's budget
    assert not [line for line in lines if "_created" in line]
    assert not [line for line in lines if line.startswith(("llm_cached", "llm_reasoning", "llm_estimated",
                                                           "llm_time_to_first", "llm_cost", "llm_metering"))]


def test_a_streamed_call_adds_only_its_first_chunk_histogram() -> None:
    registry = CollectorRegistry()
    app = LLMMetricsMiddleware(chunk_app(200, [("content-type", "text/event-stream")], [OPENAI_STREAM]),
                               exporters=[PrometheusExporter(registry)], dimensions=FOUR)
    run_asgi(app, body=request_json(model="gpt-4o", user="u1", stream=True, stream_options={"include_usage": True}))
    lines = series_of(registry)
    first = [line for line in lines if line.startswith("llm_time_to_first_chunk_seconds")]
    assert len(first) == len(FIRST_CHUNK_BUCKETS) + 3
    assert len(lines) == 17 + len(first)


def test_cached_reasoning_estimated_and_cost_appear_once_counted() -> None:
    registry = CollectorRegistry()
    sink = bound_sink(registry)
    sink.record(call())
    assert not [s for s in series_of(registry) if s.startswith(("llm_cached", "llm_reasoning", "llm_cost"))]
    sink.record(call(usage=Usage(10, 5, 15, cached_tokens=4, reasoning_tokens=2), cost_usd=0.25))
    sink.record(call(usage=Usage(7, 3, 10, estimated=True), usage_source="estimated", cost_usd=0.5))
    assert registry.get_sample_value("llm_cached_tokens_total", {"tier": "x"}) == 4
    assert registry.get_sample_value("llm_reasoning_tokens_total", {"tier": "x"}) == 2
    assert registry.get_sample_value("llm_estimated_tokens_total", {"tier": "x", "type": "prompt"}) == 7
    assert registry.get_sample_value("llm_estimated_tokens_total", {"tier": "x", "type": "completion"}) == 3
    assert registry.get_sample_value("llm_cost_usd_total", {"tier": "x"}) == 0.75
    assert registry.get_sample_value("llm_tokens_total", {"tier": "x"}) == 40
    assert registry.get_sample_value(
        "llm_requests_total", {"tier": "x", "status": "200", "outcome": "completed", "usage": "estimated"}) == 1


def test_a_call_without_usage_makes_no_token_series() -> None:
    registry = CollectorRegistry()
    bound_sink(registry).record(call(usage=None, usage_source="none", status=500))
    lines = series_of(registry)
    assert not [line for line in lines if "tokens_total" in line]
    assert registry.get_sample_value(
        "llm_requests_total", {"tier": "x", "status": "500", "outcome": "completed", "usage": "none"}) == 1


def test_created_series_only_when_asked() -> None:
    registry = CollectorRegistry()
    sink = bound_sink(registry, created_series=True)
    sink.record(call(streamed=True, time_to_first_chunk_s=0.2))
    created = [line for line in series_of(registry) if "_created" in line]
    names = {line.split("{")[0] for line in created}
    assert names == {"llm_prompt_tokens_created", "llm_completion_tokens_created", "llm_tokens_created",
                     "llm_requests_created", "llm_request_duration_seconds_created",
                     "llm_time_to_first_chunk_seconds_created"}


def test_histogram_buckets_are_inclusive_and_cumulative() -> None:
    registry = CollectorRegistry()
    sink = bound_sink(registry)
    for duration in (0.05, 0.1, 0.5, 0.7, 500.0):
        sink.record(call(duration_s=duration))

    def bucket(le: str) -> float | None:
        return registry.get_sample_value("llm_request_duration_seconds_bucket", {"tier": "x", "le": le})

    assert bucket("0.1") == 2  # 0.1 itself is in le="0.1"
    assert bucket("0.5") == 3
    assert bucket("1.0") == 4
    assert bucket("120.0") == 4
    assert bucket("+Inf") == 5
    assert registry.get_sample_value("llm_request_duration_seconds_count", {"tier": "x"}) == 5
    assert registry.get_sample_value("llm_request_duration_seconds_sum", {"tier": "x"}) == pytest.approx(501.35)


def test_a_second_exporter_on_the_registry_shares_the_series() -> None:
    registry = CollectorRegistry()
    bound_sink(registry).record(call())
    bound_sink(registry).record(call())
    assert registry.get_sample_value("llm_tokens_total", {"tier": "x"}) == 30


def test_other_metrics_with_our_names_are_refused() -> None:
    from prometheus_client import Counter

    registry = CollectorRegistry()
    bound_sink(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("llm_tokens", "clash", registry=registry)


def test_errors_are_counted_by_kind() -> None:
    registry = CollectorRegistry()
    sink = bound_sink(registry)
    sink.on_error("malformed")
    sink.on_error("malformed")
    assert registry.get_sample_value("llm_metering_errors_total", {"kind": "malformed"}) == 2


# -- exact under concurrency --------------------------------------------------------------


def test_sixteen_threads_lose_no_count() -> None:
    registry = CollectorRegistry()
    sink = bound_sink(registry, [Dimension("tier", lambda r: None), "Model"])
    per_thread = 5000
    start = threading.Barrier(16)

    def worker(k: int) -> None:
        start.wait()
        for i in range(per_thread):
            sink.record(call(("t", f"m{i % 3}"), usage=Usage(1, 2, 3, cached_tokens=1), duration_s=0.01 * (k + 1),
                             cost_usd=0.5))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    scrapes = 0
    while any(t.is_alive() for t in threads):
        series_of(registry)  # scrapes while the threads add must neither raise nor block them
        scrapes += 1
    for t in threads:
        t.join()
    n = 16 * per_thread
    total = sum(registry.get_sample_value("llm_tokens_total", {"tier": "t", "model": f"m{j}"}) or 0 for j in range(3))
    count = sum(registry.get_sample_value("llm_request_duration_seconds_count", {"tier": "t", "model": f"m{j}"}) or 0
                for j in range(3))
    cost = sum(registry.get_sample_value("llm_cost_usd_total", {"tier": "t", "model": f"m{j}"}) or 0 for j in range(3))
    assert total == 3 * n and count == n and cost == 0.5 * n and scrapes >= 1


# -- promtool -------------------------------------------------------------------------------


def test_promtool_check_metrics_is_clean() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no `promtool` on PATH (Debian package `prometheus`; .ci/run installs it)")
    registry = CollectorRegistry()
    sink = bound_sink(registry, FOUR, created_series=False)
    sink.record(call(("/v1", "chat.completions", "u1", "gpt-4o"),
                     usage=Usage(10, 5, 15, cached_tokens=4, reasoning_tokens=2), cost_usd=0.01))
    sink.record(call(("/v1", "chat.completions", "u2", "gpt-4o"), usage=Usage(3, 4, 7, estimated=True),
                     usage_source="estimated", streamed=True, time_to_first_chunk_s=0.3))
    sink.on_error("malformed")
    text = generate_latest(registry)
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout.decode() + result.stderr.decode())


# -- multiprocess mode ----------------------------------------------------------------------

_MULTIPROCESS_CHILD = textwrap.dedent("""
    import json, sys
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector
    from llm_metrics_middleware import CallRecord, PrometheusExporter, Usage
    from llm_metrics_middleware._metering.dimensions import Dimension, build_schema

    mode = sys.argv[1]
    if mode == "record":
        sink = PrometheusExporter(CollectorRegistry()).bind(build_schema("llm", [Dimension("tier", "x")]))
        for i in range(100):
            usage = Usage(10, 5, 15, cached_tokens=3 if i == 0 else 0)
            sink.record(CallRecord(("x",), usage, "reported", "openai", "chat.completions", "m", "m", 200,
                                   "completed", i % 2 == 0, 0.3, 0.2 if i % 2 == 0 else None, cost_usd=None))
        sink.on_error("malformed")
    else:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        out = {}
        for family in registry.collect():
            for s in family.samples:
                out[s.name + json.dumps(s.labels, sort_keys=True)] = s.value
        print(json.dumps(out))
""")


def test_multiprocess_mode_sums_workers_exactly_and_lazily(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(3):  # three "workers", one after the other, each its own process
        subprocess.run([sys.executable, "-c", _MULTIPROCESS_CHILD, "record"], env=env, check=True, timeout=60)
    out = subprocess.run([sys.executable, "-c", _MULTIPROCESS_CHILD, "scrape"], env=env, check=True, timeout=60,
                         capture_output=True)
    samples: dict[str, float] = json.loads(out.stdout)
    tier = json.dumps({"tier": "x"})
    assert samples["llm_tokens_total" + tier] == 3 * 100 * 15
    assert samples["llm_cached_tokens_total" + tier] == 3 * 3
    assert samples["llm_request_duration_seconds_count" + tier] == 300
    assert samples["llm_time_to_first_chunk_seconds_count" + tier] == 150
    assert samples["llm_metering_errors_total" + json.dumps({"kind": "malformed"})] == 3
    assert not [k for k in samples if k.startswith(("llm_reasoning", "llm_estimated", "llm_cost"))]
    assert samples["llm_request_duration_seconds_bucket" + json.dumps({"le": "0.5", "tier": "x"})] == 300
    assert samples["llm_request_duration_seconds_bucket" + json.dumps({"le": "0.25", "tier": "x"})] == 0


_FIELD_CASES = [c for c in CASES if c.id in (
    "openai-chat-json", "openai-chat-json-o3-mini-reasoning", "openai-chat-stream-include-usage",
    "openai-chat-stream-no-usage", "anthropic-messages-json-cache", "anthropic-messages-stream-thinking",
)]


@pytest.mark.parametrize("case", _FIELD_CASES, ids=[c.id for c in _FIELD_CASES])
def test_a_call_adds_the_same_sums_whether_it_hands_over_its_fields_or_a_record(case: WireCase) -> None:
    """A finishing call gives the aggregate the fields of its record and builds none when
    every sink only sums (Metering.direct_fields); the sums must be those of the record."""

    def sums(direct: bool) -> list[tuple[Any, ...]]:
        chunks = [case.body[i : i + 97] for i in range(0, len(case.body), 97)]
        app = LLMMetricsMiddleware(chunk_app(200, [("content-type", case.content_type)], chunks),
                                   exporters=[PrometheusExporter(CollectorRegistry())], dimensions=FOUR)
        for _ in range(3):
            run_asgi(app, path=case.path, body=case.request_body)
            if not direct:
                app.metering.direct_fields = None  # the record path, as with any other sink
        assert (app.metering.direct_fields is not None) is direct
        totals = app.metering.sinks[0].record.__self__  # type: ignore[attr-defined]
        return sorted(
            (s.dims, s.usage_calls, s.prompt, s.completion, s.total, s.cached, s.reasoning, s.estimated_calls,
             s.est_prompt, s.est_completion, s.cost, sorted(s.requests.items()), sum(s.duration),
             sum(s.first_chunk or ()))
            for s in totals.snapshot()[0]
        )

    with_fields = sums(direct=True)
    assert with_fields and with_fields[0][1] == 3
    assert with_fields == sums(direct=False)
