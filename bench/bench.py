"""Side-by-side benchmark of llm-metrics-middleware and the usual HTTP metrics middlewares.

One run measures every variant of a case in interleaved rounds (each round runs every
variant once, in a shuffled order), so drift and noise on a shared machine hit all of
them alike; figures are medians over rounds, and "added" costs are medians of the
per-round differences to the bare app of the same round.

``sections.py`` holds the five sections (ASGI non-streamed, ASGI SSE, WSGI, large bodies
and memory, uvicorn under load) and says what each measures; ``large.py`` is the one
memory measurement (a large body through either middleware in a fresh process),
``load.py`` the uvicorn server and its load clients (wrk if installed, else a raw-socket
asyncio client). The rest: ``workloads.py`` (the bodies), ``drivers.py`` (in-process
ASGI and WSGI), ``variants.py`` (the middlewares compared), ``profiling.py``
(``--profile``), ``common.py`` (targets, medians, rounds).

    bench/run                          # installs the peers, then runs this
    python bench/bench.py              # full run, about 4 minutes on 2 cores
    python bench/bench.py --quick      # smoke run, about a minute
    python bench/bench.py --json out.json --sections 1,2
    python bench/bench.py --sections 4 # large bodies and memory only
    python bench/bench.py --profile    # where our time goes, per request and per chunk

Markdown goes to stdout, progress to stderr. Targets are printed with pass/FAIL next to
the figure; the exit status is 0 whatever they say (a failed run exits non-zero).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

from common import DIMENSIONS, Config, log, verdict, version_of
from large import run_large_child
from load import python_client, serve
from profiling import profile
from sections import section_asgi_json, section_asgi_sse, section_large, section_uvicorn, section_wsgi
from variants import OTEL_SETUP

SECTIONS: dict[str, Callable[[Config, dict[str, Any], list[str], list[Any]], None]] = {
    "1": section_asgi_json,
    "2": section_asgi_sse,
    "3": section_wsgi,
    "4": section_large,
    "5": section_uvicorn,
}


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": {d: version_of(d) for d in (
            "llm-metrics-middleware", "prometheus-client", "prometheus-fastapi-instrumentator", "opentelemetry-sdk",
            "opentelemetry-instrumentation-asgi", "opentelemetry-instrumentation-wsgi", "uvicorn", "starlette", "h11")},
        "otel_setup": OTEL_SETUP,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, under a minute")
    parser.add_argument("--json", metavar="PATH", help="write every sample and median as JSON")
    parser.add_argument("--sections", default="1,2,3,4,5", help="comma-separated sections to run (default all)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds for sections 1-3 (default 7, quick 3)")
    parser.add_argument("--seconds", type=float, help="seconds per uvicorn load run (default 10, quick 2)")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto", help="uvicorn load client")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="print where our time goes instead of benchmarking")
    parser.add_argument("--large-child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--load-client", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.large_child:
        kind, server, variant, size = args.large_child
        print(json.dumps(run_large_child(kind, server, variant, int(size))))
        return 0
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return 0
    if args.load_client:
        port, conns, seconds = args.load_client
        print(json.dumps(python_client(int(port), int(conns), float(seconds))))
        return 0

    cfg = Config(args)
    if args.profile:
        profile(cfg)
        return 0

    started = time.perf_counter()
    out: dict[str, Any] = {"environment": environment(), "quick": args.quick, "seed": args.seed}
    md: list[str] = []
    targets: list[tuple[str, str, str, bool]] = []
    for key in args.sections.split(","):
        key = key.strip()
        if key not in SECTIONS:
            parser.error(f"--sections takes numbers 1 to 5, got {key!r}")
        t0 = time.perf_counter()
        SECTIONS[key](cfg, out, md, targets)
        log(f"    section {key}: {time.perf_counter() - t0:.0f} s")
    elapsed = time.perf_counter() - started
    env = out["environment"]
    versions = env["versions"]
    head = [
        f"## Benchmark{' (quick smoke run: too short to quote)' if args.quick else ''}",
        "",
        f"`bench/run{' --quick' if args.quick else ''}` on Python {env['python']}, {env['cpus']} CPUs "
        f"({env['platform']}), {elapsed:.0f} s. llm-metrics-middleware from this tree with a PrometheusExporter on "
        f"its own registry and dimensions {', '.join(DIMENSIONS)}; prometheus-client {versions['prometheus-client']}. "
        f"OpenTelemetry peers: opentelemetry-sdk {versions['opentelemetry-sdk']}, {OTEL_SETUP}. "
        "Rounds are interleaved (every variant once per round, shuffled); figures are medians.",
        "",
    ]
    if targets:
        head += ["| Target | Figure | Required | Result |", "| --- | ---: | ---: | --- |"]
        head += [f"| {name} | {figure} | {required} | {verdict(ok)} |" for name, figure, required, ok in targets]
        head.append("")
    out["targets"] = [{"target": n, "figure": f, "required": r, "pass": ok} for n, f, r, ok in targets]
    out["seconds"] = elapsed
    print("\n".join(head + md))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
        log(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
