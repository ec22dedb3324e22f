"""Token limits (``limits=``): refused before the app, charged when counted, shared through Redis.

In process (httpx's ASGI and WSGI transports) for the rules, real servers for the rest:
uvicorn and gunicorn in their own processes sharing one real ``redis-server``, the official
OpenAI SDK reading the 429, and Redis killed under a running server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from llm_metrics_middleware import (
    Dimension,
    LLMMetricsMiddleware,
    LLMMetricsWSGIMiddleware,
    PrometheusExporter,
    TokenLimit,
)
from llm_metrics_middleware._core.providers import route_of
from llm_metrics_middleware.testing import InMemoryExporter, SimulatedLLM, prompt_tokens_of

from .drive import receive_body
from .redis_server import RedisProcess, needs_redis, redis_sentinel, redis_server
from .servers import free_port, gunicorn_server, metric_sum, python_env, scrape, server_process, uvicorn_server

# The simulator answers max_tokens words (16 by default), one token each.
COMPLETION = 16


def chat(user: str | None = "ada", words: str = "hello there world", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-sim", "messages": [{"role": "user", "content": words}], **extra}
    if user is not None:
        body["user"] = user
    return body


CALL_TOKENS = prompt_tokens_of(chat()) + COMPLETION  # 22


class CountingApp:
    """The simulated LLM, counting how often it is called (a refused request must not reach it)."""

    def __init__(self) -> None:
        self.upstream = SimulatedLLM()
        self.calls = 0
        self.bodies: list[bytes] = []

    async def asgi(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.calls += 1
        await self.upstream.asgi(scope, receive, send)

    def wsgi(self, environ: Any, start_response: Any) -> Iterable[bytes]:
        self.calls += 1
        return self.upstream.wsgi(environ, start_response)


def limit_samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.startswith("llm_limit") or sample.name == "llm_metering_errors_total":
                key = sample.labels.get("limit") or sample.labels.get("kind") or ""
                out[(sample.name, key)] = out.get((sample.name, key), 0) + sample.value
    return out


class Driver:
    """One middleware in process, ASGI or WSGI, with a Prometheus registry of its own."""

    def __init__(self, kind: str, **options: Any) -> None:
        self.kind = kind
        self.loop = asyncio.new_event_loop() if kind == "asgi" else None
        _open.append(self)
        self.app = CountingApp()
        self.registry = CollectorRegistry()
        self.memory = InMemoryExporter()
        options.setdefault("exporters", [PrometheusExporter(self.registry), self.memory])
        if "limits" in options:
            # A loaded test machine can take longer than the 0.25 s default for one store
            # call; the tests of the timeout itself pass their own.
            options.setdefault("limit_timeout", 2.0)
        if kind == "asgi":
            self.middleware: Any = LLMMetricsMiddleware(self.app.asgi, **options)
        else:
            self.middleware = LLMMetricsWSGIMiddleware(self.app.wsgi, **options)

    def post(self, body: Any, path: str = "/v1/chat/completions", headers: dict[str, str] | None = None) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"content-type": "application/json", **(headers or {})}
        if self.kind == "wsgi":
            with httpx.Client(transport=httpx.WSGITransport(app=self.middleware), base_url="http://t") as client:
                response = client.post(path, content=content, headers=headers)
                response.read()
                return response

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.middleware)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                response = await client.post(path, content=content, headers=headers)
                await response.aread()
            await self.middleware.metering.limits.drain()  # the charge is a task on the loop
            return response

        assert self.loop is not None
        return self.loop.run_until_complete(go())

    def close(self) -> None:
        limiter = self.middleware.metering.limits
        if self.loop is not None:
            if limiter is not None:
                self.loop.run_until_complete(limiter.aclose())
            self.loop.close()
        elif limiter is not None:
            limiter.close()

    def samples(self) -> dict[tuple[str, str], float]:
        return limit_samples(self.registry)


KINDS = ["asgi", "wsgi"]
_open: list[Driver] = []


@pytest.fixture(autouse=True)
def _close_drivers() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def assert_refused(response: httpx.Response, limit: str) -> int:
    assert response.status_code == 429, response.text
    retry = response.headers["retry-after"]
    assert retry.isdigit() and int(retry) >= 1
    error = response.json()["error"]
    assert error["type"] == "tokens" and error["code"] == "rate_limit_exceeded"
    assert repr(limit) in error["message"]
    assert response.headers["content-type"] == "application/json"
    return int(retry)


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "match"),
    [
        (TokenLimit("a", tokens=0, per="minute"), "tokens= takes a positive int"),
        (TokenLimit("a", tokens=10, per="week"), "per='week' is not a window"),
        (TokenLimit("a", tokens=10, per=0), "at least 1 second"),
        (TokenLimit("a", tokens=10, per="minute", key="Team"), "key='Team' is not a dimension"),
        (TokenLimit("", tokens=10, per="minute"), "non-empty name"),
    ],
)
def test_bad_limits_say_what_to_change(limit: TokenLimit, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[InMemoryExporter()], limits=[limit])


def test_bad_options_say_what_to_change() -> None:
    app = SimulatedLLM().asgi
    ex = [InMemoryExporter()]
    limit = TokenLimit("a", tokens=10, per="minute")
    with pytest.raises(ValueError, match="two limits are named"):
        LLMMetricsMiddleware(app, exporters=ex, limits=[limit, limit])
    with pytest.raises(TypeError, match="list of TokenLimit"):
        LLMMetricsMiddleware(app, exporters=ex, limits=limit)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="storage URI"):
        LLMMetricsMiddleware(app, exporters=ex, limits=[limit], limit_storage="localhost:6379")
    with pytest.raises(ValueError, match="limit_headers"):
        LLMMetricsMiddleware(app, exporters=ex, limits=[limit], limit_headers={"left": "x"})
    with pytest.raises(ValueError, match="limit_headers"):
        LLMMetricsMiddleware(app, exporters=ex, limits=[limit], limit_headers={"remaining": "tokens left"})
    with pytest.raises(ValueError, match="subscription_secret"):
        LLMMetricsMiddleware(
            app, exporters=ex, limit_storage="redis://127.0.0.1:1/0",
            limits=[TokenLimit("a", tokens=10, per="minute", key="Subscription ID")],
        )


def test_a_limit_needs_tokens_and_per_by_keyword() -> None:
    with pytest.raises(TypeError):
        TokenLimit("a", 10, "minute")  # type: ignore[misc]
    assert TokenLimit("a", tokens=1, per="month").window_seconds == 30 * 86_400


# -- the rules, in process -----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_key_that_used_its_tokens_is_refused_before_the_app(kind: str) -> None:
    d = Driver(kind, limits=[TokenLimit("per-user", tokens=50, per="minute")])
    # 22 tokens a call: 0 -> 22 -> 44 used, all admitted (44 < 50); the third overshoots to 66.
    for _ in range(3):
        assert d.post(chat("ada")).status_code == 200
    assert d.app.calls == 3
    refused = d.post(chat("ada"))
    retry = assert_refused(refused, "per-user")
    assert 1 <= retry <= 60
    assert d.app.calls == 3, "a refused request reached the app"
    assert d.memory.totals()["total"] == 3 * CALL_TOKENS  # refusals are not LLM calls
    # Another key has its own budget.
    assert d.post(chat("grace")).status_code == 200
    samples = d.samples()
    assert samples[("llm_limit_authorized_calls_total", "per-user")] == 4
    assert samples[("llm_limit_limited_calls_total", "per-user")] == 1
    assert samples[("llm_limit_authorized_tokens_total", "per-user")] == 4 * CALL_TOKENS
    assert samples[("llm_limit_tokens", "per-user")] == 50
    assert d.memory.limits == [("per-user", 50, 60)]
    assert sum(e[2] for e in d.memory.limit_events) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_when_selects_the_tier_as_in_kuadrants_free_and_gold(kind: str) -> None:
    def tier(r: Any) -> str:
        return str(r.headers.get("X-Tier", "free"))

    d = Driver(kind, limits=[
        TokenLimit("free", tokens=30, per="day", when=lambda r: tier(r) == "free"),
        TokenLimit("gold", tokens=100, per="day", when=lambda r: tier(r) == "gold"),
    ])
    gold = {"X-Tier": "gold"}
    assert d.post(chat("ada")).status_code == 200
    assert d.post(chat("ada")).status_code == 200  # 22 < 30: admitted, overshoots to 44
    assert_refused(d.post(chat("ada")), "free")
    for _ in range(5):  # 0, 22, 44, 66, 88 < 100
        assert d.post(chat("bob"), headers=gold).status_code == 200
    assert_refused(d.post(chat("bob"), headers=gold), "gold")
    samples = d.samples()
    assert samples[("llm_limit_limited_calls_total", "free")] == 1
    assert samples[("llm_limit_limited_calls_total", "gold")] == 1
    assert samples[("llm_limit_authorized_calls_total", "gold")] == 5
    assert samples[("llm_limit_authorized_tokens_total", "free")] == 2 * CALL_TOKENS
    assert samples[("llm_limit_tokens", "gold")] == 100


@pytest.mark.parametrize("kind", KINDS)
def test_a_request_without_a_key_is_not_limited(kind: str) -> None:
    d = Driver(kind, limits=[TokenLimit("per-user", tokens=1, per="minute")])
    for _ in range(3):
        assert d.post(chat(user=None)).status_code == 200
    assert ("llm_limit_authorized_calls_total", "per-user") not in d.samples() or (
        d.samples()[("llm_limit_authorized_calls_total", "per-user")] == 0
    )


@pytest.mark.parametrize("kind", KINDS)
def test_the_key_is_read_from_the_body_and_the_app_gets_the_same_bytes(kind: str) -> None:
    seen: list[bytes] = []

    async def echo_asgi(scope: Any, receive: Any, send: Any) -> None:
        body = await receive_body(receive)
        seen.append(body)
        await SimulatedLLM().asgi(scope, _replay(body), send)

    def echo_wsgi(environ: Any, start_response: Any) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        body = stream.readline() + stream.read(7) + stream.read()
        seen.append(body)
        environ["wsgi.input"] = _BytesInput(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return SimulatedLLM().wsgi(environ, start_response)

    limits = [TokenLimit("per-user", tokens=30, per="minute")]
    exporter = InMemoryExporter()
    middleware: Any = (
        LLMMetricsMiddleware(echo_asgi, exporters=[exporter], limits=limits)
        if kind == "asgi"
        else LLMMetricsWSGIMiddleware(echo_wsgi, exporters=[exporter], limits=limits)
    )
    d = Driver(kind, limits=limits)
    d.middleware = middleware
    # A body larger than the read-ahead, with a newline, to exercise the replay of the prefix.
    padding = "x " * 40_000
    body = json.dumps(chat("body-user", words="hi"), indent=1).encode()
    body = body[:-1] + b', "padding": "' + padding.encode() + b'"}'
    assert d.post(body).status_code == 200
    assert d.post(body).status_code == 200
    assert_refused(d.post(body), "per-user")
    assert seen == [body, body]
    assert exporter.dimensions(exporter.calls[0])["User ID"] == "body-user"


async def _noop_receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


def _replay(body: bytes) -> Callable[[], Any]:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await _noop_receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class _BytesInput:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, size: int = -1) -> bytes:
        out, self.data = (self.data, b"") if size is None or size < 0 else (self.data[:size], self.data[size:])
        return out


@pytest.mark.parametrize("kind", KINDS)
def test_windows_roll_over(kind: str) -> None:
    d = Driver(kind, limits=[TokenLimit("burst", tokens=20, per=1)])
    assert d.post(chat("ada")).status_code == 200
    retry = assert_refused(d.post(chat("ada")), "burst")
    assert retry == 1
    deadline = time.monotonic() + 5
    while True:  # the one-second window ends; at most a few polls
        time.sleep(0.25)
        response = d.post(chat("ada"))
        if response.status_code == 200 or time.monotonic() > deadline:
            break
    assert response.status_code == 200


def test_the_memory_store_sweeps_ended_windows() -> None:
    d = Driver("wsgi", limits=[TokenLimit("burst", tokens=1000, per=1)])
    for i in range(20):
        assert d.post(chat(f"user-{i}")).status_code == 200
    storage = d.middleware.metering.limits._store().storage
    assert len(storage.expirations) == 20
    time.sleep(1.3)  # the one-second windows end, and a sweep is due
    assert d.post(chat("late")).status_code == 200
    assert len(storage.expirations) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_admitted_within_budget_finishes_and_is_charged_whole(kind: str) -> None:
    d = Driver(kind, limits=[TokenLimit("per-user", tokens=10, per="minute")])
    stream = chat("ada", stream=True, stream_options={"include_usage": True}, max_tokens=40)
    response = d.post(stream)
    assert response.status_code == 200
    assert response.text.count("data: ") >= 40 and response.text.rstrip().endswith("data: [DONE]")
    charged = prompt_tokens_of(stream) + 40
    assert d.samples()[("llm_limit_authorized_tokens_total", "per-user")] == charged  # overshoot: 46 of 10
    assert_refused(d.post(chat("ada")), "per-user")


@pytest.mark.parametrize("kind", KINDS)
def test_remaining_tokens_headers_openai_names_and_custom_names(kind: str) -> None:
    d = Driver(kind, limits=[TokenLimit("per-user", tokens=100, per="minute")], limit_headers="openai")
    first = d.post(chat("ada"))
    assert first.headers["x-ratelimit-limit-tokens"] == "100"
    assert first.headers["x-ratelimit-remaining-tokens"] == "100"
    assert first.headers["x-ratelimit-reset-tokens"] == "1m0s"
    second = d.post(chat("ada"))
    assert second.headers["x-ratelimit-remaining-tokens"] == str(100 - CALL_TOKENS)
    assert second.headers["x-ratelimit-reset-tokens"].endswith("s")
    d = Driver(kind, limits=[TokenLimit("q", tokens=100, per="day")], limit_headers={"remaining": "remaining-tokens"})
    d.post(chat("ada"))
    response = d.post(chat("ada"))
    assert response.headers["remaining-tokens"] == str(100 - CALL_TOKENS)
    assert "x-ratelimit-limit-tokens" not in response.headers


@pytest.mark.parametrize("kind", KINDS)
def test_our_headers_replace_the_upstreams_same_named_ones(kind: str) -> None:
    headers = [("content-type", "application/json"), ("X-RateLimit-Remaining-Tokens", "999999"), ("x-request-id", "r1")]
    body = json.dumps({"usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}}).encode()

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        raw = [(k.encode(), v.encode()) for k, v in headers]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    def wsgi_app(environ: Any, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", list(headers))
        return [body]

    limits = [TokenLimit("per-user", tokens=100, per="minute")]
    d = Driver(kind, limits=limits, limit_headers="openai")
    d.middleware = (
        LLMMetricsMiddleware(asgi_app, exporters=[InMemoryExporter()], limits=limits, limit_headers="openai")
        if kind == "asgi"
        else LLMMetricsWSGIMiddleware(wsgi_app, exporters=[InMemoryExporter()], limits=limits, limit_headers="openai")
    )
    d.post(chat("ada"))
    response = d.post(chat("ada"))
    assert response.headers.get_list("x-ratelimit-remaining-tokens") == ["90"]
    assert response.headers["x-request-id"] == "r1"


@pytest.mark.parametrize("kind", KINDS)
def test_prompt_estimate_refuses_a_request_that_would_cross_the_limit(kind: str) -> None:
    limits = [TokenLimit("est", tokens=100, per="minute", estimate_prompt=True)]
    d = Driver(kind, limits=limits)
    big = chat("ada", words="word " * 200)  # about 250 tokens by the byte estimate
    assert_refused(d.post(big), "est")
    assert d.app.calls == 0
    assert d.post(chat("ada")).status_code == 200
    # Off by default: the same request passes.
    d = Driver(kind, limits=[TokenLimit("est", tokens=100, per="minute")])
    assert d.post(big).status_code == 200


@pytest.mark.parametrize("kind", KINDS)
def test_a_callable_key_and_a_custom_dimension_key(kind: str) -> None:
    d = Driver(
        kind,
        dimensions=["User ID", Dimension("team", lambda r: r.headers.get("x-team"))],
        limits=[
            TokenLimit("team", tokens=30, per="minute", key="team"),
            TokenLimit("key", tokens=1000, per="minute", key=lambda r: r.headers.get("x-key")),
        ],
    )
    assert d.post(chat("a"), headers={"x-team": "ads"}).status_code == 200
    assert d.post(chat("b"), headers={"x-team": "ads"}).status_code == 200
    assert_refused(d.post(chat("c"), headers={"x-team": "ads"}), "team")
    assert d.post(chat("c"), headers={"x-team": "search", "x-key": "k"}).status_code == 200
    assert d.samples()[("llm_limit_authorized_tokens_total", "key")] == CALL_TOKENS


def test_official_openai_client_reads_the_429_as_a_rate_limit_error() -> None:
    app = LLMMetricsMiddleware(
        SimulatedLLM().asgi, exporters=[InMemoryExporter()], limits=[TokenLimit("per-user", tokens=10, per="minute")]
    )
    with uvicorn_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0, timeout=10)
        try:
            client.chat.completions.create(model="gpt-sim", messages=[{"role": "user", "content": "hi"}], user="ada")
            deadline = time.monotonic() + 5
            with pytest.raises(openai.RateLimitError) as caught:
                while time.monotonic() < deadline:  # until the charge task has landed
                    client.chat.completions.create(
                        model="gpt-sim", messages=[{"role": "user", "content": "hi"}], user="ada"
                    )
                    time.sleep(0.05)
        finally:
            client.close()
    assert caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after"]) >= 1


# -- Redis ---------------------------------------------------------------------------------


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProcess]:
    with redis_server(tmp_path) as server:
        yield server


@needs_redis
@pytest.mark.parametrize("kind", KINDS)
def test_redis_counts_as_memory_does(kind: str, redis: RedisProcess) -> None:
    d = Driver(kind, limits=[TokenLimit("per-user", tokens=50, per="minute")], limit_storage=redis.url)
    for _ in range(3):
        assert d.post(chat("ada")).status_code == 200
    assert_refused(d.post(chat("ada")), "per-user")
    assert d.app.calls == 3
    # One middleware, a fresh process's view of the same store: refused as well.
    again = Driver(kind, limits=[TokenLimit("per-user", tokens=50, per="minute")], limit_storage=redis.url)
    assert_refused(again.post(chat("ada")), "per-user")


@needs_redis
def test_a_sentinel_url_is_shared_by_both_drivers(redis: RedisProcess, tmp_path: Path) -> None:
    with redis_sentinel(tmp_path, redis) as sentinel:
        limits = [TokenLimit("per-user", tokens=30, per="minute")]
        wsgi = Driver("wsgi", limits=limits, limit_storage=sentinel.url)
        asgi = Driver("asgi", limits=limits, limit_storage=sentinel.url)
        assert wsgi.post(chat("ada")).status_code == 200
        assert asgi.post(chat("ada")).status_code == 200  # 22 < 30 in the shared counter
        assert_refused(wsgi.post(chat("ada")), "per-user")
        assert_refused(asgi.post(chat("ada")), "per-user")
        asgi.close()  # in the loop that used the connections, while the sentinel is up
        wsgi.close()
        _open.remove(asgi)
        _open.remove(wsgi)


@needs_redis
def test_a_cluster_url_is_shared_by_both_drivers(tmp_path: Path) -> None:
    with redis_server(tmp_path, cluster=True) as cluster:
        limits = [TokenLimit("per-user", tokens=30, per="minute")]
        wsgi = Driver("wsgi", limits=limits, limit_storage=cluster.url)
        asgi = Driver("asgi", limits=limits, limit_storage=cluster.url)
        assert wsgi.post(chat("ada")).status_code == 200
        assert asgi.post(chat("ada")).status_code == 200
        assert_refused(wsgi.post(chat("ada")), "per-user")
        assert_refused(asgi.post(chat("ada")), "per-user")
        assert wsgi.memory.errors == [] and asgi.memory.errors == []
        asgi.close()
        wsgi.close()
        _open.remove(asgi)
        _open.remove(wsgi)


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@needs_redis
@pytest.mark.slow
def test_an_asgi_and_a_wsgi_process_share_one_redis_counter_and_pass_when_it_dies(
    redis: RedisProcess, tmp_path: Path
) -> None:
    env = python_env(LIMIT_STORAGE=redis.url, FREE_TOKENS="50", GOLD_TOKENS="200")
    uv_port = free_port()
    uvicorn_cmd = [
        python_executable(), "-m", "uvicorn", "tests.limits_apps:asgi", "--host", "127.0.0.1",
        "--port", str(uv_port), "--log-level", "warning", "--no-access-log",
    ]
    with (
        server_process(uvicorn_cmd, port=uv_port, log_path=tmp_path / "uvicorn.log", env=env) as asgi,
        gunicorn_server("tests.limits_apps:wsgi", workdir=tmp_path, env=env, config="workers = 1\n") as wsgi,
        httpx.Client(timeout=10) as client,
    ):

        def post(base: str, user: str, tier: str = "free") -> httpx.Response:
            return client.post(base + "/v1/chat/completions", json=chat(user), headers={"X-Tier": tier})

        def charged(base: str, limit: str, tokens: float) -> bool:
            return metric_sum(scrape(base), "llm_limit_authorized_tokens_total", limit=limit) >= tokens

        # ada (free, 50): one call through each process; the store has 44 -> one more is admitted.
        assert post(asgi.url, "ada").status_code == 200
        assert _wait_for(lambda: charged(asgi.url, "free", CALL_TOKENS))
        assert post(wsgi.url, "ada").status_code == 200
        assert _wait_for(lambda: charged(wsgi.url, "free", CALL_TOKENS))
        third = post(asgi.url, "ada")
        assert third.status_code == 200
        assert third.headers["x-ratelimit-remaining-tokens"] == str(50 - 2 * CALL_TOKENS)
        assert _wait_for(lambda: charged(asgi.url, "free", 2 * CALL_TOKENS))
        # Now 66 >= 50 in the shared counter: both processes refuse ada.
        assert_refused(post(wsgi.url, "ada"), "free")
        assert_refused(post(asgi.url, "ada"), "free")
        # The gold tier, for another user, is untouched.
        assert post(wsgi.url, "bob", "gold").status_code == 200
        asgi_metrics, wsgi_metrics = scrape(asgi.url), scrape(wsgi.url)
        assert metric_sum(asgi_metrics, "llm_limit_limited_calls_total", limit="free") == 1
        assert metric_sum(wsgi_metrics, "llm_limit_limited_calls_total", limit="free") == 1
        assert metric_sum(wsgi_metrics, "llm_limit_tokens", limit="gold", window_seconds="60") == 200
        total_charged = sum(
            metric_sum(m, "llm_limit_authorized_tokens_total", limit="free") for m in (asgi_metrics, wsgi_metrics)
        )
        assert total_charged == 3 * CALL_TOKENS
        # Redis killed under both servers: ada's exhausted key passes (fail open), each request
        # within the client's timeout, and both processes count the failure.
        redis.kill()
        for base in (asgi.url, wsgi.url):
            for _ in range(3):
                assert post(base, "ada").status_code == 200
            assert metric_sum(scrape(base), "llm_metering_errors_total", kind="limit_storage") >= 3


def python_executable() -> str:
    return sys.executable


@needs_redis
@pytest.mark.parametrize("kind", KINDS)
def test_redis_killed_mid_run_requests_pass_and_the_failure_is_counted(
    kind: str, redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    d = Driver(kind, limits=[TokenLimit("per-user", tokens=30, per="minute")], limit_storage=redis.url)
    assert d.post(chat("ada")).status_code == 200
    assert d.post(chat("ada")).status_code == 200
    assert_refused(d.post(chat("ada")), "per-user")
    redis.kill()
    with caplog.at_level(logging.WARNING, logger="llm_metrics_middleware"):
        for _ in range(5):  # fail open: the exhausted key passes while the store is gone
            assert d.post(chat("ada")).status_code == 200
    assert d.samples()[("llm_metering_errors_total", "limit_storage")] >= 5
    assert d.memory.errors.count("limit_storage") >= 5
    warnings = [r for r in caplog.records if "limit store" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once per outage, not per request


@needs_redis
@pytest.mark.parametrize("kind", KINDS)
def test_limits_hold_again_once_redis_is_back(
    kind: str, redis: RedisProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = Driver(kind, limits=[TokenLimit("per-user", tokens=30, per="minute")], limit_storage=redis.url)
    redis.kill()
    with caplog.at_level(logging.WARNING, logger="llm_metrics_middleware"):
        assert d.post(chat("ada")).status_code == 200  # fail open; the store is left alone 1 s
        with redis_server(tmp_path, port=redis.port):  # an empty Redis where the old one was
            deadline = time.monotonic() + 10
            statuses: list[int] = []
            # Requests keep coming while the store is left alone: they must not keep it down.
            while time.monotonic() < deadline and statuses[-2:] != [200, 429]:
                statuses.append(d.post(chat("ada")).status_code)
                time.sleep(0.1)
            assert statuses[-2:] == [200, 429], statuses  # counted again: 22, then 44 >= 30
    messages = [r.getMessage() for r in caplog.records if "limit store" in r.getMessage()]
    assert len(messages) == 2 and "answers again" in messages[1], messages


@needs_redis
@pytest.mark.parametrize("kind", KINDS)
def test_fail_closed_refuses_with_503_while_the_store_is_down(kind: str, redis: RedisProcess) -> None:
    d = Driver(
        kind, limits=[TokenLimit("per-user", tokens=30, per="minute")], limit_storage=redis.url, limit_fail_closed=True
    )
    assert d.post(chat("ada")).status_code == 200
    redis.kill()
    response = d.post(chat("ada"))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "limit_storage_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    assert d.app.calls == 1


@needs_redis
@pytest.mark.parametrize("kind", KINDS)
def test_a_stopped_redis_costs_at_most_the_timeout(kind: str, redis: RedisProcess) -> None:
    """A Redis that accepts but never answers (SIGSTOP): the request passes once the store
    call times out, and the next ones do not wait at all while the store is marked down."""
    import signal

    d = Driver(kind, limits=[TokenLimit("per-user", tokens=30, per="minute")], limit_storage=redis.url,
               limit_timeout=0.2)
    assert d.post(chat("ada")).status_code == 200
    redis.popen.send_signal(signal.SIGSTOP)
    try:
        responses = [d.post(chat("ada")) for _ in range(3)]
    finally:
        redis.popen.send_signal(signal.SIGCONT)
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert d.samples()[("llm_metering_errors_total", "limit_storage")] >= 1


# -- the other exporters -------------------------------------------------------------------


def test_opentelemetry_exporter_has_the_limit_instruments() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from llm_metrics_middleware import OpenTelemetryExporter

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    d = Driver("asgi", exporters=[OpenTelemetryExporter(provider)], limits=[TokenLimit("t", tokens=30, per="hour")])
    d.post(chat("ada"))
    d.post(chat("ada"))
    d.post(chat("ada"))
    found: dict[str, list[tuple[dict[str, Any], float]]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if not metric.name.startswith("llm.limit."):
                    continue
                for point in metric.data.data_points:
                    found.setdefault(metric.name, []).append((dict(point.attributes or {}), point.value))  # type: ignore[union-attr]
    assert found["llm.limit.authorized_calls"] == [({"limit": "t"}, 2)]
    assert found["llm.limit.limited_calls"] == [({"limit": "t"}, 1)]
    assert found["llm.limit.authorized_tokens"] == [({"limit": "t"}, 2 * CALL_TOKENS)]
    assert found["llm.limit.tokens"] == [({"limit": "t", "window_seconds": 3600}, 30)]
    provider.shutdown()


def test_azure_exporter_sends_the_limit_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_metrics_middleware import AzureMonitorExporter

    # As in test_azure_exporter: the exporter's own calls to Microsoft endpoints, off.
    for name in ("APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED", "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL",
                 "APPLICATIONINSIGHTS_SDKSTATS_DISABLED"):
        monkeypatch.setenv(name, "true")

    from .azure_capture import CaptureServer

    capture = CaptureServer().start()
    try:
        exporter = AzureMonitorExporter(
            capture.connection_string, export_interval_millis=3_600_000, disable_offline_storage=True, timeout=1.0
        )
        try:
            d = Driver("wsgi", exporters=[exporter], limits=[TokenLimit("t", tokens=30, per="hour")])
            for _ in range(3):
                d.post(chat("ada"))
            assert exporter.force_flush(10_000)
        finally:
            exporter.shutdown(timeout_millis=3000)
        assert capture.sums("LLM Limit Authorized Calls", Limit="t") == 2
        assert capture.sums("LLM Limit Limited Calls", Limit="t") == 1
        assert capture.sums("LLM Limit Authorized Tokens", Limit="t") == 2 * CALL_TOKENS
        budgets = [p for p in capture.metrics() if p["name"] == "LLM Limit Tokens"]
        assert budgets and all(p["value"] == 30 for p in budgets)  # a gauge: one point per export
        assert all(p["properties"] == {"Limit": "t", "Window Seconds": "3600"} for p in budgets)
    finally:
        capture.stop()


def test_retry_after_is_whole_seconds_of_the_window_left() -> None:
    d = Driver("wsgi", limits=[TokenLimit("t", tokens=1, per="hour")])
    d.post(chat("ada"))
    retry = assert_refused(d.post(chat("ada")), "t")
    assert 3590 <= retry <= 3600 and retry == math.floor(retry)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (.ci/run installs prometheus)")
def test_the_readme_promql_is_valid(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Token limits"):]
    block = section[section.index("```promql") + len("```promql"):]
    block = block[: block.index("```")]
    expressions: list[str] = []
    current: list[str] = []
    for line in block.splitlines() + [""]:
        if line.startswith("#") or not line.strip():
            if current:
                expressions.append(" ".join(part.strip() for part in current))
                current = []
            continue
        current.append(line)
    assert len(expressions) == 3
    rules = {"groups": [{"name": "readme", "rules": [
        {"record": f"readme:expr{i}", "expr": expr} for i, expr in enumerate(expressions)
    ]}]}
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_a_failing_when_or_key_does_not_limit_and_is_counted(kind: str) -> None:
    def broken(r: Any) -> bool:
        raise RuntimeError("bug in the tier lookup")

    d = Driver(kind, limits=[
        TokenLimit("broken", tokens=1, per="minute", when=broken),
        TokenLimit("ok", tokens=1000, per="minute"),
    ])
    for _ in range(2):
        assert d.post(chat("ada")).status_code == 200
    assert d.samples()[("llm_metering_errors_total", "limit_key")] == 2
    assert d.samples()[("llm_limit_authorized_calls_total", "ok")] == 2


def test_other_stores_are_refused_and_passwords_not_quoted() -> None:
    limit = [TokenLimit("a", tokens=1, per=1)]
    with pytest.raises(ValueError, match="memory://' or a Redis URI") as caught:
        LLMMetricsWSGIMiddleware(
            SimulatedLLM().wsgi, exporters=[InMemoryExporter()], limits=limit,
            limit_storage="memcached://user:s3cret@127.0.0.1:11211",
        )
    assert "s3cret" not in str(caught.value)


@needs_redis
def test_a_call_counted_in_a_worker_thread_is_charged_on_the_servers_loop(redis: RedisProcess) -> None:
    """The outgoing-call path: a sync client in a thread pool counts a call for the request;
    the ASGI middleware's charge goes to the event loop that owns the Redis connections."""
    from llm_metrics_middleware import CallRecord, RequestView, Usage

    d = Driver("asgi", limits=[TokenLimit("per-user", tokens=1000, per="minute")], limit_storage=redis.url)
    assert d.post(chat("ada")).status_code == 200  # binds the limiter to the driver's loop
    limiter = d.middleware.metering.limits
    metering = d.middleware.metering
    view = RequestView("POST", "/v1/chat/completions", "", "", raw_headers=[(b"x-user-id", b"ada")])
    view.limits = limiter.plan(view, metering.limit_context(view, route_of(view.path)))
    assert view.limits

    record = CallRecord(
        dimensions=(), usage=Usage(100, 50, 150), usage_source="reported", provider="openai",
        operation="chat.completions", request_model="gpt-sim", response_model="gpt-sim", status=200,
        outcome="completed", streamed=False, duration_s=0.1, time_to_first_chunk_s=None,
        origin="outgoing", request=view,
    )

    async def from_a_thread() -> None:
        await asyncio.to_thread(metering.deliver, record)
        await limiter.drain()

    assert d.loop is not None
    d.loop.run_until_complete(from_a_thread())
    assert d.samples()[("llm_limit_authorized_tokens_total", "per-user")] == CALL_TOKENS + 150


# -- the WSGI read-ahead ---------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"\n")),
    split=st.integers(min_value=0, max_value=300),
    ops=st.lists(
        st.tuples(st.sampled_from(["read", "readline", "readinto", "read_all", "readlines", "iter"]),
                  st.integers(min_value=-1, max_value=40)),
        max_size=12,
    ),
)
def test_the_replayed_wsgi_input_reads_as_the_original_stream(body: bytes, split: int, ops: list[tuple[str, int]]) -> None:
    import io

    from llm_metrics_middleware._drivers.limited import _PrefixedInput

    split = min(split, len(body))
    ours: Any = _PrefixedInput(body[:split], io.BytesIO(body[split:]))
    theirs = io.BytesIO(body)
    for op, n in ops:
        if op == "read":
            assert ours.read(n) == theirs.read(n)
        elif op == "readline":
            assert ours.readline(n) == theirs.readline(n)
        elif op == "readinto":
            a, b = bytearray(max(n, 0)), bytearray(max(n, 0))
            assert ours.readinto(a) == theirs.readinto(b) and a == b
        elif op == "read_all":
            assert ours.read() == theirs.read()
        elif op == "readlines":
            assert ours.readlines() == theirs.readlines()
        else:
            assert list(ours) == list(theirs)
    assert ours.read() == theirs.read()


@pytest.mark.parametrize("chunks", [1, 7, 200])
def test_asgi_read_ahead_hands_the_app_every_message_in_order(chunks: int) -> None:
    from .drive import run_asgi

    received: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            received.append(message)
            if not message.get("more_body"):
                break
        body = b"".join(m.get("body", b"") for m in received)
        await SimulatedLLM().asgi(scope, _replay(body), send)

    exporter = InMemoryExporter()
    middleware = LLMMetricsMiddleware(
        app, exporters=[exporter], limits=[TokenLimit("per-user", tokens=10, per="minute")]
    )
    body = json.dumps(chat("chunky", words="w " * 30_000)).encode()  # ~60 KB before the user field
    first = run_asgi(middleware, body=body, body_chunks=chunks)
    assert first[0]["status"] == 200
    assert b"".join(m.get("body", b"") for m in received) == body
    assert [m["type"] for m in received] == ["http.request"] * len(received)
    assert len(received) >= min(chunks, 2)
    refused = run_asgi(middleware, body=body, body_chunks=chunks)
    assert refused[0]["status"] == 429  # the key came from the body: the charge found it again
    assert exporter.dimensions(exporter.calls[0])["User ID"] == "chunky"


@pytest.mark.parametrize("kind", KINDS)
def test_a_default_dimension_the_middleware_does_not_export_can_be_the_key(kind: str) -> None:
    # "Model" comes from the request body at check time; the middleware exports only "API ID".
    d = Driver(kind, dimensions=["API ID"], limits=[TokenLimit("per-model", tokens=30, per="minute", key="Model")])
    assert d.post(chat("a", model="gpt-a")).status_code == 200
    assert d.post(chat("b", model="gpt-a")).status_code == 200
    assert_refused(d.post(chat("c", model="gpt-a")), "per-model")
    assert d.post(chat("c", model="gpt-b")).status_code == 200


def test_two_exporters_on_one_registry_share_the_limit_metrics() -> None:
    registry = CollectorRegistry()
    limits = [TokenLimit("t", tokens=100, per="minute")]
    first = LLMMetricsWSGIMiddleware(SimulatedLLM().wsgi, exporters=[PrometheusExporter(registry)], limits=limits)
    second = LLMMetricsWSGIMiddleware(SimulatedLLM().wsgi, exporters=[PrometheusExporter(registry)], limits=limits)
    for app in (first, second):
        with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as client:
            assert client.post("/v1/chat/completions", json=chat("ada")).status_code == 200
    samples = limit_samples(registry)
    assert samples[("llm_limit_authorized_calls_total", "t")] == 2
    assert samples[("llm_limit_tokens", "t")] == 100


def test_reset_times_read_as_openai_writes_them() -> None:
    from llm_metrics_middleware._metering.limits import _reset_text

    assert [_reset_text(s) for s in (0, 0.2, 1, 59.5, 60, 360, 3723)] == ["0s", "1s", "1s", "1m0s", "1m0s", "6m0s", "1h2m3s"]


def test_a_refused_response_carries_the_headers_too() -> None:
    d = Driver("wsgi", limits=[TokenLimit("t", tokens=10, per="hour")], limit_headers="openai")
    d.post(chat("ada"))
    refused = d.post(chat("ada"))
    assert_refused(refused, "t")
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    assert refused.headers["x-ratelimit-limit-tokens"] == "10"
    assert refused.headers["x-ratelimit-reset-tokens"].endswith("s")
