"""Where the uvicorn gap goes, measured live: user and system CPU per stream, and with
``--perf`` the share of each binary in a sampled profile of the running server.

Section 5 of ``bench/run`` gives the ratio of streams per second on a saturated core, and
``uvicorn_instructions.py`` the instructions per stream under callgrind. Neither says where
the time of a live server goes: callgrind counts user-space instructions only, and the
ratio mixes everything. This runs the same two servers (``bench.py --serve bare|ours``)
under the same load (wrk, one thread, or the Python client), in interleaved rounds, and
splits each server's CPU per stream into user and system time from ``/proc/PID/stat``. With
``--perf`` it also samples each server with ``perf record -e cpu-clock`` (a software clock:
no hardware counters needed) for one window per variant and charges each binary (the
kernel, libpython, our compiled twins, orjson...) its share of the CPU per stream. The
difference of the two servers says where ours adds: in the interpreter, in our own
binaries, or in the kernel (which would mean more or larger writes: it should not move).

    python bench/live_profile.py                   # 6 rounds of 5 s, bare and ours
    python bench/live_profile.py --perf            # also the perf window (perf on PATH)
    python bench/live_profile.py --rounds 10 --seconds 6 --connections 50

Prints Markdown. Every server start, load run and perf window is bounded by a timeout.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import BENCH, CHAT_PATH
from load import free_port, run_load, stop_servers, wait_for_port, write_wrk_script

VARIANTS = ("bare", "ours")
_TICK = os.sysconf("SC_CLK_TCK")


def user_system(pid: int) -> tuple[float, float]:
    """utime and stime of a process in seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def wrk_script(directory: Path) -> str:
    """wrk's Lua script posting section 5's streamed request, in ``directory``."""
    script = str(directory / "post.lua")
    write_wrk_script(script)
    return script


def perf_shares(
    pid: int, port: int, client: str, connections: int, seconds: float, lua: str, directory: Path
) -> dict[str, float]:
    """Each binary's share (0..1) of a perf cpu-clock profile of ``pid`` under load."""
    data = directory / f"perf-{pid}.data"
    if client == "wrk":
        cmd = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds + 2:g}s",
            "-s",
            lua,
            f"http://127.0.0.1:{port}{CHAT_PATH}",
        ]
    else:
        cmd = [sys.executable, str(BENCH), "--load-client", str(port), str(connections), str(seconds + 2)]
    load = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        subprocess.run(
            [
                "perf",
                "record",
                "-q",
                "-e",
                "cpu-clock",
                "-F",
                "2999",
                "-p",
                str(pid),
                "-o",
                str(data),
                "--",
                "sleep",
                f"{seconds:g}",
            ],
            capture_output=True,
            timeout=seconds + 30,
            check=True,
        )
        report = subprocess.run(
            ["perf", "report", "-i", str(data), "--no-children", "-g", "none", "--sort", "dso", "--stdio"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    finally:
        load.wait(timeout=seconds + 30)
    shares: dict[str, float] = {}
    for line in report.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S.*?)\s*$", line)
        if m:
            shares[_binary(m.group(2))] = shares.get(_binary(m.group(2)), 0.0) + float(m.group(1)) / 100
    return shares


def _binary(dso: str) -> str:
    """A perf DSO name, shortened to what tells binaries apart (no ABI tag, no path)."""
    name = dso.strip("[]").rsplit("/", 1)[-1]
    return re.sub(r"\.cpython-\d+.*$", "", name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--perf", action="store_true", help="also sample each server with perf (cpu-clock)")
    args = parser.parse_args()
    client = "wrk" if shutil.which("wrk") else "python"
    if args.perf and shutil.which("perf") is None:
        parser.error("--perf needs perf on PATH (Debian: apt-get install -y linux-perf)")
    directory = Path(tempfile.mkdtemp(prefix="live-profile-"))
    lua = wrk_script(directory)
    servers: dict[str, tuple[subprocess.Popen[Any], int]] = {}
    try:
        for variant in VARIANTS:
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, str(BENCH), "--serve", variant, str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            servers[variant] = (proc, port)
            if not wait_for_port(port, proc):
                raise SystemExit(f"the {variant} server did not start on port {port} within 20 s")
        for proc, port in servers.values():  # warm-up: imports, caches, the first series
            run_load(client, port, args.connections, 2, lua)
        rows: dict[str, list[tuple[float, float, float]]] = {v: [] for v in VARIANTS}
        for round_no in range(args.rounds):
            order = list(VARIANTS)
            random.shuffle(order)
            for variant in order:
                proc, port = servers[variant]
                user0, system0 = user_system(proc.pid)
                load = run_load(client, port, args.connections, args.seconds, lua)
                user1, system1 = user_system(proc.pid)
                n = max(load["requests"], 1)
                rows[variant].append((n / load["seconds"], (user1 - user0) / n * 1e6, (system1 - system0) / n * 1e6))
            print(
                f"    round {round_no + 1}/{args.rounds}: "
                + ", ".join(f"{v} {rows[v][-1][0]:.0f}/s" for v in VARIANTS),
                file=sys.stderr,
                flush=True,
            )
        shares = (
            {
                v: perf_shares(servers[v][0].pid, servers[v][1], client, args.connections, args.seconds, lua, directory)
                for v in VARIANTS
            }
            if args.perf
            else {}
        )
    finally:
        stop_servers(servers)
        shutil.rmtree(directory, ignore_errors=True)
    report(args, client, rows, shares)
    return 0


def report(
    args: argparse.Namespace,
    client: str,
    rows: dict[str, list[tuple[float, float, float]]],
    shares: dict[str, dict[str, float]],
) -> None:
    def med(variant: str, i: int) -> float:
        return statistics.median(r[i] for r in rows[variant])

    ratios = [o[0] / b[0] for o, b in zip(rows["ours"], rows["bare"])]
    # CPU per stream is what a saturated core's rate follows, without the time the core was
    # lent to other tenants: the steadier of the two ratios on a shared machine.
    cpu_ratios = [(b[1] + b[2]) / (o[1] + o[2]) for o, b in zip(rows["ours"], rows["bare"])]
    print(
        f"#### uvicorn, live: CPU per stream by user and system time (`python bench/live_profile.py`, "
        f"{args.rounds} interleaved rounds of {args.seconds:g} s, {client}, {args.connections} connections, medians)\n"
    )
    print("| Server | streams/s | user µs / stream | system µs / stream | CPU µs / stream |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for v in VARIANTS:
        print(f"| {v} | {med(v, 0):,.0f} | {med(v, 1):,.0f} | {med(v, 2):,.0f} | {med(v, 1) + med(v, 2):,.0f} |")
    print(
        f"| ours added | | {med('ours', 1) - med('bare', 1):+,.0f} | {med('ours', 2) - med('bare', 2):+,.0f} | "
        f"{med('ours', 1) + med('ours', 2) - med('bare', 1) - med('bare', 2):+,.0f} |"
    )
    print(
        f"\nours / bare, medians of the per-round ratios: streams per second {statistics.median(ratios):.3f}, "
        f"CPU per stream (bare / ours) {statistics.median(cpu_ratios):.3f}."
    )
    if not shares:
        return
    print(
        f"\nperf cpu-clock, one {args.seconds:g} s window per server: each binary's share of the profile, "
        "times the server's median CPU per stream.\n"
    )
    print("| Binary | bare µs / stream | ours µs / stream | added |")
    print("| --- | ---: | ---: | ---: |")
    cpu = {v: med(v, 1) + med(v, 2) for v in VARIANTS}
    names = sorted(
        set(shares["bare"]) | set(shares["ours"]),
        key=lambda k: -max(shares["bare"].get(k, 0), shares["ours"].get(k, 0)),
    )
    for name in names:
        b, o = shares["bare"].get(name, 0.0) * cpu["bare"], shares["ours"].get(name, 0.0) * cpu["ours"]
        if max(b, o) >= 1.0:
            print(f"| {name} | {b:,.0f} | {o:,.0f} | {o - b:+,.0f} |")


if __name__ == "__main__":
    sys.exit(main())
