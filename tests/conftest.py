"""Shared fixtures: a real test WebSocket server and a real daemon, both on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, NoReturn

import aiohttp.client
import pytest
import yaml
from aiohttp._websocket.reader import WebSocketDataQueue
from prometheus_client import CollectorRegistry
from wsserver import WSTestServer

from monitor import config as config_mod
from monitor import selftest
from monitor.aiohooks import PORTABLE, Hooks
from monitor.app import Daemon
from monitor.log import Logging

# aiohttp's own queue class, before the self-test points aiohttp.client at a subclass.
STOCK_QUEUE = WebSocketDataQueue


class Harness:
    """A daemon running in the test's event loop, with its registry and its log lines."""

    def __init__(self, daemon: Daemon, stream: io.StringIO) -> None:
        self.daemon = daemon
        self.stream = stream

    @property
    def registry(self) -> CollectorRegistry:
        return self.daemon.registry

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.daemon.port}"

    def value(self, name: str, **labels: str) -> float:
        """Current value of one series; 0 when the series does not exist (yet)."""
        v = self.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v

    def exists(self, name: str, **labels: str) -> bool:
        return self.registry.get_sample_value(name, labels) is not None

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Log events written so far (JSON lines), optionally only those called `name`."""
        out = [json.loads(line) for line in self.stream.getvalue().splitlines() if line]
        return [e for e in out if name is None or e["event"] == name]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError(f"condition not met within {timeout}s")
            await asyncio.sleep(0.01)


def target(name: str, url: str, **extra: Any) -> dict[str, Any]:
    """A target entry with fast defaults for tests (time is scaled down, not slept)."""
    entry: dict[str, Any] = {
        "name": name,
        "url": url,
        "connect_timeout": "1s",
        "close_timeout": "500ms",
        "reconnect": {"initial_delay": "20ms", "max_delay": "100ms", "reset_after": "5s"},
        "probes": [
            {"name": "ping", "send": {"ping": 1}, "expect": {"msg_type": "ping"},
             "interval": "100ms", "timeout": "80ms"},
        ],
    }  # fmt: skip
    entry.update(extra)
    return entry


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def refused(name: str) -> dict[str, Any]:
    """A target whose every handshake is refused, trying again each second."""
    return target(
        name,
        f"ws://127.0.0.1:{closed_port()}/ws",
        reconnect={"initial_delay": "1s", "max_delay": "1s"},
    )


def missing(what: str) -> NoReturn:
    """Outside CI a missing tool skips the test; in CI, where `make test` installs every
    one, it fails it."""
    message = f"{what} is needed (`make test` installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


StartDaemon = Callable[..., Awaitable[Harness]]


@pytest.fixture(scope="session")
def proven_hooks() -> Hooks:
    """The hooks the start-up self-test allows on the installed aiohttp, decided once per
    test run (a daemon started with `hooks=` skips its own self-test)."""
    log = Logging("json", "warning", stream=io.StringIO()).logger
    return asyncio.run(selftest.decide(log))


def require_hooks(hooks: Hooks, *names: str) -> None:
    """Skip a test of a hook that the installed aiohttp does not take (the self-test says
    so; the oldest aiohttp of the tested range lacks some)."""
    missing = [name for name in names if not getattr(hooks, name)]
    if missing:
        pytest.skip(f"aiohttp {aiohttp.__version__} does not take the hooks {missing}")


@pytest.fixture(params=["hooked", "portable"])
def receive_path(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, proven_hooks: Hooks
) -> Hooks:
    """Every test that starts a daemon runs on both receive paths: the hooks the self-test
    proved (`monitor/aiohooks.py`), and the portable path, with aiohttp's own queue class
    and nothing of aiohttp but its public API (as on a release the hooks do not fit).
    `hooked-without-stamp` is the hooked path where `ReadStamp` could not install."""
    if request.param == "portable":
        monkeypatch.setattr(aiohttp.client, "WebSocketDataQueue", STOCK_QUEUE)
        return PORTABLE
    if request.param == "hooked-without-stamp":
        return replace(proven_hooks, stamp=False)
    return proven_hooks


@pytest.fixture
async def start_daemon(receive_path: Hooks) -> AsyncIterator[StartDaemon]:
    """Start daemons from config dicts; every one is stopped when the test ends. Each uses
    the `receive_path` fixture's hooks, or with `self_test=True` decides them itself (and
    `receive_path="portable"` is then the command line's choice)."""
    started: list[Daemon] = []
    hooks = receive_path

    async def start(
        *targets: dict[str, Any],
        seed: int = 1,
        self_test: bool = False,
        receive_path: str = "auto",
        **top: Any,
    ) -> Harness:
        doc = {"listen": "127.0.0.1:0", "targets": list(targets), **top}
        cfg = config_mod.loads(yaml.safe_dump(doc), source="<test>")
        stream = io.StringIO()
        logging = Logging("json", "debug", stream=stream, secrets=cfg.secrets)
        daemon = Daemon(
            cfg,
            logging,
            rng=random.Random(seed),
            stop_timeout=2.0,
            hooks=None if self_test else hooks,
            receive_path=receive_path,
        )
        started.append(daemon)
        await daemon.start()
        return Harness(daemon, stream)

    yield start
    for d in started:
        await d.stop()


@pytest.fixture
async def server() -> AsyncIterator[WSTestServer]:
    async with WSTestServer() as s:
        yield s


@pytest.fixture
async def other_server() -> AsyncIterator[WSTestServer]:
    async with WSTestServer() as s:
        yield s
