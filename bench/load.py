"""Section 5's machinery: the uvicorn server process and the load clients that drive it.

The server (``bench.py --serve VARIANT PORT``) serves the simulated LLM, bare or wrapped.
The load comes from wrk when it is installed (C, one thread, a Lua script for the POST
body), else from :func:`python_client` in its own process (``bench.py --load-client``):
raw-socket HTTP/1.1 keep-alive, no parsing beyond framing, so the client costs as little
CPU as Python allows. Every run is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import socket
import subprocess
import sys
import time
from typing import Any

from common import BENCH, CHAT_PATH
from variants import ours_asgi
from workloads import request_body


def http_impl() -> str:
    try:
        import httptools  # noqa: F401

        return "httptools"
    except ImportError:
        return "h11"


def loop_impl() -> str:
    try:
        import uvloop  # noqa: F401

        return "uvloop"
    except ImportError:
        return "asyncio"


def serve(variant: str, port: int) -> None:
    """The server of section 5, run in its own process."""
    import uvicorn

    from llm_metrics_middleware.testing import SimulatedLLM

    app: Any = SimulatedLLM().asgi
    if variant == "ours":
        app, _ = ours_asgi(app)
    # interface="asgi3": uvicorn's guess takes a bound method (the bare simulator) for ASGI 2.
    uvicorn.run(app, host="127.0.0.1", port=port, http=http_impl(), loop=loop_impl(), lifespan="off",
                interface="asgi3", access_log=False, log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


UVICORN_MAX_TOKENS = 64


def _client_request(port: int) -> bytes:
    body = request_body(stream=True, include_usage=True, max_tokens=UVICORN_MAX_TOKENS)
    head = (f"POST {CHAT_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def python_client(port: int, connections: int, seconds: float) -> dict[str, Any]:
    """Fallback load client: keep-alive HTTP/1.1 over raw sockets, no parsing beyond framing.

    A response ends with the chunked terminator; the simulator's SSE bodies use only LF, so
    ``\\r\\n0\\r\\n\\r\\n`` at the end of the bytes read so far is that terminator.
    """
    request = _client_request(port)
    end = b"\r\n0\r\n\r\n"
    done = errors = 0

    async def worker(deadline: float) -> None:
        nonlocal done, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline:
                writer.write(request)
                first = True
                tail = b""
                while True:
                    data = await reader.read(65536)
                    if not data:
                        raise ConnectionError("server closed the connection")
                    if first:
                        first = False
                        if not data.startswith(b"HTTP/1.1 200"):
                            errors += 1
                    tail = (tail + data[-7:])[-7:]
                    if tail == end:
                        break
                done += 1
        finally:
            writer.close()

    async def main() -> float:
        deadline = time.monotonic() + seconds
        start = time.perf_counter()
        await asyncio.gather(*(worker(deadline) for _ in range(connections)))
        return time.perf_counter() - start

    elapsed = asyncio.run(main())
    return {"requests": done, "seconds": elapsed, "errors": errors}


_WRK_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _wrk_seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * _WRK_UNITS[m.group(2)] if m else float("nan")


def run_load(client: str, port: int, connections: int, seconds: float, lua: str) -> dict[str, Any]:
    """One bounded load run; returns requests, seconds, errors, latency when known."""
    if client == "wrk":
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", lua,
               f"http://127.0.0.1:{port}{CHAT_PATH}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        text = proc.stdout
        m = re.search(r"(\d+) requests in ([\d.]+\w+),", text)
        if proc.returncode != 0 or m is None:
            raise RuntimeError(f"wrk failed: {proc.stdout}\n{proc.stderr}")
        errors = 0
        for pattern in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"):
            e = re.search(pattern, text)
            if e:
                errors += sum(int(g) for g in e.groups())
        latency = {}
        for pct in ("50", "99"):
            lm = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", text, re.M)
            if lm:
                latency[f"p{pct}_ms"] = _wrk_seconds(lm.group(1)) * 1e3
        return {"requests": int(m.group(1)), "seconds": _wrk_seconds(m.group(2)), "errors": errors, **latency}
    proc = subprocess.run([sys.executable, str(BENCH), "--load-client", str(port), str(connections), str(seconds)],
                          capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"python client failed: {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout))


def wait_for_port(port: int, proc: subprocess.Popen[Any], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def write_wrk_script(path: str) -> None:
    """wrk's Lua script posting section 5's streamed request, written to ``path``."""
    body = request_body(stream=True, include_usage=True, max_tokens=UVICORN_MAX_TOKENS)
    with open(path, "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                f"wrk.body = [[{body.decode()}]]\n")


def stop_servers(servers: dict[str, tuple[subprocess.Popen[Any], int]]) -> None:
    """Terminate every server process, killing one that does not exit within 10 s."""
    for proc, _ in servers.values():
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
