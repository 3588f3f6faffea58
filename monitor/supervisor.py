"""Targets -> tasks: one reconnect loop per target; apply(new_config) starts, stops, keeps."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterator

import aiohttp
from aiohttp import ClientWebSocketResponse
from structlog.typing import FilteringBoundLogger

from .backoff import Delay, full_jitter
from .config import Config, TargetConfig
from .fdbudget import Gate
from .handshake import (
    ConnectFailed,
    Opened,
    authenticate,
    connect,
    let_go,
    safe_url,
    tls_context,
)
from .metrics import Metrics
from .proxy import Sessions
from .session import INTERNAL_ERROR, Disconnect, Runtime, Session
from .sockets import tune
from .status import TargetState

# Close codes by which a server asks clients to come back later, not at once.
TRY_AGAIN_LATER = frozenset({1012, 1013})


class ConnectLimits:
    """What connecting targets share: the handshakes in flight at once (a reload that
    changes the limit replaces the semaphore; handshakes holding a slot of the old one
    finish under it), and the descriptors their connections may hold (`fdbudget.Gate`)."""

    __slots__ = ("fds", "handshakes", "semaphore")

    def __init__(self, handshakes: int) -> None:
        self.handshakes = handshakes
        self.semaphore = asyncio.Semaphore(handshakes)
        self.fds = Gate()

    def resize(self, handshakes: int) -> None:
        if handshakes != self.handshakes:
            self.handshakes = handshakes
            self.semaphore = asyncio.Semaphore(handshakes)


class TargetRunner:
    """Keeps one target connected: connect, serve, record how it ended, back off, repeat."""

    __slots__ = (
        "_session", "_stop_code", "_task", "attempted", "http", "limits", "log", "m", "rng",
        "runtime", "state", "target", "tls",
    )  # fmt: skip

    def __init__(
        self,
        target: TargetConfig,
        http: Sessions,
        metrics: Metrics,
        log: FilteringBoundLogger,
        limits: ConnectLimits,
        runtime: Runtime,
        rng: random.Random | None = None,
    ) -> None:
        self.target = target
        self.http = http
        self.m = metrics.for_config(target)
        self.log = log
        self.limits = limits
        self.runtime = runtime
        self.rng = rng or random.Random()
        self.tls = tls_context(target)
        self.attempted = False  # the first handshake attempt has finished
        self.state = TargetState()  # for the status page and its API
        self._session: Session | None = None
        self._stop_code: int | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def session(self) -> Session | None:
        """The open connection's session, if there is one."""
        return self._session

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"target:{self.target.name}")

    async def stop(self, code: int, grace: float, reason: str = "going away") -> None:
        """Close the connection with `code` and `reason` and end the loop; cancel it if that
        takes too long."""
        task = self._task
        if task is None or task.done():
            return
        self._stop_code = code
        session = self._session
        if session is not None:
            session.close(code, reason)
        else:
            task.cancel()  # connecting or backing off: nothing to close politely
        _, running = await asyncio.wait({task}, timeout=grace)
        if running:
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        t = self.target
        loop = asyncio.get_running_loop()
        backoff: Iterator[Delay] | None = None  # made on the first failure: none while healthy
        attempt = 0
        had_connection = False
        try:
            while True:
                self.m.connect_attempts.inc()
                self.state.enter("connecting")
                opened = await self._open()
                self.attempted = True
                if isinstance(opened, ConnectFailed):
                    self.state.enter("failed")
                    self._connect_failed(opened)
                    attempt += 1
                    backoff = backoff or self._backoff()
                    await self._pause(next(backoff), attempt, None)
                    continue
                started = loop.time()
                # Served here, not in a coroutine of its own: this frame and the session's
                # are what every connection keeps while it waits (docs/performance.md).
                try:
                    self._connected(opened, reconnected=had_connection)
                    try:
                        self._session = Session(
                            t, opened.ws, self.m, self.log, self.runtime, self.rng
                        )
                        ended = await self._session.run()  # a fault of its own included (1011)
                    except Exception as exc:  # a bug must not end the monitoring of this target
                        ended = await self._failed(opened.ws, exc)
                    finally:
                        self._disconnected()
                        # aiohttp keeps what ended the connection on it, in a cycle through
                        # the error's traceback: cleared, the connection is freed with it.
                        error = opened.ws.exception()
                        if error is not None:
                            let_go(error)
                finally:
                    self.limits.fds.release()
                had_connection = True
                uptime = loop.time() - started
                self.state.enter("backoff")
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

    async def _open(self) -> Opened | ConnectFailed:
        """The handshake (and auth): the open WebSocket and its duration, holding one of the
        gate's descriptors (the caller releases it when the connection is over), or why
        not. Without a descriptor to spare, no socket is even tried."""
        t = self.target
        fds = self.limits.fds
        if not fds.acquire():
            return ConnectFailed(
                "resource",
                f"no file descriptor to spare ({fds.allowed} target connections at most "
                "under the open files limit; see fd_budget.short)",
                tried=False,
            )
        try:
            opened = await connect(self.http.for_proxy(t.proxy), t, self.limits.semaphore, self.tls)
            if t.proxy is not None:  # the tunnel's socket was not made by socket_factory
                sock = opened.ws.get_extra_info("socket")
                if sock is not None:
                    tune(sock, self.http.tcp)
        except ConnectFailed as exc:
            fds.release()
            # (its traceback would hold this frame, which holds it: a reference cycle)
            return exc.with_traceback(None)
        except BaseException:
            fds.release()
            raise
        if t.auth is not None:
            try:
                await authenticate(opened.ws, t, self.m)  # closes the connection if it fails
            except ConnectFailed as exc:
                error = opened.ws.exception()
                if error is not None:
                    let_go(error)  # (see _run)
                fds.release()
                return exc.with_traceback(None)
            except BaseException:  # stopped meanwhile: the socket must not outlive us
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(t.close_timeout):
                        await opened.ws.close(code=1001, message=b"going away")
                fds.release()
                raise
        return opened

    def _connect_failed(self, exc: ConnectFailed) -> None:
        self.m.connect_failures[exc.reason].inc()
        # Kept out for want of a descriptor: fd_budget.short said so once, loudly.
        log = self.log.warning if exc.tried else self.log.debug
        log(
            "connect.failed",
            target=self.target.name,
            url=safe_url(self.target),
            reason=exc.reason,
            error=exc.error,
            duration_ms=round(exc.duration * 1e3, 3),
        )

    def _connected(self, opened: Opened, reconnected: bool) -> None:
        """Count the new connection and say so."""
        t = self.target
        m = self.m
        ws, duration, tls = opened.ws, opened.duration, opened.tls
        m.handshake(duration, opened.phases)
        if tls is not None:
            m.tls(tls.version, tls.cipher, tls.not_after)
        if reconnected:
            m.reconnects.inc()
            self.state.reconnected()
        self.state.enter("connected")
        m.connected.set(1)
        m.established.set(time.time())
        self.log.info(
            "connect.ok",
            target=t.name,
            url=safe_url(t),
            duration_ms=round(duration * 1e3, 3),
            phases_ms={k: round(v * 1e3, 3) for k, v in opened.phases.items()},
            **({"subprotocol": ws.protocol} if t.subprotocols else {}),
            **({"tls_version": tls.version} if tls is not None else {}),
        )

    def _disconnected(self) -> None:
        """The connection is over (how it ended is recorded by the caller)."""
        self._session = None
        m = self.m
        m.connected.set(0)
        m.up.set(0)
        m.established.set(0)

    async def _failed(self, ws: ClientWebSocketResponse, exc: Exception) -> Disconnect:
        """A session that could not even run: say so, and drop its connection with 1011."""
        error = f"{type(exc).__name__}: {exc}"
        self.log.error("session.failed", target=self.target.name, error=error, exc_info=exc)
        # A close cut short by the timeout makes aiohttp drop the connection.
        with contextlib.suppress(TimeoutError, ConnectionError, aiohttp.ClientError, RuntimeError):
            async with asyncio.timeout(self.target.close_timeout):
                await ws.close(code=INTERNAL_ERROR, message=b"internal error")
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
        self.state.closed(ended.code, ended.origin, ended.reason)
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
        http: Sessions,
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
        self.limits = ConnectLimits(50)

    @property
    def ready(self) -> bool:
        """True once every target has finished its first handshake attempt."""
        return all(r.attempted for r in self.runners.values())

    def pending(self) -> list[str]:
        return [name for name, r in self.runners.items() if not r.attempted]

    async def apply(self, config: Config) -> dict[str, list[str]]:
        """Make the running targets match `config`; unchanged targets keep their connection."""
        self.limits.resize(config.max_concurrent_handshakes)
        wanted = {t.name: t for t in config.targets}
        removed = [n for n in self.runners if n not in wanted]
        changed = [
            n for n, t in wanted.items() if n in self.runners and self.runners[n].target != t
        ]
        added = [n for n in wanted if n not in self.runners]

        old_probes = {n: {p.name for p in self.runners[n].target.probes} for n in changed}

        async def retire(name: str, reason: str) -> None:
            await self.runners.pop(name).stop(1001, self.stop_timeout, reason)

        # 1001 (going away), as at shutdown: the monitor leaves, the server did nothing wrong.
        await asyncio.gather(
            *(retire(n, "removed from config") for n in removed),
            *(retire(n, "changed by a reload") for n in changed),
        )
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
                self.limits,
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
