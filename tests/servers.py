"""Real servers for the end-to-end tests: uvicorn in a thread, gunicorn and others in a subprocess.

Everything listens on 127.0.0.1 only, and every helper is a context manager that stops
what it started (and waits for it) even when the test fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from llm_metrics_middleware.testing import serve_asgi

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def uvicorn_server(app: Any, timeout: float = 15.0) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn on a free port, in a thread; yields the base URL."""
    with serve_asgi(app, timeout=timeout) as url:
        yield url


class Process:
    """A server subprocess with its log file; :attr:`log` reads what it wrote so far."""

    def __init__(self, popen: subprocess.Popen[bytes], log_path: Path, port: int) -> None:
        self.popen = popen
        self.log_path = log_path
        self.port = port
        self.url = f"http://{HOST}:{port}"

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@contextmanager
def server_process(
    args: Sequence[str],
    *,
    port: int,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    timeout: float = 30.0,
    stop_signal: int = signal.SIGTERM,
) -> Iterator[Process]:
    """Run ``args`` in a new session until it accepts connections on ``port``.

    On exit: ``stop_signal`` to the process, then SIGKILL to its whole process group
    (workers included) if it has not stopped within 10 s; always waited for.
    """
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            list(args), cwd=cwd, env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    process = Process(popen, log_path, port)
    try:
        deadline = time.monotonic() + timeout
        while not port_open(port):
            if popen.poll() is not None:
                raise RuntimeError(f"{args[0]} exited with {popen.returncode} before listening:\n{process.log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{args[0]} did not listen on port {port} within {timeout} s:\n{process.log}")
            time.sleep(0.05)
        yield process
    finally:
        if popen.poll() is None:
            popen.send_signal(stop_signal)
            try:
                popen.wait(10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(popen.pid, signal.SIGKILL)  # leftovers in its group (workers), if any
        except (ProcessLookupError, PermissionError):
            pass
        popen.wait(10)


@contextmanager
def prometheus_server(binary: str, config: Path, data: Path, *extra: str, timeout: float = 30.0) -> Iterator[Process]:
    """A real Prometheus on a free port, yielded once ``/-/ready`` answers 200.

    Prometheus listens before it is ready (its API answers 503 while the TSDB opens), so
    waiting for the port alone lets a query read that 503 under load.
    """
    port = free_port()
    args = [binary, f"--config.file={config}", f"--storage.tsdb.path={data}", f"--web.listen-address={HOST}:{port}", *extra]
    with server_process(args, port=port, log_path=data.parent / "prometheus.log", env=python_env(), timeout=timeout) as server:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{server.url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.popen.poll() is not None or time.monotonic() > deadline:
                raise TimeoutError(f"Prometheus was not ready within {timeout} s:\n{server.log}")
            time.sleep(0.1)
        yield server


def python_env(**extra: str) -> dict[str, str]:
    """This environment for a child Python: the repo importable, nothing that reaches out."""
    env = {k: v for k, v in os.environ.items() if k not in (
        "LLM_UPSTREAM_URL", "LLM_UPSTREAM_API_KEY", "APPLICATIONINSIGHTS_CONNECTION_STRING", "PROMETHEUS_MULTIPROC_DIR",
    )}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(extra)
    return env


@contextmanager
def gunicorn_server(
    app_spec: str,
    *,
    workdir: Path,
    env: Mapping[str, str] | None = None,
    config: str = "",
    args: Sequence[str] = (),
    timeout: float = 30.0,
) -> Iterator[Process]:
    """``gunicorn app_spec`` on a free port of 127.0.0.1, with this interpreter.

    Writes ``workdir/gunicorn.conf.py`` (``config``, then our bind and timeouts) and logs to
    ``workdir/gunicorn.log``. ``env`` defaults to :func:`python_env`. Accepting connections
    means the master has bound the port; requests that arrive before the workers have
    booted wait in the backlog.
    """
    port = free_port()
    conf = workdir / "gunicorn.conf.py"
    conf.write_text(
        config
        + "\n# Set by tests/servers.py:\n"
        + f"bind = [{HOST + ':' + str(port)!r}]\n"
        + "graceful_timeout = 5\n"
        # Gunicorn 25.1+ opens a control socket at a fixed path in $HOME; parallel test servers
        # would fight over it. Older versions ignore the unknown setting.
        + "control_socket_disable = True\n"
    )
    command = [sys.executable, "-m", "gunicorn", "--config", str(conf), *args, app_spec]
    with server_process(command, port=port, log_path=workdir / "gunicorn.log",
                        env=env if env is not None else python_env(), timeout=timeout) as process:
        yield process


# -- reading /metrics ----------------------------------------------------------------------


def metric_samples(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition."""
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def metric_sum(samples: Sequence[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        s.value for s in samples
        if s.name == name and all(s.labels.get(key) == value for key, value in labels.items())
    )


def scrape(base_url: str) -> list[Sample]:
    response = httpx.get(base_url + "/metrics", timeout=10)
    response.raise_for_status()
    return metric_samples(response.text)


def scrape_until_counted(base_url: str, requests: int, timeout: float = 10.0) -> list[Sample]:
    """Scrape until ``llm_requests_total`` adds up to ``requests``; the last scrape either way.

    A server may hand the last bytes of a response to the client a moment before the
    middleware records the call (WSGI servers call ``close()`` after sending), so a scrape
    right after the last response can be early; an exact count is never waited past.
    """
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(base_url)
        if metric_sum(samples, "llm_requests_total") >= requests or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)
