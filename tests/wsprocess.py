"""The test WebSocket server in a process of its own: freezable, and off the test's loop."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

SERVER = Path(__file__).parent / "wsserver.py"


class ServerProcess:
    """`python tests/wsserver.py` in a child process, driven over its /_control endpoint."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER)], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.url = f"ws://127.0.0.1:{self.port}/ws"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data, method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await asyncio.to_thread(self._call, "GET", "/_stats")
        return result

    async def control(self, **body: Any) -> dict[str, Any]:
        result: dict[str, Any] = await asyncio.to_thread(self._call, "POST", "/_control", body)
        return result

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            stats = await self.stats()
            if predicate(stats):
                return stats
            if loop.time() > deadline:
                raise AssertionError(f"server condition not met within {timeout}s: {stats}")
            await asyncio.sleep(0.02)

    def freeze(self) -> None:
        """SIGSTOP: the kernel keeps the sockets (and ACKs), the process answers nothing."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
