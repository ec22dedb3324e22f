"""The Grafana dashboard and the Prometheus rules under ``deploy/``, checked for real.

- ``promtool check rules`` and ``promtool test rules`` (the unit tests beside the rules);
- the committed dashboard JSON is what ``deploy/grafana/dashboard.py`` writes, and is an
  importable dashboard (``__inputs`` datasource, the template variables);
- a real Prometheus scrapes a real uvicorn app that meters real traffic (streamed, not,
  estimated, cached, reasoning, errors, an overflowing dimension), with the rules loaded;
  every panel query, its variables substituted as Grafana would, runs through the
  Prometheus HTTP API and must parse; the token panels must show tokens; the recording
  rules evaluate without error and record the token rates.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from llm_metrics_middleware import LLMMetricsMiddleware, Price, PrometheusExporter, TokenLimit
from llm_metrics_middleware.testing import SimulatedLLM
from tests.servers import ROOT, prometheus_server, uvicorn_server

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "llm-metrics.json"
RULES = DEPLOY / "prometheus" / "llm-metrics-rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "llm-metrics-rules.test.yml"


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"no `{name}` binary on PATH (Debian package `prometheus`; .ci/run installs it)")
    return path


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def targets() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query of the dashboard."""
    return [(panel, target) for panel in dashboard()["panels"] for target in panel.get("targets", [])]


# -- promtool ------------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    result = subprocess.run([binary("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_rule_unit_tests() -> None:
    result = subprocess.run([binary("promtool"), "test", "rules", RULES_TEST.name], capture_output=True, text=True,
                            timeout=120, cwd=RULES_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_unit_tests_cover_every_alert() -> None:
    alerts = set(re.findall(r"^\s+- alert: (\w+)", RULES.read_text(), re.M))
    tested = set(re.findall(r"alertname: (\w+)", RULES_TEST.read_text()))
    assert alerts and alerts <= tested, alerts - tested


# -- the dashboard's JSON --------------------------------------------------------------------


def test_dashboard_json_is_what_the_generator_writes() -> None:
    namespace: dict[str, Any] = {"__name__": "dashboard_generator", "__file__": str(DEPLOY / "grafana" / "dashboard.py")}
    exec(compile((DEPLOY / "grafana" / "dashboard.py").read_text(), "dashboard.py", "exec"), namespace)
    assert DASHBOARD.read_text() == namespace["render"](), "run `python deploy/grafana/dashboard.py` and commit"


def test_dashboard_is_importable_with_a_datasource_input_and_label_variables() -> None:
    board = dashboard()
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    assert board["__inputs"][0]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"api_id", "user_id", "model"}
    for name, v in variables.items():
        assert v["definition"].startswith("label_values(") and v["definition"].endswith(f", {name})"), v
        assert v["includeAll"] and v["multi"] and v["allValue"] == ".*"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel, target in targets():
        assert panel["datasource"]["uid"] == target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
    # Panels do not overlap on the 24-column grid.
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & area, panel["title"]
        cells |= area
    titles = " / ".join(p["title"] for p in board["panels"]).lower()
    for topic in ("by user", "by model", "prompt vs completion", "estimated", "cached", "reasoning", "cost",
                  "outcome", "status", "time to first chunk", "duration", "metering errors", "overflow", "limit"):
        assert topic in titles, topic


def test_every_counter_in_the_dashboard_is_read_through_rate_or_increase() -> None:
    for panel, target in targets():
        for match in re.finditer(r"llm_\w+_(total|bucket)\b", target["expr"]):
            before = target["expr"][: match.start()]
            assert re.search(r"(rate|increase)\($", before), (panel["title"], target["expr"])


def test_the_duration_panels_show_exemplars() -> None:
    # The Prometheus exporter gives llm_request_duration_seconds an exemplar per series (the
    # latest traced call): the panels that read it turn exemplars on, so a slow point links
    # to its trace; no other query asks for exemplars its metric does not carry.
    reading = {panel["title"] for panel, target in targets() if "llm_request_duration_seconds" in target["expr"]}
    assert {"Duration (request to last byte)", "p90 duration by model"} <= reading, reading
    for panel, target in targets():
        reads_duration = "llm_request_duration_seconds" in target["expr"]
        assert target.get("exemplar", False) is reads_duration, (panel["title"], target["expr"])


# -- a real Prometheus over a real app -----------------------------------------------------------


USERS = ["ada", "grace", "linus"]
MODELS = ["sim-gpt-1", "sim-gpt-2"]
MAX_SERIES = 6  # USERS x MODELS fill it; a seventh combination overflows


def substitute(expr: str, **values: str) -> str:
    """The query as Grafana sends it: variables as regexes, built-in intervals as durations."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__range", "5m").replace("$__interval", "15s")
    for name in ("api_id", "user_id", "model"):
        expr = expr.replace(f"${name}", values.get(name, ".*"))
    assert "$" not in expr, expr
    return expr


def send_traffic(client: httpx.Client, round_: int) -> int:
    """One round of calls: every user and model, JSON and streamed, reported and estimated."""
    sent = 0
    for user in USERS:
        for model in MODELS:
            base = {"model": model, "user": user, "max_tokens": 5 + round_,
                    "messages": [{"role": "user", "content": "how many tokens is this question"}]}
            for extra in ({}, {"stream": True, "stream_options": {"include_usage": True}}, {"stream": True}):
                response = client.post("/v1/chat/completions", json={**base, **extra})
                assert response.status_code == 200, response.text
                sent += 1
    anthropic = {"model": "sim-claude-1", "max_tokens": 7, "metadata": {"user_id": "ada"},
                 "messages": [{"role": "user", "content": "and this one"}]}
    assert client.post("/v1/messages", json=anthropic).status_code == 200  # overflows: a seventh combination
    assert client.post("/v1/messages", json={**anthropic, "stream": True}).status_code == 200
    assert client.post("/v1/chat/completions", content=b"not json").status_code == 400  # a 400 is a call
    # karl's tight limit: his calls pass until his tokens reach the budget, then 429 (not metered).
    # (Once, in the first round: 14 tokens a call against a budget of 20 a minute.)
    if round_ == 0:
        karl = {**base, "user": "karl", "model": MODELS[0]}
        statuses = [client.post("/v1/chat/completions", json=karl).status_code for _ in range(3)]
        assert statuses == [200, 200, 429], statuses
        sent += 2
    return sent + 3


@dataclass
class Scraped:
    client: httpx.Client
    calls: int
    log: Any

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.client.get("/api/v1/query", params={"query": expr}).json()
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def query_range(self, expr: str) -> list[dict[str, Any]]:
        now = time.time()
        answer = self.client.get("/api/v1/query_range",
                                 params={"query": expr, "start": now - 60, "end": now, "step": "5s"}).json()
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    prometheus = binary("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    upstream = SimulatedLLM(cached_tokens=4, reasoning_tokens=2)
    app = LLMMetricsMiddleware(
        upstream.asgi,
        exporters=[PrometheusExporter(CollectorRegistry())],
        dimensions=["API ID", "User ID", "Model"],
        metrics_path="/metrics",
        max_series=MAX_SERIES,
        # So the limit panels have data: an hourly budget nobody reaches, and one that karl exhausts.
        # And the cost panels: a price for every model of the traffic.
        pricing={"sim-gpt": Price(2.5, 10), "sim-claude-1": Price(3, 15, cached_input=0.3)},
        limits=[TokenLimit("hourly", tokens=1_000_000, per="hour"),
                TokenLimit("tight", tokens=20, per="minute", when=lambda r: r.body.get("user") == "karl")],
    )
    # The rules as shipped, evaluated every second instead of every 30 s so the test is short.
    rules = tmp / "llm-metrics-rules.yml"
    rules.write_text(RULES.read_text().replace("interval: 30s", "interval: 1s"))
    with uvicorn_server(app) as url, httpx.Client(base_url=url, timeout=10) as app_client:
        target = url.removeprefix("http://")
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files: [{json.dumps(str(rules))}]\n"
            "scrape_configs:\n  - job_name: llm-app\n    scrape_timeout: 1s\n"
            f"    static_configs:\n      - targets: [{json.dumps(target)}]\n"
        )
        with prometheus_server(prometheus, config, tmp / "data") as server, \
                httpx.Client(base_url=server.url, timeout=10) as client:
            s = Scraped(client, 0, lambda: server.log)
            wait_until(lambda: s.query('up{job="llm-app"} == 1'), 30, "the first scrape")
            # Three rounds a few scrapes apart, so rates over a minute see the counters grow.
            for round_ in range(3):
                s.calls += send_traffic(app_client, round_)
                time.sleep(2.5)
            wait_until(lambda: (r := s.query("sum(llm_requests_total)")) and float(r[0]["value"][1]) == s.calls,
                       30, f"Prometheus to see {s.calls} calls:\n{server.log}")
            wait_until(lambda: s.query("api_id_user_id_model:llm_tokens:rate5m > 0"), 30, "the recording rules")
            yield s


@pytest.mark.prometheus
@pytest.mark.slow
def test_every_panel_query_parses_and_token_panels_show_tokens(scraped: Scraped) -> None:
    exposed = {name for name in scraped.client.get("/api/v1/label/__name__/values").json()["data"]}
    assert {"llm_tokens_total", "llm_cached_tokens_total", "llm_reasoning_tokens_total",
            "llm_estimated_tokens_total", "llm_request_duration_seconds_bucket",
            "llm_time_to_first_chunk_seconds_bucket", "llm_metering_errors_total",
            "llm_limit_tokens", "llm_limit_authorized_calls_total", "llm_limit_limited_calls_total",
            "llm_limit_authorized_tokens_total", "llm_cost_usd_total"} <= exposed
    empty = []
    for panel, target in targets():
        expr = substitute(target["expr"])
        result = scraped.query(expr)
        if not target["instant"]:
            scraped.query_range(expr)
        # A multi-value selection, as Grafana formats it for a regex matcher, parses too.
        scraped.query(substitute(target["expr"], user_id="(ada|grace)", model="sim-gpt-1", api_id="/v1"))
        metrics = set(re.findall(r"\b(llm_\w+)", target["expr"]))
        # A panel over metrics this build exposes shows data; the others (cost, limits: off
        # in this app) must still parse.
        if metrics <= exposed and not result:
            empty.append((panel["title"], expr))
        token_panel = any(re.fullmatch(r"llm_(\w+_)?tokens_total|llm_cost_usd_total", m) for m in metrics)
        if token_panel and not any(m.startswith("llm_limit") for m in metrics):
            assert result, (panel["title"], expr)
            values = [float(r["value"][1]) for r in result]
            assert any(v > 0 for v in values), (panel["title"], expr, result)
    assert not empty, empty


@pytest.mark.prometheus
@pytest.mark.slow
def test_variables_narrow_the_panels(scraped: Scraped) -> None:
    # The label_values() variables, as Grafana asks Prometheus for them.
    for variable in dashboard()["templating"]["list"]:
        metric, label = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["definition"]).groups()  # type: ignore[union-attr]
        values = scraped.client.get(f"/api/v1/label/{label}/values",
                                    params={"match[]": substitute(metric)}).json()["data"]
        assert values, variable["name"]
        if label == "user_id":
            assert set(USERS) <= set(values)
        if label == "model":
            assert set(MODELS) <= set(values)
    (by_user,) = [t for p, t in targets() if p["title"] == "Tokens per second by user"]
    only_ada = scraped.query(substitute(by_user["expr"], user_id="ada"))
    assert [r["metric"] for r in only_ada] == [{"user_id": "ada"}]
    two = scraped.query(substitute(by_user["expr"], user_id="(ada|grace)"))  # a multi-value selection
    assert sorted(r["metric"]["user_id"] for r in two) == ["ada", "grace"]


@pytest.mark.prometheus
@pytest.mark.slow
def test_recording_rules_evaluate_and_record_the_dashboard_rates(scraped: Scraped) -> None:
    groups = scraped.client.get("/api/v1/rules").json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == len(re.findall(r"^\s+- (record|alert):", RULES.read_text(), re.M))
    for rule in rules:
        assert rule["health"] == "ok", rule
    rows = scraped.query("api_id_user_id_model:llm_tokens:rate5m")
    assert {(r["metric"]["user_id"], r["metric"]["model"]) for r in rows} >= {(u, m) for u in USERS for m in MODELS}
    for name in ("llm:estimated_tokens:ratio_rate5m", "llm:cached_tokens:ratio_rate5m",
                 "llm:reasoning_tokens:ratio_rate5m"):
        (row,) = scraped.query(name)
        assert 0 < float(row["value"][1]) < 1, name
    assert scraped.query('kind:llm_metering_errors:rate5m{kind="series_overflow"} > 0')
