"""The measured clients, one per child process: ``python -m bench.clients KIND [options]``.

KIND is one of

* ``floor``: a minimal aiohttp client loop (one ClientSession with ``TCPConnector(limit=0)``,
  one WebSocket per target; per connection: send a JSON ping with a ``req_id``, await the
  reply, record the RTT with ``time.perf_counter``, sleep to the next interval);
* ``websockets``: what a user writes instead, in the style of the ``websockets`` library's
  examples (one task per connection, ``json.dumps`` / ``await ws.recv()`` in a loop,
  ``await asyncio.sleep(interval)``);
* ``floor-streams``: workload 7's floor, a minimal aiohttp client of subscription streams (one
  ClientSession, one WebSocket per target at ``URL?target=tN``; per connection: send the
  subscribe of `SUBSCRIBE` once, then ``msg = await ws.receive(); json.loads(msg.data)`` in a
  loop, counting the messages);
* ``wsmon``: the real ``monitor.app.Daemon`` run in this process from a config with N targets
  (one ``ping`` message probe each, correlation ``req_id``, the default handshake limit of
  50), logging into a sink that keeps only its ``hooks.*`` events. It is built with public
  arguments only (``receive_path``, ``hooks``) and nothing of it is wrapped or replaced:
  the harness measures it through its ``/metrics`` and ``/proc/<pid>``.

The floor and websockets clients record their own round trips between the commands
``begin`` and ``end`` (the stream floor: the messages it has received so far, at each); the
harness reads their CPU from ``/proc`` as it does the daemon's.
Every child prints JSON lines on stdout and obeys lines on stdin: ``begin``, ``end``,
``sensor_start``, ``sensor_stop`` (a 1 ms event-loop lag sensor, a task of its own beside
whatever runs in this process: it observes, it changes nothing) and ``stop``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .common import DiscardingStream, emit, raise_nofile, summary

CONNECT_CONCURRENCY = 50  # the baselines open connections like wsmon: 50 handshakes at once
# Workload 7's subscribe (the Deriv API's ticks stream), sent by the stream floor and by wsmon's
# stream probe (`send`, with the req_id the daemon adds).
SUBSCRIBE = {"ticks": "R_50", "subscribe": 1}
HOOK_NAMES = ("stamp", "inbox", "trim")  # the fields of monitor.aiohooks.Hooks


class Recorder:
    """A baseline client's RTTs and send lags, kept only while `on` (between begin and end)."""

    def __init__(self) -> None:
        self.on = False
        self.rtts: list[float] = []
        self.lags: list[float] = []
        self.messages = 0  # stream messages received since the start (the stream floor)

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


# --- floor: a minimal aiohttp loop ------------------------------------------------------


class FloorClient:
    """One aiohttp ClientSession, one WebSocket and one loop task per target."""

    def __init__(self, args: argparse.Namespace, rec: Recorder) -> None:
        self.args = args
        self.rec = rec
        self.tasks: list[asyncio.Task[None]] = []
        self.open = 0
        self.session: Any = None

    async def start(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        slots = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def connect() -> Any:
            async with slots:
                return await self.session.ws_connect(self.args.url)

        sockets = list(await asyncio.gather(*(connect() for _ in range(self.args.targets))))
        self.open = len(sockets)
        rng = random.Random(self.args.seed)
        interval = self.args.interval
        self.tasks = [
            asyncio.create_task(self._loop(ws, rng.uniform(0.0, interval))) for ws in sockets
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


def target_url(url: str, i: int) -> str:
    """Target `i`'s URL: the server's, naming the connection (``?target=tN``)."""
    return f"{url}?target=t{i}"


class StreamFloorClient(FloorClient):
    """One aiohttp ClientSession; per target one WebSocket, one subscribe, one receive loop."""

    async def start(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        slots = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def connect(i: int) -> Any:
            async with slots:
                ws = await self.session.ws_connect(target_url(self.args.url, i))
            await ws.send_str(json.dumps({**SUBSCRIBE, "req_id": 1}))
            return ws

        sockets = list(await asyncio.gather(*(connect(i) for i in range(self.args.targets))))
        self.open = len(sockets)
        self.tasks = [asyncio.create_task(self._loop(ws)) for ws in sockets]

    async def _loop(self, ws: Any) -> None:
        from aiohttp import WSMsgType

        rec = self.rec
        loads = json.loads
        while True:
            msg = await ws.receive()
            if msg.type is not WSMsgType.TEXT:
                return
            loads(msg.data)
            rec.messages += 1


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


# --- wsmon --------------------------------------------------------------------------------


class HookLog(DiscardingStream):
    """The daemon's log sink: counts every line, keeps the `hooks.*` events (a few lines at
    start-up) so that the harness can say why a hook is off."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[str] = []

    def write(self, s: str) -> int:
        if '"hooks.' in s and len(self.kept) < 20:
            self.kept.append(s.strip())
        return super().write(s)


def wsmon_config_doc(
    url: str, targets: int, interval: float, send_alignment: str = "0",
    histograms: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The daemon's config: `targets` targets, each with one `ping` message probe; with
    `histograms`, a `metrics: {histograms: ...}` block (without: the daemon's default)."""
    ms = interval * 1000
    extra = {} if histograms is None else {"metrics": {"histograms": histograms}}
    return extra | {
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


async def wsmon_hooks(names: list[str], log: Any) -> Any:
    """`monitor.aiohooks.Hooks` with exactly `names` on. The inbox needs aiohttp's queue
    class swapped, which only the daemon's self-test does: with the inbox asked for, the
    self-test runs first, and every hook asked for must be one it proved."""
    from monitor import selftest
    from monitor.aiohooks import Hooks

    unknown = sorted(set(names) - set(HOOK_NAMES))
    if unknown:
        raise SystemExit(f"--hooks: unknown hook(s) {', '.join(unknown)}")
    if "inbox" in names:
        proven = await selftest.decide(log)
        missing = [n for n in names if n not in proven.names()]
        if missing:
            raise RuntimeError(f"the self-test did not prove {', '.join(missing)}")
    return Hooks(**{n: n in names for n in HOOK_NAMES})


async def start_wsmon(args: argparse.Namespace) -> Any:
    """Build and start the daemon; report when `start()` began and what it chose."""
    from monitor import config as config_mod
    from monitor.app import Daemon
    from monitor.log import Logging

    t0 = time.perf_counter()
    doc = wsmon_config_doc(
        args.url, args.targets, args.interval, args.send_alignment, args.metrics_histograms
    )
    cfg = config_mod.loads(json.dumps(doc), source="<bench>")
    if args.targets == 0:  # the empty daemon (a config needs at least one target)
        cfg = dataclasses.replace(cfg, targets=())
    config_s = time.perf_counter() - t0
    sink = HookLog()
    logging = Logging("json", "info", stream=sink, secrets=cfg.secrets)
    hooks = None
    if args.hooks is not None:
        hooks = await wsmon_hooks([n for n in args.hooks.split(",") if n], logging.logger)
    daemon = Daemon(
        cfg,
        logging,
        rng=random.Random(args.seed),
        stop_timeout=5.0,
        receive_path=args.receive_path,
        hooks=hooks,
    )
    emit({"event": "starting", "t": time.monotonic(), "config_s": config_s, "pid": os.getpid()})
    await daemon.start()
    emit(
        {
            "event": "started",
            "t": time.monotonic(),
            "port": daemon.port,
            "hooks": daemon.hooks.names() if daemon.hooks is not None else [],
            "hook_log": sink.kept,
            "loop": _loop_name(),
            "send_alignment": args.send_alignment,
            "metrics_histograms": args.metrics_histograms,
        }
    )
    return daemon


# --- the child's main -------------------------------------------------------------------


def _loop_name() -> str:
    loop = asyncio.get_running_loop()
    return type(loop).__module__ + "." + type(loop).__name__


async def _stdin() -> asyncio.StreamReader:
    """stdin as a stream on the event loop (no reader thread in the measured process)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _commands(rec: Recorder, delay_s: float) -> None:
    stdin = await _stdin()
    sensor: LagSensor | None = None
    while True:
        line = (await stdin.readline()).decode().strip()
        if line in ("", "stop"):
            return
        if line == "begin":
            rec.rtts.clear()
            rec.lags.clear()
            rec.on = True
            emit({"event": "begun", "t": time.monotonic(), "messages": rec.messages})
        elif line == "end":
            rec.on = False
            emit(
                {
                    "event": "ended",
                    "t": time.monotonic(),
                    "round_trips": len(rec.rtts),
                    "rtt_ms": summary(rec.rtts, 1e3),
                    "rtt_excess_ms": summary([r - delay_s for r in rec.rtts], 1e3),
                    "send_lag_ms": summary(rec.lags, 1e3),
                    "messages": rec.messages,
                }
            )
        elif line == "sensor_start":
            sensor = LagSensor()
            sensor.start()
            emit({"event": "sensor_started", "t": time.monotonic()})
        elif line == "sensor_stop":
            figures = await sensor.stop() if sensor is not None else {}
            sensor = None
            emit({"event": "sensor", **figures})
        else:
            emit({"event": "error", "error": f"unknown command {line!r}"})


async def run_child(args: argparse.Namespace) -> None:
    """Connect (or start the daemon), say so, then obey commands until `stop`."""
    raise_nofile()
    rec = Recorder()
    if args.kind == "wsmon":
        await start_wsmon(args)
    else:
        kinds: dict[str, Callable[[argparse.Namespace, Recorder], Any]] = {
            "floor": FloorClient,
            "floor-streams": StreamFloorClient,
            "websockets": WebsocketsClient,
        }
        client = kinds[args.kind](args, rec)
        t0 = time.perf_counter()
        await client.start()
        emit(
            {
                "event": "connected",
                "open": client.open,
                "connect_s": time.perf_counter() - t0,
                "loop": _loop_name(),
                "pid": os.getpid(),
            }
        )
    await _commands(rec, args.delay_ms / 1000.0)
    emit({"event": "exit"})
    # Nothing after `stop` is measured: leave without closing every connection (the server
    # sees resets), which saves seconds at 10,000 connections.
    sys.stdout.flush()
    os._exit(0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.clients", description=__doc__)
    p.add_argument("kind", choices=("floor", "floor-streams", "websockets", "wsmon"))
    p.add_argument("--url", required=True, help="the node server's ws:// URL")
    p.add_argument("--targets", type=int, required=True, help="connections / wsmon targets")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between pings")
    p.add_argument("--delay-ms", type=float, default=0.0, help="the server's reply delay")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--send-alignment", default="0", help="wsmon: the config's send_alignment")
    p.add_argument(
        "--metrics-histograms",
        choices=("classic", "native", "both"),
        default=None,
        help="wsmon: the config's `metrics: {histograms: ...}` (default: no `metrics:` block)",
    )
    p.add_argument(
        "--receive-path",
        choices=("auto", "portable"),
        default="auto",
        help="wsmon: Daemon(receive_path=...): auto runs the self-test, portable no hooks",
    )
    p.add_argument(
        "--hooks",
        default=None,
        metavar="LIST",
        help=f"wsmon: Daemon(hooks=...) with these on, of {','.join(HOOK_NAMES)}",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
