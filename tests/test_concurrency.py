"""Many calls at once, on one event loop or many threads: every token counted exactly once."""

from __future__ import annotations

import asyncio
import json
import random
import threading

import httpx
from prometheus_client import CollectorRegistry, generate_latest

from llm_metrics_middleware import LLMMetricsMiddleware, LLMMetricsWSGIMiddleware, PrometheusExporter
from llm_metrics_middleware.testing import SimulatedLLM

from .drive import request_json, run_wsgi


def test_thousand_concurrent_asgi_streams_exact() -> None:
    registry = CollectorRegistry()
    sim = SimulatedLLM(chunk_delay=0.0005)
    app = LLMMetricsMiddleware(sim.asgi, exporters=[PrometheusExporter(registry)], dimensions=["User ID"])
    n = 1000

    async def main() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as client:
            async def one(i: int) -> int:
                r = await client.post("/v1/chat/completions", json={
                    "model": "m", "user": f"u{i % 10}", "stream": True, "max_tokens": 5 + i % 7,
                    "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": "w " * (i % 5)}]})
                last = [line for line in r.text.split("\n\n") if '"usage":{' in line][-1]
                return int(json.loads(last[6:])["usage"]["total_tokens"])

            return sum(await asyncio.gather(*(one(i) for i in range(n))))

    expected = asyncio.run(main())
    total = sum(
        s.value for m in registry.collect() if m.name == "llm_tokens" for s in m.samples if s.name == "llm_tokens_total"
    )
    requests = sum(
        s.value for m in registry.collect() if m.name == "llm_requests" for s in m.samples if s.name == "llm_requests_total"
    )
    assert requests == n and total == expected


def test_threaded_wsgi_exact() -> None:
    registry = CollectorRegistry()
    sim = SimulatedLLM()
    app = LLMMetricsWSGIMiddleware(sim.wsgi, exporters=[PrometheusExporter(registry)], dimensions=["User ID"])
    totals: list[int] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        rng = random.Random(k)
        for i in range(100):
            stream = rng.random() < 0.5
            body = request_json(model="m", user=f"t{k}", stream=stream, max_tokens=rng.randint(1, 30),
                                stream_options={"include_usage": True}, messages=[{"role": "user", "content": "a b"}])
            _, _, blocks = run_wsgi(app, body=body)
            text = b"".join(blocks)
            if stream:
                usage = json.loads([e for e in text.split(b"\n\n") if b'"usage":{' in e][-1][6:])["usage"]
            else:
                usage = json.loads(text)["usage"]
            with lock:
                totals.append(usage["total_tokens"])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = generate_latest(registry).decode()
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("llm_tokens_total{"))
    assert len(totals) == 1600 and counted == sum(totals)
