"""A real Prometheus scraping one daemon (workload 6): the ``prometheus`` binary on PATH.

``PromServer`` writes a ``prometheus.yml`` with one scrape job (``wsmon``: the daemon's
``/metrics``), picks a free loopback port (a socket bound to ``127.0.0.1:0``, then closed:
Prometheus itself cannot be told port 0), starts Prometheus with its TSDB in a directory of
its own (and, for native histograms, ``--enable-feature=native-histograms``: it then asks
for the protobuf exposition), waits for ``/-/ready``, and reads its own ``/metrics`` and
its query API. Its log goes to ``prometheus.log`` beside the TSDB.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

from .common import end_process
from .harness import BenchError, Exposition

__all__ = ["JOB", "PromServer", "binary", "free_port", "version"]

JOB = "wsmon"


def binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        raise BenchError(
            "`prometheus` not found on PATH: workload 6 runs a real Prometheus (e.g. the "
            "Debian package `prometheus`)"
        )
    return path


def version() -> str:
    """`prometheus --version`'s first line."""
    out = subprocess.run(
        [binary(), "--version"], capture_output=True, text=True, check=False, timeout=30
    )
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else ""


def free_port() -> int:
    """A loopback port free at this moment (bound, read, closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_text(target_port: int, scrape_interval: float) -> str:
    every = f"{scrape_interval:g}s"
    return (
        "global:\n"
        f"  scrape_interval: {every}\n"
        f"  scrape_timeout: {every}\n"
        "  evaluation_interval: 1m\n"
        "scrape_configs:\n"
        f"  - job_name: {JOB}\n"
        "    static_configs:\n"
        f'      - targets: ["127.0.0.1:{target_port}"]\n'
    )


class PromServer:
    """One Prometheus process; use as ``async with PromServer(...) as prom``."""

    def __init__(
        self, workdir: Path, target_port: int, scrape_interval: float, native: bool
    ) -> None:
        self.workdir = workdir
        self.target_port = target_port
        self.scrape_interval = scrape_interval
        self.native = native
        self.port = 0
        self.argv: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def _argv(self) -> list[str]:
        argv = [
            binary(),
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        if self.native:
            argv.append("--enable-feature=native-histograms")
        return argv

    async def start(self, within: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        text = config_text(self.target_port, self.scrape_interval)
        (self.workdir / "prometheus.yml").write_text(text, encoding="utf-8")
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        for _ in range(3):  # another process may take the port between the check and the bind
            self.port = free_port()
            self.argv = self._argv()
            with self.log_path.open("ab") as log:
                self.proc = await asyncio.create_subprocess_exec(
                    *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
                )
            if await self._ready(within):
                return
            if "address already in use" not in self._log_tail():
                break
        await self.stop()
        raise BenchError(f"Prometheus did not become ready:\n{self._log_tail()}")

    async def _ready(self, within: float) -> bool:
        assert self.proc is not None
        assert self._http is not None
        deadline = time.monotonic() + within
        url = f"http://127.0.0.1:{self.port}/-/ready"
        while time.monotonic() < deadline and self.proc.returncode is None:
            with contextlib.suppress(aiohttp.ClientError):
                async with self._http.get(url) as resp:
                    if resp.status == 200:
                        return True
            await asyncio.sleep(0.2)
        return False

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_bytes()[-3000:].decode(errors="replace")
        return ""

    async def metrics(self) -> Exposition:
        """Prometheus's own /metrics (text)."""
        assert self._http is not None
        url = f"http://127.0.0.1:{self.port}/metrics"
        async with self._http.get(url, headers={"Accept": "text/plain"}) as resp:
            resp.raise_for_status()
            return Exposition(await resp.read())

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query (now): its result vector."""
        assert self._http is not None
        url = f"http://127.0.0.1:{self.port}/api/v1/query"
        async with self._http.get(url, params={"query": expr}) as resp:
            got: dict[str, Any] = await resp.json()
        if got.get("status") != "success":
            raise BenchError(f"Prometheus query {expr!r}: {got.get('error', got)}")
        result: list[dict[str, Any]] = got["data"]["result"]
        return result

    async def value(self, expr: str) -> float | None:
        """An instant query's value: None when its result is empty; the sum when several
        series answer (the expressions asked here name one)."""
        result = await self.query(expr)
        if not result:
            return None
        return sum(float(r["value"][1]) for r in result if "value" in r)

    async def stop(self, within: float = 60.0) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        await end_process(self.proc, within)

    async def __aenter__(self) -> PromServer:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()
