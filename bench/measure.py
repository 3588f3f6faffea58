"""One client measured over one window, from outside its process.

A window has two edges. At each, the harness reads the client's CPU from ``/proc/<pid>``,
then its counts (the daemon: a scrape of its ``/metrics``; a baseline client: the answer to
``begin`` / ``end``), then its CPU again, so that the reading's own cost (a scrape renders
and compresses in the daemon) stays out of the window. CPU is then what the process used
between the edges; round trips, send lags and the rest are the increase of the daemon's own
counters and histograms between the two scrapes. The two spans differ by a few milliseconds
(a scrape's values stand for the middle of its rendering, before the headers are sent), so
CPU per round trip is the CPU rate over the round-trip rate, each over its own span.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from . import nodeserver
from .common import summary
from .harness import (
    ROOT,
    BenchError,
    Child,
    Exposition,
    ProcStat,
    bucket_delta,
    histogram_quantile,
    machine_cpu,
    say,
    scrape,
)

LAG_GOAL_BOUND = 0.02  # the send-lag histogram's bucket that workload 2's goal reads


@dataclass
class Launcher:
    """Starts children from the run's source tree and keeps their command lines."""

    src: Path = ROOT
    commands: list[str] = field(default_factory=list)

    async def start(self, name: str, argv: list[str], module: str = "bench.clients") -> Child:
        child = Child(name, module, argv, self.src)
        self.commands.append(child.command)
        await child.start()
        return child


@dataclass(frozen=True)
class Plan:
    """How one client is measured."""

    kind: str  # floor | websockets | wsmon
    targets: int
    warmup: float  # seconds after every connection is up, before the window
    window: float
    expect_path: str | None = None  # wsmon: the `receive_path` its build_info must say
    rss_before_scrape: bool = False  # wsmon: VmRSS after the warm-up, before any scrape
    scrape_every: float | None = None  # wsmon: scrape during the window, sampling RTTs
    delay_ms: float = 0.0  # the server's reply delay (RTT excess is RTT minus this)


Reader = Callable[[], Awaitable[tuple[Any, float]]]  # an edge's counts, and when they stood


@dataclass
class Edge:
    """The process before and after one reading of its counts."""

    cpu: tuple[float, float]  # CPU seconds (schedstat)
    ticks: tuple[float, float]  # the same from utime + stime (clock ticks)
    status: tuple[dict[str, int], dict[str, int]]  # ProcStat.status()
    wall: tuple[float, float]  # CLOCK_MONOTONIC
    at: float  # the moment the reading's counts stand for
    reading: Any


async def edge(stat: ProcStat, read: Reader) -> Edge:
    cpu0, ticks0, status0 = stat.cpu_s(), sum(stat.user_system_s()), stat.status()
    wall0 = time.monotonic()
    reading, at = await read()
    wall1 = time.monotonic()
    cpu1, ticks1, status1 = stat.cpu_s(), sum(stat.user_system_s()), stat.status()
    return Edge((cpu0, cpu1), (ticks0, ticks1), (status0, status1), (wall0, wall1), at, reading)


def receive_path(x: Exposition) -> str:
    info = x.samples("wsmon_build_info")
    return info[0][0].get("receive_path", "(no receive_path label)") if info else "(no build_info)"


def fresh_rtts(prev: Exposition, cur: Exposition) -> list[float]:
    """`wsmon_probe_last_rtt_seconds` of every probe whose RTT count grew since `prev`: one
    sample per probe and scrape (the latest answer, when there were several)."""
    before = prev.by("wsmon_probe_rtt_seconds_count", "target", "probe")
    counts = cur.by("wsmon_probe_rtt_seconds_count", "target", "probe")
    last = cur.by("wsmon_probe_last_rtt_seconds", "target", "probe")
    return [last[k] for k, n in counts.items() if n > before.get(k, 0.0) and k in last]


def wsmon_figures(x0: Exposition, x1: Exposition) -> dict[str, Any]:
    """What the daemon's own metrics say happened between two scrapes."""

    def d(name: str) -> float:
        return x1.total(name) - x0.total(name)

    count, rtt_sum = d("wsmon_probe_rtt_seconds_count"), d("wsmon_probe_rtt_seconds_sum")
    lag = bucket_delta(x0.buckets("wsmon_probe_send_lag_seconds"), x1.buckets(
        "wsmon_probe_send_lag_seconds"))  # fmt: skip
    lag_n = d("wsmon_probe_send_lag_seconds_count")
    within = next((c for le, c in lag if math.isclose(le, LAG_GOAL_BOUND)), math.nan)
    return {
        "round_trips": round(count),
        "rtt_mean_ms": 1e3 * rtt_sum / count if count else math.nan,
        "probes_sent": round(d("wsmon_probes_sent_total")),
        "probe_timeouts": round(d("wsmon_probe_timeouts_total")),
        "probe_errors": round(d("wsmon_probe_errors_total")),
        "send_lag": {
            "count": round(lag_n),
            "mean_ms": 1e3 * d("wsmon_probe_send_lag_seconds_sum") / lag_n if lag_n else math.nan,
            "p50_ms": 1e3 * histogram_quantile(0.5, lag),
            "p99_ms": 1e3 * histogram_quantile(0.99, lag),
            "share_within_20ms": within / lag_n if lag_n else math.nan,
            "buckets": lag,
        },
        "gc_collections": round(d("python_gc_collections_total")),
        "connected": round(x1.total("wsmon_connected")),
        "receive_path": receive_path(x1),
    }


async def wait_connected(
    http: aiohttp.ClientSession, port: int, targets: int, within: float = 120.0
) -> Exposition:
    """Scrape until the daemon's `wsmon_connected` adds up to `targets`."""
    deadline = time.monotonic() + within
    while True:
        x = Exposition((await scrape(http, port)).body)
        if round(x.total("wsmon_connected")) == targets:
            return x
        if time.monotonic() > deadline:
            raise BenchError(f"wsmon_connected adds up to {x.total('wsmon_connected'):g}, "
                             f"not {targets}, after {within:g}s")  # fmt: skip
        await asyncio.sleep(0.1)


async def _all_open(node: nodeserver.NodeServer, targets: int) -> float:
    """When the server first had `targets` connections open (CLOCK_MONOTONIC)."""
    try:
        await node.wait_open(targets, 300.0)
    except TimeoutError as exc:
        raise BenchError(str(exc)) from None
    return time.monotonic()


async def measure_client(
    launcher: Launcher, name: str, argv: list[str], node: nodeserver.NodeServer, plan: Plan,
    *, keep: bool = False,
) -> tuple[dict[str, Any], Child | None]:  # fmt: skip
    """Start a client child, measure one window; with `keep`, leave it running."""
    await node.reset()  # the server's handshake maxima then cover this client's start
    child = await launcher.start(name, argv)
    done = False
    try:
        result = await _measure(child, node, plan, name)
        done = True
    finally:
        if not done:
            await child.kill()
    if keep:
        return result, child
    await child.finish()
    return result, None


async def _measure(
    child: Child, node: nodeserver.NodeServer, plan: Plan, name: str
) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as http:
        if plan.kind == "wsmon":
            info, read = await _wsmon_up(child, node, http, plan, name)
        else:
            info, read = await _baseline_up(child)
        say(f"{name}: {plan.targets} connected in {info['connect_s']:.1f}s")
        stat = ProcStat(child.pid)
        await asyncio.sleep(plan.warmup)
        if plan.rss_before_scrape:
            info["rss_before_scrape_kb"] = stat.status()["VmRSS"]
        e0 = await edge(stat, read)
        if plan.kind == "wsmon":
            _check(name, e0.reading, plan, info["hook_log"])
        m0, srv0, own0 = machine_cpu(), await node.stats(), time.process_time()
        end = time.monotonic() + plan.window
        sampled: Sampled | None = None
        if plan.scrape_every is not None:  # the last of these a period before `end`
            until = end - plan.scrape_every / 2
            sampled = await _sample(http, info["metrics_port"], e0.reading, plan, until)
            info["scraping"] = {"scrapes": len(sampled.times), "scrape_s": summary(sampled.times)}
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        own1, srv1, m1 = time.process_time(), await node.stats(), machine_cpu()
        e1 = await edge(stat, read)
    result = window_figures(plan, e0, e1) | info | _counts(plan, e0, e1, sampled)
    _per_round_trip(result)
    server = srv1["cpu_user_s"] + srv1["cpu_system_s"] - srv0["cpu_user_s"] - srv0["cpu_system_s"]
    result["server_cpu_s"] = server
    result["harness_cpu_s"] = own = own1 - own0
    # What the rest of the machine did meanwhile, from /proc/stat: other processes (other
    # people's work: a noise indicator for the window), interrupts, the hypervisor's steal.
    procs = m1["processes"] - m0["processes"]
    result["others_cpu_s"] = max(0.0, procs - server - result["cpu_s"] - own)
    result["interrupts_cpu_s"] = m1["interrupts"] - m0["interrupts"]
    result["steal_s"] = m1["steal"] - m0["steal"]
    result["server_replies"] = srv1["replies"] - srv0["replies"]
    return result


async def _wsmon_up(
    child: Child, node: nodeserver.NodeServer, http: aiohttp.ClientSession, plan: Plan, name: str
) -> tuple[dict[str, Any], Reader]:
    """The daemon started and every target connected; its edges are scrapes."""
    starting = await child.expect("starting", 120.0)
    started = await child.expect("started", 120.0)
    open_at = await _all_open(node, plan.targets)
    port = int(started["port"])
    info: dict[str, Any] = {
        "config_s": starting["config_s"],
        "connect_s": open_at - starting["t"],
        "metrics_port": port,
        "hooks": started["hooks"],
        "hook_log": started["hook_log"],
        "loop": started["loop"],
        "send_alignment": started["send_alignment"],
        "edge_scrape_s": [],  # the edges' scrapes (gzip), timed to the last byte
    }
    if not plan.rss_before_scrape:
        await wait_connected(http, port, plan.targets)

    async def read() -> tuple[Any, float]:
        s = await scrape(http, port)
        if s.status != 200:
            raise BenchError(f"{name}: /metrics answered {s.status}")
        info["edge_scrape_s"].append(s.seconds)
        return Exposition(s.body), s.at

    return info, read


async def _baseline_up(child: Child) -> tuple[dict[str, Any], Reader]:
    """A baseline client connected; its edges are `begin` and `end`."""
    connected = await child.expect("connected", 300.0)
    commands = iter((("begin", "begun"), ("end", "ended")))

    async def read() -> tuple[Any, float]:
        got = await child.ask(*next(commands))
        return got, float(got["t"])

    return {"connect_s": connected["connect_s"], "loop": connected["loop"]}, read


def _counts(plan: Plan, e0: Edge, e1: Edge, sampled: Sampled | None) -> dict[str, Any]:
    """Round trips and RTT: the daemon's metrics, or what a baseline counted itself."""
    if plan.kind != "wsmon":
        ended = e1.reading
        out = {k: ended[k] for k in ("round_trips", "rtt_ms", "rtt_excess_ms", "send_lag_ms")}
        out["rtt_mean_ms"] = ended["rtt_ms"].get("mean", math.nan)
        out["rtt_excess_mean_ms"] = ended["rtt_excess_ms"].get("mean", math.nan)
        return out
    out = wsmon_figures(e0.reading, e1.reading)
    out["rtt_excess_mean_ms"] = out["rtt_mean_ms"] - plan.delay_ms
    if sampled is not None:
        rtts = sampled.rtts + fresh_rtts(sampled.last, e1.reading)
        out["rtt_excess_ms"] = summary([r - plan.delay_ms / 1000.0 for r in rtts], 1e3)
    return out


def _check(name: str, x: Exposition, plan: Plan, hook_log: list[str]) -> None:
    """The daemon runs the receive path it was meant to, with every target connected."""
    path = receive_path(x)
    if plan.expect_path is not None and path != plan.expect_path:
        log = "\n".join(hook_log) or "(no hooks.* log lines)"
        raise BenchError(
            f"{name}: wsmon_build_info says receive_path={path!r}, but this client is meant "
            f"to measure the {plan.expect_path!r} path; the daemon's hooks.* log:\n{log}"
        )
    connected = round(x.total("wsmon_connected"))
    if connected != plan.targets:
        raise BenchError(f"{name}: wsmon_connected adds up to {connected}, not {plan.targets}")


@dataclass
class Sampled:
    """What the scrapes during a window gave: fresh RTTs, the scrapes' times, the last one."""

    last: Exposition
    rtts: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


async def _sample(
    http: aiohttp.ClientSession, port: int, first: Exposition, plan: Plan, until: float
) -> Sampled:
    """Scrape every `scrape_every` seconds until `until`; keep each scrape's fresh RTTs."""
    assert plan.scrape_every is not None
    got = Sampled(first)
    due = time.monotonic() + plan.scrape_every
    while due < until:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        s = await scrape(http, port)
        cur = Exposition(s.body)
        got.times.append(s.seconds)
        got.rtts.extend(fresh_rtts(got.last, cur))
        got.last = cur
        due += plan.scrape_every
    return got


def window_figures(plan: Plan, e0: Edge, e1: Edge) -> dict[str, Any]:
    """The process over a window between two edges: CPU (schedstat, and utime + stime),
    wake-ups, memory."""
    cpu = e1.cpu[0] - e0.cpu[1]
    wall = e1.wall[0] - e0.wall[1]
    return {
        "kind": plan.kind,
        "targets": plan.targets,
        "window_s": wall,
        "count_span_s": e1.at - e0.at,
        "cpu_s": cpu,
        "cpu_pct_of_core": 100.0 * cpu / wall if wall > 0 else math.nan,
        # utime + stime over the same span: whole clock ticks, but threads that ended count
        "cpu_ticks_s": e1.ticks[0] - e0.ticks[1],
        "wakeups": e1.status[0]["voluntary_ctxt_switches"]
        - e0.status[1]["voluntary_ctxt_switches"],
        "rss_kb": e1.status[1]["VmRSS"],
        "peak_rss_kb": e1.status[1]["VmHWM"],
        "scrape_cpu_s": (e0.cpu[1] - e0.cpu[0]) + (e1.cpu[1] - e1.cpu[0]),
    }


def _per_round_trip(r: dict[str, Any]) -> None:
    """CPU per round trip: the CPU rate over the round-trip rate (see the module docstring)."""
    rt, wall, span = r["round_trips"], r["window_s"], r["count_span_s"]
    in_window = rt * wall / span if rt and span > 0 else 0.0
    r["round_trips_in_cpu_window"] = in_window
    r["round_trips_per_s"] = rt / span if span > 0 else math.nan
    r["cpu_us_per_round_trip"] = 1e6 * r["cpu_s"] / in_window if in_window else math.nan
    r["wakeups_per_round_trip"] = r["wakeups"] / in_window if in_window else math.nan
