"""The five sections of the benchmark; each measures, checks what was counted, and reports.

A section takes the run's :class:`~common.Config`, and adds to ``out`` (every sample, for
``--json``), ``md`` (its Markdown table) and ``targets`` (name, figure, required, passed).

1. ASGI, non-streamed ~1 KB chat completion, in-process: bare app, ours,
   prometheus-fastapi-instrumentator, OpenTelemetry ASGI.
2. ASGI, a 2,000-chunk SSE stream, with and without ``stream_options.include_usage``.
3. WSGI, the same two, bare, ours and OpenTelemetry WSGI.
4. Large bodies (200 MB JSON of numbers, 200 MB JSON of text, 1,000,000 SSE events)
   through both middlewares: MB/s and peak memory growth per variant, each in a fresh
   subprocess; plus the scan rate of the sans-IO core alone.
5. uvicorn on 127.0.0.1 serving the simulated LLM, bare and wrapped, under 50 concurrent
   streaming clients.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from common import (
    BENCH,
    CHAT_PATH,
    TARGET_CHUNK_ESTIMATE_US,
    TARGET_CHUNK_USAGE_US,
    TARGET_JSON_RATIO,
    TARGET_MEMORY_GROWTH_MB,
    TARGET_SCAN_GBPS,
    TARGET_UVICORN_RATIO,
    interleave,
    log,
    median,
    paired_added,
    verdict,
    version_of,
)
from drivers import (
    asgi_json_app,
    asgi_scope,
    asgi_stream_app,
    drive_asgi,
    drive_wsgi,
    wsgi_environ,
    wsgi_json_app,
    wsgi_stream_app,
)
from large import LARGE_VARIANTS, core_scan
from load import (
    UVICORN_MAX_TOKENS,
    children_cpu,
    cpu_seconds,
    free_port,
    http_impl,
    loop_impl,
    run_load,
    stop_servers,
    wait_for_port,
    write_wrk_script,
)
from variants import check_counted, instrumentator_asgi, otel_asgi, otel_wsgi, ours_asgi, ours_wsgi
from workloads import COMPLETION_BODY, COMPLETION_TOKENS, LARGE_KINDS, chat_chunks, large_expected, request_body

if TYPE_CHECKING:
    from common import Config

def section_asgi_json(cfg: Config, out: dict[str, Any], md: list[str], targets: list[Any]) -> None:
    n, rounds = cfg.json_requests, cfg.rounds
    log(f"[1] ASGI non-streamed: {n:,} requests x {rounds} rounds")
    body = request_body()
    scope = asgi_scope(CHAT_PATH, body)
    base = asgi_json_app(COMPLETION_BODY)
    ours, registry = ours_asgi(base)
    apps = {
        "bare": base,
        "ours": ours,
        "instrumentator": instrumentator_asgi(base),
        "otel": otel_asgi(base),
    }
    loop = asyncio.new_event_loop()
    calls = {name: 0 for name in apps}

    def runner(name: str, count: int) -> Callable[[], float]:
        def run() -> float:
            calls[name] += count
            return loop.run_until_complete(drive_asgi(apps[name], scope, body, count))

        return run

    for name in apps:  # warm-up, not recorded
        runner(name, max(200, n // 20))()
    samples = interleave({name: runner(name, n) for name in apps}, rounds, cfg.rng)
    loop.close()
    counted = check_counted("ASGI JSON", registry, calls["ours"], COMPLETION_TOKENS, "reported")

    per = {name: median(s) / n * 1e6 for name, s in samples.items()}
    added = {name: paired_added(samples, name, "bare", n) for name in apps if name != "bare"}
    ratio_instr = added["ours"] / added["instrumentator"]
    ratio_otel = added["ours"] / added["otel"]
    out["asgi_json"] = {"requests_per_round": n, "rounds": rounds, "samples_s": samples, "us_per_request": per,
                        "us_added": added, "ours_added_over_instrumentator_added": ratio_instr,
                        "ours_added_over_otel_added": ratio_otel, "counted": counted}
    ok = ratio_instr <= TARGET_JSON_RATIO
    targets.append(("ASGI non-streamed: ours added / instrumentator added", f"{ratio_instr:.2f}", f"<= {TARGET_JSON_RATIO}", ok))
    md += [
        "### 1. ASGI, non-streamed chat completion (in-process)",
        "",
        f"`POST {CHAT_PATH}` with a JSON body naming model and user; a {len(COMPLETION_BODY):,}-byte chat completion "
        f"with a usage object, in one body message. {n:,} requests per variant per round, {rounds} interleaved rounds, "
        "one event loop; medians.",
        "",
        "| Variant | µs / request | µs added over bare | ours added ÷ this added |",
        "| --- | ---: | ---: | ---: |",
        f"| bare ASGI app | {per['bare']:.1f} | — | — |",
        f"| **llm-metrics-middleware** (Prometheus, 4 dimensions) | {per['ours']:.1f} | {added['ours']:.1f} | — |",
        f"| prometheus-fastapi-instrumentator {version_of('prometheus-fastapi-instrumentator')} "
        f"| {per['instrumentator']:.1f} | {added['instrumentator']:.1f} | {ratio_instr:.2f} (target ≤ {TARGET_JSON_RATIO}: {verdict(ok)}) |",
        f"| opentelemetry-instrumentation-asgi {version_of('opentelemetry-instrumentation-asgi')} "
        f"| {per['otel']:.1f} | {added['otel']:.1f} | {ratio_otel:.2f} |",
        "",
        f"Counting check: {counted}.",
        "",
    ]


# -- section 2: ASGI SSE ----------------------------------------------------------------

def section_asgi_sse(cfg: Config, out: dict[str, Any], md: list[str], targets: list[Any]) -> None:
    chunks_n, streams, rounds = cfg.stream_chunks, cfg.streams, cfg.rounds
    log(f"[2] ASGI SSE: {streams} streams x {chunks_n:,} chunks x {rounds} rounds")
    usage_chunks, usage_total = chat_chunks(chunks_n, include_usage=True)
    plain_chunks, _ = chat_chunks(chunks_n, include_usage=False)
    usage_req = request_body(stream=True, include_usage=True)
    plain_req = request_body(stream=True)
    usage_app = asgi_stream_app(usage_chunks)
    plain_app = asgi_stream_app(plain_chunks)
    ours_u, reg_u = ours_asgi(usage_app)
    ours_p, reg_p = ours_asgi(plain_app)
    cases: dict[str, tuple[Any, bytes]] = {
        "usage/bare": (usage_app, usage_req),
        "usage/ours": (ours_u, usage_req),
        "usage/instrumentator": (instrumentator_asgi(usage_app), usage_req),
        "usage/otel": (otel_asgi(usage_app), usage_req),
        "estimate/bare": (plain_app, plain_req),
        "estimate/ours": (ours_p, plain_req),
    }
    loop = asyncio.new_event_loop()
    calls = {name: 0 for name in cases}

    def runner(name: str, count: int) -> Callable[[], float]:
        app, req = cases[name]
        scope = asgi_scope(CHAT_PATH, req)

        def run() -> float:
            calls[name] += count
            return loop.run_until_complete(drive_asgi(app, scope, req, count))

        return run

    for name in cases:
        runner(name, 1)()
    samples = interleave({name: runner(name, streams) for name in cases}, rounds, cfg.rng)
    loop.close()
    counted_u = check_counted("ASGI SSE include_usage", reg_u, calls["usage/ours"], usage_total, "reported")
    counted_p = check_counted("ASGI SSE estimating", reg_p, calls["estimate/ours"], None, "estimated")
    _stream_report("asgi_sse", "2. ASGI, 2,000-chunk SSE stream (in-process)", "ASGI", samples, streams, chunks_n,
                   usage_chunks, plain_chunks, out, md, targets, [counted_u, counted_p],
                   {"instrumentator": f"prometheus-fastapi-instrumentator {version_of('prometheus-fastapi-instrumentator')}",
                    "otel": f"opentelemetry-instrumentation-asgi {version_of('opentelemetry-instrumentation-asgi')}"})


def _stream_report(key: str, title: str, kind: str, samples: dict[str, list[float]], streams: int, chunks_n: int,
                   usage_chunks: list[bytes], plain_chunks: list[bytes], out: dict[str, Any], md: list[str],
                   targets: list[Any], counted: list[str], peers: dict[str, str]) -> None:
    units = streams * chunks_n
    per = {name: median(s) / units * 1e6 for name, s in samples.items()}
    added: dict[str, float] = {}
    throughput: dict[str, float] = {}
    for name, s in samples.items():
        case, variant = name.split("/")
        if variant != "bare":
            added[name] = paired_added(samples, name, f"{case}/bare", units)
            throughput[name] = median([b / a for a, b in zip(s, samples[f"{case}/bare"])])
    out[key] = {"streams_per_round": streams, "chunks_per_stream": chunks_n, "samples_s": samples,
                "us_per_chunk": per, "us_added_per_chunk": added, "throughput_vs_bare": throughput, "counted": counted}
    ok_u = added["usage/ours"] <= TARGET_CHUNK_USAGE_US
    ok_e = added["estimate/ours"] <= TARGET_CHUNK_ESTIMATE_US
    targets.append((f"{kind} SSE include_usage: µs added per chunk", f"{added['usage/ours']:.2f}", f"<= {TARGET_CHUNK_USAGE_US}", ok_u))
    targets.append((f"{kind} SSE estimating: µs added per chunk", f"{added['estimate/ours']:.2f}", f"<= {TARGET_CHUNK_ESTIMATE_US}", ok_e))
    avg_u = sum(map(len, usage_chunks)) / len(usage_chunks)
    avg_p = sum(map(len, plain_chunks)) / len(plain_chunks)
    md += [
        f"### {title}",
        "",
        f"One SSE event per body message/block: OpenAI chat chunks of {avg_u:.0f} bytes with `\"usage\":null` and a usage "
        f"chunk at the end when the request asks `stream_options.include_usage`; {avg_p:.0f} bytes and no usage otherwise "
        f"(we estimate from the text). {streams} streams per variant per round, {len(next(iter(samples.values())))} "
        "interleaved rounds; medians.",
        "",
        "| Request | Variant | µs / chunk | µs added / chunk | throughput vs bare | target |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    labels = {"bare": f"bare {kind} app", "ours": "**llm-metrics-middleware**", **peers}
    for name in samples:
        case, variant = name.split("/")
        req = "include_usage" if case == "usage" else "no usage (estimate)"
        if variant == "bare":
            md.append(f"| {req} | {labels[variant]} | {per[name]:.2f} | — | 1.00 | |")
            continue
        target = ""
        if variant == "ours":
            limit, ok = (TARGET_CHUNK_USAGE_US, ok_u) if case == "usage" else (TARGET_CHUNK_ESTIMATE_US, ok_e)
            target = f"≤ {limit} µs: {verdict(ok)}"
        md.append(f"| {req} | {labels[variant]} | {per[name]:.2f} | {added[name]:.2f} | {throughput[name]:.2f} | {target} |")
    md += ["", "Counting check: " + "; ".join(counted) + ".", ""]


# -- section 3: WSGI --------------------------------------------------------------------

def section_wsgi(cfg: Config, out: dict[str, Any], md: list[str], targets: list[Any]) -> None:
    n, chunks_n, streams, rounds = cfg.json_requests, cfg.stream_chunks, cfg.streams, cfg.rounds
    log(f"[3] WSGI: {n:,} non-streamed requests; {streams} streams x {chunks_n:,} chunks; {rounds} rounds")
    body = request_body()
    environ = wsgi_environ(CHAT_PATH, body)
    base = wsgi_json_app(COMPLETION_BODY)
    ours, registry = ours_wsgi(base)
    apps = {"bare": base, "ours": ours, "otel": otel_wsgi(base)}
    calls = {name: 0 for name in apps}

    def runner(name: str, count: int) -> Callable[[], float]:
        def run() -> float:
            calls[name] += count
            return drive_wsgi(apps[name], environ, body, count)

        return run

    for name in apps:
        runner(name, max(200, n // 20))()
    samples = interleave({name: runner(name, n) for name in apps}, rounds, cfg.rng)
    counted = check_counted("WSGI JSON", registry, calls["ours"], COMPLETION_TOKENS, "reported")
    per = {name: median(s) / n * 1e6 for name, s in samples.items()}
    added = {name: paired_added(samples, name, "bare", n) for name in apps if name != "bare"}
    ratio_otel = added["ours"] / added["otel"]
    out["wsgi_json"] = {"requests_per_round": n, "samples_s": samples, "us_per_request": per, "us_added": added,
                        "ours_added_over_otel_added": ratio_otel, "counted": counted}
    md += [
        "### 3. WSGI (in-process: call the app, iterate, close)",
        "",
        f"Non-streamed: the same request and {len(COMPLETION_BODY):,}-byte completion as section 1, one block; "
        f"{n:,} requests per variant per round, {rounds} interleaved rounds; medians.",
        "",
        "| Variant | µs / request | µs added over bare | ours added ÷ this added |",
        "| --- | ---: | ---: | ---: |",
        f"| bare WSGI app | {per['bare']:.1f} | — | — |",
        f"| **llm-metrics-middleware** (Prometheus, 4 dimensions) | {per['ours']:.1f} | {added['ours']:.1f} | — |",
        f"| opentelemetry-instrumentation-wsgi {version_of('opentelemetry-instrumentation-wsgi')} "
        f"| {per['otel']:.1f} | {added['otel']:.1f} | {ratio_otel:.2f} |",
        "",
        f"Counting check: {counted}.",
        "",
    ]

    usage_chunks, usage_total = chat_chunks(chunks_n, include_usage=True)
    plain_chunks, _ = chat_chunks(chunks_n, include_usage=False)
    usage_req = request_body(stream=True, include_usage=True)
    plain_req = request_body(stream=True)
    usage_app = wsgi_stream_app(usage_chunks)
    plain_app = wsgi_stream_app(plain_chunks)
    ours_u, reg_u = ours_wsgi(usage_app)
    ours_p, reg_p = ours_wsgi(plain_app)
    cases: dict[str, tuple[Any, bytes]] = {
        "usage/bare": (usage_app, usage_req),
        "usage/ours": (ours_u, usage_req),
        "usage/otel": (otel_wsgi(usage_app), usage_req),
        "estimate/bare": (plain_app, plain_req),
        "estimate/ours": (ours_p, plain_req),
    }
    scalls = {name: 0 for name in cases}

    def srunner(name: str, count: int) -> Callable[[], float]:
        app, req = cases[name]
        env = wsgi_environ(CHAT_PATH, req)

        def run() -> float:
            scalls[name] += count
            return drive_wsgi(app, env, req, count)

        return run

    for name in cases:
        srunner(name, 1)()
    ssamples = interleave({name: srunner(name, streams) for name in cases}, rounds, cfg.rng)
    counted_u = check_counted("WSGI SSE include_usage", reg_u, scalls["usage/ours"], usage_total, "reported")
    counted_p = check_counted("WSGI SSE estimating", reg_p, scalls["estimate/ours"], None, "estimated")
    _stream_report("wsgi_sse", "3b. WSGI, 2,000-chunk SSE stream (in-process)", "WSGI", ssamples, streams, chunks_n,
                   usage_chunks, plain_chunks, out, md, targets, [counted_u, counted_p],
                   {"otel": f"opentelemetry-instrumentation-wsgi {version_of('opentelemetry-instrumentation-wsgi')}"})


def section_large(cfg: Config, out: dict[str, Any], md: list[str], targets: list[Any]) -> None:
    rounds = cfg.large_rounds
    sizes = {"embeddings": cfg.large_json, "text": cfg.large_json, "sse": cfg.large_events}
    cases = [(server, variant) for server, variants in LARGE_VARIANTS.items() for variant in variants]
    log(f"[4] large bodies: {cfg.large_json / 1e6:.0f} MB JSON x2, {cfg.large_events:,} SSE events; ASGI and WSGI; "
        f"{rounds} rounds of fresh subprocesses")
    results: dict[str, dict[tuple[str, str], list[dict[str, Any]]]] = {k: {c: [] for c in cases} for k in LARGE_KINDS}
    core: dict[str, list[float]] = {k: [] for k in LARGE_KINDS}
    core_ok: dict[str, Any] = {}
    for r in range(rounds):
        jobs: list[tuple[str, tuple[str, str] | None]] = [(k, c) for k in LARGE_KINDS for c in (*cases, None)]
        cfg.rng.shuffle(jobs)
        for kind, case in jobs:
            if case is None:
                seconds, nbytes, result = core_scan(kind, sizes[kind])
                core[kind].append(nbytes / seconds / 1e6)
                usage = result.usage
                core_ok[kind] = usage.total_tokens if usage is not None else None
                continue
            server, variant = case
            proc = subprocess.run(
                [sys.executable, str(BENCH), "--large-child", kind, server, variant, str(sizes[kind])],
                capture_output=True, text=True, timeout=600,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"large-body child {kind} {server} {variant} failed:\n{proc.stderr[-2000:]}")
            results[kind][case].append(json.loads(proc.stdout))
        log(f"    round {r + 1}/{rounds}: " + ", ".join(
            f"{k} core {core[k][-1]:.0f} MB/s" for k in LARGE_KINDS))
    summary: dict[str, Any] = {}
    md += [
        "### 4. Large bodies (in-process ASGI and WSGI, each variant in a fresh subprocess)",
        "",
        "Bodies are generated on the fly from one reused piece (JSON in 65 KB chunks, SSE one event per message or "
        "block), so the only memory that can grow is what the middleware keeps. *Bare* passes the chunks by reference: "
        "its MB/s is the cost of the ASGI or WSGI calls alone. *Buffer + json.loads* holds the whole body, parses it "
        "(every event's data, for SSE) and forwards it in one message, as a buffering gateway policy does. "
        "*Core scan* feeds the same chunks to `UsageExtractor(JSON)` / `UsageExtractor(SSE)` and calls `close()`. "
        "Peak memory growth is VmHWM minus VmRSS before the request; *over bare* is ours minus bare, same server. "
        f"Medians of {rounds} interleaved rounds.",
        "",
        "| Body | Server | Variant | MB/s | peak memory growth (MB) | tokens counted |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    titles = {"embeddings": f"{cfg.large_json / 1e6:.0f} MB JSON, number arrays (embeddings)",
              "text": f"{cfg.large_json / 1e6:.0f} MB JSON, one huge string of escaped prose",
              "sse": f"{cfg.large_events:,}-event SSE stream"}
    names = {"bare": "bare passthrough", "ours": "**llm-metrics-middleware**", "buffer": "buffer + json.loads"}
    worst = {server: 0.0 for server in LARGE_VARIANTS}
    for kind in LARGE_KINDS:
        expected = large_expected(kind, sizes[kind])
        summary[kind] = {}
        for server, variant in cases:
            runs = results[kind][(server, variant)]
            mbps = median([x["bytes"] / x["seconds"] / 1e6 for x in runs])
            growth = median([x["growth"] / 1e6 for x in runs])
            counted = runs[-1]["counted"]
            # ASGI keys as before ("ours"), WSGI ones prefixed ("wsgi/ours"), so old --json readers still work.
            key = variant if server == "asgi" else f"{server}/{variant}"
            summary[kind][key] = {"mb_per_s": mbps, "growth_mb": growth, "counted": counted, "runs": runs}
            shown = "—" if counted is None else f"{int(counted):,}" + ("" if counted == expected else f" (expected {expected:,})")
            over = ""
            if variant == "ours":
                bare = median([x["growth"] / 1e6 for x in results[kind][(server, "bare")]])
                summary[kind][key]["growth_over_bare_mb"] = growth - bare
                worst[server] = max(worst[server], growth - bare)
                over = f" ({growth - bare:+,.2f} over bare)"
            md.append(f"| {titles[kind]} | {server.upper()} | {names[variant]} | {mbps:,.0f} | {growth:,.2f}{over} | {shown} |")
        core_mbps = median(core[kind])
        summary[kind]["core_scan_mb_per_s"] = core_mbps
        summary[kind]["core_samples"] = core[kind]
        shown = "—" if core_ok.get(kind) is None else f"{core_ok[kind]:,}"
        target = ""
        if kind in ("embeddings", "text"):
            ok = core_mbps >= TARGET_SCAN_GBPS * 1000
            what = "numbers" if kind == "embeddings" else "text"
            targets.append((f"core scan of large JSON ({what}), GB/s", f"{core_mbps / 1000:.2f}", f">= {TARGET_SCAN_GBPS}", ok))
            target = f" (target ≥ {TARGET_SCAN_GBPS:g} GB/s: {verdict(ok)})"
        md.append(f"| {titles[kind]} | — | core scan only{target} | {core_mbps:,.0f} | | {shown} |")
    for server, growth in worst.items():
        targets.append((f"{server.upper()} large bodies: peak memory growth over bare, MB (worst body)", f"{growth:.2f}",
                        f"<= {TARGET_MEMORY_GROWTH_MB:g}", growth <= TARGET_MEMORY_GROWTH_MB))
    out["large"] = {"sizes": sizes, "rounds": rounds, "results": summary,
                    "worst_growth_over_bare_mb": worst}
    md.append("")


def section_uvicorn(cfg: Config, out: dict[str, Any], md: list[str], targets: list[Any]) -> None:
    title = "### 5. uvicorn on 127.0.0.1, 50 concurrent streaming clients"
    try:
        import uvicorn  # noqa: F401
    except ImportError as exc:
        reason = f"uvicorn cannot be imported ({exc})"
        log(f"[5] skipped: {reason}")
        md += [title, "", f"Skipped: {reason}.", ""]
        out["uvicorn"] = {"skipped": reason}
        return
    client = cfg.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    elif client == "wrk" and not shutil.which("wrk"):
        client = "python"
    rounds, seconds, conns = cfg.uvicorn_rounds, cfg.uvicorn_seconds, 50
    log(f"[5] uvicorn ({http_impl()}, {loop_impl()}): {rounds} rounds x {seconds:g} s per variant, {conns} connections, "
        f"client {client}")
    section_deadline = time.monotonic() + cfg.uvicorn_budget
    tmp = tempfile.mkdtemp(prefix="llm-bench-")
    lua = os.path.join(tmp, "post.lua")
    write_wrk_script(lua)
    servers: dict[str, tuple[subprocess.Popen[Any], int]] = {}
    results: dict[str, list[dict[str, Any]]] = {"bare": [], "ours": []}
    try:
        for variant in ("bare", "ours"):
            port = free_port()
            # stderr to a file: asyncio logs a line per connection the client drops
            # mid-stream, and an undrained pipe would block the server.
            errlog = open(os.path.join(tmp, f"{variant}.stderr"), "w+b")  # noqa: SIM115
            proc = subprocess.Popen([sys.executable, str(BENCH), "--serve", variant, str(port)],
                                    stdout=subprocess.DEVNULL, stderr=errlog)
            errlog.close()
            servers[variant] = (proc, port)
            if not wait_for_port(port, proc):
                with open(os.path.join(tmp, f"{variant}.stderr"), "rb") as f:
                    err = f.read().decode(errors="replace")[-1000:]
                reason = f"uvicorn did not start ({variant}): {err.strip() or 'no answer on its port within 20 s'}"
                log(f"[5] skipped: {reason}")
                md += [title, "", f"Skipped: {reason}.", ""]
                out["uvicorn"] = {"skipped": reason}
                return
        for variant, (proc, port) in servers.items():  # warm-up
            run_load(client, port, conns, min(2.0, seconds), lua)
        for r in range(rounds):
            order = list(servers)
            cfg.rng.shuffle(order)
            for variant in order:
                if time.monotonic() > section_deadline:
                    log("    section time budget spent; stopping early")
                    break
                proc, port = servers[variant]
                server_before, client_before, wall_before = cpu_seconds(proc.pid), children_cpu(), time.perf_counter()
                load = run_load(client, port, conns, seconds, lua)
                wall = time.perf_counter() - wall_before
                server_cpu = cpu_seconds(proc.pid) - server_before
                client_cpu = children_cpu() - client_before
                load.update(wall=wall, server_cpu=server_cpu, client_cpu=client_cpu,
                            rps=load["requests"] / load["seconds"])
                results[variant].append(load)
            log(f"    round {r + 1}/{rounds}: " + ", ".join(
                f"{v} {results[v][-1]['rps']:.0f} req/s" for v in results if results[v]))
    finally:
        stop_servers(servers)
        shutil.rmtree(tmp, ignore_errors=True)
    n = min(len(results["bare"]), len(results["ours"]))
    if any(x["requests"] == 0 for runs in results.values() for x in runs):
        reason = "a load run completed no request: " + json.dumps(results)[:1000]
        log(f"[5] failed: {reason}")
        md += [title, "", f"Failed: {reason}.", ""]
        out["uvicorn"] = {"failed": reason}
        return
    if n == 0:
        md += [title, "", "Skipped: no complete round within the time budget.", ""]
        out["uvicorn"] = {"skipped": "no complete round"}
        return
    summary: dict[str, dict[str, float]] = {}
    for variant, runs in results.items():
        summary[variant] = {
            "rps": median([x["rps"] for x in runs]),
            "server_cpu_us_per_request": median([x["server_cpu"] / max(x["requests"], 1) * 1e6 for x in runs]),
            "server_cpu_pct": median([x["server_cpu"] / x["wall"] * 100 for x in runs]),
            "client_cpu_pct": median([x["client_cpu"] / x["wall"] * 100 for x in runs]),
            "errors": sum(x["errors"] for x in runs),
            "p50_ms": median([x["p50_ms"] for x in runs if "p50_ms" in x]),
            "p99_ms": median([x["p99_ms"] for x in runs if "p99_ms" in x]),
        }
    ratio = median([o["rps"] / b["rps"] for o, b in zip(results["ours"], results["bare"])])
    cpu_added = summary["ours"]["server_cpu_us_per_request"] - summary["bare"]["server_cpu_us_per_request"]
    ok = ratio >= TARGET_UVICORN_RATIO
    targets.append(("uvicorn streaming: wrapped req/s ÷ bare req/s", f"{ratio:.3f}", f">= {TARGET_UVICORN_RATIO}", ok))
    out["uvicorn"] = {"client": client, "http": http_impl(), "loop": loop_impl(), "uvicorn": version_of("uvicorn"),
                      "connections": conns, "seconds_per_run": seconds, "rounds": n, "runs": results,
                      "summary": summary, "ratio": ratio, "server_cpu_us_added_per_request": cpu_added}
    client_desc = ("wrk 1 thread (C, `-t1 -c50`, a Lua script for the POST body)" if client == "wrk"
                   else "a raw-socket asyncio HTTP/1.1 keep-alive client in its own process"
                   + ("" if shutil.which("wrk") else " (wrk not found)"))
    md += [
        title,
        "",
        f"uvicorn {version_of('uvicorn')}, one worker, `--http {http_impl()}`, loop {loop_impl()}, no access log, serving "
        f"`SimulatedLLM().asgi`: `POST {CHAT_PATH}` streamed with include_usage, {UVICORN_MAX_TOKENS} content chunks "
        f"(68 SSE events). Client: {client_desc}. {seconds:g} s per variant per round, {n} interleaved rounds; medians. "
        "CPU from /proc/PID/stat (server) and the client process's rusage; % is of one core.",
        "",
        "| Variant | requests/s | vs bare | server CPU µs / request | server CPU % | client CPU % | p50 / p99 latency ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant, label in (("bare", "bare simulator"), ("ours", "**llm-metrics-middleware**")):
        s = summary[variant]
        vs = "1.00" if variant == "bare" else f"{ratio:.3f} (target ≥ {TARGET_UVICORN_RATIO}: {verdict(ok)})"
        latency = "—" if s["p50_ms"] != s["p50_ms"] else f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f}"  # nan: no wrk
        md.append(f"| {label} | {s['rps']:,.0f} | {vs} | {s['server_cpu_us_per_request']:,.0f} | {s['server_cpu_pct']:.0f} "
                  f"| {s['client_cpu_pct']:.0f} | {latency} | {int(s['errors'])} |")
    cpu_ratio = summary["bare"]["server_cpu_us_per_request"] / summary["ours"]["server_cpu_us_per_request"]
    out["uvicorn"]["cpu_capacity_ratio"] = cpu_ratio
    md += ["", f"Server CPU added by the middleware: {cpu_added:,.0f} µs per streamed request; capacity of one "
           f"saturated core, wrapped ÷ bare (server CPU per request, bare ÷ wrapped): {cpu_ratio:.3f}. On a shared "
           "machine the CPU figure is the steadier one: requests/s also moves with whatever else runs.", ""]
