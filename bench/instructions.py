"""Instructions per non-streamed request under callgrind: bare app, ours, the instrumentator.

Wall time on a shared 2-core machine moves by a tenth from run to run; the instructions a
request executes barely move, so this is the figure to compare two versions of the
per-call path with (section 1 of ``bench.py`` is the one the README quotes, in time).

Each figure is the difference of two children under ``valgrind --tool=callgrind``: one that
sets everything up (imports, the three apps, a warm-up of every app) and stops, and one that
does the same and then serves ``--requests`` more requests through one app. Start-up, imports
and warm-up cancel out; what is left is the cost of those requests, divided by their number.
The children run with a fixed ``PYTHONHASHSEED`` so both see the same dict layouts.

    python bench/instructions.py                  # ASGI: bare, ours, instrumentator
    python bench/instructions.py --requests 1000  # fewer requests, quicker (about 2 min)
    python bench/instructions.py --wsgi           # also WSGI: bare and ours
    python bench/instructions.py --keep DIR       # keep the callgrind files (callgrind_annotate)

Prints a Markdown table: instructions per request, added over bare, and ours added divided
by the instrumentator's added (the issue's target: at most 0.5).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import CHAT_PATH, TARGET_JSON_RATIO, log  # noqa: E402

WARM_UP = 300
ASGI_VARIANTS = ("bare", "ours", "instrumentator")
WSGI_VARIANTS = ("wsgi-bare", "wsgi-ours")


def _child(variant: str, requests: int) -> None:
    """Set every app up and warm it, then serve ``requests`` requests through ``variant``."""
    from drivers import asgi_json_app, asgi_scope, drive_asgi, drive_wsgi, wsgi_environ, wsgi_json_app
    from variants import instrumentator_asgi, ours_asgi, ours_wsgi
    from workloads import COMPLETION_BODY, request_body

    body = request_body()
    scope = asgi_scope(CHAT_PATH, body)
    environ = wsgi_environ(CHAT_PATH, body)
    base = asgi_json_app(COMPLETION_BODY)
    wsgi_base = wsgi_json_app(COMPLETION_BODY)
    asgi_apps: dict[str, Any] = {"bare": base, "ours": ours_asgi(base)[0], "instrumentator": instrumentator_asgi(base)}
    wsgi_apps: dict[str, Any] = {"wsgi-bare": wsgi_base, "wsgi-ours": ours_wsgi(wsgi_base)[0]}
    loop = asyncio.new_event_loop()
    for app in asgi_apps.values():
        loop.run_until_complete(drive_asgi(app, scope, body, WARM_UP))
    for app in wsgi_apps.values():
        drive_wsgi(app, environ, body, WARM_UP)
    if requests:
        if variant in asgi_apps:
            loop.run_until_complete(drive_asgi(asgi_apps[variant], scope, body, requests))
        else:
            drive_wsgi(wsgi_apps[variant], environ, body, requests)
    loop.close()


_COLLECTED = re.compile(rb"Collected\s*:\s*(\d+)")


def _instructions(variant: str, requests: int, out_dir: str) -> int:
    """Instructions the whole child executed, as callgrind counts them."""
    out = os.path.join(out_dir, f"callgrind.{variant}.{requests}")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
         "--child", variant, str(requests)],
        env=env, capture_output=True, timeout=1800, check=False,
    )
    found = _COLLECTED.search(result.stderr)
    if result.returncode != 0 or found is None:
        sys.stderr.write(result.stderr.decode(errors="replace")[-3000:])
        raise SystemExit(f"callgrind run of {variant} ({requests} requests) failed with status {result.returncode}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per variant (default 2000)")
    parser.add_argument("--wsgi", action="store_true", help="also measure WSGI (bare and ours)")
    parser.add_argument("--jobs", type=int, default=2, help="callgrind children run at once (default 2)")
    parser.add_argument("--keep", metavar="DIR", help="keep the callgrind output files in DIR")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]))
        return 0
    if shutil.which("valgrind") is None:
        parser.error("needs valgrind on the PATH (Debian: apt-get install valgrind)")
    n = args.requests
    variants = ASGI_VARIANTS + (WSGI_VARIANTS if args.wsgi else ())
    out_dir = args.keep or tempfile.mkdtemp(prefix="llm-callgrind-")
    os.makedirs(out_dir, exist_ok=True)
    runs = [("setup", 0), *((v, n) for v in variants)]
    log(f"callgrind: {len(runs)} children ({n:,} requests each after set-up), {args.jobs} at a time")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        counts = dict(zip([r[0] for r in runs], pool.map(lambda r: _instructions(r[0], r[1], out_dir), runs)))
    if not args.keep:
        shutil.rmtree(out_dir, ignore_errors=True)
    per = {v: (counts[v] - counts["setup"]) / n for v in variants}
    added = {v: per[v] - per["bare"] for v in ASGI_VARIANTS if v != "bare"}
    ratio = added["ours"] / added["instrumentator"]
    print(f"#### Instructions per non-streamed request (callgrind, {n:,} requests per variant, "
          f"{WARM_UP} warm-up; `python bench/instructions.py`)\n")
    print("| Variant | instructions / request | added over bare |\n| --- | ---: | ---: |")
    print(f"| bare ASGI app | {per['bare']:,.0f} | — |")
    print(f"| llm-metrics-middleware (Prometheus, 4 dimensions) | {per['ours']:,.0f} | {added['ours']:,.0f} |")
    print(f"| prometheus-fastapi-instrumentator | {per['instrumentator']:,.0f} | {added['instrumentator']:,.0f} |")
    if args.wsgi:
        print(f"| bare WSGI app | {per['wsgi-bare']:,.0f} | — |")
        print(f"| llm-metrics-middleware WSGI | {per['wsgi-ours']:,.0f} | {per['wsgi-ours'] - per['wsgi-bare']:,.0f} |")
    verdict = "pass" if ratio <= TARGET_JSON_RATIO else "FAIL"
    print(f"\nASGI: ours added / instrumentator added = {ratio:.3f} (target <= {TARGET_JSON_RATIO}: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
