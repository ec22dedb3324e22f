"""ThreeScaleExporter against a local 3scale backend stand-in on 127.0.0.1.

Every test reads what the backend accepted (form fields parsed as Rack parses them) and
compares it with what the middleware counted, per application credential: nothing lost
after refused batches, a hanging backend or a restart, nothing reported twice, bad
credentials dropped alone, and the request path never waiting for the backend.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from llm_metrics_middleware import LLMMetricsMiddleware, LLMMetricsWSGIMiddleware, MetricRule, PrometheusExporter
from llm_metrics_middleware._exporters.threescale import ThreeScaleExporter
from llm_metrics_middleware.testing import InMemoryExporter, SimulatedLLM

from .drive import run_asgi, run_wsgi
from .servers import free_port, uvicorn_server
from .threescale_capture import BLOCK, HANG, OK, REFUSE, TRICKLE, CaptureServer, capture_server


def user_key(request: Any) -> str | None:
    return request.headers.get("x-api-key")  # type: ignore[no-any-return]


@pytest.fixture
def capture() -> Iterator[CaptureServer]:
    with capture_server() as server:
        yield server


@pytest.fixture
def made() -> Iterator[list[ThreeScaleExporter]]:
    exporters: list[ThreeScaleExporter] = []
    yield exporters
    for exporter in exporters:
        exporter.shutdown(timeout_millis=2000)


def make(made: list[ThreeScaleExporter], url: str, **options: Any) -> ThreeScaleExporter:
    options.setdefault("service_id", "svc-1")
    options.setdefault("service_token", "token-1")
    if "app_id" not in options:
        options.setdefault("user_key", user_key)
    options.setdefault("flush_interval", 3600)  # flushed by hand
    options.setdefault("timeout", 2.0)
    exporter = ThreeScaleExporter(url, **options)
    made.append(exporter)
    return exporter


def chat(words: str = "hello there world", *, model: str = "sim-gpt-1", stream: bool = False, max_tokens: int = 8) -> bytes:
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": words}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return json.dumps(body).encode()


def call(app: Any, key: str | None, body: bytes | None = None, path: str = "/v1/chat/completions", **headers: str) -> None:
    hdrs = [("content-type", "application/json"), *headers.items()]
    if key is not None:
        hdrs.append(("x-api-key", key))
    run_asgi(app, path=path, body=body or chat(), headers=hdrs)


def counted(memory: InMemoryExporter, header: str = "x-api-key") -> dict[tuple[str, ...], Counter[str]]:
    """What the middleware counted, per user key, under the default metric names."""
    out: dict[tuple[str, ...], Counter[str]] = {}
    for record in memory.calls:
        assert record.request is not None and record.usage is not None
        if header not in record.request.headers:
            continue
        key = ("user_key", record.request.headers[header])
        out.setdefault(key, Counter()).update({
            "prompt_tokens": record.usage.prompt_tokens,
            "completion_tokens": record.usage.completion_tokens,
            "total_tokens": record.usage.total_tokens,
        })
    return out


def wrap(exporter: ThreeScaleExporter, **options: Any) -> tuple[LLMMetricsMiddleware, InMemoryExporter]:
    memory = InMemoryExporter()
    return LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[exporter, memory], **options), memory


# -- the protocol ----------------------------------------------------------------------


def test_usage_per_user_key_in_one_batched_form_post(capture: CaptureServer, made: list[ThreeScaleExporter]) -> None:
    app, memory = wrap(make(made, capture.url))
    for key, words in [("alice", "a b c"), ("bob", "one two three four five"), ("alice", "x"), ("carol", "hi")]:
        call(app, key, chat(words))
    call(app, key=None)  # no credential: not reported
    call(app, "alice", chat(stream=True))
    assert made[0].force_flush(5000) is True
    [post] = capture.accepted
    assert post.content_type == "application/x-www-form-urlencoded"
    assert ("service_token", "token-1") in post.fields and ("service_id", "svc-1") in post.fields
    assert re.fullmatch(r"transactions\[0\]\[user_key\]", post.fields[2][0])
    assert len(post.transactions) == 3  # one transaction per application, sums merged
    without_key = [r for r in memory.calls if "x-api-key" not in r.request.headers]  # type: ignore[union-attr]
    assert len(without_key) == 1 and made[0].stats["no_credential"] == 1
    assert capture.sums() == counted(memory)
    assert set(capture.sums()[("user_key", "alice")]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert made[0].stats["reported"] == 3 and made[0].stats["posts"] == 1


def test_app_id_and_app_key_with_configured_metric_names(capture: CaptureServer, made: list[ThreeScaleExporter]) -> None:
    exporter = make(
        made,
        capture.url + "/",
        app_id=lambda request: request.headers.get("x-app-id"),
        app_key=lambda request: request.headers.get("x-app-key"),
        metrics={"total_tokens": "llm_tokens", "calls": "hits", "prompt_tokens": "llm_input"},
    )
    app, memory = wrap(exporter)
    run_asgi(app, path="/v1/chat/completions", body=chat("a b"), headers=[("x-app-id", "app1"), ("x-app-key", "secret")])
    run_asgi(app, path="/v1/chat/completions", body=chat("a b c d"), headers=[("x-app-id", "app1"), ("x-app-key", "secret")])
    run_asgi(app, path="/v1/chat/completions", body=chat("z"), headers=[("x-app-id", "app2")])
    assert exporter.force_flush(5000) is True
    total1 = sum(r.usage.total_tokens for r in memory.calls[:2])  # type: ignore[union-attr]
    prompt1 = sum(r.usage.prompt_tokens for r in memory.calls[:2])  # type: ignore[union-attr]
    assert capture.sums() == {
        ("app_id", "app1", "secret"): Counter(llm_tokens=total1, hits=2, llm_input=prompt1),
        ("app_id", "app2", ""): Counter(
            llm_tokens=memory.calls[2].usage.total_tokens, hits=1, llm_input=memory.calls[2].usage.prompt_tokens  # type: ignore[union-attr]
        ),
    }


def test_timestamps_name_the_minute_of_the_calls(capture: CaptureServer, made: list[ThreeScaleExporter]) -> None:
    app, _ = wrap(make(made, capture.url, timestamps=True))
    call(app, "alice")
    assert made[0].force_flush(5000) is True
    [post] = capture.accepted
    [transaction] = post.transactions
    assert transaction.timestamp is not None
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:00 \+00:00", transaction.timestamp)


def test_the_wsgi_middleware_reports_too(capture: CaptureServer, made: list[ThreeScaleExporter]) -> None:
    exporter = make(made, capture.url)
    memory = InMemoryExporter()
    app = LLMMetricsWSGIMiddleware(SimulatedLLM().wsgi, exporters=[exporter, memory])
    run_wsgi(app, body=chat(), headers=[("content-type", "application/json"), ("x-api-key", "alice")])
    assert exporter.force_flush(5000) is True
    assert capture.sums() == counted(memory)


# -- nothing lost ----------------------------------------------------------------------


def test_refused_batches_are_kept_and_retried(capture: CaptureServer, made: list[ThreeScaleExporter]) -> None:
    exporter = make(made, capture.url)
    app, memory = wrap(exporter)
    capture.mode = REFUSE
    call(app, "alice", chat("a b c"))
    call(app, "bob", chat("d e"))
    assert exporter.force_flush(5000) is False  # 503: kept
    call(app, "alice", chat("f"))  # more usage while the backend refuses
    assert exporter.force_flush(5000) is False
    assert capture.accepted == [] and capture.statuses == [503, 503]
    capture.mode = OK
    assert exporter.force_flush(5000) is True
    assert capture.sums() == counted(memory)
    assert exporter.force_flush(5000) is True  # nothing left: nothing sent twice
    assert len(capture.accepted) == 1 and exporter.stats["retries"] == 2


def test_connection_refused_until_the_backend_starts(made: list[ThreeScaleExporter]) -> None:
    port = free_port()
    exporter = make(made, f"http://127.0.0.1:{port}")
    app, memory = wrap(exporter)
    for key in ("alice", "bob", "alice"):
        call(app, key)
    assert exporter.force_flush(5000) is False
    with capture_server(port=port) as late:
        assert exporter.force_flush(5000) is True
        assert late.sums() == counted(memory)


def test_a_hanging_backend_times_out_and_loses_nothing(capture: CaptureServer, made: list[ThreeScaleExporter]) -> None:
    exporter = make(made, capture.url, timeout=0.3)
    app, memory = wrap(exporter)
    capture.mode = HANG
    call(app, "alice")
    call(app, "bob")
    assert exporter.force_flush(10_000) is False  # the POST timed out; usage kept
    assert capture.holding.is_set() and capture.accepted == []
    capture.mode = OK
    capture.release.set()
    call(app, "alice")
    assert exporter.force_flush(10_000) is True
    assert capture.sums() == counted(memory)


def test_a_trickling_backend_is_abandoned_as_a_whole(capture: CaptureServer, made: list[ThreeScaleExporter]) -> None:
    """Each read arrives within the timeout, but the answer never ends: the report is cut off."""
    exporter = make(made, capture.url, timeout=0.3)
    app, memory = wrap(exporter)
    capture.mode = TRICKLE
    call(app, "alice")
    assert exporter.force_flush(20_000) is False
    assert exporter.stats["retries"] == 1 and exporter.stats["reported"] == 0  # ended, not still in flight
    capture.mode = OK
    capture.release.set()
    assert exporter.force_flush(10_000) is True
    assert capture.sums() == counted(memory)


def test_a_bad_credential_is_dropped_alone_and_logged_once(
    capture: CaptureServer, made: list[ThreeScaleExporter], caplog: pytest.LogCaptureFixture
) -> None:
    capture.invalid = {"mallory"}
    capture.over_limits = {"carol"}
    exporter = make(made, capture.url)
    app, memory = wrap(exporter)
    with caplog.at_level(logging.WARNING, logger="llm_metrics_middleware"):
        for _ in range(2):
            for key in ("alice", "mallory", "bob", "carol"):
                call(app, key)
            assert exporter.force_flush(5000) is True
    good = {k: v for k, v in counted(memory).items() if k[1] in ("alice", "bob")}
    assert capture.sums() == good
    assert 403 in capture.statuses and 409 in capture.statuses
    assert exporter.stats["rejected"] == 4  # mallory and carol, twice
    refusals = [r.getMessage() for r in caplog.records if "refused a report" in r.getMessage()]
    assert len(refusals) == 2  # once per status and error code
    assert any("user_key_invalid" in m for m in refusals) and any("limits_exceeded" in m for m in refusals)


def test_a_bad_service_token_drops_the_batch_without_splitting(
    capture: CaptureServer, made: list[ThreeScaleExporter], caplog: pytest.LogCaptureFixture
) -> None:
    exporter = make(made, capture.url, service_token="wrong")
    app, _ = wrap(exporter)
    for key in ("alice", "bob", "carol"):
        call(app, key)
    with caplog.at_level(logging.WARNING, logger="llm_metrics_middleware"):
        assert exporter.force_flush(5000) is True
    assert capture.statuses == [403] and exporter.stats["posts"] == 1 and exporter.stats["rejected"] == 3
    assert any("service_token_invalid" in r.getMessage() for r in caplog.records)


def test_batches_are_capped(capture: CaptureServer, made: list[ThreeScaleExporter]) -> None:
    exporter = make(made, capture.url, max_batch=2)
    app, memory = wrap(exporter)
    for key in ("k1", "k2", "k3", "k4", "k5", "k1"):
        call(app, key)
    assert exporter.force_flush(5000) is True
    assert all(len(post.transactions) <= 2 for post in capture.accepted) and len(capture.accepted) >= 3
    assert capture.sums() == counted(memory)


def test_pending_applications_are_bounded(capture: CaptureServer, made: list[ThreeScaleExporter]) -> None:
    exporter = make(made, capture.url, max_pending=3)
    app, memory = wrap(exporter)
    for key in ("k1", "k2", "k3", "k4", "k1"):
        call(app, key)
    assert exporter.stats["dropped"] == 1  # k4: a fourth application while three wait
    assert exporter.force_flush(5000) is True
    assert capture.sums() == {k: v for k, v in counted(memory).items() if k[1] != "k4"}


def test_shutdown_flushes_and_is_bounded_with_a_hanging_backend(capture: CaptureServer, made: list[ThreeScaleExporter]) -> None:
    exporter = make(made, capture.url)
    app, memory = wrap(exporter)
    call(app, "alice")
    exporter.shutdown(timeout_millis=5000)
    assert capture.sums() == counted(memory)
    call(app, "alice")  # after shutdown: ignored, never raises
    hanging = make(made, capture.url, timeout=0.2)
    app, _ = wrap(hanging)
    capture.mode = HANG
    call(app, "bob")
    hanging.shutdown(timeout_millis=1000)  # returns although the backend never answers
    assert hanging.stats["reported"] == 0 and capture.holding.is_set()
    assert hanging._thread is not None
    hanging._thread.join(10)  # its POST times out, and the thread ends
    assert not hanging._thread.is_alive()


def test_a_flush_when_no_thread_can_start_reports_from_the_flushing_thread(
    capture: CaptureServer, made: list[ThreeScaleExporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.12+ starts no thread at interpreter shutdown, when a gunicorn worker's
    atexit flush runs: neither the reporting thread nor the POST's watchdog. The calls
    are still counted, and the flush posts them itself."""
    exporter = make(made, capture.url)
    app, memory = wrap(exporter)

    start = threading.Thread.start

    def refuse(self: threading.Thread) -> None:
        # Ours (the reporting thread, the POST's watchdog Timer); the capture server's
        # request threads stand for the backend, in another process in real life.
        if self.name.startswith("llm-metrics") or isinstance(self, threading.Timer):
            raise RuntimeError("can't create new thread at interpreter shutdown")
        start(self)

    monkeypatch.setattr(threading.Thread, "start", refuse)
    call(app, "alice")
    call(app, "bob", chat("one two"))
    assert exporter._thread is None  # the record path could not start it, and did not raise
    assert exporter.force_flush(5000) is True
    monkeypatch.undo()
    assert capture.sums() == counted(memory) and len(capture.sums()) == 2


# -- the request path --------------------------------------------------------------------


def test_requests_never_wait_for_the_backend(capture: CaptureServer, made: list[ThreeScaleExporter]) -> None:
    """The backend holds its answer; the middleware keeps answering requests meanwhile."""
    exporter = make(made, capture.url, max_batch=1)  # the first call wakes the reporting thread
    memory = InMemoryExporter()
    app = LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[exporter, memory])
    capture.mode = BLOCK
    with uvicorn_server(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        first = client.post("/v1/chat/completions", content=chat(), headers={"x-api-key": "alice"})
        assert first.status_code == 200
        assert capture.holding.wait(10), "the exporter never reported"
        # The report is now held open by the backend. Requests still complete, streamed or not:
        for key, stream in [("bob", False), ("alice", True), ("carol", False)]:
            response = client.post("/v1/chat/completions", content=chat(stream=stream), headers={"x-api-key": key})
            assert response.status_code == 200 and response.content
            assert not capture.release.is_set() and capture.accepted == []
        # The client can read a response's last byte before the middleware has recorded it.
        deadline = time.monotonic() + 10
        while len(memory.calls) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(memory.calls) == 4
        capture.mode = OK
        capture.release.set()
        assert exporter.force_flush(10_000) is True
    assert capture.sums() == counted(memory)


# -- rules -----------------------------------------------------------------------------


def test_rules_increment_only_when_their_condition_holds(capture: CaptureServer, made: list[ThreeScaleExporter]) -> None:
    rules = [
        MetricRule("big_model_tokens", usage="total_tokens", model="sim-gpt-1"),
        MetricRule("beta_prompt_tokens", usage="prompt_tokens", headers={"x-beta": "1"}),
        MetricRule("stream_calls", usage="calls", when=lambda c: c.streamed),
        MetricRule("v2_completion", usage="completion_tokens", path=re.compile(r"^/v2/")),
        MetricRule("errors", usage="calls", status="4xx"),
    ]
    registry = CollectorRegistry()
    exporter = make(made, capture.url, rules=rules)
    memory = InMemoryExporter()
    app = LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[exporter, memory, PrometheusExporter(registry, rules=rules)], dimensions=["User ID"])
    call(app, "alice", chat(model="sim-gpt-1"))
    call(app, "alice", chat(model="sim-small"), **{"x-beta": "1"})
    call(app, "alice", chat(model="sim-small", stream=True))
    call(app, "bob", chat(model="sim-small"), path="/v2/chat/completions")
    assert exporter.force_flush(5000) is True
    a1, a2, a3, b1 = memory.calls
    assert capture.sums() == {
        ("user_key", "alice"): Counter(
            big_model_tokens=a1.usage.total_tokens,  # type: ignore[union-attr]
            beta_prompt_tokens=a2.usage.prompt_tokens,  # type: ignore[union-attr]
            stream_calls=1,
        ),
        ("user_key", "bob"): Counter(v2_completion=b1.usage.completion_tokens),  # type: ignore[union-attr]
    }
    # The same rules as Prometheus counters, with the dimensions' labels.
    assert registry.get_sample_value("llm_big_model_tokens_total", {"user_id": "unknown"}) == a1.usage.total_tokens  # type: ignore[union-attr]
    assert registry.get_sample_value("llm_stream_calls_total", {"user_id": "unknown"}) == 1
    assert registry.get_sample_value("llm_errors_total", {"user_id": "unknown"}) is None


def test_rule_conditions() -> None:
    from llm_metrics_middleware import CallRecord, Usage

    record = CallRecord(
        dimensions=(), usage=Usage(10, 5, 15), usage_source="reported", provider="openai", operation="chat.completions",
        request_model="gpt-4o", response_model="gpt-4o-2024-08-06", status=201, outcome="completed", streamed=False,
        duration_s=0.1, time_to_first_chunk_s=None,
    )
    assert MetricRule("m", status="2xx").amount(record) == 15
    assert MetricRule("m", status=[200, 500]).amount(record) == 0
    assert MetricRule("m", model="gpt-4o").amount(record) == 15  # prefix of the response model
    assert MetricRule("m", model=re.compile(r"mini")).amount(record) == 0
    assert MetricRule("m", path="/v1").amount(record) == 0  # no request: a path cannot hold
    assert MetricRule("m", usage="calls").amount(record) == 1
    assert MetricRule("m", when=lambda c: 1 / 0).amount(record) == 0  # a failing condition does not hold
    for bad, match in [({"usage": "tokens"}, "usage field"), ({"status": "2x"}, "HTTP status"), ({"model": 3}, "re.Pattern")]:
        with pytest.raises((ValueError, TypeError), match=match):
            MetricRule("m", **bad)
    with pytest.raises(ValueError, match="name"):
        MetricRule("bad name")
    with pytest.raises(ValueError, match="clash"):
        PrometheusExporter(CollectorRegistry(), rules=[MetricRule("tokens")])


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options,match",
    [
        ({"user_key": None}, "exactly one of user_key"),
        ({"app_id": user_key}, "exactly one of user_key"),
        ({"user_key": "x-api-key"}, "callable"),
        ({"app_key": user_key}, "app_key= goes with app_id"),
        ({"service_id": ""}, "service_id"),
        ({"metrics": {"tokens": "t"}}, "usage field"),
        ({"max_batch": 5000}, "max_batch"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_bad_options(options: dict[str, Any], match: str) -> None:
    kwargs: dict[str, Any] = {"service_id": "s", "service_token": "t", "user_key": user_key, **options}
    with pytest.raises((ValueError, TypeError), match=match):
        ThreeScaleExporter("http://127.0.0.1:1", **kwargs)
    with pytest.raises(ValueError, match="url"):
        ThreeScaleExporter("127.0.0.1:3000", service_id="s", service_token="t", user_key=user_key)


def test_a_failing_credential_callable_never_breaks_the_request(capture: CaptureServer, made: list[ThreeScaleExporter]) -> None:
    def broken(request: Any) -> str:
        raise RuntimeError("bug in the app's callable")

    exporter = make(made, capture.url, user_key=broken)
    app, memory = wrap(exporter)
    call(app, "alice")
    assert len(memory.calls) == 1 and exporter.stats["credential_error"] == 1
    assert exporter.force_flush(5000) is True and capture.accepted == []


# -- pre-fork servers ----------------------------------------------------------------------

GUNICORN_APP = '''
import os

from llm_metrics_middleware import LLMMetricsWSGIMiddleware, ThreeScaleExporter
from llm_metrics_middleware.testing import SimulatedLLM

# Built in gunicorn's master (--preload), used in the forked workers.
exporter = ThreeScaleExporter(
    os.environ["THREESCALE_URL"], service_id="svc-1", service_token="token-1",
    user_key=lambda request: request.headers.get("x-api-key"), flush_interval=3600,
)
app = LLMMetricsWSGIMiddleware(SimulatedLLM().wsgi, exporters=[exporter])
'''


@pytest.mark.slow
def test_gunicorn_workers_report_their_own_usage_when_they_stop(capture: CaptureServer, tmp_path: Any) -> None:
    """The exporter is built before the fork; each worker sums and reports its own calls,
    and flushes them when gunicorn stops it."""
    from .servers import gunicorn_server, python_env

    (tmp_path / "threescale_app.py").write_text(GUNICORN_APP)
    expected: dict[tuple[str, ...], Counter[str]] = {}
    args = ["--chdir", str(tmp_path), "--preload", "--workers", "2", "--worker-class", "sync"]
    with gunicorn_server("threescale_app:app", workdir=tmp_path, env=python_env(THREESCALE_URL=capture.url), args=args) as server:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
            for i in range(24):
                key = f"key-{i % 3}"
                response = client.post("/v1/chat/completions", content=chat(" ".join(["w"] * (1 + i))), headers={"x-api-key": key})
                assert response.status_code == 200
                usage = response.json()["usage"]
                expected.setdefault(("user_key", key), Counter()).update(
                    {name: usage[name] for name in ("prompt_tokens", "completion_tokens", "total_tokens")}
                )
        assert capture.accepted == []  # nothing is due before the workers stop
    assert capture.sums() == expected  # every worker flushed at exit: nothing lost, nothing twice


# -- outgoing calls ------------------------------------------------------------------------


def test_outgoing_llm_calls_are_reported_for_the_incoming_application(
    capture: CaptureServer, made: list[ThreeScaleExporter]
) -> None:
    """An app that calls the LLM itself (httpx, instrumented): the credential is the incoming
    request's, and the exporter's own reports (http.client) are never metered."""
    from llm_metrics_middleware import Price, instrument_httpx, uninstrument_httpx

    exporter = make(made, capture.url)
    memory = InMemoryExporter()
    simulated = SimulatedLLM()

    async def upstream(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await simulated.asgi(scope, receive, send)

    with uvicorn_server(upstream) as upstream_url:

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            while (await receive()).get("more_body"):
                pass
            async with httpx.AsyncClient(base_url=upstream_url, timeout=10) as client:
                answer = await client.post("/v1/chat/completions", content=chat("outgoing call words"))
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": answer.content})

        wrapped = LLMMetricsMiddleware(app, exporters=[exporter, memory], pricing={"sim-gpt": Price(1, 2)})
        instrument_httpx()
        try:
            with uvicorn_server(wrapped) as url, httpx.Client(base_url=url, timeout=10) as client:
                for key in ("alice", "bob", "alice"):
                    assert client.post("/ask", content=b"{}", headers={"x-api-key": key}).status_code == 200
                assert exporter.force_flush(10_000) is True
        finally:
            uninstrument_httpx()
    assert len(memory.calls) == 3 and all(c.origin == "outgoing" and c.cost_usd for c in memory.calls)
    assert capture.sums() == counted(memory)
