"""A fleet of real wsmon processes on loopback sharing one config and one test server: each
target connected exactly once (or twice with replicas 2) by the server's count, exported by
its owners only; a fourth shard takes only its share; a shard lost and back is seen by a real
Prometheus's alerts."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from test_deploy import Prometheus
from wsserver import WSTestServer

from monitor.sharding import owners

TARGETS = 60


def fleet_config(server: WSTestServer, count: int, replicas: int = 1) -> dict[str, Any]:
    return {
        "listen": "127.0.0.1:0",
        "sharding": {"count": count, "replicas": replicas},
        "defaults": {"probes": [], "reconnect": {"initial_delay": "50ms", "max_delay": "200ms"}},
        "targets": [{"name": f"t{i}", "url": f"{server.url}?t={i}"} for i in range(TARGETS)],
    }


class Shard:
    """`wsmon run --shard-from-hostname`, the index from HOSTNAME as in a StatefulSet."""

    def __init__(self, config: Path, index: int, tmp: Path, port: int = 0) -> None:
        self.index = index
        self.log = tmp / f"shard-{index}.log"
        listen = f"127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(config), "--listen", listen,
             "--log-format", "json", "--shard-from-hostname"],
            env={**os.environ, "HOSTNAME": f"wsmon-{index}"},
            stdout=subprocess.DEVNULL, stderr=self.log.open("w"),
        )  # fmt: skip
        self.port = port

    async def started(self, timeout: float = 20.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            for line in self.log.read_text().splitlines():
                event = json.loads(line)
                if event["event"] == "config.loaded":
                    self.port = int(event["listen"].rsplit(":", 1)[1])
                    return
            await asyncio.sleep(0.05)
        raise AssertionError(f"shard {self.index} did not start: {self.log.read_text()}")

    async def connected(self) -> set[str]:
        """The targets this shard exports as connected."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            text = await r.text()
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        return {
            s.labels["target"] for s in self.families["wsmon_connected"].samples if s.value == 1
        }

    def value(self, family: str) -> float:
        (sample,) = self.families[family].samples
        return float(sample.value)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
async def fleet(tmp_path: Path) -> Any:
    started: list[Shard] = []

    async def start(config: Path, index: int, port: int = 0) -> Shard:
        shard = Shard(config, index, tmp_path, port)
        started.append(shard)
        await shard.started()
        return shard

    yield start
    for shard in started:  # all told at once, then waited for
        if shard.proc.poll() is None:
            shard.proc.send_signal(signal.SIGTERM)
    for shard in started:
        shard.stop()


async def until(check: Any, what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not within {timeout}s")
        await asyncio.sleep(0.1)


async def test_three_shards_then_four(server: WSTestServer, fleet: Any, tmp_path: Path) -> None:
    """Three shards connect each of 60 targets exactly once, and each is exported by its one
    owner; a fourth shard (the count raised by a reload of the others) takes over exactly
    the targets it now owns, about a quarter, and no other target is reconnected."""
    config = tmp_path / "fleet.yaml"
    config.write_text(yaml.safe_dump(fleet_config(server, 3)))
    shards = [await fleet(config, i) for i in range(3)]

    async def covered() -> bool:
        if len(server.upgrade_paths) < TARGETS:
            return False
        for s in shards:
            share = sum(1 for i in range(TARGETS) if s.index in owners(f"t{i}", 3))
            if len(await s.connected()) != share:
                return False
        return True

    await until(covered, "every target connected")
    seen = collections.Counter(server.upgrade_paths)
    assert sorted(seen.values()) == [1] * TARGETS
    by_shard = [await s.connected() for s in shards]
    assert set().union(*by_shard) == {f"t{i}" for i in range(TARGETS)}
    assert sum(len(x) for x in by_shard) == TARGETS  # no target on two shards
    for s in shards:
        assert s.value("wsmon_config_targets") == TARGETS
        (info,) = s.families["wsmon_shard_info"].samples
        assert info.labels == {"index": str(s.index), "count": "3", "replicas": "1"}
    assert sum(shard.value("wsmon_targets") for shard in shards) == TARGETS

    config.write_text(yaml.safe_dump(fleet_config(server, 4)))
    for s in shards:
        s.proc.send_signal(signal.SIGHUP)
    shards.append(await fleet(config, 3))

    async def moved() -> bool:
        parts = [await s.connected() for s in shards]
        return sum(len(x) for x in parts) == TARGETS and set().union(*parts) == {
            f"t{i}" for i in range(TARGETS)
        }

    await until(moved, "the fourth shard's targets moved")
    fourth = {f"t{i}" for i in range(TARGETS) if owners(f"t{i}", 4) == [3]}
    assert await shards[3].connected() == fourth
    assert len(fourth) <= TARGETS / 4 + 8
    seen = collections.Counter(server.upgrade_paths)
    assert {t for t, n in seen.items() if n == 2} == {f"/ws?t={t[1:]}" for t in fourth}
    assert sum(seen.values()) == TARGETS + len(fourth)


async def test_two_replicas_connect_each_target_twice(
    server: WSTestServer, fleet: Any, tmp_path: Path
) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text(yaml.safe_dump(fleet_config(server, 3, replicas=2)))
    shards = [await fleet(config, i) for i in range(3)]

    async def twice() -> bool:
        return len(server.upgrade_paths) >= 2 * TARGETS

    await until(twice, "each target on two shards")
    await asyncio.sleep(0.3)  # and no more
    assert sorted(collections.Counter(server.upgrade_paths).values()) == [2] * TARGETS
    parts = [await s.connected() for s in shards]
    for i in range(TARGETS):
        assert sum(f"t{i}" in p for p in parts) == 2


async def test_a_lost_shard_fires_the_fleet_alerts(
    server: WSTestServer, fleet: Any, tmp_path: Path
) -> None:
    """A real Prometheus scraping three shards: killing one fires WsmonDown for it and
    WsmonTargetsUnmonitored for its targets; bringing it back resolves both."""
    config = tmp_path / "fleet.yaml"
    config.write_text(yaml.safe_dump(fleet_config(server, 3)))
    shards = [await fleet(config, i) for i in range(3)]
    prom = Prometheus(tmp_path / "prom", [s.port for s in shards])
    try:

        async def alerts(http: aiohttp.ClientSession) -> dict[str, list[dict[str, Any]]]:
            body = await prom.get(http, "/api/v1/alerts")
            found: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
            for a in body["data"]["alerts"]:
                if a["state"] == "firing":
                    found[a["labels"]["alertname"]].append(a)
            return found

        async def all_up(http: aiohttp.ClientSession) -> bool:
            body = await prom.get(http, "/api/v1/query", query='count(up{job="wsmon"} == 1)')
            result = body["data"]["result"]
            return bool(result) and result[0]["value"][1] == "3"

        await prom.until(all_up, "three shards scraped")
        lost = shards[1]
        owned = sum(1 for i in range(TARGETS) if owners(f"t{i}", 3) == [1])
        lost.stop()

        async def fired(http: aiohttp.ClientSession) -> Any:
            now = await alerts(http)
            return now if {"WsmonDown", "WsmonTargetsUnmonitored"} <= set(now) else None

        now = await prom.until(fired, "WsmonDown and WsmonTargetsUnmonitored firing")
        (down,) = now["WsmonDown"]
        assert down["labels"]["instance"] == f"127.0.0.1:{lost.port}"
        (unmonitored,) = now["WsmonTargetsUnmonitored"]
        assert float(unmonitored["value"]) == owned

        back = await fleet(config, 1, port=lost.port)
        assert back.port == lost.port

        async def resolved(http: aiohttp.ClientSession) -> bool:
            now = await alerts(http)
            return not ({"WsmonDown", "WsmonTargetsUnmonitored"} & set(now))

        await prom.until(resolved, "both resolved")
    finally:
        prom.stop()
