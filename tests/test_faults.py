"""The fault matrix: every way a WebSocket can fail, survived and reported truthfully.

Each test injects one fault into a real server on 127.0.0.1 and checks four things: the
daemon keeps running and a healthy neighbour target is undisturbed, the metrics equal what
the server saw, a log event carries the facts, and detection happens within its bound.
"""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import Harness, StartDaemon, closed_port, target
from wsprocess import ServerProcess
from wsserver import WSTestServer

from monitor.aiohooks import Hooks

PING = {"name": "ping", "send": {"ping": 1}, "expect": {"msg_type": "ping"}}


def undisturbed(h: Harness, neighbour: WSTestServer) -> None:
    """The healthy neighbour kept its one connection and every probe answered."""
    assert neighbour.connections == 1
    assert h.value("wsmon_disconnects_total", target="good", code="1006", origin="network") == 0
    assert h.value("wsmon_reconnects_total", target="good") == 0
    assert h.value("wsmon_probe_timeouts_total", target="good", probe="ping") == 0
    assert h.value("wsmon_up", target="good") == 1


async def with_neighbour(
    start_daemon: StartDaemon, bad: dict[str, Any], neighbour: WSTestServer
) -> Harness:
    h = await start_daemon(bad, target("good", neighbour.url))
    await neighbour.wait_for(lambda: neighbour.open_connections == 1)
    await h.wait_for(lambda: h.value("wsmon_up", target="good") == 1)
    return h


@pytest.fixture
async def server_process() -> AsyncIterator[ServerProcess]:
    proc = ServerProcess()
    try:
        yield proc
    finally:
        proc.stop()


class TestCloseFrames:
    @pytest.mark.parametrize("code", [1000, 1001, 1011, 4000, 4321, 4999])
    async def test_close_code_counted_as_peer(
        self, code: int, server: WSTestServer, other_server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """A close frame with `code` counts once with that code and origin peer; the
        target reconnects; the event log says so."""
        h = await with_neighbour(start_daemon, target("bad", server.url), other_server)
        await server.wait_for(lambda: server.open_connections == 1)
        await server.close_all(code, b"bye")
        await server.wait_for(lambda: server.connections == 2 and server.open_connections == 1)
        await h.wait_for(lambda: h.value("wsmon_connected", target="bad") == 1)
        assert h.value("wsmon_disconnects_total", target="bad", code=str(code), origin="peer") == 1
        assert h.value("wsmon_last_close_code", target="bad") == code
        assert h.value("wsmon_reconnects_total", target="bad") == 1
        (event,) = h.events("disconnect")
        assert (event["code"], event["origin"], event["reason"]) == (code, "peer", "bye")
        # The daemon completed the closing handshake, echoing the code.
        assert server.close_frames == [code]
        undisturbed(h, other_server)

    @pytest.mark.parametrize("code", [1012, 1013])
    async def test_restart_codes_wait_initial_delay(
        self, code: int, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """1012 (service restart) and 1013 (try again later) wait at least initial_delay."""
        reconnect = {"initial_delay": "250ms", "max_delay": "300ms", "reset_after": "10s"}
        h = await start_daemon(target("bad", server.url, reconnect=reconnect))
        await server.wait_for(lambda: server.open_connections == 1)
        await server.close_all(code)
        closed = asyncio.get_running_loop().time()
        await server.wait_for(lambda: server.connections == 2, timeout=3)
        assert server.accepted_at[1] - closed >= 0.25
        assert h.value("wsmon_disconnects_total", target="bad", code=str(code), origin="peer") == 1

    async def test_close_frame_without_status_is_1005(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """A close frame with no status code counts as 1005, origin peer."""
        h = await start_daemon(target("bad", server.url))
        await server.wait_for(lambda: server.open_connections == 1)
        await server.close_no_status_all()
        await server.wait_for(lambda: server.connections == 2)
        await h.wait_for(lambda: h.value("wsmon_reconnects_total", target="bad") == 1)
        assert h.value("wsmon_disconnects_total", target="bad", code="1005", origin="peer") == 1
        assert h.value("wsmon_disconnects_total", target="bad", code="1006", origin="network") == 0
        assert h.events("disconnect")[0]["code"] == 1005


class TestLostConnections:
    @pytest.mark.parametrize("how", ["abort_all", "fin_all"])
    async def test_no_close_frame_is_1006_and_backs_off(
        self, how: str, server: WSTestServer, other_server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """RST or FIN without a close frame: 1006 network, then a scheduled reconnect."""
        h = await with_neighbour(start_daemon, target("bad", server.url), other_server)
        await server.wait_for(lambda: server.open_connections == 1)
        await getattr(server, how)()
        await server.wait_for(lambda: server.connections == 2)
        await h.wait_for(lambda: h.value("wsmon_reconnects_total", target="bad") == 1)
        assert h.value("wsmon_disconnects_total", target="bad", code="1006", origin="network") == 1
        (event,) = h.events("disconnect")
        assert (event["code"], event["origin"]) == (1006, "network")
        (scheduled,) = h.events("reconnect.scheduled")
        assert 0 <= scheduled["delay_s"] <= scheduled["ceiling_s"] == 0.02
        undisturbed(h, other_server)

    @pytest.mark.parametrize(
        "pad", [0, 3 << 20, 12 << 20], ids=["small", "fills-socket-buffer", "exceeds-it"]
    )
    async def test_frozen_server_process_detected_and_recovered(
        self,
        pad: int,
        server_process: ServerProcess,
        other_server: WSTestServer,
        start_daemon: StartDaemon,
    ) -> None:
        """A server frozen with SIGSTOP (the kernel still holds and ACKs its sockets) is
        declared dead within 2 x (interval + timeout); after SIGCONT the target recovers.
        With 3 MiB requests the socket buffers fill and sends wait for room that never
        comes: no request queues up behind them (one that finds the last still unwritten
        counts as `send_failed`), a request stuck unwritten (the first at 12 MiB: it cannot
        fit) times out like any other, and closing gives up after close_timeout plus one
        second."""
        # A round trip of megabytes needs more than 0.1 s on a busy machine: longer times
        # then (and room for the reply, which echoes the request).
        interval, timeout = {0: (0.2, 0.1), 3 << 20: (0.8, 0.5)}.get(pad, (1.5, 1.0))
        send = {"ping": 1, "pad": "x" * pad} if pad else PING["send"]
        probes = [{**PING, "send": send, "interval": f"{interval}s", "timeout": f"{timeout}s"}]
        bad = target(
            "bad", server_process.url, probes=probes, close_timeout="100ms",
            max_msg_size=32 << 20,
        )  # fmt: skip
        h = await with_neighbour(start_daemon, bad, other_server)
        await h.wait_for(lambda: h.value("wsmon_up", target="bad") == 1, timeout=10)
        loop = asyncio.get_running_loop()
        close_bound = 0.1 + 1.0 if pad else 0.0
        bound = 2 * (interval + timeout) + 0.1 + close_bound
        server_process.freeze()
        frozen = loop.time()
        try:
            await h.wait_for(
                lambda: (
                    h.value("wsmon_disconnects_total", target="bad", code="1011", origin="local")
                    == 1
                ),
                timeout=bound + 2.0,
            )
            assert loop.time() - frozen <= bound
            assert h.value("wsmon_up", target="bad") == 0
            probe = {"target": "bad", "probe": "ping"}
            timeouts = h.value("wsmon_probe_timeouts_total", **probe)
            assert 1 <= timeouts <= h.value("wsmon_probes_sent_total", **probe)
        finally:
            server_process.thaw()
        await h.wait_for(lambda: h.value("wsmon_up", target="bad") == 1, timeout=10)
        stats = await server_process.stats()
        assert h.value("wsmon_connect_attempts_total", target="bad") == stats["http_requests"]
        undisturbed(h, other_server)


class TestHandshakeFailures:
    @pytest.mark.parametrize("status", [401, 403, 404, 503, 200])
    async def test_refused_upgrade_is_handshake(
        self, status: int, server: WSTestServer, other_server: WSTestServer,
        start_daemon: StartDaemon,
    ) -> None:  # fmt: skip
        """An HTTP answer other than 101 (200: a plain HTTP server that never upgrades)
        counts `reason="handshake"` once per request the server saw, status in the log."""
        server.handshake_status = status
        h = await with_neighbour(start_daemon, target("bad", server.url), other_server)
        await server.wait_for(lambda: server.http_requests >= 3)
        await h.daemon.supervisor.runners["bad"].stop(1000, 1.0)  # type: ignore[union-attr]
        failures = h.value("wsmon_connect_failures_total", target="bad", reason="handshake")
        assert failures == server.http_requests
        assert h.value("wsmon_connect_attempts_total", target="bad") == server.http_requests
        assert f"HTTP {status}" in h.events("connect.failed")[0]["error"]
        undisturbed(h, other_server)

    async def test_backoff_grows_to_max_delay_and_never_beyond(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """Consecutive failures double the window up to max_delay and keep it there."""
        server.handshake_status = 503
        reconnect = {"initial_delay": "5ms", "max_delay": "40ms", "multiplier": 2}
        h = await start_daemon(target("bad", server.url, reconnect=reconnect))
        await h.wait_for(lambda: len(h.events("reconnect.scheduled")) >= 8)
        events = h.events("reconnect.scheduled")
        ceilings = [e["ceiling_s"] for e in events[:8]]
        assert ceilings == [0.005, 0.01, 0.02, 0.04, 0.04, 0.04, 0.04, 0.04]
        assert all(0 <= e["delay_s"] <= e["ceiling_s"] <= 0.04 for e in events)
        assert [e["attempt"] for e in events[:8]] == list(range(1, 9))

    async def test_slow_handshake_times_out_within_10_percent(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """A server slower than connect_timeout: `reason="timeout"` within timeout + 10%."""
        server.handshake_delay = 5.0
        h = await start_daemon(target("bad", server.url, connect_timeout="300ms"))
        await h.wait_for(
            lambda: h.value("wsmon_connect_failures_total", target="bad", reason="timeout") >= 2
        )
        for event in h.events("connect.failed")[:2]:
            assert event["reason"] == "timeout"
            assert 300 <= event["duration_ms"] <= 330


class TestBadReplies:
    async def test_duplicate_reply_counted_once(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """A reply sent twice answers its probe once; the copy is an unknown id."""

        def twice(req: dict[str, Any]) -> list[str | bytes]:
            reply = json.dumps({"msg_type": "ping", "ping": "pong", "req_id": req["req_id"]})
            return [reply, reply]

        server.responder = twice
        h = await start_daemon(target("bad", server.url))
        await server.wait_for(lambda: server.request_count("ping") >= 4)
        await h.daemon.stop()
        answered = h.value("wsmon_probe_rtt_seconds_count", target="bad", probe="ping")
        assert answered == server.request_count("ping")
        assert h.value("wsmon_unmatched_messages_total", target="bad", reason="unknown_id") == (
            answered
        )
        assert h.value("wsmon_messages_received_total", target="bad") == 2 * answered

    async def test_reply_over_max_msg_size_closes_1009(
        self, server: WSTestServer, other_server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """A reply larger than max_msg_size ends the connection with 1009 (sent by us),
        counted once per oversized reply, and the target reconnects."""
        server.responder = lambda req: [json.dumps({"req_id": req["req_id"], "pad": "x" * 4096})]
        h = await with_neighbour(
            start_daemon, target("bad", server.url, max_msg_size=1024), other_server
        )
        await server.wait_for(lambda: server.connections >= 3)
        await h.wait_for(
            lambda: (
                h.value("wsmon_disconnects_total", target="bad", code="1009", origin="local") >= 2
            )
        )
        assert 1009 in server.close_frames
        assert h.events("disconnect")[0]["code"] == 1009
        undisturbed(h, other_server)


class TestLiveliness:
    async def test_server_pings_answered_and_never_closed(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """A server that pings and closes clients which do not pong keeps our connection:
        every server ping got its pong."""
        server.ping_interval = 0.05
        server.close_unponged = True
        h = await start_daemon(target("bad", server.url))
        await server.wait_for(lambda: server.server_pings_sent >= 15)
        assert server.connections == 1
        assert server.pongs_received >= server.server_pings_sent - 1
        assert h.value("wsmon_connected", target="bad") == 1
        assert not h.events("disconnect")

    async def test_short_idle_timeout_never_reached(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """A server idle timeout of 600 ms with a 200 ms probe interval (the 3 s / 1 s case,
        time scaled by 5): zero disconnects over 4 s."""
        server.idle_timeout = 0.6
        probes = [{**PING, "interval": "200ms", "timeout": "100ms"}]
        h = await start_daemon(target("bad", server.url, probes=probes))
        await asyncio.sleep(4.0)
        assert server.idle_closes == 0
        assert server.connections == 1
        assert h.value("wsmon_disconnects_total", target="bad", code="1001", origin="peer") == 0
        assert h.value("wsmon_probes_sent_total", target="bad", probe="ping") >= 15

    async def test_idle_timeout_is_noticed_when_probes_are_too_rare(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """The control case: with a probe interval longer than the idle timeout, the
        server's 1001 closes are counted (so the test above could fail)."""
        server.idle_timeout = 0.2
        probes = [{**PING, "interval": "1s", "timeout": "100ms"}]
        h = await start_daemon(target("bad", server.url, probes=probes))
        await h.wait_for(
            lambda: (
                h.value("wsmon_disconnects_total", target="bad", code="1001", origin="peer") >= 1
            )
        )
        assert server.idle_closes >= 1

    async def test_rtt_true_under_a_1000_per_second_stream(
        self, server_process: ServerProcess, start_daemon: StartDaemon, receive_path: Hooks
    ) -> None:
        """With 1,000 subscription messages per second on the same connection, probe RTTs
        stay within 2 ms of the delay the server actually held the replies, on average.
        Without the read stamp (the portable path) a round trip ends when the receive loop
        gets its turn, behind the stream's messages: within 5 ms."""
        mean_slack, sample_slack = (0.002, 0.005) if receive_path.stamp else (0.005, 0.010)
        await server_process.control(reply_delay=0.02, stream_rate=1000)
        probes = [{**PING, "interval": "100ms", "timeout": "80ms"}]
        h = await start_daemon(target("bad", server_process.url, probes=probes))
        rtts: list[float] = []

        def collect() -> bool:
            count = h.value("wsmon_probe_rtt_seconds_count", target="bad", probe="ping")
            if count > len(rtts):
                rtts.append(h.value("wsmon_probe_last_rtt_seconds", target="bad", probe="ping"))
            return len(rtts) >= 15

        await h.wait_for(collect, timeout=10)
        await h.daemon.stop()
        stats = await server_process.stats()
        holds = stats["reply_holds"]
        assert stats["streamed"] >= 1000
        # The ticks carry no req_id: a push while no request waits is `unsolicited`, one
        # that arrives while a probe waits `missing_id` (it could be that reply, broken).
        pushed = [
            h.value("wsmon_unmatched_messages_total", target="bad", reason=reason)
            for reason in ("unsolicited", "missing_id")
        ]
        assert sum(pushed) >= 1000
        assert min(pushed) > 0
        total = h.value("wsmon_probe_rtt_seconds_sum", target="bad", probe="ping")
        count = h.value("wsmon_probe_rtt_seconds_count", target="bad", probe="ping")
        # The last reply may still have been on its way when the daemon stopped.
        assert len(holds) - 1 <= count <= len(holds)
        holds = holds[: int(count)]
        mean_rtt, mean_hold = total / count, sum(holds) / len(holds)
        assert mean_hold <= mean_rtt <= mean_hold + mean_slack
        # Each sample: never below the hold, and never far above the longest one (a daemon
        # slowed by the stream would add tens of ms), with room for a busy machine.
        assert all(0.020 <= r <= max(holds) + sample_slack for r in rtts), (rtts, max(holds))


def _blackhole(keepalive_idle: float, wait: float) -> dict[str, Any]:
    unshare = shutil.which("unshare")
    assert unshare, "util-linux `unshare` is needed for the black hole test"
    script = Path(__file__).parent / "blackhole.py"
    proc = subprocess.run(
        [unshare, "--net", sys.executable, str(script), str(keepalive_idle), str(wait)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


class TestBlackHole:
    def test_vanished_peer_detected_without_probes(self) -> None:
        """A peer whose link goes silent (no FIN, no RST, every packet lost) is detected by
        TCP keepalive alone, with no probe configured: idle 1 s + 2 x 0.5 s unanswered
        keepalives, counted as 1006 network."""
        result = _blackhole(keepalive_idle=1.0, wait=6.0)
        assert result["detected_s"] is not None
        assert 1.5 <= result["detected_s"] <= 3.5
        assert result["network_1006"] == 1
        (event,) = [e for e in result["events"] if e["event"] == "disconnect"]
        assert (event["code"], event["origin"]) == (1006, "network")

    def test_control_without_short_keepalive_nothing_is_noticed(self) -> None:
        """The control case: with a 30 s keepalive idle time the same black hole goes
        unnoticed for the 3 s the first test needed."""
        result = _blackhole(keepalive_idle=30.0, wait=3.0)
        assert result["detected_s"] is None
        assert result["network_1006"] == 0


async def test_thundering_herd_is_spread_and_bounded(
    server: WSTestServer, start_daemon: StartDaemon
) -> None:
    """500 targets lose their connection at once: no more than max_concurrent_handshakes
    (default 50) handshakes run at once, and reconnects spread over the backoff window."""
    server.handshake_delay = 0.01  # a handshake the server can see in progress
    n, window = 500, 0.5
    reconnect = {"initial_delay": f"{window}s", "max_delay": "2s", "reset_after": "1s"}
    probes = [{**PING, "interval": "30s", "timeout": "5s"}]
    targets = [target(f"t{i}", server.url, reconnect=reconnect, probes=probes) for i in range(n)]
    h = await start_daemon(*targets)
    await server.wait_for(lambda: server.open_connections == n, timeout=30)
    assert 1 < server.max_concurrent_handshakes <= 50
    server.max_concurrent_handshakes = 0
    await asyncio.sleep(1.1)  # past reset_after: the next delay is drawn from [0, window]
    await server.abort_all()
    await server.wait_for(lambda: server.connections == 2 * n, timeout=30)
    assert 1 < server.max_concurrent_handshakes <= 50
    delays = [e["delay_s"] for e in h.events("reconnect.scheduled")]
    assert len(delays) == n
    assert all(0 <= d <= window for d in delays)
    # Full jitter: each fifth of the window gets about a fifth of the reconnects.
    fifths = [
        sum(1 for d in delays if k * window / 5 <= d < (k + 1) * window / 5) for k in range(5)
    ]
    assert all(60 <= f <= 140 for f in fifths), fifths
    accepted = sorted(server.accepted_at[n:])
    assert accepted[-1] - accepted[0] >= 0.6 * window
    assert h.value("wsmon_reconnects_total", target="t0") == 1


# aiohttp's client objects, which a failed connection's reference cycles used to carry along
# (the server's own, in this process too, are not ours to count).
CLIENT_KINDS = {
    "ClientWebSocketResponse", "ClientResponse", "ClientRequest", "ClientConnectorError",
    "ConnectFailed", "TimeoutError",
}  # fmt: skip


async def test_failed_connections_are_freed_without_the_cyclic_collector(
    start_daemon: StartDaemon,
) -> None:
    """A connection that dies and handshakes that fail leave nothing for the cyclic
    collector: aiohttp keeps each error in a reference cycle through its traceback (a
    connection's objects with it), which the daemon clears. Under a reconnect storm those
    cycles made memory climb for as long as the storm lasted (the collector's frozen
    schedule, monitor/collector.py, finds them late). Here: a target whose every handshake
    is refused, and one whose server upgrades and then reads nothing, so that its probes
    time out and its close is never answered, again and again."""
    upgrades = 0

    async def deaf(request: web.Request) -> web.WebSocketResponse:
        nonlocal upgrades
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        upgrades += 1
        await asyncio.sleep(3600)  # reads nothing: no reply, no close frame
        return ws

    app = web.Application()
    app.router.add_get("/ws", deaf)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fast = {"initial_delay": "10ms", "max_delay": "20ms", "reset_after": "5s"}
    probes = [{**PING, "interval": "50ms", "timeout": "40ms"}]
    gc.unfreeze()  # (what earlier tests' daemons froze)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds is kept in gc.garbage, to count
    try:
        h = await start_daemon(
            target("refused", f"ws://127.0.0.1:{closed_port()}/ws", reconnect=fast),
            target(
                "deaf", f"ws://127.0.0.1:{port}/ws", reconnect=fast, probes=probes,
                dead_after_timeouts=1, close_timeout="50ms",
            ),
        )  # fmt: skip
        refusals = ("wsmon_connect_failures_total", "refused")
        await h.wait_for(
            lambda: (
                upgrades >= 4 and h.value(refusals[0], target="refused", reason=refusals[1]) >= 30
            ),
            timeout=10,
        )
        gc.unfreeze()  # the daemon's schedule froze what lived; what died since is found too
        gc.collect()
        left = Counter(type(o).__name__ for o in gc.garbage if type(o).__name__ in CLIENT_KINDS)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        await runner.cleanup()
    assert left == Counter()
