"""The measured clients, one per child process: ``python -m bench.clients KIND [options]``.

KIND is one of

* ``floor``: a minimal aiohttp client loop (one ClientSession with ``TCPConnector(limit=0)``,
  one WebSocket per target; per connection: send a JSON ping with a ``req_id``, await the
  reply, record the RTT with ``time.perf_counter``, sleep to the next interval);
* ``websockets``: what a user writes instead, in the style of the ``websockets`` library's
  examples (one task per connection, ``json.dumps`` / ``await ws.recv()`` in a loop,
  ``await asyncio.sleep(interval)``);
* ``wsmon``: the real ``monitor.app.Daemon`` run in-process from a config with N targets (one
  ``ping`` message probe each, correlation ``req_id``, the default handshake limit of 50),
  logging into a discarding sink.  Bench-only instrumentation, installed in this process
  only (monitor/ is not changed): ``Session._answered`` is wrapped to record each answered
  probe's RTT; ``Session.run`` to count open sessions; optionally (``--send-lag``)
  ``ProbeRun.fire`` and the WebSocket's ``send_str`` / ``ping`` to record each probe's send
  lag (actual minus scheduled send; see ``WsmonInstrumentation``).

The child connects every target, waits ``--warmup`` seconds, then measures for ``--window``
seconds: CPU (``getrusage``, all threads), round trips answered in the window and their RTT.
It prints JSON lines on stdout: ``connected``, ``window_start``, ``result``.  With
``--commands`` it then obeys lines on stdin (``status``, ``rss``, ``sensor_start``,
``sensor_stop``, ``stop``; each answered with one JSON line) before it stops, so that the
harness can drop connections and scrape ``/metrics`` while a 1 ms event-loop lag sensor
runs in here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import gc
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .common import (
    DiscardingStream,
    cpu_seconds,
    emit,
    peak_rss_kb,
    raise_nofile,
    rss_kb,
    rss_kb_after_gc,
    summary,
    usage,
)

CONNECT_CONCURRENCY = 50  # the baselines open connections like wsmon: 50 handshakes at once


class Recorder:
    """RTTs and send lags, kept only while `on` (the measurement window)."""

    def __init__(self) -> None:
        self.on = False
        self.rtts: list[float] = []
        self.lags: list[float] = []
        self.window_start = 0.0

    def rtt(self, seconds: float) -> None:
        if self.on:
            self.rtts.append(seconds)

    def lag(self, seconds: float) -> None:
        if self.on:
            self.lags.append(seconds)


class LagSensor:
    """Sleeps 1 ms in a loop and records how late it wakes up (event-loop stalls).

    Keeps the overall maximum and every overshoot above `keep_above` seconds with its
    CLOCK_MONOTONIC interval, so the harness can tell stalls during its scrapes from others.
    """

    def __init__(self, period: float = 0.001, keep_above: float = 0.001) -> None:
        self.period = period
        self.keep_above = keep_above
        self.max = 0.0
        self.samples = 0
        self.events: list[tuple[float, float, float]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bench-lag-sensor")

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return {
            "max_ms": self.max * 1e3,
            "samples": self.samples,
            "keep_above_ms": self.keep_above * 1e3,
            "events": [(a, b, over * 1e3) for a, b, over in self.events[-20_000:]],
        }

    async def _run(self) -> None:
        clock = time.monotonic
        while True:
            before = clock()
            await asyncio.sleep(self.period)
            after = clock()
            over = after - before - self.period
            self.samples += 1
            if over > self.max:
                self.max = over
            if over > self.keep_above:
                self.events.append((before, after, over))


class GcWatch:
    """Garbage-collector pauses (``gc.callbacks``): per generation count, total and max in
    the current window, and every pause above `keep_above` seconds with its CLOCK_MONOTONIC
    interval (to tell a GC pause from a scrape's stall)."""

    def __init__(self, keep_above: float = 0.001) -> None:
        self.keep_above = keep_above
        self.events: list[tuple[float, float, int, float]] = []
        self._started = 0.0
        self.reset()
        gc.callbacks.append(self._callback)

    def reset(self) -> None:
        self.count = [0, 0, 0]
        self.total = [0.0, 0.0, 0.0]
        self.max = [0.0, 0.0, 0.0]
        self.collected = 0  # unreachable objects the collector freed (cyclic garbage)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        now = time.monotonic()
        if phase == "start":
            self._started = now
            return
        gen = int(info.get("generation", 2))
        spent = now - self._started
        self.count[gen] += 1
        self.collected += int(info.get("collected", 0))
        self.total[gen] += spent
        if spent > self.max[gen]:
            self.max[gen] = spent
        if spent > self.keep_above and len(self.events) < 100_000:
            self.events.append((self._started, now, gen, spent * 1e3))

    def figures(self) -> dict[str, Any]:
        return {
            "collections": list(self.count),
            "total_ms": [t * 1e3 for t in self.total],
            "max_ms": [m * 1e3 for m in self.max],
            "collected": self.collected,
        }

    def events_since(self, t: float) -> list[tuple[float, float, int, float]]:
        return [e for e in self.events if e[1] >= t]


# --- floor: a minimal aiohttp loop ------------------------------------------------------


class FloorClient:
    """One aiohttp ClientSession, one WebSocket and one loop task per target."""

    def __init__(self, args: argparse.Namespace, rec: Recorder) -> None:
        self.args = args
        self.rec = rec
        self.tasks: list[asyncio.Task[None]] = []
        self.open = 0
        self.session: Any = None
        self.sockets: list[Any] = []

    async def start(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        slots = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def connect() -> Any:
            async with slots:
                return await self.session.ws_connect(self.args.url)

        self.sockets = list(await asyncio.gather(*(connect() for _ in range(self.args.targets))))
        self.open = len(self.sockets)
        rng = random.Random(self.args.seed)
        interval = self.args.interval
        self.tasks = [
            asyncio.create_task(self._loop(ws, rng.uniform(0.0, interval))) for ws in self.sockets
        ]

    async def _loop(self, ws: Any, offset: float) -> None:
        from aiohttp import WSMsgType

        loop = asyncio.get_running_loop()
        rec = self.rec
        interval = self.args.interval
        perf = time.perf_counter
        due = loop.time() + offset
        req_id = 0
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            rec.lag(loop.time() - due)
            req_id += 1
            sent = perf()
            await ws.send_str(json.dumps({"ping": 1, "req_id": req_id}))
            msg = await ws.receive()
            got = perf()
            if msg.type is not WSMsgType.TEXT:
                return
            if json.loads(msg.data).get("req_id") == req_id:
                rec.rtt(got - sent)
            due += interval

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)
        await self.session.close()


# --- what a user writes instead: the websockets library ---------------------------------


class WebsocketsClient:
    """The classic ``websockets`` example loop, one task per connection."""

    def __init__(self, args: argparse.Namespace, rec: Recorder) -> None:
        self.args = args
        self.rec = rec
        self.tasks: list[asyncio.Task[None]] = []
        self.open = 0
        self._all_open = asyncio.Event()

    async def start(self) -> None:
        from websockets.asyncio.client import connect

        slots = asyncio.Semaphore(CONNECT_CONCURRENCY)
        rng = random.Random(self.args.seed)
        url = self.args.url
        interval = self.args.interval
        rec = self.rec

        async def client(offset: float) -> None:
            async with slots:
                ws = await connect(url)
            self.open += 1
            if self.open == self.args.targets:
                self._all_open.set()
            async with ws:
                await asyncio.sleep(offset)
                req_id = 0
                while True:
                    req_id += 1
                    sent = time.perf_counter()
                    await ws.send(json.dumps({"ping": 1, "req_id": req_id}))
                    reply = json.loads(await ws.recv())
                    got = time.perf_counter()
                    if reply.get("req_id") == req_id:
                        rec.rtt(got - sent)
                    await asyncio.sleep(interval)

        self.tasks = [
            asyncio.create_task(client(rng.uniform(0.0, interval)))
            for _ in range(self.args.targets)
        ]
        waiter = asyncio.create_task(self._all_open.wait())
        done, _ = await asyncio.wait([waiter, *self.tasks], return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            failed = next(t for t in done if t is not waiter)
            failed.result()  # raises the connection error
            raise RuntimeError("a websockets client task ended early")

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# --- wsmon --------------------------------------------------------------------------------


class WsmonInstrumentation:
    """Wraps a few methods in this (bench) process only; monitor/ itself is not changed.

    * ``Session._answered(pm, rtt)``: every answered probe's RTT;
    * ``Session.run``: sessions open now (all connected when it equals the targets);
    * send lag (``--send-lag``): the clock calls ``ProbeRun.fire`` for each scheduled send;
      a wrapper reads the time the send was scheduled for (``ProbeRun.due``) before the
      original runs, and the frame's write called from inside that call
      (``monitor.session.write_frame`` when it writes, else
      ``ClientWebSocketResponse.send_frame``) takes the loop's time when the frame is
      handed to aiohttp: the lag is the difference. Sends skipped while an earlier one
      waits for the socket buffer, or that fail, are not seen.
    """

    def __init__(self, rec: Recorder, send_lag: bool) -> None:
        self.rec = rec
        self.active = 0
        self.sessions = 0
        self.send_lag = send_lag
        self.lag_sends_seen = 0
        self._due: float | None = None  # set while a ProbeRun.fire runs

    def install(self) -> None:
        from monitor import session as session_mod

        Session = session_mod.Session
        needed: list[tuple[Any, str]] = [(Session, "_answered"), (Session, "run")]
        if self.send_lag:
            needed.append((getattr(session_mod, "ProbeRun", None), "fire"))
            needed.append((session_mod, "write_frame"))
        for owner, name in needed:
            if not callable(getattr(owner, name, None)):
                raise RuntimeError(
                    f"monitor.session: {getattr(owner, '__name__', owner)}.{name} is gone: "
                    "bench/clients.py's instrumentation needs updating"
                )
        rec = self.rec
        instr = self
        orig_answered = Session._answered
        orig_run = Session.run

        def _answered(self: Any, pm: Any, rtt: float) -> None:
            if rec.on:
                rec.rtts.append(rtt)
            orig_answered(self, pm, rtt)

        async def run(self: Any) -> Any:
            instr.active += 1
            instr.sessions += 1
            try:
                return await orig_run(self)
            finally:
                instr.active -= 1

        Session._answered = _answered  # type: ignore[method-assign]
        Session.run = run  # type: ignore[method-assign]
        if self.send_lag:
            self._install_send_lag(session_mod.ProbeRun)

    def _install_send_lag(self, probe_run_cls: Any) -> None:
        from aiohttp import ClientWebSocketResponse

        from monitor import session as session_mod

        rec = self.rec
        instr = self
        orig_fire = probe_run_cls.fire
        orig_write = session_mod.write_frame
        orig_send_frame = ClientWebSocketResponse.send_frame

        def fire(self: Any) -> None:
            instr._due = self.due
            try:
                orig_fire(self)
            finally:
                instr._due = None

        def sent(at: float) -> None:
            if instr._due is None:
                return
            rec.lag(at - instr._due)
            instr.lag_sends_seen += 1

        def write(writer: Any, payload: bytes, opcode: int) -> bool:
            at = asyncio.get_running_loop().time()
            written = orig_write(writer, payload, opcode)
            if written:  # else the send goes on through send_frame, which counts it
                sent(at)
            return written

        def send_frame(self: Any, *args: Any, **kwargs: Any) -> Any:
            sent(asyncio.get_running_loop().time())
            return orig_send_frame(self, *args, **kwargs)

        probe_run_cls.fire = fire
        session_mod.write_frame = write
        ClientWebSocketResponse.send_frame = send_frame  # type: ignore[method-assign]


def block_speedups() -> None:
    """Make uvloop and orjson unimportable in this process (as if not installed), so that
    the daemon runs on its stock path even where it would pick them up by itself."""
    for name in ("orjson", "uvloop"):
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]  # import now fails


def use_orjson() -> str:
    """orjson for the daemon's JSON: its own speed-up when it has one, else a bench shim."""
    try:
        import monitor.speedups as speedups  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        speedups = None
    if speedups is not None and getattr(speedups, "FAST_JSON", False):
        return "monitor.speedups (the daemon's own)"
    _inject_orjson()
    return "bench shim in monitor.probes"


def _inject_orjson() -> None:
    """Make monitor.probes (build_message, parse) use orjson instead of json."""
    import orjson

    import monitor.probes

    class _OrjsonAsJson:
        JSONDecodeError = orjson.JSONDecodeError  # a ValueError, like json's

        @staticmethod
        def dumps(obj: Any, **_: Any) -> str:  # orjson's output is already compact
            return orjson.dumps(obj).decode()

        @staticmethod
        def loads(text: str | bytes) -> Any:
            return orjson.loads(text)

    monitor.probes.json = _OrjsonAsJson  # type: ignore[assignment]


def wsmon_config_doc(
    url: str, targets: int, interval: float, send_alignment: str = "0"
) -> dict[str, Any]:
    """The daemon's config: `targets` targets, each with one `ping` message probe."""
    ms = interval * 1000
    return {
        "listen": "127.0.0.1:0",
        "send_alignment": send_alignment,
        "defaults": {
            "probes": [
                {"name": "ping", "send": {"ping": 1}, "expect": {"msg_type": "ping"},
                 "interval": f"{ms:g}ms", "timeout": f"{ms * 0.8:g}ms"},
            ],
        },
        "targets": [{"name": f"t{i}", "url": url} for i in range(max(1, targets))],
    }  # fmt: skip


class WsmonClient:
    """The real Daemon with N targets, instrumented as the module docstring says."""

    def __init__(self, args: argparse.Namespace, rec: Recorder) -> None:
        self.args = args
        self.rec = rec
        self.instr = WsmonInstrumentation(rec, send_lag=args.send_lag)
        self.daemon: Any = None
        self.sink = DiscardingStream()
        self.open = 0
        self.config_s = 0.0
        self.json_impl = ""

    async def start(self) -> None:
        from monitor import config as config_mod
        from monitor.app import Daemon
        from monitor.log import Logging

        self.instr.install()
        if self.args.orjson:
            self.json_impl = use_orjson()
        else:  # see main(): the stock run blocks orjson and uvloop
            self.json_impl = "json (orjson blocked)" if self.args.loop == "asyncio" else "json"
        t0 = time.perf_counter()
        doc = wsmon_config_doc(
            self.args.url, self.args.targets, self.args.interval, self.args.send_alignment
        )
        cfg = config_mod.loads(json.dumps(doc), source="<bench>")
        if self.args.targets == 0:  # the empty daemon (a config needs at least one target)
            cfg = dataclasses.replace(cfg, targets=())
        self.config_s = time.perf_counter() - t0
        logging = Logging("json", "info", stream=self.sink, secrets=cfg.secrets)
        self.daemon = Daemon(cfg, logging, rng=random.Random(self.args.seed), stop_timeout=5.0)
        await self.daemon.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.args.connect_timeout
        while self.instr.active < self.args.targets:
            if loop.time() > deadline:
                raise TimeoutError(
                    f"only {self.instr.active} of {self.args.targets} targets connected "
                    f"within {self.args.connect_timeout}s"
                )
            await asyncio.sleep(0.01)
        self.open = self.instr.active

    def extra(self) -> dict[str, Any]:
        return {
            "metrics_port": self.daemon.port,
            "active_sessions": self.instr.active,
            "sessions_started": self.instr.sessions,
            "log_lines": self.sink.lines,
            "config_s": self.config_s,
            "json_impl": self.json_impl,
            "send_alignment": self.args.send_alignment,
            "monitor_path": str(Path(sys.modules["monitor"].__file__ or "").parent),
        }

    async def stop(self) -> None:
        await self.daemon.stop()


# --- the child's main -------------------------------------------------------------------


async def _read_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def _commands(client: Any, gcw: GcWatch) -> None:
    sensor: LagSensor | None = None
    sensor_t = 0.0
    while True:
        line = (await _read_line()).strip()
        if line in ("", "stop"):
            if sensor is not None:
                await sensor.stop()
            return
        if line == "status":
            emit({"event": "status", "open": _open(client), "rss_kb": rss_kb(), **_extra(client)})
        elif line == "rss":
            emit({"event": "rss", "rss_kb": rss_kb_after_gc()})
        elif line == "sensor_start":
            sensor = LagSensor()
            sensor.start()
            sensor_t = time.monotonic()
            emit({"event": "sensor_started", "t": sensor_t})
        elif line == "sensor_stop":
            figures = await sensor.stop() if sensor is not None else {}
            sensor = None
            emit({"event": "sensor", **figures, "gc_events": gcw.events_since(sensor_t)})
        else:
            emit({"event": "error", "error": f"unknown command {line!r}"})


def _open(client: Any) -> int:
    if isinstance(client, WsmonClient):
        return client.instr.active
    return int(client.open)


def _extra(client: Any) -> dict[str, Any]:
    return client.extra() if isinstance(client, WsmonClient) else {}


async def run_child(args: argparse.Namespace) -> None:
    """Connect, warm up, measure one window, report; then obey commands if asked to."""
    raise_nofile()
    rec = Recorder()
    kinds: dict[str, Callable[[argparse.Namespace, Recorder], Any]] = {
        "floor": FloorClient,
        "websockets": WebsocketsClient,
        "wsmon": WsmonClient,
    }
    client = kinds[args.kind](args, rec)
    loop = asyncio.get_running_loop()
    rss_start = rss_kb()
    gcw = GcWatch()
    t0 = time.perf_counter()
    await client.start()
    connect_s = time.perf_counter() - t0
    emit(
        {
            "event": "connected",
            "kind": args.kind,
            "open": _open(client),
            "connect_s": connect_s,
            "loop": type(loop).__module__ + "." + type(loop).__name__,
            **_extra(client),
        }
    )
    await asyncio.sleep(args.warmup)
    profiler = cProfile.Profile() if args.cprofile else None
    used0 = usage()
    wall0 = time.perf_counter()
    rec.window_start = time.monotonic()
    gcw.reset()
    rec.on = True
    emit({"event": "window_start", "t": rec.window_start})
    if profiler is not None:
        profiler.enable()
    await asyncio.sleep(args.window)
    if profiler is not None:
        profiler.disable()
    rec.on = False
    gc_window = gcw.figures()
    gc_events = gcw.events_since(rec.window_start)
    used1 = usage()
    wall1 = time.perf_counter()
    rss = rss_kb_after_gc()
    cpu = used1.cpu - used0.cpu
    sleeps = used1.wakeups - used0.wakeups
    wall = wall1 - wall0
    round_trips = len(rec.rtts)
    delay = args.delay_ms / 1000.0
    result: dict[str, Any] = {
        "event": "result",
        "kind": args.kind,
        "targets": args.targets,
        "interval_s": args.interval,
        "open": _open(client),
        "loop": type(loop).__module__ + "." + type(loop).__name__,
        "orjson": bool(getattr(args, "orjson", False)),
        "connect_s": connect_s,
        "window_s": wall,
        "cpu_s": cpu,
        "cpu_pct_of_core": 100.0 * cpu / wall if wall > 0 else 0.0,
        "round_trips": round_trips,
        "round_trips_per_s": round_trips / wall if wall > 0 else 0.0,
        "cpu_us_per_round_trip": 1e6 * cpu / round_trips if round_trips else None,
        "user_us_per_round_trip": (
            1e6 * (used1.user - used0.user) / round_trips if round_trips else None
        ),
        "system_us_per_round_trip": (
            1e6 * (used1.system - used0.system) / round_trips if round_trips else None
        ),
        "wakeups": sleeps,
        "wakeups_per_round_trip": sleeps / round_trips if round_trips else None,
        "rtt_ms": summary(rec.rtts, 1e3),
        "rtt_excess_ms": summary([r - delay for r in rec.rtts], 1e3),
        "server_delay_ms": args.delay_ms,
        "send_lag_ms": summary(rec.lags, 1e3),
        "rss_kb_start": rss_start,
        "rss_kb": rss,
        "peak_rss_kb": peak_rss_kb(),
        "cpu_total_s": cpu_seconds(),
        "gc": gc_window,
        "gc_pauses_over_1ms": len(gc_events),
        "gc_longest_pauses_ms": sorted((e[3] for e in gc_events), reverse=True)[:10],
        **_extra(client),
    }
    if isinstance(client, WsmonClient):
        result["send_lag_sends_seen"] = client.instr.lag_sends_seen
    emit(result)
    if profiler is not None:
        profiler.dump_stats(args.cprofile)
    if args.commands:
        await _commands(client, gcw)
    if args.graceful:
        await client.stop()
    emit({"event": "exit"})
    if not args.graceful:
        # Nothing after the report is measured: leave without closing every connection
        # (the server sees resets), which saves seconds at 10,000 connections.
        sys.stdout.flush()
        os._exit(0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.clients", description=__doc__)
    p.add_argument("kind", choices=("floor", "websockets", "wsmon"))
    p.add_argument("--url", required=True, help="the node server's ws:// URL")
    p.add_argument("--targets", type=int, required=True, help="connections / wsmon targets")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between pings")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before the window")
    p.add_argument("--window", type=float, default=60.0, help="measurement window, seconds")
    p.add_argument("--delay-ms", type=float, default=0.0, help="the server's reply delay")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--orjson", action="store_true", help="wsmon: orjson in monitor.probes")
    p.add_argument("--send-lag", action="store_true", help="wsmon: record probe send lag")
    p.add_argument("--send-alignment", default="0", help="wsmon: the config's send_alignment")
    p.add_argument("--connect-timeout", type=float, default=120.0)
    p.add_argument("--commands", action="store_true", help="obey stdin commands at the end")
    p.add_argument("--cprofile", default="", help="write a cProfile of the window here")
    p.add_argument("--graceful", action="store_true", help="close every connection at the end")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.kind == "wsmon" and args.loop == "asyncio" and not args.orjson:
        block_speedups()  # stock: neither uvloop nor orjson, whatever the daemon would pick
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    # asyncio.run(main(), loop_factory=...) is Python 3.12+; Runner takes it on 3.11.
    with asyncio.Runner(loop_factory=factory) as runner:
        coro: Awaitable[None] = run_child(args)
        with contextlib.suppress(KeyboardInterrupt):
            runner.run(coro)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
