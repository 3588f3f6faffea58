"""The systemd unit, checked by systemd's own tools, and the notify protocol, checked on a
real AF_UNIX datagram socket standing in for the service manager."""

from __future__ import annotations

import asyncio
import itertools
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from wsserver import WSTestServer

from monitor.systemd import Notifier

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "deploy/systemd/wsmon.service"


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is needed (Debian package `systemd`; `make test` installs it)"
    return tool


def test_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit. Only the install path of the binary is
    pointed at this checkout's `wsmon`, because verify checks that it exists."""
    wsmon = shutil.which("wsmon") or str(Path(sys.executable).parent / "wsmon")
    assert Path(wsmon).exists()
    unit = tmp_path / "wsmon.service"
    unit.write_text(UNIT.read_text().replace("/opt/wsmon/bin/wsmon", wsmon))
    proc = subprocess.run(
        [systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""


def test_unit_exposure_at_most_2() -> None:
    """`systemd-analyze security --offline=true` rates the unit's exposure 2.0 or less."""
    proc = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", "--threshold=20", str(UNIT)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = re.search(r"Overall exposure level for wsmon.service: (\d+\.\d)", proc.stdout)
    assert m, proc.stdout
    assert float(m.group(1)) <= 2.0


def test_unit_has_what_the_daemon_needs() -> None:
    """Type=notify with a watchdog, reload by SIGHUP, restart on failure, no capabilities."""
    text = UNIT.read_text()
    for line in (
        "Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
        "DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
        "PrivateTmp=yes", "PrivateDevices=yes", "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "SystemCallArchitectures=native",
        "--config /etc/wsmon/config.yaml",
    ):  # fmt: skip
        assert line in text, line
    assert re.search(r"^WatchdogSec=\d+s$", text, re.M)
    assert re.search(r"^LimitNOFILE=\d{5,}$", text, re.M)
    assert re.search(r"^#?LoadCredential=", text, re.M)


class NotifySocket:
    """The service manager's end: a datagram socket whose reader thread stamps each message
    with its arrival time (a thread, so that a blocked event loop cannot delay it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._open = True
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while self._open:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def drain(self) -> list[str]:
        return [m for _, m in list(self.messages)]

    def close(self) -> None:
        self._open = False
        self._thread.join()
        self.sock.close()

    async def wait_for(self, text: str, after: int = 0, timeout: float = 10.0) -> int:
        """Index of the first message at or after `after` containing `text`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, m in enumerate(self.drain()[after:], start=after):
                if text in m:
                    return i
            await asyncio.sleep(0.01)
        raise AssertionError(f"{text!r} not received; got {self.drain()[after:]}")


async def test_notify_protocol_in_order(server: WSTestServer, tmp_path: Path) -> None:
    """Under `wsmon run`: READY=1 once the config is loaded and HTTP listens, WATCHDOG=1
    every half of WATCHDOG_USEC, RELOADING=1 then READY=1 around a SIGHUP reload, and
    STOPPING=1 on SIGTERM, in that order."""
    notify = NotifySocket(tmp_path / "notify.sock")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"listen": "127.0.0.1:0", "targets": [
        {"name": "t", "url": server.url}]}))  # fmt: skip
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000", "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor", "run", "--config", str(cfg)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        ready = await notify.wait_for("READY=1")
        assert "STATUS=monitoring 1 targets" in notify.drain()[ready]
        await asyncio.sleep(1.0)
        dogs = [t for t, m in notify.messages if m == "WATCHDOG=1"]
        gaps = [b - a for a, b in itertools.pairwise(dogs)]
        assert len(dogs) >= 8
        assert all(0.05 <= g <= 0.2 for g in gaps), gaps
        proc.send_signal(signal.SIGHUP)
        reloading = await notify.wait_for("RELOADING=1", after=ready + 1)
        assert re.search(r"MONOTONIC_USEC=\d+", notify.drain()[reloading])
        await notify.wait_for("READY=1", after=reloading + 1)
        proc.send_signal(signal.SIGTERM)
        await notify.wait_for("STOPPING=1", after=reloading + 1)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.communicate()
        notify.close()
    states = [m.split("\n")[0] for m in notify.drain() if m != "WATCHDOG=1"]
    assert states == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]


async def test_watchdog_runs_on_the_event_loop(tmp_path: Path) -> None:
    """A blocked event loop stops the watchdog pings, so systemd restarts a hung daemon."""
    notify = NotifySocket(tmp_path / "notify.sock")
    notifier = Notifier(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "100000"})
    task = asyncio.create_task(notifier.watchdog())
    try:
        await asyncio.sleep(0.3)
        time.sleep(0.4)  # noqa: ASYNC251 - the loop is blocked on purpose
        await asyncio.sleep(0.2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        notifier.close()
    notify.drain()
    times = [t for t, m in notify.messages if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) >= 0.35
    assert sorted(gaps)[len(gaps) // 2] < 0.1
    notify.close()


@pytest.mark.parametrize(
    ("env", "interval"),
    [({"WATCHDOG_USEC": "30000000"}, 30.0), ({"WATCHDOG_USEC": "0"}, None), ({}, None),
     ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, None)],
)  # fmt: skip
def test_watchdog_interval(env: dict[str, str], interval: float | None) -> None:
    """WATCHDOG_USEC sets the interval, unless WATCHDOG_PID names another process."""
    assert Notifier(env=env).watchdog_interval == interval


def test_notifier_without_socket_is_silent() -> None:
    """Without NOTIFY_SOCKET nothing is sent and nothing fails."""
    n = Notifier(env={})
    assert not n.enabled
    n.ready("x")
    n.stopping()
