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

``--cache-sim`` also simulates the caches (callgrind's ``--cache-sim=yes``: first-level
instruction and data caches and the last level, sized as this machine's) and prints the
misses per request, with cachegrind's rough cycle estimate (Ir + 10 × L1 misses + 100 × LL
misses). Our instructions run between the server's, each chunk after about 100,000 of
uvicorn's: a wrapped request's extra misses are the part of its cost that a tight
in-process loop, where everything stays cached, does not show. ``--connections`` sets how
many streams are in flight at once (section 5 has 50). ``--branch-sim`` simulates branch
prediction as well (conditional and indirect branches, and how many were mispredicted; the
interpreter's dispatch of each bytecode is an indirect branch).

    python bench/uvicorn_instructions.py            # about 4 minutes
    python bench/uvicorn_instructions.py --requests 100 400
    python bench/uvicorn_instructions.py --cache-sim --connections 50 --requests 100 400
    python bench/uvicorn_instructions.py --branch-sim --connections 50 --requests 100 300
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
_EVENTS = re.compile(rb"^events:\s*(.+)$", re.MULTILINE)
_TOTALS = re.compile(rb"^(?:totals|summary):\s*([\d ]+)$", re.MULTILINE)
#: Cachegrind's rough cycle estimate: an L1 miss costs about 10 instructions' time, an LL
#: miss about 100 (its documentation's weights; real figures vary by machine).
_L1_EVENTS = ("I1mr", "D1mr", "D1mw")
_LL_EVENTS = ("ILmr", "DLmr", "DLmw")
_BRANCH_EVENTS = ("Bc", "Bcm", "Bi", "Bim")


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


def _count(variant: str, requests: int, out_dir: str, connections: int, sim: list[str]) -> dict[str, int]:
    """The events (instructions ``Ir``, and the cache misses or branches the ``sim`` options
    ask for) the server executed from start to exit, serving ``requests`` requests over
    ``connections``."""
    port = free_port()
    out = os.path.join(out_dir, f"{variant}.{requests}.out")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", *sim, f"--callgrind-out-file={out}", sys.executable, str(BENCH),
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

        threads = [threading.Thread(target=client, args=(requests // connections,)) for _ in range(connections)]
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
        text = f.read()
    events, totals = _EVENTS.search(text), _TOTALS.search(text)
    if events is None or totals is None:
        raise SystemExit(f"no events or totals in {out}")
    names = events.group(1).decode().split()
    return dict(zip(names, (int(v) for v in totals.group(1).split()), strict=False))


def _cycles(per: dict[str, float]) -> float:
    """Cachegrind's rough cycle estimate of one request's events."""
    return per["Ir"] + 10 * sum(per[e] for e in _L1_EVENTS) + 100 * sum(per[e] for e in _LL_EVENTS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, nargs=2, default=[40, 240], metavar=("FEW", "MORE"),
                        help="the two request counts (multiples of --connections; default 40 240)")
    parser.add_argument("--connections", type=int, default=CONNECTIONS,
                        help=f"streams in flight at once (default {CONNECTIONS}; section 5 has 50)")
    parser.add_argument("--cache-sim", action="store_true",
                        help="also simulate the caches and print misses per request (about twice as slow)")
    parser.add_argument("--branch-sim", action="store_true",
                        help="also simulate branch prediction and print mispredictions per request")
    args = parser.parse_args()
    sim = (["--cache-sim=yes"] if args.cache_sim else []) + (["--branch-sim=yes"] if args.branch_sim else [])
    if shutil.which("valgrind") is None:
        parser.error("needs valgrind on the PATH (Debian: apt-get install valgrind)")
    few, more = args.requests
    if few % args.connections or more % args.connections or more <= few:
        parser.error("--requests needs two increasing multiples of --connections")
    out_dir = tempfile.mkdtemp(prefix="llm-uvicorn-callgrind-")
    per: dict[str, dict[str, float]] = {}
    try:
        for variant in ("bare", "ours"):
            log(f"callgrind: uvicorn {variant}, {few} then {more} requests over {args.connections} connections")
            low, high = (_count(variant, n, out_dir, args.connections, sim) for n in (few, more))
            per[variant] = {event: (high[event] - low[event]) / (more - few) for event in high}
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    bare, ours = per["bare"], per["ours"]
    print(f"#### uvicorn, instructions per streamed request (callgrind; `python bench/uvicorn_instructions.py`: "
          f"the server of section 5, {UVICORN_MAX_TOKENS} content chunks, 68 SSE events, "
          f"{args.connections} connections)\n")
    print("| Variant | instructions / request | added over bare |\n| --- | ---: | ---: |")
    print(f"| bare simulator | {bare['Ir']:,.0f} | — |")
    print(f"| llm-metrics-middleware | {ours['Ir']:,.0f} | {ours['Ir'] - bare['Ir']:,.0f} |")
    print(f"\nbare ÷ wrapped instructions: {bare['Ir'] / ours['Ir']:.3f} (section 5's requests/s ratio if every "
          "instruction took the same time)")
    if args.cache_sim:
        print("\n| Event per request | bare | wrapped | added | added per added instruction |\n"
              "| --- | ---: | ---: | ---: | ---: |")
        added_ir = ours["Ir"] - bare["Ir"]
        for event in ("Ir", *_L1_EVENTS, *_LL_EVENTS):
            added = ours[event] - bare[event]
            print(f"| {event} | {bare[event]:,.0f} | {ours[event]:,.0f} | {added:,.0f} | {added / added_ir:.4f} |")
        for variant in ("bare", "ours"):
            per[variant]["cycles"] = _cycles(per[variant])
        print(f"| estimated cycles | {bare['cycles']:,.0f} | {ours['cycles']:,.0f} | "
              f"{ours['cycles'] - bare['cycles']:,.0f} | {(ours['cycles'] - bare['cycles']) / added_ir:.2f} |")
        print(f"\nbare ÷ wrapped estimated cycles: {bare['cycles'] / ours['cycles']:.3f}; cycles per "
              f"instruction, bare {bare['cycles'] / bare['Ir']:.2f}, ours added "
              f"{(ours['cycles'] - bare['cycles']) / added_ir:.2f}")
    if args.branch_sim:
        added_ir = ours["Ir"] - bare["Ir"]
        print("\n| Branches per request | bare | wrapped | added | per 1,000 instructions: bare / ours added |\n"
              "| --- | ---: | ---: | ---: | ---: |")
        for event in _BRANCH_EVENTS:
            added = ours[event] - bare[event]
            print(f"| {event} | {bare[event]:,.0f} | {ours[event]:,.0f} | {added:,.0f} | "
                  f"{1000 * bare[event] / bare['Ir']:.2f} / {1000 * added / added_ir:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
