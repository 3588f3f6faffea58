"""Composition root: registry, metrics, logging, supervisor and HTTP; signals; shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

from . import config as config_mod
from . import fdbudget, ratelimits, selftest
from .aiohooks import Hooks
from .clock import LagSampler
from .collector import FREEZE_EVERY, Collector
from .config import Config, ConfigError, parse_listen
from .exposition import ProbeEndpoint, build_app
from .httpguard import Guard
from .log import Logging
from .metrics import Metrics
from .proxy import Sessions, client_sessions
from .registry import Registry
from .session import Runtime
from .sharding import Fixed
from .supervisor import Supervisor, TargetRunner
from .systemd import Notifier
from .web import WebSecurity

SHUTDOWN_CLOSE_CODE = 1001  # going away
LAG_EVERY = 1.0  # seconds between samples of the event loop's lag


class Daemon:
    """The running monitor: three visible steps, `start()`, serve until told, `stop()`."""

    def __init__(
        self,
        config: Config,
        logging: Logging,
        *,
        config_path: str | Path | None = None,
        listen: str | None = None,
        log_level: str | None = None,
        registry: Registry | None = None,
        rng: random.Random | None = None,
        stop_timeout: float = 4.0,
        notifier: Notifier | None = None,
        web_config_file: str | None = None,
        web_poll_interval: float = 2.0,
        receive_path: str = "auto",
        hooks: Hooks | None = None,
        shard: Fixed | None = None,
    ) -> None:
        self.config = config
        self.logging = logging
        self.log = logging.logger
        self.config_path = config_path
        self.listen_override = listen
        self.log_level_override = log_level
        self.registry = registry or Registry()
        # `metrics:` is read once: series already exported keep their shape until a restart.
        self.metrics = Metrics(self.registry, options=config.metrics)
        self.rng = rng
        self.stop_timeout = stop_timeout
        self.http: Sessions | None = None  # the HTTP client sessions (one per proxy)
        self.probes: ProbeEndpoint | None = None
        self.supervisor: Supervisor | None = None
        self._runner: web.AppRunner | None = None
        self._reload_lock = asyncio.Lock()
        self.port = 0
        self._stopped = False
        self.notifier = notifier or Notifier(env={})
        self.last_reload_problems: list[str] = []
        # The command line's --web.config.file wins over the config key; fixed at start.
        public = frozenset({"/healthz"}) if config.public_healthz else frozenset()
        self.web = WebSecurity(
            web_config_file or config.web_config_file,
            logging.logger,
            public_paths=public,
            poll_interval=web_poll_interval,
        )
        # "portable": no hooks (monitor/aiohooks.py); "auto": the ones the self-test proves.
        # `hooks` skips the self-test (tests decide once per process).
        self.receive_path = receive_path
        self.hooks = hooks
        # The command line's shard wins over the config's `sharding` (which a reload may
        # change otherwise); `owned` is the config with this shard's targets only.
        self.shard_flags = shard or Fixed()
        self.shard = self.shard_flags.resolve(config)
        self.owned = self.shard.owned(config)
        self.runtime: Runtime | None = None
        self._web_watch: asyncio.Task[None] | None = None
        self._gc_task: asyncio.Task[None] | None = None
        self._lag: LagSampler | None = None
        self._server: asyncio.Server | None = None
        self._guard: Guard | None = None
        self._fds_held = 0
        self.collector = Collector(self.log)
        self._gc_wake = asyncio.Event()  # a reload restarts the gc schedule's ticks

    # --- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on HTTP, then start every target. A bad web config raises WebConfigError
        before anything else starts."""
        self.web.load()
        if self.web.path is not None:
            self.metrics.web_reload_ok.set(1)
        if self.hooks is None:
            self.hooks = await selftest.decide(self.log, portable=self.receive_path == "portable")
        self.metrics.set_receive_path(self.hooks.receive_path)
        self.runtime = Runtime.create(asyncio.get_running_loop(), self.hooks)
        self.runtime.clock.alignment = self.config.send_alignment
        self.http = client_sessions(self.config.tcp)
        self.probes = ProbeEndpoint(self.config.tcp, self.log)  # GET /probe
        self.probes.configure(self.config.probe_endpoint)
        self.supervisor = Supervisor(
            self.http,
            self.metrics,
            self.log,
            self.runtime,
            self.rng,
            stop_timeout=self.stop_timeout,
        )
        await self._listen()
        self._web_watch = asyncio.create_task(self._watch_web(), name="web-config-watch")
        self._gc_task = asyncio.create_task(self._manage_gc(), name="gc-schedule")
        self._lag = LagSampler(self.runtime.clock, LAG_EVERY, self.metrics.loop_lag.observe)
        self.logging.redactor.secrets |= self.config.secrets
        # What the daemon holds before its targets: the rest of the limit, less the HTTP
        # side's reserve, is theirs.
        self._fds_held = fdbudget.open_fds()
        self._check_fds(self.owned)
        ratelimits.warn_over_known_limits(self.owned, self.log)
        self._set_shard()
        await self.supervisor.apply(self.owned)
        self._loaded()
        self.log.info(
            "config.loaded",
            source=self.config.source,
            targets=len(self.owned.targets),
            listen=f"{parse_listen(self.listen_override or self.config.listen)[0]}:{self.port}",
            **self._shard_fields(),
        )
        self.notifier.ready(f"monitoring {len(self.owned.targets)} targets")

    def _runners(self) -> Iterable[TargetRunner]:
        """The targets this daemon monitors now (for the status API)."""
        return () if self.supervisor is None else self.supervisor.runners.values()

    def _set_shard(self) -> None:
        shard = self.shard
        self.metrics.set_shard(shard.index, shard.count, shard.replicas)
        self.metrics.config_targets.set(self.config.listed_targets)

    def _shard_fields(self) -> dict[str, Any]:
        """What the log says of the shard: nothing for a daemon alone."""
        if self.shard.alone:
            return {}
        return {"shard": self.shard.label(), "config_targets": self.config.listed_targets}

    async def _listen(self) -> None:
        """Serve HTTP, bounded (`monitor.httpguard`): aiohttp's server behind a guard of
        its connections, on a listening socket of our own."""
        http = self.config.http
        host, port = parse_listen(self.listen_override or self.config.listen)
        self._guard = Guard(http, self.metrics.http_connections, self.metrics.http_dropped)
        self._runner = web.AppRunner(
            build_app(
                self.registry,
                self._readiness,
                self._reload_from_http,
                [self._guard.middleware, self.web.middleware],
                [self.web.add_headers],
                histograms=self.metrics.options.histograms,
                probes=self.probes,
                targets=self._runners,
            ),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=1.0,
            # aiohttp's own idle close comes after the guard's, which counts it.
            keepalive_timeout=http.idle_timeout + 1.0,
            max_line_size=http.max_header_bytes,
            max_field_size=http.max_header_bytes,
        )
        await self._runner.setup()
        assert self._runner.server is not None
        self._guard.factory = self._runner.server
        tls = self.web.server_ssl_context()
        self._server = await asyncio.get_running_loop().create_server(
            self._guard,
            host or None,
            port,
            ssl=tls,
            # A client that never completes the TLS handshake is not the guard's yet: it
            # gets the header timeout here.
            ssl_handshake_timeout=http.read_header_timeout if tls else None,
            ssl_shutdown_timeout=1.0 if tls else None,
            backlog=128,
            reuse_address=True,
        )
        self.port = int(self._server.sockets[0].getsockname()[1]) if self._server.sockets else port

    def _check_fds(self, config: Config) -> None:
        """Raise the open files limit, give targets what is left after the daemon's own and
        the HTTP side's reserve, and say when that is short of what `config` needs."""
        assert self.supervisor is not None
        assert self._guard is not None
        limit = fdbudget.raise_limit()
        # GET /probe's connections to its targets come out of the HTTP side's reserve too.
        probing = config.probe_endpoint.max_concurrent if config.probe_endpoint else 0
        budget = fdbudget.budget(
            config,
            limit,
            self._fds_held,
            http_connections=self._guard.limits.max_connections + probing,
        )
        self.supervisor.limits.fds.allowed = budget.allowed
        if budget.short:
            self.log.warning(
                "fd_budget.short",
                targets=budget.targets,
                needed=budget.needed,
                limit=limit,
                connections_allowed=budget.allowed,
                advice=budget.advice(),
            )

    @property
    def page_url(self) -> str:
        """The status page's URL: where the HTTP endpoints are."""
        host, _ = parse_listen(self.listen_override or self.config.listen)
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        shown = f"[{shown}]" if ":" in shown else shown
        scheme = "https" if self.web.tls else "http"
        return f"{scheme}://{shown}:{self.port}/"

    @property
    def metrics_url(self) -> str:
        return self.page_url + "metrics"

    def _readiness(self) -> tuple[bool, str]:
        if self.supervisor is None:
            return False, "starting"
        waiting = self.supervisor.pending()
        if waiting:
            return False, "waiting for first attempt: " + ", ".join(sorted(waiting)[:20])
        return True, f"ready: {len(self.supervisor.runners)} targets"

    def _loaded(self) -> None:
        self.metrics.reload_ok.set(1)
        self.metrics.reload_ts.set(time.time())

    # --- reload ---------------------------------------------------------------------------

    async def reload(self, new: Config | None = None) -> bool:
        """Apply a new config (re-read from the file by default); a bad one changes nothing."""
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                return await self._reload(new)
            finally:
                self.notifier.ready(f"monitoring {len(self.owned.targets)} targets")

    async def _reload(self, new: Config | None) -> bool:
        if new is None:
            if self.config_path is None:
                self.last_reload_problems = ["no configuration file to reload"]
                return False
            try:
                new = config_mod.load(self.config_path, shard=self.shard_flags)
            except ConfigError as exc:
                self.metrics.reload_ok.set(0)
                self.last_reload_problems = exc.problems
                self.log.error("config.reload_failed", source=exc.source, problems=exc.problems)
                return False
        try:  # (a count the config gives may not fit the index the command line gives)
            shard = self.shard_flags.resolve(new)
        except ValueError as exc:
            self.metrics.reload_ok.set(0)
            self.last_reload_problems = [f"sharding: {exc}"]
            self.log.error(
                "config.reload_failed", source=new.source, problems=self.last_reload_problems
            )
            return False
        assert self.supervisor is not None
        assert self.runtime is not None
        if self.web.path is not None:
            self.metrics.web_reload_ok.set(1 if self.web.reload() else 0)
        self.logging.redactor.secrets |= new.secrets
        self.logging.level.level = self.log_level_override or new.log.level
        self.runtime.clock.alignment = new.send_alignment  # for connections opened from now on
        if self.probes is not None:
            self.probes.configure(new.probe_endpoint)
        if new.metrics != self.metrics.options:
            self.log.warning(
                "config.restart_needed",
                keys=["metrics"],
                detail="the `metrics` block takes effect at the next start; kept as it was",
            )
        owned = shard.owned(new)
        self._check_fds(owned)
        ratelimits.warn_over_known_limits(owned, self.log)
        # A new shard count moves only the targets whose owners changed: the others are
        # unchanged in `owned`, and keep their connections.
        changes = await self.supervisor.apply(owned)
        # What the old targets held is collected in full once the new ones have settled.
        self.collector.unsettle()
        self._gc_wake.set()
        self.config, self.shard, self.owned = new, shard, owned
        self._set_shard()
        self.last_reload_problems = []
        self._loaded()
        self.log.info(
            "config.loaded",
            source=new.source,
            targets=len(owned.targets),
            **self._shard_fields(),
            **changes,
        )
        return True

    async def _manage_gc(self) -> None:
        """Keep young collections short: see `monitor.collector`. A small daemon's
        schedule is done once it has settled: no more wake-ups until a reload."""
        while True:
            if self.collector.idle(len(self.owned.targets)):
                self._gc_wake.clear()
                await self._gc_wake.wait()
            await asyncio.sleep(FREEZE_EVERY)
            self.collector.tick(
                settled=self.supervisor is not None and self.supervisor.ready,
                targets=len(self.owned.targets),
            )

    async def _watch_web(self) -> None:
        """Follow changes of the web config and its certificates, and say how it went."""
        if self.web.path is None:
            return
        while True:
            await asyncio.sleep(self.web.poll_interval)
            if self.web.changed():
                self.metrics.web_reload_ok.set(1 if self.web.reload() else 0)

    async def _reload_from_http(self) -> tuple[bool, list[str]]:
        ok = await self.reload()
        return ok, self.last_reload_problems

    # --- stop -----------------------------------------------------------------------------

    async def stop(self) -> None:
        """Close every connection with 1001 and release sockets; bounded in time. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.notifier.stopping()
        for task in (self._web_watch, self._gc_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._lag is not None:
            self._lag.stop()
        if self.supervisor is not None:
            await self.supervisor.stop(SHUTDOWN_CLOSE_CODE)
        if self.http is not None:
            await self.http.close()
        if self._server is not None:
            self._server.close()  # no new connections; those open are closed by the runner
        if self._runner is not None:
            await self._runner.cleanup()
        if self.probes is not None:  # after the runner: no /probe is running any more
            await self.probes.close()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):  # a client that will not let go
                async with asyncio.timeout(self.stop_timeout):
                    await self._server.wait_closed()
        self.log.info("shutdown.complete")
