"""AzureMonitorExporter with the real Azure exporter and SDK, posting to a capture server on 127.0.0.1.

The exporter's control-plane calls and self-telemetry (statsbeat, SDK stats) are switched
off by environment variables, and a guard fails any test that resolves a host other than
127.0.0.1 / localhost, so nothing here reaches the internet.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from opentelemetry.sdk.metrics import Counter, Histogram
from opentelemetry.sdk.metrics.export import AggregationTemporality
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import Mount

from llm_metrics_middleware import AzureMonitorExporter, Dimension, LLMMetricsMiddleware, PrometheusExporter
from llm_metrics_middleware._exporters.azure import (
    COMPLETION_TOKENS,
    LLM_REQUESTS,
    METERING_ERRORS,
    PROMPT_TOKENS,
    REQUEST_DURATION,
    TEMPORALITY,
    TIME_TO_FIRST_CHUNK,
    TOTAL_TOKENS,
)
from llm_metrics_middleware.testing import InMemoryExporter, SimulatedLLM, prompt_tokens_of

from .azure_capture import HANG, OK, CaptureServer

#: Defaults plus a custom dimension, as configured by a user.
DIMENSIONS: list[Any] = [
    "API ID", "Operation ID", "Product ID", "User ID", "Subscription ID", "Location", "Gateway ID",
    Dimension("Team", lambda r: r.headers.get("x-team")),
]
NAMES = ["API ID", "Operation ID", "Product ID", "User ID", "Subscription ID", "Location", "Gateway ID", "Team"]

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", None}


@pytest.fixture(autouse=True)
def azure_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    # The Azure exporter's remote configuration (OneSettings), statsbeat and customer SDK
    # stats all call Microsoft endpoints on their own: switch them off.
    monkeypatch.setenv("APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED", "true")
    monkeypatch.setenv("APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL", "true")
    monkeypatch.setenv("APPLICATIONINSIGHTS_SDKSTATS_DISABLED", "true")
    monkeypatch.setenv("APPLICATIONINSIGHTS_METRIC_NAMESPACE_OPT_IN", "true")
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    monkeypatch.setenv("LLM_METRICS_SUBSCRIPTION_SECRET", "test-secret")
    # Anything that resolves a host name other than this machine fails the test.
    outside: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in _LOCAL_HOSTS:
            outside.append(str(name))
            raise OSError(f"test tried to reach {name!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield outside
    assert outside == [], f"tried to reach the internet: {outside}"


@pytest.fixture
def capture() -> Iterator[CaptureServer]:
    server = CaptureServer().start()
    try:
        yield server
    finally:
        server.stop()


MakeExporter = Callable[..., AzureMonitorExporter]


@pytest.fixture
def make_exporter(capture: CaptureServer) -> Iterator[MakeExporter]:
    made: list[AzureMonitorExporter] = []

    def make(**options: Any) -> AzureMonitorExporter:
        options.setdefault("export_interval_millis", 3_600_000)  # flushed by hand
        if "storage_directory" not in options:
            options.setdefault("disable_offline_storage", True)
        options.setdefault("timeout", 1.0)
        exporter = AzureMonitorExporter(capture.connection_string, **options)
        made.append(exporter)
        return exporter

    yield make
    for exporter in made:
        exporter.shutdown(timeout_millis=3000)


def chat(user: str, *, stream: bool = False, words: str = "hello there world", model: str = "gpt-sim") -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "user": user, "messages": [{"role": "user", "content": words}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


async def _drive(app: Any, calls: list[tuple[str, dict[str, Any], dict[str, str]]]) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for path, body, headers in calls:
            response = await client.post(path, json=body, headers=headers)
            await response.aread()
            assert response.status_code == 200, response.text


def drive(app: Any, calls: list[tuple[str, dict[str, Any], dict[str, str]]]) -> None:
    asyncio.run(_drive(app, calls))


def wrap(exporter: AzureMonitorExporter, **options: Any) -> tuple[LLMMetricsMiddleware, InMemoryExporter]:
    memory = InMemoryExporter()
    options.setdefault("dimensions", DIMENSIONS)
    options.setdefault("location", "westeurope")
    options.setdefault("gateway_id", "gw-1")
    return LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[exporter, memory], **options), memory


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """``app`` under a real uvicorn server on 127.0.0.1, in a thread."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


# -- configuration ---------------------------------------------------------------------------


def test_connection_string_is_required_and_the_error_names_both_sources() -> None:
    with pytest.raises(ValueError) as info:
        AzureMonitorExporter()
    assert "connection_string" in str(info.value) and "APPLICATIONINSIGHTS_CONNECTION_STRING" in str(info.value)


def test_connection_string_from_the_environment(capture: CaptureServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", capture.connection_string)
    exporter = AzureMonitorExporter(disable_offline_storage=True, timeout=1)
    try:
        app, _ = wrap(exporter, dimensions=["User ID"])
        drive(app, [("/v1/chat/completions", chat("env-user"), {})])
        assert exporter.force_flush() is True
        assert capture.sums(PROMPT_TOKENS, **{"User ID": "env-user"}) == prompt_tokens_of(chat("env-user"))
    finally:
        exporter.shutdown()


def test_bad_connection_string_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="Overview page"):
        AzureMonitorExporter("InstrumentationKey=not-a-key", disable_offline_storage=True)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"export_interval_millis": 0}, "export_interval_millis"),
        ({"timeout": -1}, "timeout"),
        ({"max_attribute_sets": 0}, "max_attribute_sets"),
        ({"exporter_options": {"timeout": 5}}, "exporter_options"),
    ],
)
def test_bad_options(capture: CaptureServer, options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AzureMonitorExporter(capture.connection_string, disable_offline_storage=True, **options)


def test_sums_are_deltas_as_the_azure_exporter_prefers(make_exporter: MakeExporter) -> None:
    exporter = make_exporter()
    inner = exporter._serial.inner
    for cls in (Counter, Histogram):
        assert TEMPORALITY[cls] is AggregationTemporality.DELTA
        assert inner._preferred_temporality[cls] is AggregationTemporality.DELTA  # type: ignore[attr-defined]


# -- what lands where ------------------------------------------------------------------------


def test_metrics_land_named_with_dimensions_and_namespace(make_exporter: MakeExporter, capture: CaptureServer) -> None:
    exporter = make_exporter()
    app, memory = wrap(exporter, namespace="llm-gateway")
    calls = [
        ("/v1/chat/completions", chat("alice"), {"x-team": "search", "x-product-id": "starter"}),
        ("/v1/chat/completions", chat("alice", stream=True), {"x-team": "search"}),
        ("/v1/chat/completions", chat("bob", words="one two three four five"), {"x-team": "ads"}),
        ("/v1/messages", {"model": "claude-sim", "max_tokens": 5, "metadata": {"user_id": "carol"},
                          "messages": [{"role": "user", "content": "hi"}]}, {"authorization": "Bearer sk-1"}),
    ]
    drive(app, calls)
    assert exporter.force_flush() is True
    sent = memory.totals()

    received = capture.metrics()
    names = {p["name"] for p in received}
    assert {PROMPT_TOKENS, COMPLETION_TOKENS, TOTAL_TOKENS, LLM_REQUESTS, REQUEST_DURATION, TIME_TO_FIRST_CHUNK} <= names
    assert {p["namespace"] for p in received} == {"llm-gateway"}
    assert capture.sums(PROMPT_TOKENS) == sent["prompt"]
    assert capture.sums(COMPLETION_TOKENS) == sent["completion"]
    assert capture.sums(TOTAL_TOKENS) == sent["total"]
    assert capture.sums(PROMPT_TOKENS, **{"User ID": "alice"}) == 2 * prompt_tokens_of(chat("alice"))
    assert capture.sums(PROMPT_TOKENS, **{"User ID": "bob", "Team": "ads"}) == prompt_tokens_of(
        chat("bob", words="one two three four five")
    )
    for point in received:
        if point["name"] in (PROMPT_TOKENS, COMPLETION_TOKENS, TOTAL_TOKENS, REQUEST_DURATION):
            assert list(point["properties"]) == NAMES  # keyed by the configured names, exactly
    [carol] = [p for p in received if p["name"] == PROMPT_TOKENS and p["properties"]["User ID"] == "carol"]
    props = carol["properties"]
    assert props["API ID"] == "/v1" and props["Operation ID"] == "messages" and props["Location"] == "westeurope"
    assert props["Gateway ID"] == "gw-1" and props["Team"] == "unknown" and len(props["Subscription ID"]) == 16
    assert capture.sums(LLM_REQUESTS, **{"Status Code": "200", "Outcome": "completed"}) == len(calls)
    durations = [p for p in received if p["name"] == REQUEST_DURATION]
    assert sum(p["count"] for p in durations) == len(calls)
    assert all(p["min"] <= p["max"] for p in durations)
    assert sum(p["count"] for p in received if p["name"] == TIME_TO_FIRST_CHUNK) == 1

    # Delta temporality: the next export carries only what was added since.
    capture.clear()
    drive(app, [("/v1/chat/completions", chat("alice"), {"x-team": "search"})])
    assert exporter.force_flush() is True
    assert capture.sums(PROMPT_TOKENS) == prompt_tokens_of(chat("alice"))
    capture.clear()
    assert exporter.force_flush() is True
    assert capture.metrics() == []  # nothing new, nothing sent


def test_namespace_only_with_the_opt_in(
    make_exporter: MakeExporter, capture: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("APPLICATIONINSIGHTS_METRIC_NAMESPACE_OPT_IN")
    exporter = make_exporter()
    app, _ = wrap(exporter, dimensions=["User ID"], namespace="llm-gateway")
    drive(app, [("/v1/chat/completions", chat("dan"), {})])
    assert exporter.force_flush() is True
    assert {p["namespace"] for p in capture.metrics()} == {None}


def test_cloud_role_and_instance_from_the_otel_environment(
    make_exporter: MakeExporter, capture: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "llm-gateway")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.namespace=prod,service.instance.id=replica-3")
    exporter = make_exporter()
    app, _ = wrap(exporter, dimensions=["User ID"])
    drive(app, [("/v1/chat/completions", chat("fay"), {})])
    assert exporter.force_flush() is True
    tags = {(p["tags"]["ai.cloud.role"], p["tags"]["ai.cloud.roleInstance"]) for p in capture.metrics()}
    assert tags == {("prod.llm-gateway", "replica-3")}


def test_metering_errors_metric(make_exporter: MakeExporter, capture: CaptureServer) -> None:
    exporter = make_exporter()
    app, _ = wrap(exporter, dimensions=["User ID"])
    app.metering.count_error("malformed")
    app.metering.count_error("malformed")
    assert exporter.force_flush() is True
    assert capture.sums(METERING_ERRORS, Kind="malformed") == 2


def test_more_than_ten_dimension_keys_warns(make_exporter: MakeExporter, caplog: pytest.LogCaptureFixture) -> None:
    exporter = make_exporter()
    with caplog.at_level(logging.WARNING, logger="llm_metrics_middleware"):
        wrap(exporter, namespace="eight")  # 8 dimensions: LLM Requests has 10 keys, the limit
    assert "dimension keys" not in caplog.text
    nine = [*DIMENSIONS, Dimension("Region", "eu")]
    with caplog.at_level(logging.WARNING, logger="llm_metrics_middleware"):
        wrap(exporter, dimensions=nine, namespace="nine")
    assert "at most 10 dimension keys" in caplog.text and "'LLM Requests' 11" in caplog.text
    assert "'Prompt Tokens'" not in caplog.text  # 9 keys there: fine


def test_attribute_sets_are_capped_with_an_overflow_point(make_exporter: MakeExporter, capture: CaptureServer) -> None:
    exporter = make_exporter(max_attribute_sets=2)
    app, memory = wrap(exporter, dimensions=["User ID"])
    drive(app, [("/v1/chat/completions", chat(f"user{i}"), {}) for i in range(5)])
    assert exporter.force_flush() is True
    prompts = [p for p in capture.metrics() if p["name"] == PROMPT_TOKENS]
    assert len(prompts) == 3
    assert [p["properties"] for p in prompts if "User ID" not in p["properties"]] == [{"otel.metric.overflow": "True"}]
    assert capture.sums(PROMPT_TOKENS) == memory.totals()["prompt"]  # sums stay exact


def test_bind_rules(make_exporter: MakeExporter) -> None:
    exporter = make_exporter()
    wrap(exporter, dimensions=["User ID"])
    wrap(exporter, dimensions=["User ID"])  # same namespace and dimensions: shared
    with pytest.raises(ValueError, match="already bound"):
        wrap(exporter, dimensions=["Model"])
    with pytest.raises(ValueError, match="clashes"):
        wrap(exporter, dimensions=[Dimension("Outcome", "x")], namespace="other")
    with pytest.raises(ValueError, match="150"):
        wrap(exporter, dimensions=[Dimension("x" * 151, "x")], namespace="long")


def test_record_never_raises(make_exporter: MakeExporter, caplog: pytest.LogCaptureFixture) -> None:
    exporter = make_exporter()
    app, memory = wrap(exporter, dimensions=["User ID"])
    drive(app, [("/v1/chat/completions", chat("erin"), {})])
    sink = app.metering.sinks[0]
    bad = dataclasses.replace(memory.calls[0], dimensions=("a", "b", "c"))
    with caplog.at_level(logging.ERROR, logger="llm_metrics_middleware"):
        sink.record(bad)
    assert "failed to record a call" in caplog.text
    exporter.shutdown()
    sink.record(memory.calls[0])  # after shutdown: ignored, no error
    assert exporter.force_flush() is False


def test_through_a_real_uvicorn_server(make_exporter: MakeExporter, capture: CaptureServer) -> None:
    exporter = make_exporter()
    app, memory = wrap(exporter)
    with serve(app) as base, httpx.Client(base_url=base, timeout=10) as client:
        for i in range(6):
            response = client.post("/v1/chat/completions", json=chat(f"u{i % 2}", stream=i % 3 == 0),
                                   headers={"x-team": "infra"})
            assert response.status_code == 200
    assert exporter.force_flush() is True
    sent = memory.totals()
    assert capture.sums(PROMPT_TOKENS) == sent["prompt"] and capture.sums(TOTAL_TOKENS) == sent["total"]
    assert capture.sums(COMPLETION_TOKENS, **{"User ID": "u1", "Team": "infra"}) == sum(
        c.usage.completion_tokens for c in memory.calls if c.usage and memory.dimensions(c)["User ID"] == "u1"
    )


# -- several exporters, several middlewares --------------------------------------------------


def test_prometheus_and_azure_from_one_middleware(make_exporter: MakeExporter, capture: CaptureServer) -> None:
    registry = CollectorRegistry()
    azure = make_exporter()
    memory = InMemoryExporter()
    app = LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[PrometheusExporter(registry), azure, memory],
                               dimensions=["User ID", "Model"])
    drive(app, [("/v1/chat/completions", chat(user), {}) for user in ("p1", "p2", "p1")])
    assert azure.force_flush() is True
    for user in ("p1", "p2"):
        prom = registry.get_sample_value("llm_prompt_tokens_total", {"user_id": user, "model": "gpt-sim"})
        assert prom == capture.sums(PROMPT_TOKENS, **{"User ID": user, "Model": "gpt-sim"}) > 0
    assert capture.sums(TOTAL_TOKENS) == memory.totals()["total"]


def test_two_mounted_sub_apps_with_their_own_namespaces(make_exporter: MakeExporter, capture: CaptureServer) -> None:
    azure = make_exporter()
    team_a = LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[azure], namespace="team-a", dimensions=["User ID"])
    team_b = LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[azure], namespace="team-b",
                                  dimensions=["Operation ID", Dimension("Cost Center", "cc-42")])
    app = Starlette(routes=[Mount("/a", app=team_a), Mount("/b", app=team_b)])
    drive(app, [
        ("/a/v1/chat/completions", chat("ann"), {}),
        ("/b/v1/chat/completions", chat("ben", words="a b c d e f g"), {}),
        ("/b/v1/chat/completions", chat("ben"), {}),
    ])
    assert azure.force_flush() is True
    prompts = [p for p in capture.metrics() if p["name"] == PROMPT_TOKENS]
    by_namespace = {p["namespace"]: p for p in prompts}
    assert set(by_namespace) == {"team-a", "team-b"}
    assert by_namespace["team-a"]["properties"] == {"User ID": "ann"}
    assert by_namespace["team-b"]["properties"] == {"Operation ID": "chat.completions", "Cost Center": "cc-42"}
    assert len({p["tags"]["ai.cloud.roleInstance"] for p in prompts}) == 1  # one process, one instance
    assert by_namespace["team-a"]["value"] == prompt_tokens_of(chat("ann"))
    assert by_namespace["team-b"]["value"] == prompt_tokens_of(chat("ben", words="a b c d e f g")) + prompt_tokens_of(
        chat("ben")
    )


# -- faults ----------------------------------------------------------------------------------


def _latencies(client: httpx.Client, n: int) -> list[float]:
    out = []
    for i in range(n):
        start = time.perf_counter()
        response = client.post("/v1/chat/completions", json=chat(f"lat{i % 4}"), headers={"x-team": "perf"})
        out.append(time.perf_counter() - start)
        assert response.status_code == 200
    return out


@pytest.mark.slow
def test_requests_are_not_slowed_by_a_failing_or_hanging_endpoint(
    make_exporter: MakeExporter, capture: CaptureServer, tmp_path: Path
) -> None:
    # Exports every 100 ms, so they hit the endpoint while the requests run.
    exporter = make_exporter(export_interval_millis=100, storage_directory=tmp_path / "store", timeout=1.0)
    app, memory = wrap(exporter)
    medians: dict[str, float] = {}
    with serve(app) as base, httpx.Client(base_url=base, timeout=10) as client:
        _latencies(client, 20)  # warm up
        for mode in (OK, 500, 503, 429, HANG):
            capture.set_mode(mode)
            attempts = len([p for p in capture.posts if p[0] == mode])
            _latencies(client, 5)
            assert capture.wait_for(lambda: len([p for p in capture.posts if p[0] == mode]) > attempts, timeout=5), (
                f"no export reached the endpoint in mode {mode}"
            )
            latencies = _latencies(client, 150)
            medians[str(mode)] = statistics.median(latencies)
            print(
                f"\nendpoint {str(mode):>4}: median {medians[str(mode)] * 1000:.2f} ms, "
                f"p95 {statistics.quantiles(latencies, n=20)[-1] * 1000:.2f} ms, max {max(latencies) * 1000:.2f} ms "
                f"over {len(latencies)} requests"
            )
        capture.set_mode(OK)
    assert len(memory.calls) == 20 + 5 * 155
    for mode, median in medians.items():
        # The exporter's read timeout is 1 s: a request held by an export would take that long.
        assert median < 0.1, f"median latency {median:.3f} s with the endpoint {mode}"


@pytest.mark.slow
def test_shutdown_and_flush_are_bounded_with_a_hanging_endpoint(make_exporter: MakeExporter,
                                                                 capture: CaptureServer, tmp_path: Path) -> None:
    store = tmp_path / "store"
    exporter = make_exporter(storage_directory=store, timeout=1.0)
    app, _ = wrap(exporter, dimensions=["User ID"])
    capture.set_mode(HANG)
    drive(app, [("/v1/chat/completions", chat("hank"), {})])
    start = time.monotonic()
    assert exporter.force_flush(timeout_millis=30_000) is False
    flush_s = time.monotonic() - start
    drive(app, [("/v1/chat/completions", chat("hank"), {})])
    start = time.monotonic()
    exporter.shutdown()
    shutdown_s = time.monotonic() - start
    start = time.monotonic()
    exporter.shutdown()  # idempotent
    again_s = time.monotonic() - start
    print(f"\nhanging endpoint, timeout=1 s: force_flush {flush_s:.2f} s, shutdown {shutdown_s:.2f} s, "
          f"second shutdown {again_s * 1000:.2f} ms")
    assert flush_s < 5 and shutdown_s < 6.5 and again_s < 0.1
    # Both unanswered batches were kept for a retry.
    assert capture.wait_for(lambda: len(list(store.rglob("*.blob*"))) >= 2, timeout=3)


@pytest.mark.slow
def test_offline_storage_delivers_everything_after_recovery(make_exporter: MakeExporter, capture: CaptureServer,
                                                            tmp_path: Path) -> None:
    store = tmp_path / "store"
    exporter = make_exporter(storage_directory=store, storage_retry_interval=1, timeout=1.0)
    app, memory = wrap(exporter)
    for i, mode in enumerate((503, 500, 429, HANG)):
        capture.set_mode(mode)
        drive(app, [("/v1/chat/completions", chat(f"r{i}-{j}", stream=j == 0), {"x-team": "ops"}) for j in range(3)])
        assert exporter.force_flush() is False, f"flush reported success with the endpoint {mode}"
    assert capture.metrics() == []
    stored = len(list(store.rglob("*.blob*")))
    assert stored == 4

    capture.set_mode(OK)
    time.sleep(1.1)  # the stored batches may be retried 1 s (storage_retry_interval) after they failed
    sent = memory.totals()
    # No new traffic: force_flush itself retries the stored batches that are due (the Azure
    # exporter alone would wait for the next export that has points to send).

    def all_arrived() -> bool:
        exporter.force_flush()
        return capture.sums(TOTAL_TOKENS) >= sent["total"]

    assert capture.wait_for(all_arrived, timeout=10, interval=0.5)
    received = {
        "prompt": capture.sums(PROMPT_TOKENS),
        "completion": capture.sums(COMPLETION_TOKENS),
        "total": capture.sums(TOTAL_TOKENS),
        "requests": capture.sums(LLM_REQUESTS),
    }
    expected = {"prompt": sent["prompt"], "completion": sent["completion"], "total": sent["total"],
                "requests": len(memory.calls)}
    print(f"\nafter recovery: sent {json.dumps(expected)}, received {json.dumps(received)}, "
          f"{stored} batches were stored offline")
    assert received == expected  # nothing lost, nothing twice
    assert list(store.rglob("*.blob*")) == []


def test_cost_metric_in_usd_per_dimension_set(make_exporter: MakeExporter, capture: CaptureServer) -> None:
    from llm_metrics_middleware import Price

    exporter = make_exporter()
    app, memory = wrap(exporter, dimensions=["User ID"], pricing={"gpt-sim": Price(2.0, 8.0)})
    drive(app, [("/v1/chat/completions", chat("alice"), {}), ("/v1/chat/completions", chat("bob", words="a b c d e"), {})])
    assert exporter.force_flush() is True
    for record in memory.calls:
        assert record.usage is not None
        expected = (record.usage.prompt_tokens * 2.0 + record.usage.completion_tokens * 8.0) / 1e6
        user = memory.dimensions(record)["User ID"]
        assert abs(capture.sums("Cost", **{"User ID": user}) - expected) < 1e-9
