"""A real ``redis-server`` for the token-limit tests, on 127.0.0.1 with its own port and data dir.

Started with persistence off (``--save '' --appendonly no``), waited for until it answers
PING (or fails within ``timeout``), and killed in teardown, whatever the test did.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .servers import HOST, free_port

REDIS_SERVER = shutil.which("redis-server")

needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (.ci/run installs the Debian package)"
)


class RedisProcess:
    def __init__(self, popen: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.popen = popen
        self.port = port
        self.log = log
        self.url = f"redis://{HOST}:{port}/0"

    def ping(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, line: str) -> bytes:
        """One inline command, its raw reply (enough for the few commands the tests send)."""
        with socket.create_connection((HOST, self.port), timeout=2) as sock:
            sock.sendall(line.encode() + b"\r\n")
            return sock.recv(65536)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)


@contextmanager
def redis_server(
    workdir: Path, timeout: float = 10.0, *, cluster: bool = False, port: int | None = None
) -> Iterator[RedisProcess]:
    """A redis-server; ``cluster=True``: a one-node Redis Cluster holding every slot;
    ``port``: that port (a Redis started again where one was killed)."""
    assert REDIS_SERVER is not None
    port = port if port is not None else free_port()
    data = workdir / f"redis-{port}-{time.monotonic_ns()}"
    data.mkdir(parents=True, exist_ok=True)
    log = data / "redis.log"
    extra = []
    if cluster:  # the bus port defaults to port + 10000, which may not exist: pick a free one
        extra = ["--cluster-enabled", "yes", "--cluster-config-file", str(data / "nodes.conf"),
                 "--cluster-port", str(free_port())]
    popen = subprocess.Popen(
        [
            REDIS_SERVER, "--bind", HOST, "--port", str(port), "--dir", str(data),
            "--save", "", "--appendonly", "no", "--logfile", str(log), "--daemonize", "no", *extra,
        ],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    server = RedisProcess(popen, port, log)
    try:
        deadline = time.monotonic() + timeout
        while not server.ping():
            if popen.poll() is not None:
                raise RuntimeError(f"redis-server exited with {popen.returncode}:\n{log.read_text(errors='replace') if log.exists() else ''}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server did not answer PING within {timeout} s")
            time.sleep(0.02)
        if cluster:
            server.url = f"redis+cluster://{HOST}:{port}"
            server.command("CLUSTER ADDSLOTSRANGE 0 16383")
            while b"cluster_state:ok" not in server.command("CLUSTER INFO"):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the one-node Redis Cluster was not ok within {timeout} s")
                time.sleep(0.05)
        yield server
    finally:
        server.kill()


@contextmanager
def redis_sentinel(workdir: Path, master: RedisProcess, name: str = "mymaster", timeout: float = 10.0) -> Iterator[RedisProcess]:
    """A Sentinel (``redis-server --sentinel``) watching ``master``; its URL is the
    ``redis+sentinel://`` one the ``limits`` library reads."""
    assert REDIS_SERVER is not None
    port = free_port()
    data = workdir / f"sentinel-{port}"
    data.mkdir(parents=True, exist_ok=True)
    conf = data / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind {HOST}\ndir {data}\nlogfile {data / 'sentinel.log'}\n"
        f"sentinel monitor {name} {HOST} {master.port} 1\n"
    )
    popen = subprocess.Popen(
        [REDIS_SERVER, str(conf), "--sentinel"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    sentinel = RedisProcess(popen, port, data / "sentinel.log")
    sentinel.url = f"redis+sentinel://{HOST}:{port}/{name}"
    try:
        deadline = time.monotonic() + timeout
        while not sentinel.ping():
            if popen.poll() is not None:
                raise RuntimeError(f"redis sentinel exited with {popen.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis sentinel did not answer PING within {timeout} s")
            time.sleep(0.02)
        yield sentinel
    finally:
        sentinel.kill()
