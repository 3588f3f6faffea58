"""Handshake failures, backoff, and one target's trouble staying its own."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
from conftest import StartDaemon, target
from wsserver import WSTestServer

from monitor.backoff import capped, full_jitter


def free_port() -> int:
    """A loopback port with nothing listening on it (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TestBackoff:
    def test_ceiling_grows_to_max_and_stays(self) -> None:
        """The ceiling is initial * multiplier^n, capped at max, and never overflows."""
        assert [capped(1, 60, 2, n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
        assert capped(1, 60, 2, 10_000) == 60
        assert capped(5, 3, 2, 0) == 3

    def test_full_jitter_stays_within_the_window(self) -> None:
        """Every delay lies in [0, ceiling]; over many draws it uses the whole window."""
        import random

        gen = full_jitter(0.5, 8, 2, random.Random(7))
        delays = [next(gen) for _ in range(2000)]
        for n, (d, ceiling) in enumerate(delays):
            assert ceiling == capped(0.5, 8, 2, n)
            assert 0 <= d <= ceiling
        late = [d for d, _ in delays[10:]]
        assert max(late) > 7.5
        assert min(late) < 0.5


class TestConnectFailures:
    async def test_http_503_is_handshake_failure_and_retried(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """A 503 answer to the upgrade counts `reason="handshake"` on every attempt; the
        daemon keeps retrying with backoff and connects once the server accepts."""
        server.handshake_status = 503
        h = await start_daemon(target("t", server.url))
        await server.wait_for(lambda: server.http_requests >= 4)
        failures = h.value("wsmon_connect_failures_total", target="t", reason="handshake")
        assert failures >= 3
        assert h.value("wsmon_connected", target="t") == 0
        assert h.value("wsmon_up", target="t") == 0
        event = h.events("connect.failed")[0]
        assert event["reason"] == "handshake"
        assert "503" in event["error"]
        delays = [e["delay_s"] for e in h.events("reconnect.scheduled")]
        assert all(0 <= d <= 0.1 for d in delays)
        server.handshake_status = None
        await h.wait_for(lambda: h.value("wsmon_connected", target="t") == 1)
        assert h.value("wsmon_connect_attempts_total", target="t") == server.http_requests
        # The first connection ever is not a re-connection.
        assert h.value("wsmon_reconnects_total", target="t") == 0

    async def test_refused_tcp(self, start_daemon: StartDaemon) -> None:
        """Nothing listening: `reason="refused"`, retried."""
        h = await start_daemon(target("t", f"ws://127.0.0.1:{free_port()}/ws"))
        await h.wait_for(
            lambda: h.value("wsmon_connect_failures_total", target="t", reason="refused") >= 3
        )
        assert h.value("wsmon_connect_attempts_total", target="t") >= 3

    async def test_handshake_timeout(self, start_daemon: StartDaemon) -> None:
        """A server that accepts TCP but never answers the upgrade: `reason="timeout"`."""
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(16)
            port = listener.getsockname()[1]
            h = await start_daemon(
                target("t", f"ws://127.0.0.1:{port}/ws", connect_timeout="150ms")
            )
            await h.wait_for(
                lambda: h.value("wsmon_connect_failures_total", target="t", reason="timeout") >= 2
            )

    def test_unresolvable_name_is_dns(self) -> None:
        """An unresolvable host name counts `reason="dns"` and is retried.

        Runs in a fresh network namespace holding only loopback, so the lookup fails
        without a single packet leaving the machine.
        """
        unshare = shutil.which("unshare")
        assert unshare, "util-linux `unshare` is needed for the DNS test"
        script = textwrap.dedent(
            """
            import asyncio, io, json, random, yaml
            from monitor import config
            from monitor.app import Daemon
            from monitor.log import Logging

            async def main():
                doc = {"listen": "127.0.0.1:0", "targets": [{
                    "name": "t", "url": "wss://wsmon-test.invalid/ws",
                    "reconnect": {"initial_delay": "10ms", "max_delay": "50ms"}}]}
                cfg = config.loads(yaml.safe_dump(doc))
                log = io.StringIO()
                d = Daemon(cfg, Logging("json", "info", stream=log), rng=random.Random(1))
                await d.start()
                get = d.registry.get_sample_value
                for _ in range(300):
                    n = get("wsmon_connect_failures_total", {"target": "t", "reason": "dns"})
                    if n and n >= 3:
                        break
                    await asyncio.sleep(0.01)
                await d.stop()
                reasons = ("dns", "refused", "timeout", "tls", "handshake", "other")
                print(json.dumps({r: get("wsmon_connect_failures_total",
                                         {"target": "t", "reason": r}) or 0 for r in reasons}))

            asyncio.run(main())
            """
        )
        proc = subprocess.run(
            [unshare, "--net", "sh", "-c", 'ip link set lo up; exec "$0" -c "$1"',
             sys.executable, script],
            capture_output=True, text=True, timeout=60, env={**os.environ},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        counts = json.loads(proc.stdout.strip().splitlines()[-1])
        assert counts["dns"] >= 3
        assert sum(v for k, v in counts.items() if k != "dns") == 0


class TestIsolation:
    async def test_misbehaving_target_does_not_disturb_others(
        self, server: WSTestServer, other_server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """While one target is dropped, refused and silenced, the other keeps one connection
        and every probe answered."""
        h = await start_daemon(target("bad", server.url), target("good", other_server.url), seed=3)
        await other_server.wait_for(lambda: other_server.open_connections == 1)
        await server.wait_for(lambda: server.open_connections == 1)
        await server.abort_all()
        await server.wait_for(lambda: server.open_connections == 1)
        await server.close_all(1011)
        server.handshake_status = 503
        await server.wait_for(lambda: server.http_requests >= server.connections + 2)
        server.handshake_status = None
        await server.wait_for(lambda: server.open_connections == 1)
        server.silent = True
        await h.wait_for(
            lambda: (
                h.value("wsmon_disconnects_total", target="bad", code="1011", origin="local") == 1
            )
        )
        assert other_server.connections == 1
        assert h.value("wsmon_reconnects_total", target="good") == 0
        assert h.value("wsmon_probe_timeouts_total", target="good", probe="ping") == 0
        assert h.value("wsmon_up", target="good") == 1
        sent = h.value("wsmon_probes_sent_total", target="good", probe="ping")
        assert sent >= 2
        assert h.value("wsmon_probe_rtt_seconds_count", target="good", probe="ping") >= sent - 1


@pytest.mark.parametrize("n_targets", [120])
async def test_more_than_100_connections(
    n_targets: int, server: WSTestServer, start_daemon: StartDaemon
) -> None:
    """Past the aiohttp default limit of 100 connections every target still connects."""
    targets = [target(f"t{i}", server.url) for i in range(n_targets)]
    h = await start_daemon(*targets)
    await server.wait_for(lambda: server.open_connections == n_targets, timeout=20)
    await h.wait_for(
        lambda: all(h.value("wsmon_connected", target=f"t{i}") == 1 for i in range(n_targets))
    )
