"""Instructions per streamed request of section 5's uvicorn server, bare and wrapped, under callgrind.

Section 5 of ``bench.py`` times uvicorn under wrk, where requests/s and CPU move with
whatever else the shared machine runs. This counts what the server executes instead: the
same server (``bench.py --serve VARIANT PORT``: uvicorn, the simulated LLM, one 68-event
stream with include_usage per request) runs under ``valgrind --tool=callgrind`` while a
plain client in another process sends it requests; each variant runs twice, with two
request counts, and the difference divided by the difference in requests is the cost of one
request, without start-up, imports or shutdown.

The ratio bare ÷ wrapped of those counts is what a saturated core's requests/s ratio would
be if every instruction cost the same time: it tells whether a gap between section 5 and an
in-process figure is more work under the server or the same work run slower.

    python bench/uvicorn_instructions.py            # about 4 minutes
    python bench/uvicorn_instructions.py --requests 100 400
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import BENCH, log  # noqa: E402
from load import UVICORN_MAX_TOKENS, _client_request, free_port, wait_for_port  # noqa: E402

CONNECTIONS = 4
_TOTALS = re.compile(rb"^totals:\s*(\d+)", re.MULTILINE)


def _send(port: int, requests: int) -> None:
    """``requests`` streamed requests over one keep-alive connection, each read to its end."""
    request = _client_request(port)
    end = b"\r\n0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        for _ in range(requests):
            sock.sendall(request)
            tail = b""
            while True:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("the server closed the connection")
                tail = (tail + data)[-len(end):]
                if tail == end:
                    break


def _count(variant: str, requests: int, out_dir: str) -> int:
    """Instructions the server executed from start to exit, serving ``requests`` requests."""
    port = free_port()
    out = os.path.join(out_dir, f"{variant}.{requests}.out")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, str(BENCH),
         "--serve", variant, str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        if not wait_for_port(port, proc, timeout=120):
            raise SystemExit(f"the {variant} server did not start under valgrind within 120 s")
        errors: list[BaseException] = []

        def client(k: int) -> None:
            try:
                _send(port, k)
            except BaseException as exc:  # reported below, not lost in the thread
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(requests // CONNECTIONS,)) for _ in range(CONNECTIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        if errors or any(t.is_alive() for t in threads):
            raise SystemExit(f"the client of the {variant} server failed: {errors[:1] or 'timed out'}")
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful exit: callgrind writes its counts
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with open(out, "rb") as f:
        found = _TOTALS.search(f.read())
    if found is None:
        raise SystemExit(f"no totals in {out}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, nargs=2, default=[40, 240], metavar=("FEW", "MORE"),
                        help="the two request counts (multiples of 4; default 40 240)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        parser.error("needs valgrind on the PATH (Debian: apt-get install valgrind)")
    few, more = args.requests
    out_dir = tempfile.mkdtemp(prefix="llm-uvicorn-callgrind-")
    per: dict[str, float] = {}
    try:
        for variant in ("bare", "ours"):
            log(f"callgrind: uvicorn {variant}, {few} then {more} requests")
            counts = [_count(variant, n, out_dir) for n in (few, more)]
            per[variant] = (counts[1] - counts[0]) / (more - few)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    added = per["ours"] - per["bare"]
    print(f"#### uvicorn, instructions per streamed request (callgrind; `python bench/uvicorn_instructions.py`: "
          f"the server of section 5, {UVICORN_MAX_TOKENS} content chunks, 68 SSE events)\n")
    print("| Variant | instructions / request | added over bare |\n| --- | ---: | ---: |")
    print(f"| bare simulator | {per['bare']:,.0f} | — |")
    print(f"| llm-metrics-middleware | {per['ours']:,.0f} | {added:,.0f} |")
    print(f"\nbare ÷ wrapped instructions: {per['bare'] / per['ours']:.3f} (section 5's requests/s ratio if every "
          "instruction took the same time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
