"""Targets -> tasks: one reconnect loop per target; apply(new_config) starts, stops, keeps."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator

import aiohttp
from aiohttp import ClientWebSocketResponse
from structlog.typing import FilteringBoundLogger

from .backoff import Delay, full_jitter
from .config import Config, TargetConfig
from .handshake import ConnectFailed, authenticate, connect, safe_url, tls_context
from .metrics import Metrics
from .session import INTERNAL_ERROR, Disconnect, Runtime, Session

# Close codes by which a server asks clients to come back later, not at once.
TRY_AGAIN_LATER = frozenset({1012, 1013})


class HandshakeLimit:
    """Handshakes in flight at once, across all targets. A reload that changes the limit
    replaces the semaphore; handshakes already holding a slot of the old one finish under it."""

    __slots__ = ("limit", "semaphore")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.semaphore = asyncio.Semaphore(limit)

    def resize(self, limit: int) -> None:
        if limit != self.limit:
            self.limit = limit
            self.semaphore = asyncio.Semaphore(limit)


class TargetRunner:
    """Keeps one target connected: connect, serve, record how it ended, back off, repeat."""

    __slots__ = (
        "_session", "_stop_code", "_task", "attempted", "handshakes", "http", "log", "m", "rng",
        "runtime", "target", "tls",
    )  # fmt: skip

    def __init__(
        self,
        target: TargetConfig,
        http: aiohttp.ClientSession,
        metrics: Metrics,
        log: FilteringBoundLogger,
        handshakes: HandshakeLimit,
        runtime: Runtime,
        rng: random.Random | None = None,
    ) -> None:
        self.target = target
        self.http = http
        self.m = metrics.for_target(target.name, ((p.name, p.kind) for p in target.probes))
        self.log = log
        self.handshakes = handshakes
        self.runtime = runtime
        self.rng = rng or random.Random()
        self.tls = tls_context(target)
        self.attempted = False  # the first handshake attempt has finished
        self._session: Session | None = None
        self._stop_code: int | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def session(self) -> Session | None:
        """The open connection's session, if there is one."""
        return self._session

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"target:{self.target.name}")

    async def stop(self, code: int, grace: float) -> None:
        """Close the connection with `code` and end the loop; cancel it if that takes too long."""
        task = self._task
        if task is None or task.done():
            return
        self._stop_code = code
        session = self._session
        if session is not None:
            session.close(code, "going away" if code == 1001 else "removed from config")
        else:
            task.cancel()  # connecting or backing off: nothing to close politely
        _, running = await asyncio.wait({task}, timeout=grace)
        if running:
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        t = self.target
        m = self.m
        loop = asyncio.get_running_loop()
        backoff: Iterator[Delay] | None = None  # made on the first failure: none while healthy
        attempt = 0
        had_connection = False
        try:
            while True:
                m.connect_attempts.inc()
                try:
                    ws, duration = await connect(self.http, t, self.handshakes.semaphore, self.tls)
                    if t.auth is not None:
                        await authenticate(ws, t, m, self.runtime.parse)
                except ConnectFailed as exc:
                    self.attempted = True
                    m.connect_failures[exc.reason].inc()
                    self.log.warning(
                        "connect.failed",
                        target=t.name,
                        url=safe_url(t),
                        reason=exc.reason,
                        error=exc.error,
                        duration_ms=round(exc.duration * 1e3, 3),
                    )
                    attempt += 1
                    backoff = backoff or self._backoff()
                    await self._pause(next(backoff), attempt, None)
                    continue
                self.attempted = True
                m.connect_duration.observe(duration)
                if had_connection:
                    m.reconnects.inc()
                had_connection = True
                opened = loop.time()
                m.connected.set(1)
                m.established.set(time.time())
                self.log.info(
                    "connect.ok",
                    target=t.name,
                    url=safe_url(t),
                    duration_ms=round(duration * 1e3, 3),
                )
                try:
                    self._session = Session(t, ws, m, self.log, self.runtime, self.rng)
                    ended = await self._session.run()  # a fault of its own included (1011)
                except Exception as exc:  # a bug must not end the monitoring of this target
                    ended = await self._failed(ws, exc)
                finally:
                    self._session = None
                    m.connected.set(0)
                    m.up.set(0)
                    m.established.set(0)
                uptime = loop.time() - opened
                self._record(ended, uptime)
                if self._stop_code is not None:
                    return
                if uptime >= t.reconnect.reset_after:
                    backoff = None
                    attempt = 0
                attempt += 1
                backoff = backoff or self._backoff()
                await self._pause(next(backoff), attempt, ended)
        finally:
            self.attempted = True

    async def _failed(self, ws: ClientWebSocketResponse, exc: Exception) -> Disconnect:
        """A session that could not even run: say so, and drop its connection with 1011."""
        error = f"{type(exc).__name__}: {exc}"
        self.log.error("session.failed", target=self.target.name, error=error, exc_info=exc)
        try:
            async with asyncio.timeout(self.target.close_timeout):
                await ws.close(code=INTERNAL_ERROR, message=b"internal error")
        except (TimeoutError, ConnectionError, aiohttp.ClientError, RuntimeError):
            transport = ws.get_extra_info("transport")
            if transport is not None:
                transport.abort()
        return Disconnect(INTERNAL_ERROR, "local", "internal error")

    def _backoff(self) -> Iterator[Delay]:
        r = self.target.reconnect
        return full_jitter(r.initial_delay, r.max_delay, r.multiplier, self.rng)

    async def _pause(self, delay: Delay, attempt: int, ended: Disconnect | None) -> None:
        seconds = delay.seconds
        if ended is not None and ended.code in TRY_AGAIN_LATER:
            seconds = max(seconds, self.target.reconnect.initial_delay)
        self.log.info(
            "reconnect.scheduled",
            target=self.target.name,
            attempt=attempt,
            delay_s=round(seconds, 3),
            ceiling_s=round(delay.ceiling, 3),
        )
        await asyncio.sleep(seconds)

    def _record(self, ended: Disconnect, uptime: float) -> None:
        self.m.disconnect(ended.code, ended.origin)
        log = (
            self.log.info
            if ended.origin == "local" and ended.code in (1000, 1001)
            else self.log.warning
        )
        log(
            "disconnect",
            target=self.target.name,
            code=ended.code,
            origin=ended.origin,
            reason=ended.reason,
            uptime_s=round(uptime, 3),
        )


class Supervisor:
    """Owns every target's runner; a reload is a diff between the old and new target sets."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        metrics: Metrics,
        log: FilteringBoundLogger,
        runtime: Runtime,
        rng: random.Random | None = None,
        stop_timeout: float = 4.0,
    ) -> None:
        self.http = http
        self.metrics = metrics
        self.log = log
        self.runtime = runtime
        self.rng = rng or random.Random()
        self.stop_timeout = stop_timeout
        self.runners: dict[str, TargetRunner] = {}
        self.handshakes = HandshakeLimit(50)

    @property
    def ready(self) -> bool:
        """True once every target has finished its first handshake attempt."""
        return all(r.attempted for r in self.runners.values())

    def pending(self) -> list[str]:
        return [name for name, r in self.runners.items() if not r.attempted]

    async def apply(self, config: Config) -> dict[str, list[str]]:
        """Make the running targets match `config`; unchanged targets keep their connection."""
        self.handshakes.resize(config.max_concurrent_handshakes)
        wanted = {t.name: t for t in config.targets}
        removed = [n for n in self.runners if n not in wanted]
        changed = [
            n for n, t in wanted.items() if n in self.runners and self.runners[n].target != t
        ]
        added = [n for n in wanted if n not in self.runners]

        old_probes = {n: {p.name for p in self.runners[n].target.probes} for n in changed}

        async def retire(name: str, code: int) -> None:
            await self.runners.pop(name).stop(code, self.stop_timeout)

        await asyncio.gather(*(retire(n, 1000) for n in removed + changed))
        for name in removed:
            self.metrics.remove_target(name)
        for name in changed:
            for probe in old_probes[name] - {p.name for p in wanted[name].probes}:
                self.metrics.remove_probe(name, probe)
        for name in changed + added:
            runner = TargetRunner(
                wanted[name],
                self.http,
                self.metrics,
                self.log,
                self.handshakes,
                self.runtime,
                self.rng,
            )
            self.runners[name] = runner
            runner.start()
        self.metrics.targets.set(len(self.runners))
        return {"added": added, "removed": removed, "changed": changed}

    async def stop(self, code: int = 1001) -> None:
        """Close every connection with `code` (1001: going away) and end every loop."""
        runners = list(self.runners.values())
        self.runners.clear()
        await asyncio.gather(*(r.stop(code, self.stop_timeout) for r in runners))
