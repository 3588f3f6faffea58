"""Workload 8: a fleet of shards on one machine. Every shard reads the same config of N targets
(one ``ping`` probe each) and monitors the ones rendezvous hashing gives it; the whole fleet
against a single daemon of the same size (or the largest one whose file descriptors fit).

The wire: one connection per target is one socket in a shard and one in a node server, and
from one source address a destination (address, port) takes at most the ephemeral port range
(``net.ipv4.ip_local_port_range``) of connections. So the targets are spread over several node
servers (``bench/node/server.js``), each on a loopback address of its own (127.0.0.2, .3, ...)
and holding at most ``SERVER_FILL`` of the smaller of the port range and its descriptor limit
(every process here raises its soft ``RLIMIT_NOFILE`` to the hard one). Target ``tI`` is at
server ``I mod servers``, at ``ws://ADDRESS:PORT/?target=tI``: the servers count open
connections per target name, which is how "each target exactly once" is checked at the wire.

The shards run as a user runs them: ``python -m monitor run --config FILE --shard I/N
--log-format json`` (from the run's copy of monitor/, the default event loop and receive path),
all started at once. Measured, per attempt:

* connect-all: from the start of the shard processes until the servers hold every target's
  connection (their counts polled every ``POLL_S``), and until ``wsmon_connected`` summed over
  the shards' ``/metrics`` equals the targets (scraped once the servers' count is complete);
  the machine's CPU meanwhile (``/proc/stat``) and what each process used (the shards' utime +
  stime, what they had used when their ``config.loaded`` line appeared, the servers' own);
* ownership: at the servers, the open connections of each target (exactly 1); at the shards,
  which of them export a ``wsmon_connected`` series for each target and which say 1 (exactly
  one, the same); each shard's ``wsmon_targets`` and ``wsmon_config_targets``.

Then, on the first attempt whose every target connected: a probe interval later (every target
answered once) each shard is scraped ``w8_scrapes`` times, and the shards' VmRSS summed over the
targets is the memory per target; over a steady window, the shards' utime + stime (the
schedstat sum beside it), round trips, probe timeouts and send lag from their own ``/metrics``
(each shard's window between two scrapes, the scrape's own CPU outside it), the servers' CPU and
the machine's. The single daemon (``python -m monitor run --config FILE``, no shard flags) is
measured the same way, on servers of its own; so is a daemon with one target (the fixed cost
of a process).

When the goal's size misses the connect-all goal, or a target is not connected exactly once,
smaller fleets are tried (the shard count kept), up to ``w8_attempts`` attempts in all: each
next size is the last one's scaled by the time the goal allows over the time it took (or by
the share connected at the goal's time), times ``STEP_DOWN`` after a miss and ``STEP_UP`` after
a hold, kept between the largest size that held and the smallest that did not. Those attempts
measure connect-all and ownership only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from .clients import target_url
from .common import summary
from .harness import (
    BenchError,
    Exposition,
    ProcStat,
    bucket_delta,
    histogram_quantile,
    machine_cpu,
    say,
    scrape,
)
from .measure import LAG_GOAL_BOUND, Edge, Launcher, Reader, edge, wsmon_figures
from .nodeserver import NodeServer
from .report import goal_limit
from .streams import Wsmon, log_time, loop_of

if TYPE_CHECKING:
    from .workloads import Sizes

PROBE = "ping"
POLL_S = 0.25  # how often the servers' counts are read while the fleet connects
SERVER_FILL = 0.75  # share of a server's room (ports, descriptors) the plan fills
NODE_FD_RESERVE = 100  # descriptors a node server keeps besides its connections
# The single daemon's descriptors besides its targets, as docs/operations.md sizes
# LimitNOFILE: http.max_connections (64) + max_concurrent_handshakes (50) + 100.
SINGLE_FD_RESERVE = 64 + 50 + 100
# The next attempt's size: this share of what the last one's connect-all time allowed, below
# it after a miss, just below it after a hold (to find the largest fleet that holds).
STEP_DOWN = 0.9
STEP_UP = 0.97
ERROR_SAMPLES = 3  # connect.failed error texts kept per reason
FIRST_ADDRESS = 2  # servers listen on 127.0.0.2, 127.0.0.3, ...
CORES = os.cpu_count() or 1


def port_range() -> tuple[int, int]:
    with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
        low, high = (int(x) for x in f.read().split())
    return low, high


def nofile_hard() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return hard if hard != resource.RLIM_INFINITY else 1 << 20


def open_fds(pid: int) -> int:
    """Descriptors a process holds now."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def nofile_soft(pid: int) -> int:
    """A process's soft limit of open files (/proc/<pid>/limits)."""
    with open(f"/proc/{pid}/limits", encoding="ascii") as f:
        for line in f:
            if line.startswith("Max open files"):
                value = line.split()[3]
                return int(value) if value.isdigit() else -1
    return -1


def mem_available_kb() -> int:
    with open("/proc/meminfo", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))


def plan_servers(targets: int, per_server_max: int) -> dict[str, Any]:
    """How many node servers the targets need, and where they listen."""
    low, high = port_range()
    ports = high - low + 1
    nofile = nofile_hard()
    room = min(ports, nofile - NODE_FD_RESERVE)
    cap = max(1, min(per_server_max, int(room * SERVER_FILL)))
    count = max(1, math.ceil(targets / cap))
    return {
        "servers": count,
        "hosts": [f"127.0.0.{FIRST_ADDRESS + k}" for k in range(count)],
        "per_server_max": cap,
        "per_server": math.ceil(targets / count),
        "ephemeral_ports": ports,
        "port_range": [low, high],
        "nofile_hard": nofile,
    }


def single_size(targets: int) -> int:
    """The single daemon's size: the fleet's, or as many targets as its descriptors allow."""
    return min(targets, nofile_hard() - SINGLE_FD_RESERVE)


def fleet_doc(urls: list[str], targets: int, interval: float) -> dict[str, Any]:
    """The config every shard reads: `targets` targets, target tI at server I mod servers,
    one `ping` probe each and nothing else."""
    probe = {
        "name": PROBE,
        "send": {"ping": 1},
        "expect": {"msg_type": "ping"},
        "interval": f"{interval:g}s",
        "timeout": f"{min(5.0, interval / 2):g}s",
    }
    return {
        "listen": "127.0.0.1:0",
        "defaults": {"probes": [probe]},
        "targets": [
            {"name": f"t{i}", "url": target_url(urls[i % len(urls)], i)} for i in range(targets)
        ],
    }


# --- reading the daemons -------------------------------------------------------------------


@dataclass
class Member:
    """One daemon of a group: the process, its metrics port, when its config was loaded and
    what it had used by then."""

    proc: Wsmon
    index: int
    port: int = 0
    loaded_after_s: float = math.nan  # from the group's start to its `config.loaded` line
    loaded_cpu_s: float = math.nan  # its utime + stime when the harness read that line
    loaded: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid


def cpu_ticks(pid: int) -> float:
    return sum(ProcStat(pid).user_system_s())


async def scrape_x(http: aiohttp.ClientSession, port: int) -> tuple[Exposition, float]:
    sc = await scrape(http, port)
    if sc.status != 200:
        raise BenchError(f"/metrics on port {port} answered {sc.status}")
    return Exposition(sc.body), sc.seconds


async def connected_total(http: aiohttp.ClientSession, daemons: list[Member]) -> int:
    xs = await asyncio.gather(*(scrape_x(http, d.port) for d in daemons))
    return sum(round(x.total("wsmon_connected")) for x, _ in xs)


def log_summary(path: Path, wall0: float) -> dict[str, Any]:
    """What a daemon's JSON log says: its first and last `connect.ok` (seconds after the
    group's start), connect failures by reason (a few error texts each), `fd_budget.short`,
    lines at level error."""
    oks = 0
    first = last = math.nan
    failed: Counter[str] = Counter()
    samples: dict[str, list[str]] = {}
    fd_short: list[dict[str, Any]] = []
    errors: list[str] = []
    with path.open("rb") as f:
        for raw in f:
            with contextlib.suppress(ValueError):
                e = json.loads(raw)
                if not isinstance(e, dict):
                    continue
                event = e.get("event")
                if event == "connect.ok":
                    oks += 1
                    at = log_time(str(e["timestamp"])) - wall0
                    first = at if math.isnan(first) else min(first, at)
                    last = at if math.isnan(last) else max(last, at)
                elif event == "connect.failed":
                    reason = str(e.get("reason"))
                    failed[reason] += 1
                    kept = samples.setdefault(reason, [])
                    if len(kept) < ERROR_SAMPLES:
                        kept.append(str(e.get("error"))[:200])
                elif event == "fd_budget.short":
                    fd_short.append(e)
                elif e.get("level") in ("error", "critical"):
                    errors.append(f"{event}: {str(e)[:300]}")
    return {
        "connect_ok": oks,
        "first_connect_s": first,
        "last_connect_s": last,
        "connect_failed": dict(failed),
        "connect_failed_samples": samples,
        "fd_budget_short": fd_short[:3],
        "errors": errors[:5],
        "error_lines": len(errors),
    }


# --- one group of daemons: start, connect, check -----------------------------------------


class Group:
    """The daemons of one measurement (the shards of a fleet, or one daemon) and the node
    servers their targets are at."""

    def __init__(self, launcher: Launcher, workdir: Path, name: str, targets: int, shards: int,
                 interval: float, per_server_max: int) -> None:  # fmt: skip
        self.name = name
        self.targets = targets
        self.shards = shards  # 0: one daemon without shard flags
        self.interval = interval
        self.plan = plan_servers(targets, per_server_max)
        self.servers = [NodeServer(host=h) for h in self.plan["hosts"]]
        self.launcher = launcher
        self.workdir = workdir
        self.config = workdir / f"{name}.json"
        self.daemons: list[Member] = []
        self.names: list[str] = []
        self.wall0 = 0.0
        self.t0 = 0.0
        self.config_bytes = 0

    async def __aenter__(self) -> Group:
        await asyncio.gather(*(s.start() for s in self.servers))
        doc = fleet_doc([s.url for s in self.servers], self.targets, self.interval)
        self.names = [t["name"] for t in doc["targets"]]
        self.config.write_text(json.dumps(doc) + "\n", encoding="utf-8")  # JSON is YAML
        self.config_bytes = self.config.stat().st_size
        return self

    async def __aexit__(self, *_: object) -> None:
        await asyncio.gather(*(d.proc.stop() for d in self.daemons), return_exceptions=True)
        await asyncio.gather(*(s.stop() for s in self.servers), return_exceptions=True)

    async def server_stats(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(s.stats() for s in self.servers)))

    def start(self) -> list[Member]:
        """Launch every daemon at once (their starts are not awaited here)."""
        count = max(1, self.shards)
        for i in range(count):
            args = ["--log-format", "json"]
            if self.shards:
                args += ["--shard", f"{i}/{self.shards}"]
            name = f"{self.name}-{i}" if self.shards else self.name
            w = Wsmon(self.launcher.src, self.workdir, name, config=self.config, args=args)
            self.launcher.commands.append(w.command)
            self.daemons.append(Member(w, i))
        return self.daemons

    async def _loaded(self, d: Member, within: float) -> None:
        e = await d.proc.wait_event("config.loaded", within)
        d.loaded_cpu_s = cpu_ticks(d.pid)
        d.loaded_after_s = log_time(str(e["timestamp"])) - self.wall0
        d.loaded = {k: e.get(k) for k in ("targets", "config_targets", "shard", "listen")}
        d.port = int(str(e["listen"]).rsplit(":", 1)[1])

    async def connect(self, goal_s: float, deadline_s: float) -> dict[str, Any]:
        """Start the daemons; wait until the servers hold every target (or `deadline_s`
        passed), then until `wsmon_connected` adds up."""
        self.start()
        m0, own0, mem0 = machine_cpu(), time.process_time(), mem_available_kb()
        self.wall0, self.t0 = time.time(), time.monotonic()
        for d in self.daemons:
            await d.proc.start()
        loading = [asyncio.create_task(self._loaded(d, deadline_s)) for d in self.daemons]
        curve: list[tuple[float, int]] = []
        at_goal: int | None = None
        all_at: float | None = None
        mem_low = mem0
        try:
            while True:
                await asyncio.sleep(POLL_S)
                now = time.monotonic() - self.t0
                open_ = sum(st["open"] for st in await self.server_stats())
                curve.append((round(now, 2), open_))
                mem_low = min(mem_low, mem_available_kb())
                if at_goal is None and now >= goal_s:
                    at_goal = open_
                if open_ >= self.targets:
                    all_at = now
                    break
                if now > deadline_s:
                    break
                for d in self.daemons:
                    rc = d.proc.proc.returncode if d.proc.proc else None
                    if rc is not None:
                        raise BenchError(f"{d.proc.name} exited ({rc}):\n{d.proc.tail()}")
            await asyncio.gather(*loading)
        finally:
            for t in loading:
                t.cancel()
            await asyncio.gather(*loading, return_exceptions=True)
        m1, own1 = machine_cpu(), time.process_time()
        elapsed = time.monotonic() - self.t0
        stats = await self.server_stats()
        daemon_cpu = [cpu_ticks(d.pid) for d in self.daemons]
        daemon_fds = [open_fds(d.pid) for d in self.daemons]
        server_fds = [open_fds(int(st["pid"])) for st in stats]
        metrics_at: float | None = None
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as http:
            if all_at is not None:
                while time.monotonic() - self.t0 < deadline_s + 60.0:
                    if await connected_total(http, self.daemons) == self.targets:
                        metrics_at = time.monotonic() - self.t0
                        break
                    await asyncio.sleep(POLL_S)
        busy = (m1["processes"] + m1["interrupts"] + m1["steal"]) - (
            m0["processes"] + m0["interrupts"] + m0["steal"])  # fmt: skip
        server_cpu = sum(st["cpu_user_s"] + st["cpu_system_s"] for st in stats)
        procs = m1["processes"] - m0["processes"]
        if at_goal is None:  # everything connected before the goal's time
            at_goal = curve[-1][1] if curve else 0
        return {
            "targets": self.targets,
            "shards": self.shards,
            "servers": self.plan,
            "server_open": [st["open"] for st in stats],
            "server_fds": server_fds,
            "server_nofile": [nofile_soft(int(st["pid"])) for st in stats],
            "daemon_fds": daemon_fds,
            "daemon_nofile": [nofile_soft(d.pid) for d in self.daemons],
            "config_bytes": self.config_bytes,
            "server_rss_mib": [st["rss_bytes"] / 2**20 for st in stats],
            "all_connected": all_at is not None,
            "connect_s": all_at,
            "metrics_connected_s": metrics_at,
            "open_at_goal": at_goal,
            "goal_s": goal_s,
            "deadline_s": deadline_s,
            "open_at_end": curve[-1][1] if curve else 0,
            "curve": thin(curve),
            "elapsed_s": elapsed,
            "machine_busy_cpu_s": busy,
            "machine_busy_pct": 100.0 * busy / (elapsed * CORES),
            "interrupts_cpu_s": m1["interrupts"] - m0["interrupts"],
            "steal_s": m1["steal"] - m0["steal"],
            "daemons_cpu_s": sum(daemon_cpu),
            "daemons_cpu_each_s": daemon_cpu,
            "servers_cpu_s": server_cpu,
            "harness_cpu_s": own1 - own0,
            # other processes than these (other people's work on a shared machine)
            "others_cpu_s": max(0.0, procs - sum(daemon_cpu) - server_cpu - (own1 - own0)),
            "loaded_after_s": [d.loaded_after_s for d in self.daemons],
            "loaded_cpu_s": [d.loaded_cpu_s for d in self.daemons],
            "owned": [d.loaded.get("targets") for d in self.daemons],
            "mem_available_start_kb": mem0,
            "mem_available_low_kb": mem_low,
        }

    async def ownership(self) -> dict[str, Any]:
        """Each target exactly once: its open connections at the servers, and the shards
        that export its `wsmon_connected` (and say 1)."""
        wanted = set(self.names)
        at_servers: Counter[str] = Counter()
        accepted: Counter[str] = Counter()
        for got in await asyncio.gather(*(s.targets() for s in self.servers)):
            at_servers.update(got["open"])
            accepted.update(got["accepted"])
        timeout = aiohttp.ClientTimeout(total=600)
        series: Counter[str] = Counter()
        ones: Counter[str] = Counter()
        per_shard: list[dict[str, Any]] = []
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as http:
            for d in self.daemons:
                x, _ = await scrape_x(http, d.port)
                samples = x.samples("wsmon_connected")
                series.update(lab["target"] for lab, _ in samples)
                connected = [lab["target"] for lab, v in samples if v == 1]
                ones.update(connected)
                info = x.samples("wsmon_shard_info")
                per_shard.append({
                    "series": len(samples),
                    "connected": len(connected),
                    "wsmon_targets": round(x.total("wsmon_targets")),
                    "wsmon_config_targets": round(x.total("wsmon_config_targets")),
                    "shard_info": info[0][0] if info else None,
                })  # fmt: skip
        server_bad = sorted(n for n in wanted if at_servers.get(n, 0) != 1)
        metrics_bad = sorted(n for n in wanted if series.get(n, 0) != 1 or ones.get(n, 0) != 1)
        unknown = sorted(set(at_servers) - wanted) + sorted(set(series) - wanted)
        return {
            "targets": len(wanted),
            "servers_exactly_once": sum(1 for n in wanted if at_servers.get(n, 0) == 1),
            "servers_missing": sum(1 for n in wanted if at_servers.get(n, 0) == 0),
            "servers_more_than_once": sum(1 for n in wanted if at_servers.get(n, 0) > 1),
            "servers_reconnected": sum(1 for n in wanted if accepted.get(n, 0) > 1),
            "metrics_exactly_once": len(wanted) - len(metrics_bad),
            "metrics_no_shard": sum(1 for n in wanted if ones.get(n, 0) == 0),
            "metrics_several_shards": sum(1 for n in wanted if series.get(n, 0) > 1),
            "unknown_targets": len(unknown),
            "examples": (server_bad + metrics_bad + unknown)[:10],
            "violations": len(set(server_bad) | set(metrics_bad)) + len(unknown),
            "per_shard": per_shard,
        }

    def logs(self) -> list[dict[str, Any]]:
        return [log_summary(d.proc.log, self.wall0) for d in self.daemons]

    async def steady(self, s: Sizes, connected_at: float, window_s: float,
                     settle: bool = True) -> dict[str, Any]:  # fmt: skip
        """A probe interval after every target connected (with `settle`: every target
        answered once): scrapes, memory, then a window of `window_s`."""
        settle_s = connected_at + self.interval + 2.0 - (time.monotonic() - self.t0)
        if settle and settle_s > 0:
            say(f"{self.name}: settling {settle_s:.0f}s (every target answered once)")
            await asyncio.sleep(settle_s)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as http:
            scrape_s: list[float] = []
            for _ in range(s.w8_scrapes):
                for d in self.daemons:
                    scrape_s.append((await scrape_x(http, d.port))[1])
                await asyncio.sleep(0.3)
            rss = [ProcStat(d.pid).status() for d in self.daemons]
            say(f"{self.name}: window of {window_s:g}s")
            stats = [ProcStat(d.pid) for d in self.daemons]

            def reader(port: int) -> Reader:
                async def read() -> tuple[Any, float]:
                    sc = await scrape(http, port)
                    return Exposition(sc.body), sc.at

                return read

            e0 = [await edge(st, reader(d.port)) for st, d in zip(stats, self.daemons, strict=True)]
            m0, srv0 = machine_cpu(), await self.server_stats()
            t0, own0 = time.monotonic(), time.process_time()
            await asyncio.sleep(window_s)
            srv1, m1 = await self.server_stats(), machine_cpu()
            wall, own = time.monotonic() - t0, time.process_time() - own0
            e1 = [await edge(st, reader(d.port)) for st, d in zip(stats, self.daemons, strict=True)]
            rss_end = [ProcStat(d.pid).status() for d in self.daemons]
        loop = loop_of(self.daemons[0].pid)
        return window(self.targets, e0, e1, wall, m0, m1, srv0, srv1, own) | {
            "scrapes_each": s.w8_scrapes,
            "scrape_s": summary(scrape_s),
            "rss_kb": [r["VmRSS"] for r in rss],
            "peak_rss_kb": [r["VmHWM"] for r in rss],
            "rss_sum_kb": sum(r["VmRSS"] for r in rss),
            "rss_kib_per_target": sum(r["VmRSS"] for r in rss) / self.targets,
            "rss_end_sum_kb": sum(r["VmRSS"] for r in rss_end),
            "loop": loop,
            "mem_available_kb": mem_available_kb(),
        }


def thin(curve: list[tuple[float, int]], step: float = 5.0) -> list[tuple[float, int]]:
    """The connect curve every `step` seconds (and its last point)."""
    out: list[tuple[float, int]] = []
    for t, n in curve:
        if not out or t - out[-1][0] >= step:
            out.append((t, n))
    if curve and out[-1] != curve[-1]:
        out.append(curve[-1])
    return out


def window(targets: int, e0: list[Edge], e1: list[Edge], wall: float, m0: dict[str, float],
           m1: dict[str, float], srv0: list[dict[str, Any]], srv1: list[dict[str, Any]],
           harness_cpu_s: float) -> dict[str, Any]:  # fmt: skip
    """The daemons over the steady window: each one's CPU over its own span between its two
    edges (a scrape's CPU outside), summed as rates; what their metrics counted."""
    rate_ticks = rate_sched = 0.0
    figures = []
    lag: dict[float, float] = {}
    for a, b in zip(e0, e1, strict=True):
        span = b.wall[0] - a.wall[1]
        rate_ticks += (b.ticks[0] - a.ticks[1]) / span
        rate_sched += (b.cpu[0] - a.cpu[1]) / span
        f = wsmon_figures(a.reading, b.reading)
        figures.append(f)
        for le, c in bucket_delta(a.reading.buckets("wsmon_probe_send_lag_seconds"),
                                  b.reading.buckets("wsmon_probe_send_lag_seconds")):  # fmt: skip
            lag[le] = lag.get(le, 0.0) + c
    spans = [(b.at - a.at) for a, b in zip(e0, e1, strict=True)]
    round_trips = sum(f["round_trips"] for f in figures)
    rt_rate = sum(f["round_trips"] / sp for f, sp in zip(figures, spans, strict=True) if sp > 0)
    rtt_ms = sum(f["rtt_mean_ms"] * f["round_trips"] for f in figures if f["round_trips"])
    buckets = sorted(lag.items())
    lag_n = buckets[-1][1] if buckets else 0.0
    within = next((c for le, c in buckets if math.isclose(le, LAG_GOAL_BOUND)), math.nan)
    server = sum(
        b["cpu_user_s"] + b["cpu_system_s"] - a["cpu_user_s"] - a["cpu_system_s"]
        for a, b in zip(srv0, srv1, strict=True)
    )
    busy = sum(m1[k] - m0[k] for k in ("processes", "interrupts", "steal"))
    others = m1["processes"] - m0["processes"] - server - rate_ticks * wall - harness_cpu_s
    return {
        "window_s": wall,
        "cpu_s_per_s": rate_ticks,  # utime + stime, summed over the daemons
        "cpu_s_per_s_schedstat": rate_sched,
        "cpu_pct_of_core": 100.0 * rate_ticks,
        "cpu_us_per_target_s": 1e6 * rate_ticks / targets,
        "round_trips": round_trips,
        "round_trips_per_s": rt_rate,
        "cpu_us_per_round_trip": 1e6 * rate_ticks / rt_rate if rt_rate else math.nan,
        "rtt_mean_ms": rtt_ms / round_trips if round_trips else math.nan,
        "probes_sent": sum(f["probes_sent"] for f in figures),
        "probe_timeouts": sum(f["probe_timeouts"] for f in figures),
        "probe_errors": sum(f["probe_errors"] for f in figures),
        "send_lag_p99_ms": 1e3 * histogram_quantile(0.99, buckets),
        "send_lag_share_within_20ms": within / lag_n if lag_n else math.nan,
        "connected": sum(f["connected"] for f in figures),
        "receive_paths": sorted({f["receive_path"] for f in figures}),
        "servers_cpu_pct_of_core": 100.0 * server / wall,
        "machine_busy_pct_of_core": 100.0 * busy / wall,
        "others_pct_of_core": 100.0 * max(0.0, others) / wall,
        "interrupts_pct_of_core": 100.0 * (m1["interrupts"] - m0["interrupts"]) / wall,
        "cores": CORES,
    }


# --- the workload ----------------------------------------------------------------------------


def next_size(a: dict[str, Any], goal_s: float, shards: int, held_at: int,
              failed_at: int) -> int:  # fmt: skip
    """The next attempt's size, from the last one: its size scaled by the time the goal
    allows over the time it took (or, when not every target connected, by the share
    connected at the goal's time), times `STEP_DOWN` after a miss or `STEP_UP` after a
    hold, kept strictly between the largest size that held and the smallest that did not;
    0: no size left to try."""
    c = a["connect"]
    n = c["targets"]
    if c["connect_s"] is not None:
        scaled = n * goal_s / max(c["connect_s"], 1e-9)
    else:
        scaled = c["open_at_goal"]
    scaled *= STEP_UP if a["held"] else STEP_DOWN
    unit = 1000 if n >= 10_000 else max(shards, 10)
    size = int(scaled // unit * unit)
    if size >= failed_at:
        size = failed_at - unit
    if size <= held_at:
        return 0
    return size


def diagnose(a: dict[str, Any], goal_s: float) -> dict[str, Any]:
    """What an attempt ran short of, from the shards' logs, the servers and /proc: file
    descriptors (`fd_budget.short`, connect failures of reason `resource`), ephemeral ports
    (EADDRNOTAVAIL), memory (MemAvailable), else CPU and time."""
    c, logs = a["connect"], a["logs"]
    failed: Counter[str] = Counter()
    samples: dict[str, list[str]] = {}
    for lg in logs:
        failed.update(lg["connect_failed"])
        for reason, texts in lg["connect_failed_samples"].items():
            kept = samples.setdefault(reason, [])
            kept.extend(texts[: max(0, ERROR_SAMPLES - len(kept))])
    texts = " ".join(t for ts in samples.values() for t in ts)
    fd_short = sum(len(lg["fd_budget_short"]) for lg in logs)
    ports = "Cannot assign requested address" in texts or "EADDRNOTAVAIL" in texts
    low = c["mem_available_low_kb"] / max(1, c["mem_available_start_kb"])
    fast = c["connect_s"] is not None and c["connect_s"] <= goal_s
    if fd_short or failed.get("resource"):
        ran_out = "file descriptors"
    elif ports:
        ran_out = "ephemeral ports"
    elif low < 0.1:
        ran_out = "memory"
    elif not fast:
        ran_out = "CPU" if c["machine_busy_pct"] >= 90.0 else "time"
    else:
        ran_out = ""
    return {
        "ran_out": ran_out,
        "connect_failed": dict(failed),
        "connect_failed_samples": samples,
        "fd_budget_short": fd_short,
        "error_lines": sum(lg["error_lines"] for lg in logs),
        "errors": [e for lg in logs for e in lg["errors"]][:5],
        "mem_available_low_share": low,
    }


def held(attempt: dict[str, Any], goal_s: float) -> bool:
    c, own = attempt["connect"], attempt.get("ownership")
    return (
        c["connect_s"] is not None
        and c["connect_s"] <= goal_s
        and own is not None
        and own["violations"] == 0
    )


async def attempt(s: Sizes, launcher: Launcher, workdir: Path, name: str, targets: int,
                  shards: int, goal_s: float, window_s: float | None,
                  settle: bool = True) -> dict[str, Any]:  # fmt: skip
    """One group: connect, check ownership, and (with a `window_s`) memory and CPU."""
    what = f"{shards} shards" if shards else "one daemon"
    say(f"workload 8 {name}: {targets} targets, {what}, probes every {s.w8_interval:g}s")
    out: dict[str, Any] = {"name": name, "targets": targets, "shards": shards}
    async with Group(launcher, workdir, name, targets, shards, s.w8_interval,
                     s.w8_per_server) as g:  # fmt: skip
        say(f"{name}: {g.plan['servers']} node servers at {', '.join(g.plan['hosts'])} "
            f"(at most {g.plan['per_server_max']} connections each)")  # fmt: skip
        c = await g.connect(goal_s, s.w8_deadline)
        out["connect"] = c
        say(f"{name}: " + (f"every target connected at {c['connect_s']:.1f}s"
                           if c["all_connected"] else
                           f"{c['open_at_end']} of {targets} connected after "
                           f"{c['elapsed_s']:.0f}s"))  # fmt: skip
        if c["all_connected"] and c["metrics_connected_s"] is not None:
            out["ownership"] = await g.ownership()
            if window_s is not None:
                out["steady"] = await g.steady(s, c["connect_s"], window_s, settle)
        out["logs"] = g.logs()
    out["held"] = held(out, goal_s)
    out["diagnosis"] = diagnose(out, goal_s)
    return out


async def measure(s: Sizes, launcher: Launcher, workdir: Path) -> dict[str, Any]:
    goal_s = goal_limit("8a")
    attempts: list[dict[str, Any]] = []
    size = s.w8_targets
    steady_done = False
    for i in range(s.w8_attempts):
        window_s = None if steady_done else s.w8_window
        a = await attempt(s, launcher, workdir, f"w8-fleet-{i}", size, s.w8_shards, goal_s,
                          window_s)  # fmt: skip
        steady_done = steady_done or "steady" in a
        attempts.append(a)
        if a["held"] and i == 0:
            break  # the goal's size holds: nothing larger is asked for
        held_at = max((x["targets"] for x in attempts if x["held"]), default=0)
        failed_at = min(x["targets"] for x in attempts if not x["held"])
        size = next_size(a, goal_s, s.w8_shards, held_at, failed_at)
        if size <= 0:
            break
    fleet = next((a for a in attempts if "steady" in a), attempts[0])
    single_n = single_size(s.w8_targets)
    single = await attempt(s, launcher, workdir, "w8-single", single_n, 0, goal_s, s.w8_window)
    # A daemon with one target: the fixed cost of a process (interpreter, libraries).
    one = await attempt(s, launcher, workdir, "w8-one", 1, 0, goal_s, 1.0, settle=False)
    largest = max((a["targets"] for a in attempts if a["held"]), default=0)
    return {
        "goal_targets": s.w8_targets,
        "shards": s.w8_shards,
        "interval_s": s.w8_interval,
        "goal_s": goal_s,
        "attempts": attempts,
        "fleet": fleet,
        "largest_held": largest,
        "single": single,
        "single_limited_by_fds": single_n < s.w8_targets,
        "one": one,
    }
