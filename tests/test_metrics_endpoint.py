"""The ``/metrics`` endpoint: GET and HEAD only, optional bearer or basic auth, through a
real uvicorn (ASGI) and a real werkzeug server (WSGI), for ``metrics_path=`` and for the
exporter's ``asgi_app()`` / ``wsgi_app()`` mounted by hand; and a real Prometheus that
scrapes with and without the credentials."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from werkzeug.serving import make_server

from llm_metrics_middleware import LLMMetricsMiddleware, LLMMetricsWSGIMiddleware, PrometheusExporter
from llm_metrics_middleware._exporters.endpoint import metrics_auth
from llm_metrics_middleware.testing import SimulatedLLM
from tests.servers import HOST, prometheus_server, uvicorn_server

CHAT = {"model": "sim-gpt-1", "user": "ada", "messages": [{"role": "user", "content": "hi there"}]}


@contextmanager
def wsgi_server(app: Any, timeout: float = 10.0) -> Iterator[str]:
    """A real threaded werkzeug WSGI server on a free port, in a thread."""
    server = make_server(HOST, 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout)
        server.server_close()
        assert not thread.is_alive(), "the WSGI server did not stop"


def asgi_with_metrics_path(registry: CollectorRegistry, **options: Any) -> Any:
    return LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[PrometheusExporter(registry)],
                                dimensions=["User ID"], metrics_path="/metrics", **options)


def wsgi_with_metrics_path(registry: CollectorRegistry, **options: Any) -> Any:
    return LLMMetricsWSGIMiddleware(SimulatedLLM().wsgi, exporters=[PrometheusExporter(registry)],
                                    dimensions=["User ID"], metrics_path="/metrics", **options)


def asgi_mounted(registry: CollectorRegistry, **options: Any) -> Any:
    """The exporter's own ASGI app routed by hand beside the metered upstream."""
    exporter = PrometheusExporter(registry)
    metered = LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[exporter], dimensions=["User ID"])
    metrics = exporter.asgi_app(auth=options.get("metrics_auth"))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await metrics(scope, receive, send)
        else:
            await metered(scope, receive, send)

    return app


def wsgi_mounted(registry: CollectorRegistry, **options: Any) -> Any:
    exporter = PrometheusExporter(registry)
    metered = LLMMetricsWSGIMiddleware(SimulatedLLM().wsgi, exporters=[exporter], dimensions=["User ID"])
    metrics = exporter.wsgi_app(auth=options.get("metrics_auth"))
    return lambda environ, start: (metrics if environ["PATH_INFO"] == "/metrics" else metered)(environ, start)


SERVED: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "asgi metrics_path": (asgi_with_metrics_path, uvicorn_server),
    "wsgi metrics_path": (wsgi_with_metrics_path, wsgi_server),
    "asgi_app()": (asgi_mounted, uvicorn_server),
    "wsgi_app()": (wsgi_mounted, wsgi_server),
}


@contextmanager
def served(kind: str, **options: Any) -> Iterator[httpx.Client]:
    build, serve = SERVED[kind]
    registry = CollectorRegistry()
    with serve(build(registry, **options)) as url, httpx.Client(base_url=url, timeout=10) as client:
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        # A WSGI call is recorded in close(), which the server calls after the last byte went
        # out: the client can be faster than that. Wait (bounded) until the call is counted.
        deadline = time.monotonic() + 10
        while 'user_id="ada"' not in generate_latest(registry).decode():
            assert time.monotonic() < deadline, "the chat call was never counted"
            time.sleep(0.01)
        yield client


@pytest.mark.parametrize("kind", SERVED)
def test_only_get_and_head_are_answered(kind: str) -> None:
    with served(kind) as client:
        get = client.get("/metrics")
        assert get.status_code == 200
        assert 'llm_tokens_total{user_id="ada"}' in get.text
        head = client.head("/metrics")
        assert head.status_code == 200
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
        assert int(head.headers["content-length"]) > 100
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            response = client.request(method, "/metrics", content=b"x=1")
            assert response.status_code == 405, method
            assert response.headers["allow"] == "GET, HEAD"
            assert "use GET or HEAD" in response.text
        # The LLM calls beside it are still metered and the POST did not reach the upstream.
        assert "llm_requests_total" in client.get("/metrics").text


@pytest.mark.parametrize("kind", SERVED)
def test_bearer_token(kind: str) -> None:
    with served(kind, metrics_auth="Bearer s3cret-token") as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith('Bearer realm="metrics"')
        assert "llm_tokens_total" not in refused.text
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Basic s3cret-token"}).status_code == 401
        assert client.head("/metrics").status_code == 401
        ok = client.get("/metrics", headers={"Authorization": "bearer s3cret-token"})  # the scheme is case-insensitive
        assert ok.status_code == 200 and 'user_id="ada"' in ok.text
        # Credentials do not open other methods.
        assert client.post("/metrics", headers={"Authorization": "Bearer s3cret-token"}).status_code == 405
        # The app's own routes are not affected.
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


@pytest.mark.parametrize("kind", SERVED)
@pytest.mark.parametrize("option", [("prometheus", "pa:ss word"), "Basic prometheus:pa:ss word"])
def test_basic_auth(kind: str, option: Any) -> None:
    with served(kind, metrics_auth=option) as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith('Basic realm="metrics"')
        assert client.get("/metrics", auth=("prometheus", "wrong")).status_code == 401
        assert client.get("/metrics", auth=("prometheus", "pa:ss word")).status_code == 200


@pytest.mark.parametrize("kind", SERVED)
def test_auth_from_the_environment(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_METRICS_AUTH", "Bearer from-env")
    with served(kind) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer from-env"}).status_code == 200


def test_an_explicit_option_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_METRICS_AUTH", "Bearer from-env")
    auth = metrics_auth("Bearer explicit")
    assert auth is not None and auth.allows("Bearer explicit") and not auth.allows("Bearer from-env")


@pytest.mark.parametrize("value", ["s3cret", "Bearer", "Basic nocolon", "Token s3cret", ("user",), ("a:b", "c"), ("", "p")])
def test_bad_credentials_are_refused_without_echoing_them(value: Any) -> None:
    with pytest.raises(ValueError) as raised:
        metrics_auth(value)
    message = str(raised.value)
    assert "Bearer <token>" in message or "(user, password)" in message or "<user>:<password>" in message
    assert "s3cret" not in message and "nocolon" not in message


def test_a_base64_basic_value_is_taken_as_a_header_would_carry_it() -> None:
    auth = metrics_auth("Basic cHJvbWV0aGV1czpwdw==")  # prometheus:pw
    assert auth is not None and auth.allows(httpx.BasicAuth("prometheus", "pw")._auth_header)


def test_metrics_auth_without_metrics_path_is_an_error() -> None:
    with pytest.raises(ValueError, match="metrics_path"):
        LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[PrometheusExporter(CollectorRegistry())],
                             metrics_auth="Bearer x")


@pytest.mark.prometheus
def test_prometheus_scrapes_with_the_credentials_and_is_refused_without(tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("no `prometheus` binary on PATH (Debian package `prometheus`; .ci/run installs it)")
    token_file = tmp_path / "token"
    token_file.write_text("scrape-token\n")
    with uvicorn_server(asgi_with_metrics_path(CollectorRegistry(), metrics_auth="Bearer scrape-token")) as bearer_url, \
            wsgi_server(wsgi_with_metrics_path(CollectorRegistry(), metrics_auth=("prometheus", "pw"))) as basic_url:
        bearer, basic = bearer_url.removeprefix("http://"), basic_url.removeprefix("http://")
        httpx.post(bearer_url + "/v1/chat/completions", json=CHAT, timeout=10).raise_for_status()
        httpx.post(basic_url + "/v1/chat/completions", json=CHAT, timeout=10).raise_for_status()
        # The documented scrape configs (README), and the same targets without credentials.
        config = tmp_path / "prometheus.yml"
        config.write_text(f"""
global: {{scrape_interval: 1s}}
scrape_configs:
  - job_name: bearer
    authorization: {{credentials_file: {json.dumps(str(token_file))}}}
    static_configs: [{{targets: [{json.dumps(bearer)}]}}]
  - job_name: basic
    basic_auth: {{username: prometheus, password: pw}}
    static_configs: [{{targets: [{json.dumps(basic)}]}}]
  - job_name: anonymous
    static_configs: [{{targets: [{json.dumps(bearer)}, {json.dumps(basic)}]}}]
""")
        with prometheus_server(prometheus, config, tmp_path / "data") as server, \
                httpx.Client(base_url=server.url, timeout=5) as client:

            def up() -> dict[tuple[str, str], float]:
                result = client.get("/api/v1/query", params={"query": "up"}).json()["data"]["result"]
                return {(r["metric"]["job"], r["metric"]["instance"]): float(r["value"][1]) for r in result}

            deadline = time.monotonic() + 30
            while len(up()) < 4 and time.monotonic() < deadline:
                time.sleep(0.25)
            assert up() == {("bearer", bearer): 1, ("basic", basic): 1, ("anonymous", bearer): 0,
                            ("anonymous", basic): 0}, server.log
            tokens = client.get("/api/v1/query", params={"query": "sum by (job) (llm_tokens_total)"}).json()
            assert {r["metric"]["job"] for r in tokens["data"]["result"]} == {"bearer", "basic"}
