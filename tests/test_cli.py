"""The `wsmon` command as a user runs it: separate processes, real signals, real sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from wsserver import WSTestServer

from monitor import __version__

ROOT = Path(__file__).parent.parent
WSMON = [sys.executable, "-m", "monitor"]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def read_line(proc: subprocess.Popen[str], pattern: str, timeout: float = 10) -> re.Match[str]:
    """Read stdout until a line matches `pattern`."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if m := re.search(pattern, line):
            return m
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no line matching {pattern!r}")


def test_version() -> None:
    """`wsmon --version` prints the version."""
    out = subprocess.run([*WSMON, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"wsmon {__version__}"


def test_run_with_bad_config_exits_1(tmp_path: Path) -> None:
    """`wsmon run` with a bad config logs every problem as one JSON event and exits 1."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_text('targets: [{name: a, url: "http://x/", intervl: 1}]\n')
    proc = subprocess.run(
        [*WSMON, "run", "--config", str(cfg)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 1
    event = json.loads(proc.stderr.strip().splitlines()[-1])
    assert event["event"] == "config.invalid"
    assert event["problems"] == [
        "targets[0].url: URL scheme must be ws or wss, not 'http'",
        "targets[0].intervl: unknown key",
    ]
    assert proc.stdout == ""


async def test_run_sigterm_closes_with_1001(server: WSTestServer, tmp_path: Path) -> None:
    """Under `wsmon run`, SIGTERM closes every connection with 1001 and exits 0."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:0",
        "targets": [{"name": "t", "url": server.url, "probes": [
            {"name": "ping", "send": {"ping": 1}, "interval": "100ms", "timeout": "50ms"}]}],
    }))  # fmt: skip
    proc = subprocess.Popen(
        [*WSMON, "run", "--config", str(cfg), "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        await server.wait_for(lambda: server.request_count("ping") >= 2, timeout=10)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await server.wait_for(lambda: server.open_connections == 0, timeout=5)
        rc = proc.wait(timeout=5)
        assert time.monotonic() - started < 5
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert rc == 0
    assert 1001 in server.close_frames
    events = [json.loads(line)["event"] for line in err.splitlines()]
    # The hooks are proven before the config is applied; no hook is left off here.
    assert events[:2] == ["hooks.enabled", "config.loaded"]
    assert "connect.ok" in events
    assert events[-1] == "shutdown.complete"


def _check_demo(proc: subprocess.Popen[str]) -> None:
    url = read_line(proc, r"metrics at (http://\S+/metrics)").group(1)
    deadline = time.monotonic() + 10
    rtt_count = 0.0
    while time.monotonic() < deadline:
        samples = scrape(url)
        rtt_count = sum(
            v for (name, _), v in samples.items() if name == "wsmon_probe_rtt_seconds_count"
        )
        if rtt_count > 0:
            break
        time.sleep(0.25)
    assert rtt_count > 0, "no RTT sample within 10 s"
    rtt_sum = sum(v for (name, _), v in samples.items() if name == "wsmon_probe_rtt_seconds_sum")
    assert rtt_sum > 0


def _stop(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def test_demo_shows_rtt_within_10s() -> None:
    """`wsmon demo` prints the metrics URL and serves non-zero RTT samples within 10 s."""
    proc = subprocess.Popen(
        [*WSMON, "demo", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        _check_demo(proc)
    finally:
        _stop(proc)
    assert proc.returncode == 0


@pytest.mark.skipif(
    not (ROOT / ".venv/bin/wsmon").exists(), reason="needs `make` to have set up .venv"
)
def test_make_run_starts_the_demo() -> None:
    """`make run` runs the demo from the project's venv and prints the metrics URL."""
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "-C", str(ROOT), "run", "ARGS=--listen 127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        _check_demo(proc)
    finally:
        _stop(proc)
