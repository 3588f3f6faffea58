"""Soak: thousands of connect/drop cycles against one daemon, looking for leaks.

One process, one event loop: a ``WSTestServer`` (the tests' misbehaving WebSocket server) and a
wsmon ``Daemon`` with a few targets pointing at it, reconnect delays of a few milliseconds and
probes every few milliseconds (a JSON ``ping`` and a protocol ping frame), so drops also land
while probes are in flight.  The server drops every open connection in turn by TCP RST
(``abort_all``), TCP FIN without a close frame (``fin_all``) and a 1001 close frame
(``close_all(1001)``), then waits until every target is back, until it has accepted
``--cycles`` connections in all.

Measured:

* resident memory (``VmRSS``, after ``gc.collect()``) after a warm-up of 10 % of the cycles
  and at the end; the growth between the two must stay under 5 %;
* ``len(asyncio.all_tasks())`` and the number of open file descriptors once the daemon is
  connected, before cycling (baseline), and after the last reconnect (end): they must be equal
  (the end reading is retried for a few seconds so that a connection still closing can finish,
  but the values must match exactly);
* truth: ``wsmon_reconnects_total`` summed over targets equals the connections the server
  accepted minus the number of targets, ``wsmon_disconnects_total`` summed equals the drops
  (and per kind: 1001/peer for close frames, 1006/network for RST and FIN),
  ``wsmon_connect_attempts_total`` equals the upgrade requests the server saw;
* wall time and cycles per second.

Run from the repository root::

    python -m bench.soak --cycles 10000 [--targets 3] [--json]

Exit status 0 when every check holds, 1 otherwise.  The daemon logs at level info into a sink
that counts lines and keeps nothing, so log buffering cannot pass for a leak.  The test server
records truth in lists that grow with every request; the soak tallies and empties them after
every round (that bookkeeping is the harness's, not the daemon's).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from prometheus_client import CollectorRegistry

from monitor import config as config_mod
from monitor.app import Daemon
from monitor.log import Logging

from .common import DiscardingStream

_TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"
if str(_TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(_TESTS_DIR))

if TYPE_CHECKING:  # mypy, run from the repository root, finds it as a namespace package
    from tests.wsserver import WSTestServer
else:  # at run time it is the same module the tests import (tests/ is on sys.path)
    from wsserver import WSTestServer

__all__ = ["DROP_KINDS", "SoakError", "SoakResult", "main", "run_soak"]

DROP_KINDS = ("abort", "fin", "close_1001")
MAX_RSS_GROWTH_PCT = 5.0
_POLL = 0.001  # seconds between checks while waiting for the targets to come back


class SoakError(Exception):
    """The soak could not go on (a target did not come back in time)."""


@dataclass
class SoakResult:
    """Everything one soak run measured; `failures` is empty when every check held."""

    cycles_requested: int
    targets: int
    connections: int = 0  # upgrades the server accepted, initial connections included
    rounds: int = 0
    drops: int = 0
    drops_by_kind: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    cycles_per_s: float = 0.0
    # memory (kB, VmRSS after gc.collect())
    rss_baseline_kb: int = 0
    rss_warmup_kb: int = 0
    rss_end_kb: int = 0
    rss_growth_pct: float = 0.0
    warmup_connections: int = 0
    rss_samples: list[tuple[int, int]] = field(default_factory=list)  # (connections, kB)
    gc_objects_warmup: int = 0
    gc_objects_end: int = 0
    # tasks and file descriptors
    tasks_baseline: int = 0
    tasks_end: int = 0
    fds_baseline: int = 0
    fds_end: int = 0
    settle_s: float = 0.0
    tasks_diff: dict[str, int] = field(default_factory=dict)  # end minus baseline, by coroutine
    fds_diff: dict[str, int] = field(default_factory=dict)  # end minus baseline, by kind
    tasks_before_start: int = 0
    tasks_after_stop: int = 0
    fds_before_start: int = 0
    fds_after_stop: int = 0
    # truth: daemon metrics against what the server saw
    reconnects_total: int = 0
    disconnects_total: int = 0
    disconnects_by: dict[str, int] = field(default_factory=dict)  # "code/origin" -> count
    connect_attempts_total: int = 0
    connect_failures_total: int = 0
    server_http_requests: int = 0
    server_close_frames: dict[str, int] = field(default_factory=dict)  # client's close codes
    server_requests: int = 0
    server_reply_errors: int = 0
    # probes (by probe; errors by probe/reason); informational: a probe sent just before a
    # drop may never reach the server, and its reply may never come back
    probes_sent: dict[str, int] = field(default_factory=dict)
    probes_answered: dict[str, int] = field(default_factory=dict)
    probe_timeouts: dict[str, int] = field(default_factory=dict)
    probe_errors: dict[str, int] = field(default_factory=dict)
    server_pings_received: int = 0
    # noise that would point at a bug
    log_lines: int = 0
    loop_errors: list[str] = field(default_factory=list)
    resource_warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# --- measurements -------------------------------------------------------------------------


def rss_kb() -> int:
    """Resident set size of this process in kB (VmRSS of /proc/self/status)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def fd_count() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def fd_census() -> Counter[str]:
    """Open file descriptors by kind (socket, pipe, anon_inode:[eventpoll], file)."""
    kinds: Counter[str] = Counter()
    for name in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the descriptor listdir itself used
        kind = link.split(":", 1)[0] if ":" in link and not link.startswith("/") else "file"
        if link.startswith("anon_inode:"):
            kind = link
        kinds[kind] += 1
    return kinds


def task_census() -> Counter[str]:
    """Pending asyncio tasks by the qualified name of their coroutine."""
    names: Counter[str] = Counter()
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        names[getattr(coro, "__qualname__", repr(coro))] += 1
    return names


def _diff(end: Counter[str], base: Counter[str]) -> dict[str, int]:
    keys = set(end) | set(base)
    return {k: end[k] - base[k] for k in sorted(keys) if end[k] != base[k]}


def _memory() -> tuple[int, int]:
    """(VmRSS kB, live objects tracked by the collector), after a full collection."""
    gc.collect()
    return rss_kb(), len(gc.get_objects())


class _Metrics:
    """One pass over the daemon's registry, summed over targets the ways the soak needs."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.samples = [s for family in registry.collect() for s in family.samples]
        self.sums: Counter[str] = Counter()
        for s in self.samples:
            self.sums[s.name] += int(s.value)

    def __getitem__(self, name: str) -> int:
        return self.sums[name]

    def by(self, name: str, *labels: str) -> dict[str, int]:
        """Non-zero sums of `name` by the given labels, keys joined with '/'."""
        out: Counter[str] = Counter()
        for s in self.samples:
            if s.name == name and s.value:
                out["/".join(s.labels[k] for k in labels)] += int(s.value)
        return dict(sorted(out.items()))


# --- set-up -------------------------------------------------------------------------------


def _target(name: str, url: str, probe_interval: float) -> dict[str, Any]:
    ms = probe_interval * 1000
    return {
        "name": name,
        "url": url,
        "connect_timeout": "2s",
        "close_timeout": "500ms",
        "reconnect": {"initial_delay": "1ms", "max_delay": "5ms", "reset_after": "30s"},
        # Late replies must not make the daemon close connections itself: every disconnect
        # is then one the server caused, which is what the truth check counts.
        "dead_after_timeouts": 1_000_000,
        "probes": [
            {"name": "ping", "send": {"ping": 1}, "expect": {"msg_type": "ping"},
             "interval": f"{ms:g}ms", "timeout": f"{ms * 0.8:g}ms"},
            {"name": "frame", "kind": "ws-ping",
             "interval": f"{ms * 1.3:g}ms", "timeout": f"{ms:g}ms"},
        ],
    }  # fmt: skip


def _daemon(
    url: str, targets: int, probe_interval: float, seed: int
) -> tuple[Daemon, DiscardingStream]:
    doc = {
        "listen": "127.0.0.1:0",
        "targets": [_target(f"t{i}", url, probe_interval) for i in range(targets)],
    }
    cfg = config_mod.loads(yaml.safe_dump(doc), source="<soak>")
    sink = DiscardingStream()
    logging = Logging("json", "info", stream=sink, secrets=cfg.secrets)
    return Daemon(cfg, logging, rng=random.Random(seed), stop_timeout=2.0), sink


# --- the soak -----------------------------------------------------------------------------


async def run_soak(
    cycles: int = 10_000,
    targets: int = 3,
    *,
    seed: int = 1,
    warmup_fraction: float = 0.1,
    probe_interval: float = 0.01,
    max_rss_growth_pct: float | None = MAX_RSS_GROWTH_PCT,
    settle_timeout: float = 5.0,
    round_timeout: float = 10.0,
    samples: int = 10,
    progress: Callable[[str], None] | None = None,
) -> SoakResult:
    """Drive connect/drop cycles until the server has accepted `cycles` connections.

    Returns the figures and the failed checks (`result.failures`); raises SoakError only if
    a target does not come back within `round_timeout`.  With `max_rss_growth_pct=None` the
    memory growth is measured but not judged (a short run is too short for a 5 % bound).
    """
    if targets < 1 or cycles <= targets:
        raise ValueError("need at least one target and more cycles than targets")
    say = progress or (lambda _: None)
    loop = asyncio.get_running_loop()
    res = SoakResult(cycles_requested=cycles, targets=targets)
    res.drops_by_kind = dict.fromkeys(DROP_KINDS, 0)
    close_frames: Counter[str] = Counter()

    old_handler = loop.get_exception_handler()

    def on_loop_error(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        res.loop_errors.append(str(context.get("message") or context.get("exception")))
        if old_handler is not None:
            old_handler(lp, context)
        else:
            lp.default_exception_handler(context)

    gc.collect()
    res.tasks_before_start = len(asyncio.all_tasks())
    res.fds_before_start = fd_count()
    loop.set_exception_handler(on_loop_error)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        server = WSTestServer()
        await server.start()
        daemon, sink = _daemon(server.url, targets, probe_interval, seed)
        try:
            await daemon.start()

            def tally_server() -> None:
                """Fold the server's growing truth lists into counters and empty them."""
                close_frames.update(str(c) for c in server.close_frames)
                server.close_frames.clear()
                res.server_requests += len(server.requests)
                server.requests.clear()
                server.accepted_at.clear()
                res.server_reply_errors += len(server.reply_errors)
                server.reply_errors.clear()

            async def all_back(expected: int, limit: float) -> None:
                """Wait until the server holds one connection per target, has accepted
                `expected` in all, and the daemon has seen every one of them open."""
                deadline = loop.time() + limit
                while True:
                    if server.open_connections == targets and server.connections >= expected:
                        m = _Metrics(daemon.registry)
                        opened = m["wsmon_connect_duration_seconds_count"]
                        if opened == server.connections and m["wsmon_connected"] == targets:
                            return
                    if loop.time() > deadline:
                        raise SoakError(
                            f"targets not back within {limit}s: server open "
                            f"{server.open_connections}/{targets}, accepted "
                            f"{server.connections} (expected {expected})"
                        )
                    await asyncio.sleep(_POLL)

            await all_back(targets, round_timeout)
            await _steady(loop)
            res.tasks_baseline = len(asyncio.all_tasks())
            res.fds_baseline = fd_count()
            tasks_base, fds_base = task_census(), fd_census()
            res.rss_baseline_kb, _ = _memory()
            say(
                f"baseline: {targets} targets connected, tasks {res.tasks_baseline}, "
                f"fds {res.fds_baseline}, rss {res.rss_baseline_kb} kB"
            )

            warm_at = max(targets + 1, int(cycles * warmup_fraction))
            sample_every = max(1, cycles // max(1, samples))
            next_sample = sample_every
            started = time.perf_counter()
            while server.connections < cycles:
                kind = DROP_KINDS[res.rounds % len(DROP_KINDS)]
                expected = server.connections + server.open_connections
                dropped = server.open_connections
                if kind == "abort":
                    await server.abort_all()
                elif kind == "fin":
                    await server.fin_all()
                else:
                    await server.close_all(1001)
                res.drops += dropped
                res.drops_by_kind[kind] += dropped
                res.rounds += 1
                await all_back(expected, round_timeout)
                tally_server()
                if not res.rss_warmup_kb and server.connections >= warm_at:
                    res.rss_warmup_kb, res.gc_objects_warmup = _memory()
                    res.warmup_connections = server.connections
                    res.rss_samples.append((server.connections, res.rss_warmup_kb))
                    say(f"warm-up done at {server.connections}: rss {res.rss_warmup_kb} kB")
                elif server.connections >= next_sample:
                    kb, _ = _memory()
                    res.rss_samples.append((server.connections, kb))
                    say(f"{server.connections} connections: rss {kb} kB")
                while next_sample <= server.connections:
                    next_sample += sample_every
            res.wall_s = time.perf_counter() - started

            # The end: every target reconnected; wait (bounded) for stragglers to finish.
            settle_started = loop.time()
            while True:
                res.tasks_end = len(asyncio.all_tasks())
                res.fds_end = fd_count()
                back = res.tasks_end == res.tasks_baseline and res.fds_end == res.fds_baseline
                if back or loop.time() - settle_started > settle_timeout:
                    break
                await asyncio.sleep(0.02)
            res.settle_s = loop.time() - settle_started
            res.tasks_diff = _diff(task_census(), tasks_base)
            res.fds_diff = _diff(fd_census(), fds_base)
            res.rss_end_kb, res.gc_objects_end = _memory()
            tally_server()

            m = _Metrics(daemon.registry)
            res.connections = server.connections
            res.server_http_requests = server.http_requests
            res.reconnects_total = m["wsmon_reconnects_total"]
            res.disconnects_total = m["wsmon_disconnects_total"]
            res.disconnects_by = m.by("wsmon_disconnects_total", "code", "origin")
            res.connect_attempts_total = m["wsmon_connect_attempts_total"]
            res.connect_failures_total = m["wsmon_connect_failures_total"]
            res.probes_sent = m.by("wsmon_probes_sent_total", "probe")
            res.probes_answered = m.by("wsmon_probe_rtt_seconds_count", "probe")
            res.probe_timeouts = m.by("wsmon_probe_timeouts_total", "probe")
            res.probe_errors = m.by("wsmon_probe_errors_total", "probe", "reason")
            res.server_pings_received = server.pings_received
        finally:
            await daemon.stop()
            await server.stop()
            res.log_lines = sink.lines
            loop.set_exception_handler(old_handler)
        # Shutdown must hand back everything start() took (bounded wait, exact match).
        deadline = loop.time() + settle_timeout
        while True:
            res.tasks_after_stop = len(asyncio.all_tasks())
            res.fds_after_stop = fd_count()
            if (
                res.tasks_after_stop == res.tasks_before_start
                and res.fds_after_stop == res.fds_before_start
            ) or loop.time() > deadline:
                break
            await asyncio.sleep(0.02)
        gc.collect()  # unclosed transports found now still warn inside catch_warnings
        res.resource_warnings = [
            str(w.message) for w in caught if issubclass(w.category, ResourceWarning)
        ]
    res.server_close_frames = dict(sorted(close_frames.items()))
    res.cycles_per_s = (res.connections - targets) / res.wall_s if res.wall_s > 0 else 0.0
    if res.rss_warmup_kb:
        res.rss_growth_pct = 100.0 * (res.rss_end_kb - res.rss_warmup_kb) / res.rss_warmup_kb
    res.failures = list(_judge(res, max_rss_growth_pct))
    return res


async def _steady(loop: asyncio.AbstractEventLoop) -> None:
    """Wait until the task and fd counts read the same three times 20 ms apart (max 1 s),
    so the baseline is not taken while a connection's last callbacks are still running."""
    deadline = loop.time() + 1.0
    seen: list[tuple[int, int]] = []
    while loop.time() < deadline:
        seen = [*seen[-2:], (len(asyncio.all_tasks()), fd_count())]
        if len(seen) == 3 and len(set(seen)) == 1:
            return
        await asyncio.sleep(0.02)


def _judge(r: SoakResult, max_rss_growth_pct: float | None) -> Iterable[str]:
    """Every check that failed, as one line each."""
    if max_rss_growth_pct is not None:
        if not r.rss_warmup_kb:
            yield "no warm-up memory reading"
        elif r.rss_growth_pct >= max_rss_growth_pct:
            yield (
                f"RSS grew {r.rss_growth_pct:.2f}% after warm-up "
                f"({r.rss_warmup_kb} -> {r.rss_end_kb} kB), limit {max_rss_growth_pct}%"
            )
    if r.tasks_end != r.tasks_baseline:
        yield f"tasks {r.tasks_baseline} -> {r.tasks_end} (by coroutine: {r.tasks_diff})"
    if r.fds_end != r.fds_baseline:
        yield f"fds {r.fds_baseline} -> {r.fds_end} (by kind: {r.fds_diff})"
    if r.connections < r.cycles_requested:
        yield f"only {r.connections} of {r.cycles_requested} connections"
    if r.reconnects_total != r.connections - r.targets:
        yield (
            f"reconnects_total {r.reconnects_total} != server connections {r.connections} "
            f"- targets {r.targets}"
        )
    if r.disconnects_total != r.drops:
        yield f"disconnects_total {r.disconnects_total} != drops {r.drops}"
    by_kind = {
        "1001/peer": r.drops_by_kind.get("close_1001", 0),
        "1006/network": r.drops_by_kind.get("abort", 0) + r.drops_by_kind.get("fin", 0),
    }
    if r.disconnects_by != {k: v for k, v in by_kind.items() if v}:
        yield f"disconnects by code/origin {r.disconnects_by} != expected {by_kind}"
    if r.connect_attempts_total != r.server_http_requests:
        yield (
            f"connect_attempts_total {r.connect_attempts_total} != upgrade requests "
            f"{r.server_http_requests}"
        )
    if r.connect_failures_total:
        yield f"{r.connect_failures_total} failed handshakes against a healthy server"
    echoed = r.server_close_frames.get("1001", 0)
    if echoed != r.drops_by_kind.get("close_1001", 0) or len(r.server_close_frames) > 1:
        yield f"close frames the server got back {r.server_close_frames}, expected only 1001"
    if r.tasks_after_stop != r.tasks_before_start or r.fds_after_stop != r.fds_before_start:
        yield (
            f"after stop: tasks {r.tasks_before_start} -> {r.tasks_after_stop}, "
            f"fds {r.fds_before_start} -> {r.fds_after_stop}"
        )
    if r.loop_errors:
        yield f"{len(r.loop_errors)} event loop errors, first: {r.loop_errors[0]}"
    if r.resource_warnings:
        yield f"{len(r.resource_warnings)} ResourceWarnings, first: {r.resource_warnings[0]}"


# --- command line -------------------------------------------------------------------------


def summary(r: SoakResult) -> str:
    """The human-readable report of one run."""
    kinds = ", ".join(f"{k} {v}" for k, v in r.drops_by_kind.items())
    lines = [
        f"soak: {r.connections} connections accepted ({r.cycles_requested} requested), "
        f"{r.targets} targets, {r.rounds} rounds, {r.drops} drops ({kinds})",
        f"wall time {r.wall_s:.1f} s, {r.cycles_per_s:.0f} cycles/s",
        f"RSS: baseline {r.rss_baseline_kb} kB, after warm-up ({r.warmup_connections} "
        f"connections) {r.rss_warmup_kb} kB, end {r.rss_end_kb} kB, "
        f"growth after warm-up {r.rss_growth_pct:+.2f}%",
        "RSS samples (connections: kB): " + ", ".join(f"{c}: {kb}" for c, kb in r.rss_samples),
        f"gc-tracked objects: after warm-up {r.gc_objects_warmup}, end {r.gc_objects_end}",
        f"tasks: baseline {r.tasks_baseline}, end {r.tasks_end}; fds: baseline "
        f"{r.fds_baseline}, end {r.fds_end} (settled after {r.settle_s:.2f} s)",
        f"after stop: tasks {r.tasks_before_start} -> {r.tasks_after_stop}, "
        f"fds {r.fds_before_start} -> {r.fds_after_stop}",
        f"truth: reconnects_total {r.reconnects_total} (server connections - targets = "
        f"{r.connections - r.targets}), disconnects_total {r.disconnects_total} "
        f"(drops {r.drops}), by code/origin {r.disconnects_by}",
        f"handshakes: attempts {r.connect_attempts_total}, server upgrade requests "
        f"{r.server_http_requests}, failures {r.connect_failures_total}; close frames "
        f"echoed to the server {r.server_close_frames}",
        f"probes: sent {r.probes_sent}, answered {r.probes_answered}, timeouts "
        f"{r.probe_timeouts}, errors {r.probe_errors}; server got {r.server_requests} "
        f"requests, {r.server_pings_received} ping frames, {r.server_reply_errors} reply errors",
        f"log lines written (discarded) {r.log_lines}; loop errors {len(r.loop_errors)}; "
        f"ResourceWarnings {len(r.resource_warnings)}",
    ]
    lines += [f"FAIL: {f}" for f in r.failures] or ["PASS"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description="wsmon connect/drop soak (leak check)"
    )
    parser.add_argument("--cycles", type=int, default=10_000, help="connections to accept")
    parser.add_argument("--targets", type=int, default=3, help="targets of the daemon")
    parser.add_argument("--seed", type=int, default=1, help="seed of the daemon's jitter")
    parser.add_argument(
        "--probe-interval-ms", type=float, default=10.0, help="interval of the JSON probe"
    )
    parser.add_argument(
        "--max-rss-growth", type=float, default=MAX_RSS_GROWTH_PCT, help="percent, after warm-up"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        result = asyncio.run(
            run_soak(
                args.cycles,
                args.targets,
                seed=args.seed,
                probe_interval=args.probe_interval_ms / 1000,
                max_rss_growth_pct=args.max_rss_growth,
                progress=None if args.json else progress,
            )
        )
    except SoakError as exc:
        print(f"soak aborted: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(summary(result))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
