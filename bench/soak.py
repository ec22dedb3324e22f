"""Soak: the server's memory stays flat over 100,000 requests, streamed and not.

Starts uvicorn on 127.0.0.1 in a subprocess serving the simulated LLM behind
``LLMMetricsMiddleware`` (Prometheus exporter, default dimensions, users drawn from a set
larger than ``max_series`` so the cap is exercised too), then sends ``--requests``
requests from keep-alive connections on a few threads and samples the server's resident
memory every tenth of the run.

    python bench/soak.py                     # 100,000 requests
    python bench/soak.py --requests 20000    # shorter

Exits non-zero if memory grew more than ``--limit-mb`` (default 5) between the first
sample (after warm-up) and the last, or if the metrics do not add up.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

SERVER = textwrap.dedent(
    """
    import sys, uvicorn
    from llm_metrics_middleware import LLMMetricsMiddleware, PrometheusExporter
    from llm_metrics_middleware.testing import SimulatedLLM
    app = LLMMetricsMiddleware(SimulatedLLM().asgi, exporters=[PrometheusExporter()],
                               max_series=500, metrics_path="/metrics", subscription_secret="soak")
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
    """
)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--limit-mb", type=float, default=5.0)
    parser.add_argument("--max-seconds", type=float, default=900)
    args = parser.parse_args()

    port = free_port()
    env = dict(os.environ)
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    print("server did not start", file=sys.stderr)
                    return 2
                time.sleep(0.1)

        lock = threading.Lock()
        state = {"sent": 0, "tokens": 0}
        samples: list[tuple[int, float]] = []
        stop_at = time.monotonic() + args.max_seconds

        def client(k: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            while True:
                with lock:
                    if state["sent"] >= args.requests or time.monotonic() > stop_at:
                        break
                    i = state["sent"]
                    state["sent"] += 1
                    if i % max(1, args.requests // 10) == 0:
                        samples.append((i, rss_mb(server.pid)))
                stream = i % 2 == 0
                body = {"model": "gpt-4o-mini", "user": f"user-{i % 2000}", "stream": stream, "max_tokens": 8,
                        "messages": [{"role": "user", "content": "soak test"}]}
                if stream and i % 4 == 0:
                    body["stream_options"] = {"include_usage": True}
                conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
                response = conn.getresponse()
                response.read()

            conn.close()

        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        samples.append((state["sent"], rss_mb(server.pid)))

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/metrics")
        metrics = conn.getresponse().read().decode()
        conn.close()
        counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("llm_requests_total{"))
        series = sum(1 for line in metrics.splitlines() if line.startswith("llm_tokens_total{"))

        print(f"requests sent: {state['sent']} in {elapsed:.0f} s ({state['sent'] / elapsed:.0f}/s), counted: {counted:.0f}")
        print(f"llm_tokens_total series: {series} (max_series=500, plus the overflow series)")
        print("server RSS (MB) by requests done:")
        for done, mb in samples:
            print(f"  {done:>8}  {mb:7.1f}")
        growth = samples[-1][1] - samples[1][1] if len(samples) > 2 else samples[-1][1] - samples[0][1]
        print(f"growth after warm-up: {growth:+.1f} MB (limit {args.limit_mb} MB)")
        ok = growth <= args.limit_mb and counted == state["sent"] and series <= 501
        print("ok" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    sys.exit(main())
