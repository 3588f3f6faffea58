"""Reload (SIGHUP, POST /-/reload) as a diff of targets, and a bounded graceful shutdown."""

from __future__ import annotations

import asyncio
import io
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from conftest import Harness, target
from wsprocess import ServerProcess
from wsserver import WSTestServer

from monitor import config
from monitor.aiohooks import Hooks
from monitor.app import Daemon
from monitor.collector import FREEZE_EVERY, SETTLE_FOR
from monitor.log import Logging


def write(path: Path, *targets: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump({"listen": "127.0.0.1:0", "targets": list(targets)}))


@pytest.fixture
async def from_file(tmp_path: Path, proven_hooks: Hooks) -> AsyncIterator[Any]:
    """Start a daemon from a config file that the test may rewrite and reload."""
    daemons: list[Daemon] = []
    path = tmp_path / "config.yaml"

    async def start(*targets: dict[str, Any]) -> tuple[Harness, Path]:
        write(path, *targets)
        stream = io.StringIO()
        d = Daemon(
            config.load(path),
            Logging("json", "info", stream=stream),
            config_path=path,
            rng=random.Random(1),
            stop_timeout=2.0,
            hooks=proven_hooks,
        )
        daemons.append(d)
        await d.start()
        return Harness(d, stream), path

    yield start
    for d in daemons:
        await d.stop()


async def test_reload_is_a_diff(
    server: WSTestServer, other_server: WSTestServer, from_file: Any
) -> None:
    """Unchanged targets keep their connection (no new handshake), removed ones close with
    1001 (going away) and their series disappear, new ones start, changed ones restart."""
    third = WSTestServer()
    await third.start()
    try:
        keep = target("keep", server.url)
        gone = target("gone", other_server.url)
        changed = target("changed", third.url)
        h, path = await from_file(keep, gone, changed)
        await server.wait_for(lambda: server.open_connections == 1)
        await other_server.wait_for(lambda: other_server.open_connections == 1)
        await third.wait_for(lambda: third.open_connections == 1)
        assert h.exists("wsmon_up", target="gone")

        new_changed = {**changed, "connect_timeout": "2s"}
        added = target("added", server.url)
        write(path, keep, new_changed, added)
        assert await h.daemon.reload()

        await other_server.wait_for(lambda: other_server.close_frames == [1001])
        await third.wait_for(lambda: third.connections == 2 and third.open_connections == 1)
        assert third.close_frames == [1001]
        await server.wait_for(lambda: server.connections == 2 and server.open_connections == 2)
        await h.wait_for(lambda: h.value("wsmon_connected", target="added") == 1)
        # `keep` never saw a second handshake: server.connections == 2 is keep + added.
        assert h.value("wsmon_reconnects_total", target="keep") == 0
        assert h.value("wsmon_connect_attempts_total", target="keep") == 1
        for family in ("wsmon_up", "wsmon_connected", "wsmon_connect_attempts_total"):
            assert not h.exists(family, target="gone")
        assert not h.exists("wsmon_probes_sent_total", target="gone", probe="ping")
        assert h.value("wsmon_targets") == 3
        assert h.value("wsmon_config_last_reload_successful") == 1
        (event,) = [e for e in h.events("config.loaded") if "added" in e]
        assert (event["added"], event["removed"], event["changed"]) == (
            ["added"], ["gone"], ["changed"]
        )  # fmt: skip
    finally:
        await third.stop()


async def test_small_daemon_gc_schedule_sleeps_until_a_reload(
    server: WSTestServer, from_file: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below FREEZE_FROM targets the gc schedule has nothing to do once the settled
    daemon's full collection ran: it stops waking the loop, and a reload that changes the
    targets starts it again (the new targets get their own full collection)."""
    h, path = await from_file(target("a", server.url))
    c = h.daemon.collector
    ticks = 0
    tick = c.tick

    def counting(settled: bool, targets: int) -> None:
        nonlocal ticks
        ticks += 1
        tick(settled, targets)

    monkeypatch.setattr(c, "tick", counting)
    await h.wait_for(lambda: c.full_collections >= 1, timeout=10)
    await asyncio.sleep(FREEZE_EVERY)  # the tick that ran the collection has returned
    ticks = 0
    await asyncio.sleep(4 * FREEZE_EVERY)
    assert ticks == 0, "the schedule kept waking up with nothing to do"

    write(path, target("a", server.url), target("b", server.url))
    assert await h.daemon.reload()
    await h.wait_for(lambda: c.full_collections >= 2, timeout=10)
    assert ticks >= SETTLE_FOR / FREEZE_EVERY


async def test_invalid_reload_keeps_running_config(server: WSTestServer, from_file: Any) -> None:
    """A bad new config is rejected whole: the old one keeps running, the reload gauge reads
    0, the log says exactly what is wrong; a later good reload sets it back to 1."""
    h, path = await from_file(target("keep", server.url))
    await server.wait_for(lambda: server.open_connections == 1)
    before = h.value("wsmon_config_last_reload_success_timestamp_seconds")
    path.write_text(
        "targets:\n  - {name: keep, url: 'ws://x/'}\n"
        "  - {name: new, url: 'http://y/', intervl: 1}\n"
    )
    assert not await h.daemon.reload()
    assert h.value("wsmon_config_last_reload_successful") == 0
    assert h.value("wsmon_config_last_reload_success_timestamp_seconds") == before
    (event,) = h.events("config.reload_failed")
    assert event["problems"] == [
        "targets[1].url: URL scheme must be ws or wss, not 'http'",
        "targets[1].intervl: unknown key",
    ]
    await asyncio.sleep(0.3)
    assert server.connections == 1
    assert server.close_frames == []
    assert h.value("wsmon_connected", target="keep") == 1
    assert not h.exists("wsmon_up", target="new")
    write(path, target("keep", server.url))
    assert await h.daemon.reload()
    assert h.value("wsmon_config_last_reload_successful") == 1


async def test_metrics_block_and_probe_buckets_on_reload(
    server: WSTestServer, from_file: Any
) -> None:
    """A changed `metrics` block is kept as it was until a restart (`config.restart_needed`),
    the rest of the reload applies; a probe's new `rtt_buckets` take effect at once, its
    histogram starting again from 0 with the new bounds."""
    probe = {"name": "ping", "send": {"ping": 1}, "interval": "50ms", "timeout": "40ms"}
    h, path = await from_file(target("t", server.url, probes=[probe]))
    labels = {"target": "t", "probe": "ping"}
    await h.wait_for(lambda: h.value("wsmon_probe_rtt_seconds_count", **labels) >= 1)
    doc = yaml.safe_load(path.read_text())
    doc["metrics"] = {"histograms": "native"}
    doc["targets"][0]["probes"][0]["rtt_buckets"] = [0.2, 0.4]
    path.write_text(yaml.safe_dump(doc))
    assert await h.daemon.reload()
    (event,) = h.events("config.restart_needed")
    assert event["keys"] == ["metrics"]
    assert h.daemon.metrics.options.histograms == "classic"
    await h.wait_for(lambda: h.value("wsmon_probe_rtt_seconds_count", **labels) >= 1)
    assert h.exists("wsmon_probe_rtt_seconds_bucket", **labels, le="0.4")
    assert not h.exists("wsmon_probe_rtt_seconds_bucket", **labels, le="0.005")


async def test_reload_over_http(server: WSTestServer, from_file: Any) -> None:
    """POST /-/reload re-reads the file: 200 when applied, 400 listing the problems if not."""
    h, path = await from_file(target("a", server.url))
    async with aiohttp.ClientSession() as http:
        write(path, target("a", server.url), target("b", server.url))
        async with http.post(f"{h.base_url}/-/reload") as r:
            assert r.status == 200
        await server.wait_for(lambda: server.open_connections == 2)
        path.write_text("targets: [{name: a, url: 'ws://h/', bogus: 1}]\n")
        async with http.post(f"{h.base_url}/-/reload") as r:
            assert r.status == 400
            assert await r.text() == "targets[0].bogus: unknown key\n"
    assert h.value("wsmon_targets") == 2


async def test_sighup_reloads_the_running_process(server: WSTestServer, tmp_path: Path) -> None:
    """SIGHUP to `wsmon run` applies an edited file without dropping kept connections."""
    path = tmp_path / "c.yaml"
    write(path, target("a", server.url))
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor", "run", "--config", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        await server.wait_for(lambda: server.open_connections == 1, timeout=10)
        write(path, target("a", server.url), target("b", server.url))
        proc.send_signal(signal.SIGHUP)
        await server.wait_for(lambda: server.open_connections == 2, timeout=10)
        assert server.connections == 2
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        proc.kill()
        _, err = proc.communicate()
    loaded = [json.loads(line) for line in err.splitlines() if "config.loaded" in line]
    assert loaded[-1]["added"] == ["b"]
    assert sorted(server.close_frames) == [1001, 1001]


async def test_sigterm_exits_within_5s_when_server_ignores_close(tmp_path: Path) -> None:
    """With a frozen server that will never answer the close frame, SIGTERM still ends
    the process with status 0 in under 5 s."""
    frozen = ServerProcess()
    path = tmp_path / "c.yaml"
    write(path, target("a", frozen.url, close_timeout="10s"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor", "run", "--config", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        await frozen.wait_for(lambda s: s["open_connections"] == 1)
        frozen.freeze()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(proc.wait, 10)
        elapsed = time.monotonic() - started
    finally:
        proc.kill()
        proc.communicate()
        frozen.stop()
    assert rc == 0
    assert elapsed < 5.0
