"""The status API at scale: what one answer of ``GET /api/v1/targets`` costs at 10,000 targets,
and how long it holds the daemon's event loop.

    python -m bench.status_api [--targets 10000] [--requests 20] [--json]

A real daemon (``bench.clients``' ``wsmon`` child: N targets, one ``ping`` probe each every
30 s) runs against the Node.js server (``bench/node/server.js``). Once every target is
connected and most have answered a probe, the child's 1 ms lag sensor runs while this harness
asks the API one request at a time, ``--requests`` times for each query below; then the
sensor runs again for as long with no request, for comparison. Reported per query: the
answer's time at the client (median and max), its size, the daemon's CPU per answer
(``/proc``), and the longest event-loop stall that overlapped one of its answers (the
sensor's and this harness's clocks are both CLOCK_MONOTONIC).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import aiohttp

from . import nodeserver
from .harness import Child, ProcStat, client_argv, say

# (label, query string)
QUERIES = (
    ("the page's first page (limit 100)", "limit=100"),
    ("a search (q=t12: 111 targets)", "q=t12&limit=100"),
    ("a state filter, its last page", "state=connected&offset=9900&limit=100"),
    ("the largest page (limit 1000)", "limit=1000"),
)


async def _ready(http: aiohttp.ClientSession, api: str, targets: int, within: float) -> None:
    """Until every target is connected and nine in ten have a round trip."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        async with http.get(f"{api}?limit=1000") as r:
            body = await r.json()
        answered = sum(1 for t in body["targets"] if t["last_rtt_seconds"]["ping"] is not None)
        if body["summary"]["connected"] == targets and answered >= 0.9 * len(body["targets"]):
            return
        if loop.time() > deadline:
            raise TimeoutError(f"not ready within {within:.0f} s: {body['summary']}")
        await asyncio.sleep(1.0)


async def _sensor(child: Child, during: Any) -> tuple[Any, dict[str, Any]]:
    await child.ask("sensor_start", "sensor_started")
    try:
        result = await during
    finally:
        figures = await child.ask("sensor_stop", "sensor")
    return result, figures


def _stalls(events: list[list[float]], spans: list[tuple[float, float]]) -> list[float]:
    """For each span, the longest stall (ms) whose interval overlaps it (0: none over 1 ms)."""
    return [
        max((over for before, after, over in events if before < end and after > start), default=0)
        for start, end in spans
    ]


async def measure(targets: int, requests: int) -> dict[str, Any]:
    nodeserver.setup()
    node = nodeserver.NodeServer()
    await node.start()
    child = Child("wsmon", "bench.clients", client_argv("wsmon", node.url, targets, 30.0))
    try:
        await child.start()
        started = await child.expect("started", within=120)
        api = f"http://127.0.0.1:{started['port']}/api/v1/targets"
        proc = ProcStat(child.pid)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            say(f"waiting for {targets} targets to connect and answer a probe")
            await _ready(http, api, targets, within=300)
            rows = []
            for label, query in QUERIES:

                async def ask(query: str = query) -> tuple[list[tuple[float, float]], int, float]:
                    spans = []
                    size = 0
                    cpu0 = proc.cpu_s()
                    for _ in range(requests):
                        t0 = time.monotonic()
                        async with http.get(f"{api}?{query}") as r:
                            body = await r.read()
                            assert r.status == 200, body[:200]
                        spans.append((t0, time.monotonic()))
                        size = len(body)
                    return spans, size, proc.cpu_s() - cpu0

                (spans, size, cpu), figures = await _sensor(child, ask())
                times = [(b - a) * 1e3 for a, b in spans]
                stalls = _stalls(figures["events"], spans)
                rows.append(
                    {
                        "query": label,
                        "url": f"/api/v1/targets?{query}",
                        "median_ms": statistics.median(times),
                        "max_ms": max(times),
                        "bytes": size,
                        "cpu_ms_per_answer": cpu / requests * 1e3,
                        "stall_median_ms": statistics.median(stalls),
                        "stall_max_ms": max(stalls),
                    }
                )
                say(f"{label}: {rows[-1]}")
            window = sum(r["median_ms"] for r in rows) / len(rows) * requests / 1e3
            _, idle = await _sensor(child, asyncio.sleep(max(window, 2.0)))
    finally:
        await child.finish()
        await node.stop()
    return {
        "targets": targets,
        "requests": requests,
        "queries": rows,
        "idle_longest_stall_ms": idle["max_ms"],
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"{result['targets']:,} targets, {result['requests']} answers per query, one at a time",
        "",
        "| query | answer, median / max | size | daemon CPU per answer "
        "| longest loop stall in an answer, median / max |",
        "|---|---|---|---|---|",
    ]
    for r in result["queries"]:
        lines.append(
            f"| {r['query']} | {r['median_ms']:.1f} / {r['max_ms']:.1f} ms "
            f"| {r['bytes'] / 1024:.0f} KiB | {r['cpu_ms_per_answer']:.1f} ms "
            f"| {r['stall_median_ms']:.1f} / {r['stall_max_ms']:.1f} ms |"
        )
    lines.append(
        f"\nLongest stall in as long a window with no request: "
        f"{result['idle_longest_stall_ms']:.1f} ms"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.status_api", description=__doc__)
    p.add_argument("--targets", type=int, default=10_000)
    p.add_argument("--requests", type=int, default=20, help="answers per query")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    result = asyncio.run(measure(args.targets, args.requests))
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
