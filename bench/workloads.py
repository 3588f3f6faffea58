"""The eight workloads, the hooks ablation and the profile; each puts its figures in
`Run.results` (the report judges and renders them, see `bench.report`).

1. CPU per probe round trip: 1,000 targets, 1 s interval; the clients of `W1_CLIENTS` in
   turn, `w1_rounds` times, each in its own process on the same node server;
2. capacity: 10,000 targets, 30 s interval: daemon CPU, probe send lag; resident memory
   (the whole process's VmRSS) per target after the warm-up, before any scrape, and once
   the daemon has served ten scrapes of ``/metrics``; what a scrape holds (series per
   target, body bytes plain and gzip) and how long it takes; an empty daemon for comparison;
3. scrape cost: ``/metrics`` of a daemon with 1,000 and 10,000 targets (every series
   populated), timed from here while a 1 ms lag sensor runs in the daemon's process;
   baseline: ``prometheus_client.generate_latest`` on an equivalent registry;
4. RTT fidelity: 1,000 targets, server reply delay 20 ms, a scrape every second, on both
   receive paths, against the floor's own RTT excess (unscraped);
5. start-up: 10,000 targets connected while the server never sees more upgrades in
   progress than the daemon's handshake limit; measured on workload 2's daemon;
6. Prometheus cost: a real Prometheus (``bench.promserver``) scrapes a 10,000-target daemon
   every 5 s for 3 minutes, once with classic histograms and once with native ones (the
   daemon's ``metrics: {histograms: native}``, Prometheus with native histograms on); what
   Prometheus holds and uses then, from its own ``/metrics`` and its query API;
7. streams: 1,000 subscription streams at 10 messages a second (``bench.streams``): wsmon's
   CPU per stream message against a floor's in the same round, how soon it declares a
   stopped stream stale, and its count of messages against the server's;
8. fleet: 100,000 targets at 30 s over 10 shards (``wsmon run --shard I/N``) on this machine
   (``bench.fleet``): connect-all time, each target exactly once (at the servers and in the
   shards' metrics), memory and CPU per target against a single daemon; smaller fleets when
   the goal's does not hold.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from . import fleet, nodeserver, promserver, streams
from .common import summary
from .harness import (
    BenchError,
    Child,
    Exposition,
    ProcStat,
    Scrape,
    client_argv,
    promtool_check,
    say,
    scrape,
)
from .measure import Launcher, Plan, measure_client, wait_connected

HANDSHAKE_LIMIT = 50  # wsmon's default max_concurrent_handshakes
RSS_SCRAPES = 10  # workload 2's memory (b): VmRSS once the daemon has served this many scrapes
SCRAPE_PAUSE = 0.3  # seconds between workload 2's scrapes (VmRSS is read at the end of each)


@dataclass(frozen=True)
class Sizes:
    """Workload sizes: the goals' (FULL) or a smoke test (QUICK)."""

    name: str
    warmup: float
    w1_targets: int
    w1_interval: float
    w1_warmup: float
    w1_window: float
    w1_rounds: int  # the clients run in turn, this many times
    w1_send_alignment: str  # the aligned comparison client's `send_alignment`
    ablation_rounds: int
    w2_targets: int
    w2_interval: float
    w2_window: float
    w2_send_alignment: str  # the daemon's `send_alignment` in workload 2 (see docs)
    w3_small: int
    w3_scrapes: int
    w3_drops: tuple[int, int]  # (1001 close frames, TCP resets) sent by the server
    baseline_repeat: tuple[int, int]  # generate_latest calls at the small / large size
    w4_targets: int
    w4_interval: float
    w4_window: float
    w4_delay_ms: float
    handshake_delay_ms: float
    empty_window: float
    profile_s: float
    w6_targets: int
    w6_interval: float  # the daemon's probe interval
    w6_ingest: float  # seconds Prometheus scrapes the daemon, per variant
    w6_scrape_interval: float  # Prometheus's scrape_interval (and scrape_timeout)
    w7_streams: int  # targets, one stream probe each (one subscription per connection)
    w7_rate: float  # messages a second per stream, sent by the server
    w7_max_gap: float  # the stream probe's max_gap
    w7_warmup: float  # seconds after every stream flows, before the window
    w7_window: float
    w7_rounds: int  # the floor and wsmon in turn, this many times
    w7_stalled: int  # streams stopped per wsmon round
    w7_stall_gap_ms: float  # between one stream's stop and the next's
    w8_targets: int  # the fleet's targets (the goal's size)
    w8_shards: int
    w8_interval: float  # each target's one probe
    w8_window: float  # the steady window (CPU)
    w8_scrapes: int  # scrapes of each daemon before its memory is read
    w8_deadline: float  # seconds an attempt waits for every target to connect
    w8_attempts: int  # the goal's size, then smaller fleets while one does not hold
    w8_per_server: int  # at most this many connections per node server


FULL = Sizes(
    name="full", warmup=5.0,
    w1_targets=1000, w1_interval=1.0, w1_warmup=2.0, w1_window=7.0, w1_rounds=3,
    w1_send_alignment="10ms", ablation_rounds=5,
    w2_targets=10_000, w2_interval=30.0, w2_window=60.0, w2_send_alignment="30ms",
    w3_small=1000, w3_scrapes=3, w3_drops=(3, 2), baseline_repeat=(3, 1),
    w4_targets=1000, w4_interval=1.0, w4_window=15.0, w4_delay_ms=20.0,
    handshake_delay_ms=20.0, empty_window=2.0, profile_s=20.0,
    w6_targets=10_000, w6_interval=30.0, w6_ingest=180.0, w6_scrape_interval=5.0,
    w7_streams=1000, w7_rate=10.0, w7_max_gap=1.0, w7_warmup=5.0, w7_window=20.0,
    w7_rounds=3, w7_stalled=100, w7_stall_gap_ms=13.0,
    w8_targets=100_000, w8_shards=10, w8_interval=30.0, w8_window=60.0, w8_scrapes=3,
    w8_deadline=180.0, w8_attempts=4, w8_per_server=15_000,
)  # fmt: skip
QUICK = Sizes(
    name="quick", warmup=0.5,
    w1_targets=20, w1_interval=0.2, w1_warmup=0.3, w1_window=1.0, w1_rounds=1,
    w1_send_alignment="50ms", ablation_rounds=1,
    w2_targets=50, w2_interval=0.5, w2_window=1.5, w2_send_alignment="50ms",
    w3_small=20, w3_scrapes=2, w3_drops=(1, 1), baseline_repeat=(1, 1),
    w4_targets=20, w4_interval=0.2, w4_window=2.5, w4_delay_ms=20.0,
    handshake_delay_ms=5.0, empty_window=0.3, profile_s=2.0,
    w6_targets=100, w6_interval=0.5, w6_ingest=20.0, w6_scrape_interval=2.0,
    w7_streams=20, w7_rate=10.0, w7_max_gap=0.3, w7_warmup=0.5, w7_window=1.0,
    w7_rounds=1, w7_stalled=4, w7_stall_gap_ms=20.0,
    w8_targets=300, w8_shards=3, w8_interval=2.0, w8_window=2.0, w8_scrapes=2,
    w8_deadline=60.0, w8_attempts=1, w8_per_server=120,
)  # fmt: skip


# Workload 6's variants: the daemon's `metrics: {histograms: ...}` (None: no `metrics:` block,
# the daemon's default, classic) and whether Prometheus runs with native histograms on.
W6_VARIANTS: dict[str, tuple[str | None, bool]] = {
    "classic": (None, False),
    "native": ("native", True),
}


@dataclass
class Run:
    sizes: Sizes
    only: set[int]
    log_dir: Path
    launcher: Launcher
    results: dict[str, Any] = field(default_factory=dict)
    w6_variants: tuple[str, ...] = tuple(W6_VARIANTS)


@dataclass(frozen=True)
class Client:
    """A measured client of workload 1 or of the ablation."""

    key: str
    kind: str  # floor | websockets | wsmon
    loop: str = "asyncio"
    path: str | None = None  # wsmon: the receive path it must report (build_info)
    flags: tuple[str, ...] = ()  # wsmon: how it is built (see bench/clients.py)
    hooks: tuple[str, ...] | None = None  # wsmon: the hooks it must run with, when it matters

    def argv(self, url: str, targets: int, interval: float) -> list[str]:
        return client_argv(self.kind, url, targets, interval, "--loop", self.loop, *self.flags)


PORTABLE = ("--receive-path", "portable")
# Judged: wsmon on its default path (auto: the hooks the self-test proves), stock asyncio and
# uvloop. For comparison: the floor on uvloop, the websockets-library client, wsmon on the
# portable path (no hooks) on both loops, and wsmon with `send_alignment` (fewer wake-ups).
W1_CLIENTS = (
    Client("floor", "floor"),
    Client("floor_uvloop", "floor", "uvloop"),
    Client("websockets", "websockets"),
    Client("wsmon_asyncio", "wsmon", "asyncio", "hooked"),
    Client("wsmon_uvloop", "wsmon", "uvloop", "hooked"),
    Client("wsmon_asyncio_portable", "wsmon", "asyncio", "portable", PORTABLE),
    Client("wsmon_uvloop_portable", "wsmon", "uvloop", "portable", PORTABLE),
    Client("wsmon_uvloop_aligned", "wsmon", "uvloop", "hooked"),  # + --send-alignment
)
HOOKS = ("stamp", "inbox", "trim")


def _without(hook: str) -> Client:
    rest = tuple(h for h in HOOKS if h != hook)
    path = "portable" if hook == "inbox" else "hooked"
    return Client(f"no_{hook}", "wsmon", "uvloop", path, ("--hooks", ",".join(rest)), rest)


# Workload 1 on uvloop (the 0.7x goal's loop): every hook, each one left out, none; the floor
# (asyncio) in every round, as the goal's reference.
ABLATION = (
    Client("floor", "floor"),
    Client("all", "wsmon", "uvloop", "hooked", (), HOOKS),
    *(_without(h) for h in HOOKS),
    Client("none", "wsmon", "uvloop", "portable", PORTABLE, ()),
)


def _cpu_us(r: dict[str, Any]) -> float:
    return float(r["cpu_us_per_round_trip"])


def pool(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One client's rounds as one figure: CPU and round trips summed (the other fields are
    the last round's)."""
    pooled = dict(rounds[-1])
    for key in ("cpu_s", "cpu_ticks_s", "window_s", "round_trips", "round_trips_in_cpu_window",
                "server_cpu_s", "others_cpu_s", "harness_cpu_s", "interrupts_cpu_s",
                "steal_s"):  # fmt: skip
        pooled[key] = sum(r.get(key) or 0 for r in rounds)
    rt = pooled["round_trips_in_cpu_window"]
    pooled["cpu_us_per_round_trip"] = 1e6 * pooled["cpu_s"] / rt if rt else float("nan")
    pooled["rounds"] = len(rounds)
    return pooled


async def _rounds(
    run: Run, label: str, clients: tuple[Client, ...], rounds: int, host_w3: bool = False
) -> dict[str, Any]:
    """Every client in turn, `rounds` times, on one node server; per-round ratios to the
    floor (the machine's drift then affects every client alike) and their median."""
    s = run.sizes
    got_rounds: list[dict[str, dict[str, Any]]] = []
    async with nodeserver.NodeServer() as node:
        for i in range(rounds):
            got: dict[str, dict[str, Any]] = {}
            for c in clients:
                argv = c.argv(node.url, s.w1_targets, s.w1_interval)
                if c.key == "wsmon_uvloop_aligned":
                    argv += ["--send-alignment", s.w1_send_alignment]
                keep = host_w3 and c.key == "wsmon_asyncio" and i == rounds - 1
                plan = Plan(c.kind, s.w1_targets, s.w1_warmup, s.w1_window, c.path)
                got[c.key], child = await measure_client(
                    run.launcher, f"{label}-{c.key}-{i}", argv, node, plan, keep=keep
                )
                if child is not None:
                    try:
                        run.results.setdefault("w3", {})["small"] = await scrape_phase(
                            run, child, node, int(got[c.key]["metrics_port"]), s.w1_targets
                        )
                    finally:
                        await child.finish()
            got_rounds.append(got)
    keys = [c.key for c in clients]
    out: dict[str, Any] = {k: pool([r[k] for r in got_rounds]) for k in keys}
    per_round = [{k: _cpu_us(r[k]) / _cpu_us(r["floor"]) for k in keys[1:]} for r in got_rounds]
    out["rounds"] = per_round
    out["ratio"] = {k: statistics.median(r[k] for r in per_round) for k in keys[1:]}
    out["ratio_pooled"] = {k: _cpu_us(out[k]) / _cpu_us(out["floor"]) for k in keys[1:]}
    out["interval_s"] = s.w1_interval
    return out


async def workload1(run: Run) -> None:
    s = run.sizes
    say(f"workload 1: {s.w1_targets} targets, {s.w1_interval:g}s interval, "
        f"{s.w1_rounds} rounds of {len(W1_CLIENTS)} clients, {s.w1_window:g}s windows")  # fmt: skip
    run.results["w1"] = await _rounds(run, "w1", W1_CLIENTS, s.w1_rounds, 3 in run.only)


async def ablation(run: Run) -> None:
    """Workload 1 on uvloop with every hook, each one left out, and none."""
    s = run.sizes
    say(f"hooks ablation: {len(ABLATION)} clients, {s.ablation_rounds} rounds")
    res = await _rounds(run, "ablation", ABLATION, s.ablation_rounds)
    for c in ABLATION[1:]:  # each must run with exactly its hooks, or the table means nothing
        assert c.hooks is not None
        if sorted(res[c.key]["hooks"]) != sorted(c.hooks):
            raise BenchError(
                f"ablation: {c.key} ran with hooks {res[c.key]['hooks']}, not {list(c.hooks)} "
                f"(the self-test's log: {res[c.key].get('hook_log')})"
            )
    rounds = res["rounds"]
    res["vs_all"] = {  # median over the rounds of (CPU without / CPU with every hook - 1)
        c.key: statistics.median(r[c.key] / r["all"] - 1.0 for r in rounds) for c in ABLATION[2:]
    }
    run.results["ablation"] = res


async def workload3_small_alone(run: Run) -> None:
    """Workload 3 at the small size when workload 1 (which hosts it) is not run."""
    s = run.sizes
    async with nodeserver.NodeServer() as node:
        argv = client_argv("wsmon", node.url, s.w3_small, s.w1_interval)
        plan = Plan("wsmon", s.w3_small, s.warmup, s.w1_interval + 1.0, "hooked")
        res, child = await measure_client(run.launcher, "w3-wsmon-small", argv, node, plan,
                                          keep=True)  # fmt: skip
        assert child is not None
        try:
            run.results.setdefault("w3", {})["small"] = await scrape_phase(
                run, child, node, int(res["metrics_port"]), s.w3_small
            )
        finally:
            await child.finish()


async def workload2(run: Run) -> None:
    """Workloads 2 and 5 (and 3 at the large size) on one 10,000-target daemon."""
    s = run.sizes
    full = 2 in run.only
    # Without workload 2, a window of one interval still lets every target answer a probe
    # before workload 3 scrapes (and workload 5 needs no window at all).
    window = s.w2_window if full else (s.w2_interval + 1.0 if 3 in run.only else 0.5)
    say(f"workload 2/5{'/3' if 3 in run.only else ''}: {s.w2_targets} targets, "
        f"{s.w2_interval:g}s interval, {window:g}s window")  # fmt: skip
    async with nodeserver.NodeServer(handshake_delay_ms=s.handshake_delay_ms) as node:
        # On uvloop, as a deploy from the lock runs it (`--event-loop auto`).
        argv = client_argv("wsmon", node.url, s.w2_targets, s.w2_interval,
                           "--send-alignment", s.w2_send_alignment, "--loop", "uvloop")  # fmt: skip
        # A probe interval more of warm-up: every target has sent and been answered once, so
        # that the memory read before the first scrape is the steady state's (a target's
        # first reply turns its shared zeros into values of its own) and 2d sees the scrapes.
        warmup = s.warmup + s.w2_interval
        plan = Plan("wsmon", s.w2_targets, warmup, window, "hooked", rss_before_scrape=True)
        res, child = await measure_client(run.launcher, "w2-wsmon", argv, node, plan, keep=True)
        assert child is not None
        try:
            srv = await node.stats()  # before workload 3's drops: start-up's maxima
            run.results["w5"] = {
                "targets": s.w2_targets,
                "config_s": res["config_s"],
                "connect_s": res["connect_s"],
                "startup_s": res["config_s"] + res["connect_s"],
                "connected": res["connected"],
                "server_connections_total": srv["connections_total"],
                "server_open": srv["open"],
                "max_upgrades_in_progress": srv["max_upgrades_in_progress"],
                "max_pending_sockets": srv["max_pending_sockets"],
                "handshake_delay_ms": s.handshake_delay_ms,
                "limit": HANDSHAKE_LIMIT,
            }
            port = int(res["metrics_port"])
            if full:  # memory once /metrics has been scraped (exposition caches included)
                scrapes = await scrape_series(child, port, s.w2_targets, res["edge_scrape_s"])
                res["rss_after_scrapes_kb"] = scrapes["rss_each_kb"][-1]
            if 3 in run.only:
                run.results.setdefault("w3", {})["large"] = await scrape_phase(
                    run, child, node, port, s.w2_targets
                )
                if full:
                    res["rss_after_w3_kb"] = _rss(child)
        finally:
            await child.finish()
        if full:
            argv = client_argv("wsmon", node.url, 0, s.w2_interval, "--loop", "uvloop")
            plan = Plan("wsmon", 0, s.empty_window, s.empty_window, "hooked",
                        rss_before_scrape=True)  # fmt: skip
            empty, _ = await measure_client(run.launcher, "w2-wsmon-empty", argv, node, plan)
            before, after = res["rss_before_scrape_kb"], res["rss_after_scrapes_kb"]
            run.results["w2"] = {
                "wsmon": res,
                "empty": empty,
                # above an empty daemon, before any scrape (the former goal 2b's figure)
                "rss_kib_per_target": (before - empty["rss_before_scrape_kb"]) / s.w2_targets,
                "rss_whole_kib_per_target": {  # the whole process's VmRSS over the targets
                    "before_scrape": before / s.w2_targets,
                    "after_scrapes": after / s.w2_targets,
                },
                "rss_growth_mib": (after - before) / 1024,
                "scrapes": scrapes,
                "interval_s": s.w2_interval,
            }


def _rss(child: Child) -> int:
    with open(f"/proc/{child.pid}/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


async def _scrape_ok(http: aiohttp.ClientSession, port: int, gzip_ok: bool = True) -> Scrape:
    sc = await scrape(http, port, gzip_ok)
    if sc.status != 200:
        raise BenchError(f"/metrics answered {sc.status}")
    return sc


async def scrape_series(
    child: Child, port: int, targets: int, served: list[float]
) -> dict[str, Any]:
    """Workload 2's scrapes after its window, until the daemon has served `RSS_SCRAPES` with
    the window's edges (`served`: their times): one without gzip (the plain body's size),
    the rest with gzip as Prometheus asks, `SCRAPE_PAUSE` apart, VmRSS read at the end of
    each pause; the last one's sample lines (series) counted."""
    gzip_s = list(served)
    rss: list[int] = []
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as http:
        plain = await _scrape_ok(http, port, gzip_ok=False)
        await asyncio.sleep(SCRAPE_PAUSE)
        rss.append(_rss(child))
        last = plain
        for _ in range(max(1, RSS_SCRAPES - len(served) - 1)):
            last = await _scrape_ok(http, port)
            gzip_s.append(last.seconds)
            await asyncio.sleep(SCRAPE_PAUSE)
            rss.append(_rss(child))
    x = Exposition(last.body)
    series, untargeted = x.sample_count(), x.untargeted_count()
    return {
        "scrapes": len(served) + len(rss),
        "edge_scrapes": len(served),
        "gzip_scrape_s": summary(gzip_s),
        "gzip_scrape_each_s": [round(v, 4) for v in gzip_s],
        "plain_bytes": plain.wire_bytes,
        "gzip_bytes": last.wire_bytes,
        "gzip_body_bytes": len(last.body),
        "plain_bytes_per_target": plain.wire_bytes / targets,
        "gzip_bytes_per_target": last.wire_bytes / targets,
        "series": series,
        "series_untargeted": untargeted,
        "series_per_target": series / targets,  # every sample line
        "series_per_target_labelled": (series - untargeted) / targets,  # goal 2e's
        "rss_each_kb": rss,  # after the plain scrape, then after each gzip one
        "pause_s": SCRAPE_PAUSE,
    }


async def scrape_phase(
    run: Run, child: Child, node: nodeserver.NodeServer, port: int, targets: int
) -> dict[str, Any]:
    """Drop a few connections, wait for every target to come back, then scrape `/metrics`
    `w3_scrapes` times while the child's lag sensor runs; stalls are matched to the scrapes
    by CLOCK_MONOTONIC intervals."""
    s = run.sizes
    before = await node.stats()
    closes, resets = s.w3_drops
    dropped = await node.drop(closes, "close") + await node.drop(resets, "terminate")
    await node.wait_open(targets, 60.0, before["connections_total"] + dropped)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as http:
        await wait_connected(http, port, targets)
        await child.ask("sensor_start", "sensor_started", 30.0)
        await asyncio.sleep(1.0)  # stalls without a scrape, for comparison
        scrapes = []
        for _ in range(s.w3_scrapes):
            sc = await scrape(http, port)
            if sc.status != 200:
                raise BenchError(f"/metrics answered {sc.status}")
            scrapes.append(sc)
            await asyncio.sleep(0.3)
    sensor = await child.ask("sensor_stop", "sensor", 120.0)

    def during(a: float, b: float) -> bool:
        return any(a < sc.ended and b > sc.started for sc in scrapes)

    body = scrapes[0].body
    (run.log_dir / f"metrics-{targets}.txt").write_bytes(body)
    x, last = Exposition(body), Exposition(scrapes[-1].body)
    answered = x.by("wsmon_probe_rtt_seconds_count", "target")
    gc_runs = last.total("python_gc_collections_total") - x.total("python_gc_collections_total")
    return {
        "targets": targets,
        "dropped": dropped,
        "scrape_s": summary([sc.seconds for sc in scrapes]),
        "scrape_each_s": [round(sc.seconds, 4) for sc in scrapes],
        "wire_bytes": scrapes[0].wire_bytes,
        "body_bytes": len(body),
        # None: no overshoot above the sensor's threshold (1 ms) in those intervals
        "stall_during_scrapes_max_ms": max(
            (o for a, b, o in sensor["events"] if during(a, b)), default=None),
        "stall_outside_scrapes_max_ms": max(
            (o for a, b, o in sensor["events"] if not during(a, b)), default=None),
        "stall_threshold_ms": sensor["keep_above_ms"],
        "sensor_max_ms": sensor["max_ms"],
        "sensor_samples": sensor["samples"],
        "gc_collections_between_scrapes": round(gc_runs),
        "exposition": {
            "families": x.families(),
            "samples": x.sample_count(),
            "targets_with_answered_probes": sum(1 for v in answered.values() if v > 0),
            "disconnects_total": x.total("wsmon_disconnects_total"),
        },
        "promtool": promtool_check(body),
    }  # fmt: skip


async def workload3_baselines(run: Run) -> None:
    s = run.sizes
    out = run.results.setdefault("w3", {})
    for key, n, rep in (
        ("baseline_small", s.w3_small, s.baseline_repeat[0]),
        ("baseline_large", s.w2_targets, s.baseline_repeat[1]),
    ):
        say(f"workload 3 baseline: prometheus_client.generate_latest, {n} targets")
        child = await run.launcher.start(
            f"w3-{key}", ["--targets", str(n), "--repeat", str(rep)], module="bench.promreg"
        )
        try:
            out[key] = await child.expect("baseline", 600.0)
        finally:
            await child.finish()


async def workload4(run: Run) -> None:
    s = run.sizes
    say(f"workload 4: {s.w4_targets} targets, server delay {s.w4_delay_ms:g} ms, scrapes 1/s")
    out: dict[str, Any] = {"server_delay_ms": s.w4_delay_ms, "interval_s": s.w4_interval}
    async with nodeserver.NodeServer(delay_ms=s.w4_delay_ms) as node:
        delay = ("--delay-ms", f"{s.w4_delay_ms:g}")
        for key, kind, path, flags, every in (
            ("floor", "floor", None, (), None),
            ("wsmon", "wsmon", "hooked", (), 1.0),
            ("wsmon_portable", "wsmon", "portable", PORTABLE, 1.0),
        ):
            argv = client_argv(kind, node.url, s.w4_targets, s.w4_interval, *delay, *flags)
            plan = Plan(kind, s.w4_targets, s.warmup, s.w4_window, path,
                        scrape_every=every, delay_ms=s.w4_delay_ms)  # fmt: skip
            out[key], _ = await measure_client(run.launcher, f"w4-{key}", argv, node, plan)
    run.results["w4"] = out


# --- workload 6: Prometheus cost ------------------------------------------------------

# From Prometheus's own /metrics at the end of the ingestion.
PROM_OWN = (
    "prometheus_tsdb_head_series",
    "prometheus_tsdb_head_chunks",
    "process_resident_memory_bytes",
    "go_memstats_heap_inuse_bytes",
    "prometheus_tsdb_head_samples_appended_total",
)


def prom_queries(window: str) -> dict[str, str]:
    """What workload 6 asks Prometheus's query API at the end of the ingestion (`window`:
    the ingestion, as a range)."""
    job = f'{{job="{promserver.JOB}"}}'
    return {
        "series_of_job": f"count({job})",
        "samples_scraped": f"scrape_samples_scraped{job}",
        "scrape_s_last": f"scrape_duration_seconds{job}",
        "scrape_s_mean": f"avg_over_time(scrape_duration_seconds{job}[{window}])",
        "scrape_s_max": f"max_over_time(scrape_duration_seconds{job}[{window}])",
        "scrapes": f"count_over_time(up{job}[{window}])",
        "scrapes_up": f"sum_over_time(up{job}[{window}])",
        # native histograms stored: no classic buckets, a histogram count that grows
        "classic_rtt_bucket_series": "count(wsmon_probe_rtt_seconds_bucket)",
        "native_rtt_count_rate": "histogram_count(sum(rate(wsmon_probe_rtt_seconds[1m])))",
    }


async def workload6(run: Run) -> None:
    """A real Prometheus against the daemon, once per variant, on one node server."""
    s = run.sizes
    say(f"workload 6: {s.w6_targets} targets, Prometheus scraping every "
        f"{s.w6_scrape_interval:g}s for {s.w6_ingest:g}s, variants "
        f"{', '.join(run.w6_variants)}")  # fmt: skip
    out: dict[str, Any] = {
        "targets": s.w6_targets,
        "interval_s": s.w6_interval,
        "ingest_s": s.w6_ingest,
        "scrape_interval_s": s.w6_scrape_interval,
        "send_alignment": s.w2_send_alignment,
        "prometheus": promserver.version(),
        "variants": list(run.w6_variants),
    }
    async with nodeserver.NodeServer() as node:
        for variant in run.w6_variants:
            out[variant] = await _w6_variant(run, node, variant)
    run.results["w6"] = out


async def _w6_variant(run: Run, node: nodeserver.NodeServer, variant: str) -> dict[str, Any]:
    s = run.sizes
    histograms, native = W6_VARIANTS[variant]
    extra = ["--send-alignment", s.w2_send_alignment]
    if histograms is not None:
        extra += ["--metrics-histograms", histograms]
    argv = client_argv("wsmon", node.url, s.w6_targets, s.w6_interval, *extra)
    plan = Plan("wsmon", s.w6_targets, s.warmup, s.empty_window, "hooked",
                rss_before_scrape=True)  # fmt: skip
    name = f"w6-wsmon-{variant}"
    res, child = await measure_client(run.launcher, name, argv, node, plan, keep=True)
    assert child is not None
    workdir = run.log_dir / f"prometheus-{variant}"
    try:
        prom = promserver.PromServer(
            workdir, int(res["metrics_port"]), s.w6_scrape_interval, native
        )
        async with prom:
            run.launcher.commands.append(shlex.join(["prometheus", *prom.argv[1:]]))
            say(f"{name}: Prometheus {'with' if native else 'without'} native histograms "
                f"on port {prom.port}, ingesting for {s.w6_ingest:g}s")  # fmt: skip
            got = await _ingest(prom, child, s.w6_ingest)
    finally:
        await child.finish()
    got["metrics_histograms"] = histograms  # None: no `metrics:` block
    got["native_histograms_feature"] = native
    got["prometheus_argv"] = prom.argv[1:]
    got["daemon"] |= {
        "rss_before_scrape_kb": res["rss_before_scrape_kb"],
        "connect_s": res["connect_s"],
        "receive_path": res["receive_path"],
    }
    return got


async def _ingest(prom: promserver.PromServer, child: Child, seconds: float) -> dict[str, Any]:
    """Let Prometheus scrape the daemon for `seconds`; then what it holds and used, and what
    the daemon used meanwhile."""
    daemon, server = ProcStat(child.pid), ProcStat(prom.pid)
    d0, p0, t0 = daemon.cpu_s(), sum(server.user_system_s()), time.monotonic()
    await asyncio.sleep(seconds)
    d1, p1, t1 = daemon.cpu_s(), sum(server.user_system_s()), time.monotonic()
    wall = t1 - t0
    x = await prom.metrics()
    own = {name: x.total(name) for name in PROM_OWN}
    queries = prom_queries(f"{max(1, round(wall))}s")
    answers = {key: await prom.value(expr) for key, expr in queries.items()}
    return {
        "ingest_s": wall,
        "own": own,
        "queries": queries,
        "answers": answers,
        "prometheus_cpu_s": p1 - p0,
        "prometheus_cpu_pct_of_core": 100.0 * (p1 - p0) / wall,
        "prometheus_peak_rss_kb": server.status()["VmHWM"],
        "daemon": {
            "cpu_s": d1 - d0,
            "cpu_pct_of_core": 100.0 * (d1 - d0) / wall,
            "rss_end_kb": _rss(child),
        },
    }


# --- workload 7: streams --------------------------------------------------------------


async def workload7(run: Run) -> None:
    """Subscription streams: the floor and wsmon in turn (see `bench.streams`)."""
    run.results["w7"] = await streams.measure(run.sizes, run.launcher, run.log_dir)


# --- workload 8: a fleet of shards --------------------------------------------------------


async def workload8(run: Run) -> None:
    """A fleet of `wsmon run --shard I/N` processes against a single daemon (see
    `bench.fleet`)."""
    run.results["w8"] = await fleet.measure(run.sizes, run.launcher, run.log_dir)


# --- profile ----------------------------------------------------------------------------


async def profile_wsmon(run: Run) -> None:
    """py-spy (sampling, non-blocking) on a wsmon child at workload 1's size."""
    s = run.sizes
    seconds = s.profile_s
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        run.results["profile"] = {"note": "py-spy not installed; no profile", "top": []}
        return
    say(f"profile: py-spy on wsmon, {s.w1_targets} targets, {seconds:g}s")
    raw = run.log_dir / "pyspy.txt"
    async with nodeserver.NodeServer() as node:
        argv = client_argv("wsmon", node.url, s.w1_targets, s.w1_interval)
        child = await run.launcher.start("profile-wsmon", argv)
        try:
            await child.expect("started", 120.0)
            await node.wait_open(s.w1_targets, 300.0)
            await asyncio.sleep(s.warmup)
            cmd = [spy, "record", "--pid", str(child.pid), "--duration", f"{seconds:g}",
                   "--rate", "250", "--nonblocking", "--function", "--format", "raw",
                   "-o", str(raw)]  # fmt: skip
            run.launcher.commands.append(shlex.join(["py-spy", *cmd[1:]]))
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
            _, err = await proc.communicate()
        finally:
            await child.finish()
    if proc.returncode != 0 or not raw.exists():
        note = f"py-spy failed: {err.decode(errors='replace')[:500]}"
        run.results["profile"] = {"note": note, "top": []}
        return
    run.results["profile"] = aggregate_pyspy(raw.read_text(), seconds)


def aggregate_pyspy(text: str, seconds: float, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_n: dict[str, int] = {}
    total_n: dict[str, int] = {}
    samples = idle = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [re.sub(r" \((?:/[^)]*/)?([^/)]+)\)", r" (\1)", f) for f in stack.split(";")]
        leaf = frames[-1]
        if "selectors.py" in leaf and ("select" in leaf or "poll" in leaf):
            idle += n
            continue
        self_n[leaf] = self_n.get(leaf, 0) + n
        for f in set(frames):
            total_n[f] = total_n.get(f, 0) + n
    busy = max(1, samples - idle)
    rows = sorted(self_n.items(), key=lambda kv: -kv[1])
    out = [(fn, 100.0 * n / busy, 100.0 * total_n[fn] / busy) for fn, n in rows][:top]
    note = (
        f"py-spy 250 Hz, non-blocking, {seconds:g} s, {samples} samples of which {idle} idle "
        f"in the selector; shares below are of the {busy} non-idle samples (self: the "
        "function itself; total: with what it calls)."
    )
    return {"note": note, "top": out, "samples": samples, "idle": idle}
