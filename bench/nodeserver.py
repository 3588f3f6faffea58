"""The load-side server: bench/node/server.js (the npm `ws` package) in its own process.

``setup()`` installs ``bench/node/node_modules`` with ``npm ci`` when it is missing (a clear
error when node or npm are not on PATH); ``NodeServer`` starts the server with its file
descriptor limit raised to the hard limit, reads the port it prints, and talks to its HTTP
paths: stats, drops, for the streams (workload 7) stalls, quiet and its clock, and for the
fleet (workload 8, several servers on loopback addresses of their own) the connections per
target.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

from .common import end_process, raise_nofile

__all__ = ["NODE_DIR", "NodeServer", "NodeSetupError", "setup", "versions"]

NODE_DIR = Path(__file__).resolve().parent / "node"


class NodeSetupError(RuntimeError):
    """node or npm are missing, or npm could not install the server's dependencies."""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise NodeSetupError(
            f"`{name}` not found on PATH: the benchmarks' load-side server is Node.js with the "
            "npm package `ws` (install Node.js >= 18 and npm, e.g. the Debian packages "
            "`nodejs` and `npm`)"
        )
    return path


def setup(node_dir: Path = NODE_DIR) -> None:
    """Make sure node and npm exist and ``node_modules`` is installed (``npm ci``)."""
    _tool("node")
    npm = _tool("npm")
    if (node_dir / "node_modules" / "ws" / "package.json").exists():
        return
    cmd = [npm, "ci" if (node_dir / "package-lock.json").exists() else "install"]
    cmd += ["--no-audit", "--no-fund", "--loglevel=error"]
    proc = subprocess.run(cmd, cwd=node_dir, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NodeSetupError(
            f"{' '.join(cmd)} in {node_dir} failed (exit {proc.returncode}):\n"
            f"{proc.stdout}{proc.stderr}"
        )


def versions(node_dir: Path = NODE_DIR) -> dict[str, str]:
    """node's version and the installed ws package's version."""
    node = subprocess.run(
        [_tool("node"), "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    pkg = json.loads((node_dir / "node_modules" / "ws" / "package.json").read_text())
    return {"node": node, "ws": str(pkg["version"])}


class NodeServer:
    """One running bench/node/server.js; use as ``async with NodeServer(...) as srv``."""

    def __init__(
        self,
        *,
        delay_ms: float = 0.0,
        handshake_delay_ms: float = 0.0,
        tick_rate: float = 10.0,
        host: str = "127.0.0.1",
        node_dir: Path = NODE_DIR,
    ) -> None:
        self.host = host
        self.delay_ms = delay_ms
        self.handshake_delay_ms = handshake_delay_ms
        self.tick_rate = tick_rate
        self.node_dir = node_dir
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.info: dict[str, Any] = {}
        self._http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, within: float = 10.0) -> None:
        node = _tool("node")
        self.proc = await asyncio.create_subprocess_exec(
            node,
            str(self.node_dir / "server.js"),
            "--host",
            self.host,
            "--port",
            "0",
            "--delay",
            f"{self.delay_ms:g}",
            "--handshake-delay",
            f"{self.handshake_delay_ms:g}",
            "--tick-rate",
            f"{self.tick_rate:g}",
            cwd=self.node_dir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=raise_nofile,  # each connection costs the server one fd too
        )
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), within)
        except TimeoutError:
            await self.stop()
            raise NodeSetupError("bench/node/server.js did not print its port in time") from None
        if not line:
            err = b""
            if self.proc.stderr is not None:
                err = await self.proc.stderr.read()
            await self.stop()
            raise NodeSetupError(f"bench/node/server.js exited: {err.decode(errors='replace')}")
        self.info = json.loads(line)
        self.port = int(self.info["port"])
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def _get(self, path: str) -> dict[str, Any]:
        assert self._http is not None
        async with self._http.get(f"http://{self.host}:{self.port}{path}") as resp:
            resp.raise_for_status()
            data: dict[str, Any] = await resp.json()
            return data

    async def stats(self) -> dict[str, Any]:
        """The server's counters (connections, open, handshake maxima, messages, CPU)."""
        return await self._get("/stats")

    async def reset(self) -> dict[str, Any]:
        """Zero the handshake maxima and message counters (connections stay)."""
        return await self._get("/reset")

    async def drop(self, n: int, how: str = "close") -> int:
        """End `n` open connections: `close` (1001 close frame) or `terminate` (TCP reset)."""
        return int((await self._get(f"/drop?n={n}&how={how}"))["dropped"])

    async def stall(self, targets: list[str], gap_ms: float) -> dict[str, Any]:
        """The subscriptions of these targets' connections stop sending, one after another
        `gap_ms` apart (the connections stay open); see `stalls`."""
        return await self._get(f"/stall?targets={','.join(targets)}&gap_ms={gap_ms:g}")

    async def stalls(self) -> list[dict[str, Any]]:
        """One record per stalled stream: target, subscription, `last_sent_ms` (the server's
        wall clock, ms, when it wrote its last tick), `stalled_ms`, `sent`."""
        records: list[dict[str, Any]] = (await self._get("/stalls"))["records"]
        return records

    async def quiet(self) -> dict[str, Any]:
        """Every subscription stops sending (until `reset`); the stats after it."""
        return await self._get("/quiet")

    async def clock_ms(self) -> float:
        """The server's wall clock as it keeps it for the stall records, ms."""
        return float((await self._get("/clock"))["wall_ms"])

    async def targets(self) -> dict[str, dict[str, int]]:
        """Per target named in its URL (``?target=NAME``): ``open`` connections now and
        ``accepted`` upgrades since the server started."""
        data = await self._get("/targets")
        return {"open": dict(data["open"]), "accepted": dict(data["accepted"])}

    async def wait_open(self, n: int, within: float, at_least_total: int = 0) -> dict[str, Any]:
        """Poll until `n` connections are open (and `at_least_total` were ever accepted)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            st = await self.stats()
            if st["open"] == n and st["connections_total"] >= at_least_total:
                return st
            if loop.time() > deadline:
                raise TimeoutError(
                    f"server has {st['open']} open connections, expected {n} "
                    f"(accepted {st['connections_total']}, expected >= {at_least_total})"
                )
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        await end_process(self.proc, 5.0)

    async def __aenter__(self) -> NodeServer:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()


if os.name != "posix":  # pragma: no cover - the benchmarks read /proc and use rlimits
    raise ImportError("the benchmarks run on Linux only")
