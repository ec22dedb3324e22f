"""The Flask example under gunicorn with 4 worker processes, in prometheus_client's
multiprocess mode: every scrape, whichever worker answers it, adds up all workers (a
replaced worker included), to the exact request and token counts; and a real Prometheus
server scraping it sees the same numbers.

The recipe under test is the documented one, as ``examples/flask_app/gunicorn.conf.py``
ships it: ``PROMETHEUS_MULTIPROC_DIR`` set in the environment before Python starts,
``mark_process_dead`` in gunicorn's ``child_exit``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_metrics_middleware.testing import prompt_tokens_of
from tests.servers import (
    ROOT,
    Process,
    free_port,
    gunicorn_server,
    metric_sum,
    prometheus_server,
    python_env,
    scrape,
    scrape_until_counted,
    server_process,
)

pytestmark = pytest.mark.slow

N = 200
WORKERS = 4
USERS = ["ada", "grace", "linus", "margaret", "ken"]
# (path, streamed, include_usage): the call shapes whose usage the provider reports.
SHAPES = [
    ("/v1/chat/completions", False, False),
    ("/v1/chat/completions", True, True),
    ("/v1/messages", False, False),
    ("/v1/messages", True, False),
]

# The example's own gunicorn.conf.py (it checks PROMETHEUS_MULTIPROC_DIR, empties it at
# start, and calls mark_process_dead in child_exit), with the worker count pinned.
GUNICORN_CONFIG = (ROOT / "examples" / "flask_app" / "gunicorn.conf.py").read_text() + f"""
workers = {WORKERS}
worker_class = "sync"
"""


def request_body(i: int) -> tuple[str, dict[str, Any]]:
    """The i-th request: user, shape, question and answer length all vary with i."""
    path, streamed, include_usage = SHAPES[i % len(SHAPES)]
    user = USERS[i % len(USERS)]
    body: dict[str, Any] = {
        "model": "sim-claude-1" if path.endswith("/messages") else "sim-gpt-1",
        "max_tokens": 1 + (i * 7) % 23,
        "messages": [{"role": "user", "content": " ".join(["word"] * (1 + i % 11))}],
    }
    if path.endswith("/messages"):
        body["metadata"] = {"user_id": user}
    else:
        body["user"] = user
    if streamed:
        body["stream"] = True
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return path, body


def reported_usage(response: httpx.Response) -> tuple[int, int, int]:
    """(prompt, completion, total) as the client reads them from an OpenAI or Anthropic
    response, JSON or SSE; Anthropic's ``message_delta`` output count is cumulative."""
    if response.headers["content-type"].startswith("text/event-stream"):
        records = [
            json.loads(line[5:]) for line in response.text.splitlines()
            if line.startswith("data:") and line[5:].strip() != "[DONE]"
        ]
    else:
        records = [response.json()]
    prompt = completion = total = None
    for record in records:
        if record.get("type") == "message_start":
            record = record["message"]
        usage = record.get("usage")
        if not usage:
            continue
        if "prompt_tokens" in usage:
            prompt, completion, total = usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]
        else:
            prompt = usage.get("input_tokens", prompt)
            completion = usage.get("output_tokens", completion)
    assert prompt is not None and completion is not None, response.text
    return prompt, completion, total if total is not None else prompt + completion


@dataclass
class Sent:
    """What the clients sent and were told: the truth the metrics must add up to."""

    requests: int = 0
    tokens: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, user: str, prompt: int, completion: int, total: int) -> None:
        self.requests += 1
        self.tokens.setdefault(user, Counter()).update(prompt=prompt, completion=completion, total=total)


def send(client: httpx.Client, indices: range, sent: Sent) -> None:
    def one(i: int) -> tuple[str, tuple[int, int, int]]:
        path, body = request_body(i)
        response = client.post(path, json=body)
        assert response.status_code == 200, response.text
        usage = reported_usage(response)
        # What the simulated LLM promises for this body (the test's own check of its reading).
        assert usage[:2] == (prompt_tokens_of(body), body["max_tokens"]), (i, usage)
        return (body.get("user") or body["metadata"]["user_id"]), usage

    with ThreadPoolExecutor(max_workers=16) as pool:
        for user, usage in pool.map(one, indices):
            sent.add(user, *usage)


def booted_workers(server: Process) -> list[int]:
    return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", server.log)]


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Served:
    server: Process
    sent: Sent
    multiproc_dir: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Gunicorn with 4 sync workers in multiprocess mode, after N requests from 16 threads,
    half of them before one worker was stopped and replaced, half after."""
    workdir = tmp_path_factory.mktemp("gunicorn")
    multiproc_dir = workdir / "prometheus_multiproc"
    multiproc_dir.mkdir()
    env = python_env(PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir))
    with gunicorn_server("examples.flask_app.app:app", workdir=workdir, env=env, config=GUNICORN_CONFIG) as server:
        wait_for(lambda: len(booted_workers(server)) >= WORKERS, 30, f"{WORKERS} workers to boot:\n{server.log}")
        sent = Sent()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            send(client, range(N // 2), sent)

            # Replace a worker that has counted calls: its counts must survive it.
            counted = {int(m.group(1)) for f in multiproc_dir.iterdir() if (m := re.match(r"counter_(\d+)\.db$", f.name))}
            candidates = sorted(counted & set(booted_workers(server)))
            assert candidates, f"no worker wrote counter_<pid>.db in {multiproc_dir}: multiprocess mode is off"
            victim = candidates[0]
            os.kill(victim, signal.SIGTERM)
            wait_for(lambda: len(booted_workers(server)) > WORKERS, 30, f"a worker to replace {victim}:\n{server.log}")

            send(client, range(N // 2, N), sent)
        assert sent.requests == N
        yield Served(server, sent, multiproc_dir)


def test_every_worker_reports_all_workers_exactly(served: Served) -> None:
    sent = served.sent
    # More than one process counted, so the sums below really add up several workers.
    writers = {f.name for f in served.multiproc_dir.iterdir() if f.name.startswith("counter_")}
    assert len(writers) >= 3, writers

    samples = scrape_until_counted(served.server.url, N)
    # Sync workers close every connection, so these scrapes land on different workers.
    for samples in [samples, *(scrape(served.server.url) for _ in range(2 * WORKERS))]:
        assert metric_sum(samples, "llm_requests_total") == N
        assert metric_sum(samples, "llm_requests_total", status="200", outcome="completed", usage="reported") == N
        assert metric_sum(samples, "llm_estimated_tokens_total") == 0
        for user, tokens in sent.tokens.items():
            assert metric_sum(samples, "llm_prompt_tokens_total", user_id=user) == tokens["prompt"], user
            assert metric_sum(samples, "llm_completion_tokens_total", user_id=user) == tokens["completion"], user
            assert metric_sum(samples, "llm_tokens_total", user_id=user) == tokens["total"], user
        assert metric_sum(samples, "llm_tokens_total") == sum(t["total"] for t in sent.tokens.values())
        assert metric_sum(samples, "llm_request_duration_seconds_count") == N


@pytest.mark.prometheus
def test_prometheus_server_scrapes_exact_totals(served: Served, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no `prometheus` binary on PATH (Debian package `prometheus`; .ci/run installs it): "
                    "the real-scrape check did not run")
    target = served.server.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: llm-example\n"
        "    scrape_interval: 1s\n"
        "    scrape_timeout: 1s\n"
        f"    static_configs:\n      - targets: [{json.dumps(target)}]\n"
    )
    with prometheus_server(binary, config, tmp_path / "data") as prometheus, \
            httpx.Client(base_url=prometheus.url, timeout=5) as client:

        def query(expr: str) -> dict[str, float]:
            """An instant query: each series' value, keyed by its labels as sorted-key JSON."""
            answer = client.get("/api/v1/query", params={"query": expr}).json()
            assert answer["status"] == "success", answer
            return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in answer["data"]["result"]}

        deadline = time.monotonic() + 30
        requests: dict[str, float] = {}
        while time.monotonic() < deadline:
            requests = query("sum(llm_requests_total)")
            if requests:
                break
            time.sleep(0.25)
        assert requests == {"{}": N}, f"Prometheus answered {requests}; its log:\n{prometheus.log}"

        sent = served.sent
        for name, key in (("llm_prompt_tokens_total", "prompt"), ("llm_completion_tokens_total", "completion"),
                          ("llm_tokens_total", "total")):
            by_user = query(f"sum by (user_id) ({name})")
            assert by_user == {json.dumps({"user_id": u}): float(t[key]) for u, t in sent.tokens.items()}, name
        assert query('sum(llm_requests_total{usage="reported",status="200",outcome="completed"})') == {"{}": N}
        assert query('up{job="llm-example"}') == {json.dumps({"instance": target, "job": "llm-example", "__name__": "up"}, sort_keys=True): 1.0}


def test_example_gunicorn_config_refuses_to_start_without_multiproc_dir(tmp_path: Path) -> None:
    # Without the directory every worker would answer /metrics with its own counts only.
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR is not set"), \
            gunicorn_server("examples.flask_app.app:app", workdir=tmp_path, env=python_env(), config=GUNICORN_CONFIG):
        pass


def test_uvicorn_several_workers_count_exactly(tmp_path: Path) -> None:
    """The FastAPI example under ``uvicorn --workers 3`` in multiprocess mode."""
    multiproc_dir = tmp_path / "prometheus_multiproc"
    multiproc_dir.mkdir()
    port = free_port()
    env = python_env(PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir))
    command = [
        sys.executable, "-m", "uvicorn", "examples.fastapi_app.app:app", "--host", "127.0.0.1",
        "--port", str(port), "--workers", "3", "--no-access-log",
    ]
    with server_process(command, port=port, log_path=tmp_path / "uvicorn.log", env=env, stop_signal=signal.SIGINT) as server:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: len(re.findall(r"Started server process", server.log)) >= 3, 30, f"3 workers:\n{server.log}")
        sent = Sent()
        n = 120
        # A new connection per request, so the kernel spreads them over the workers.
        with httpx.Client(base_url=base, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            send(client, range(n), sent)
        writers = {f.name for f in multiproc_dir.iterdir() if f.name.startswith("counter_")}
        assert len(writers) >= 2, writers  # several processes really counted
        for samples in [scrape_until_counted(base, n), *(scrape(base) for _ in range(5))]:
            assert metric_sum(samples, "llm_requests_total") == n
            for user, tokens in sent.tokens.items():
                assert metric_sum(samples, "llm_prompt_tokens_total", user_id=user) == tokens["prompt"], user
                assert metric_sum(samples, "llm_completion_tokens_total", user_id=user) == tokens["completion"], user
                assert metric_sum(samples, "llm_tokens_total", user_id=user) == tokens["total"], user
