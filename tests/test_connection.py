"""Connections, probes and close codes, checked against what the test server saw."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import pytest
from conftest import Harness, StartDaemon, require_hooks, target
from wsserver import WSTestServer

from monitor import aiohooks, probes
from monitor.aiohooks import Hooks
from monitor.correlation import Pending, Reply

PING = {"name": "ping", "send": {"ping": 1}, "expect": {"msg_type": "ping"}}


ALL_PATHS = ["hooked", "portable", "hooked-without-stamp"]


@pytest.mark.parametrize("receive_path", ALL_PATHS, indirect=True)
class TestRoundTrip:
    async def test_rtt_matches_server_delay(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """A server that delays replies by 50 ms reads 50 ms plus a few ms, never less."""
        server.reply_delay = 0.050
        buckets = [0.025, 0.05, 0.075, 0.1]  # the probe's own (the default has no 0.075)
        probes = [{**PING, "interval": "150ms", "timeout": "120ms", "rtt_buckets": buckets}]
        h = await start_daemon(target("t", server.url, probes=probes))
        seen: list[float] = []

        def sampled() -> bool:
            last = h.value("wsmon_probe_last_rtt_seconds", target="t", probe="ping")
            if last and (not seen or seen[-1] != last):
                seen.append(last)
            return h.value("wsmon_probe_rtt_seconds_count", target="t", probe="ping") >= 8

        await h.wait_for(sampled, timeout=5)
        count = h.value("wsmon_probe_rtt_seconds_count", target="t", probe="ping")
        total = h.value("wsmon_probe_rtt_seconds_sum", target="t", probe="ping")
        assert 0.050 <= total / count <= 0.058
        assert seen
        assert all(0.050 <= s <= 0.065 for s in seen), seen
        # Histogram buckets agree: nothing under 50 ms, everything under 75 ms.
        assert h.value("wsmon_probe_rtt_seconds_bucket", target="t", probe="ping", le="0.05") == 0
        assert (
            h.value("wsmon_probe_rtt_seconds_bucket", target="t", probe="ping", le="0.075") == count
        )
        assert h.value("wsmon_up", target="t") == 1

    async def test_probes_sent_equals_requests_received(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """`probes_sent_total` equals the requests the server received, per probe."""
        probes = [
            {**PING, "interval": "50ms", "timeout": "40ms"},
            {"name": "time", "send": {"time": 1}, "expect": {"msg_type": "time"},
             "interval": "70ms", "timeout": "60ms"},
        ]  # fmt: skip
        h = await start_daemon(target("t", server.url, probes=probes))
        await server.wait_for(lambda: server.request_count("time") >= 10)
        await h.daemon.stop()
        sent_ping = h.value("wsmon_probes_sent_total", target="t", probe="ping")
        sent_time = h.value("wsmon_probes_sent_total", target="t", probe="time")
        assert sent_ping == server.request_count("ping") > 0
        assert sent_time == server.request_count("time") >= 10
        assert h.value("wsmon_messages_received_total", target="t") >= sent_ping + sent_time - 2
        assert h.value("wsmon_probe_timeouts_total", target="t", probe="ping") == 0

    async def test_requests_carry_increasing_req_id(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """Each message carries the correlation field, increasing per connection from 1."""
        await start_daemon(target("t", server.url))
        await server.wait_for(lambda: len(server.requests) >= 4)
        ids = [r["req_id"] for r in server.requests[:4]]
        assert ids == [1, 2, 3, 4]
        assert all(r["ping"] == 1 for r in server.requests[:4])

    async def test_ws_ping_frames_are_timed(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """A ws-ping probe sends protocol ping frames, one per probe sent, timed to the pong."""
        probes = [{"name": "frame", "kind": "ws-ping", "interval": "50ms", "timeout": "40ms"}]
        h = await start_daemon(target("t", server.url, probes=probes))
        await server.wait_for(lambda: server.pings_received >= 5)
        await h.daemon.stop()
        assert h.value("wsmon_probes_sent_total", target="t", probe="frame") == (
            server.pings_received
        )
        answered = h.value("wsmon_probe_rtt_seconds_count", target="t", probe="frame")
        assert answered >= server.pings_received - 1
        assert 0 < h.value("wsmon_probe_last_rtt_seconds", target="t", probe="frame") < 0.040
        assert server.requests == []  # no app-level message was sent

    async def test_server_time_offset(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """A `time` reply 100 s ahead of our clock reads as a +100 s offset (within 1 s)."""

        def ahead(req: dict[str, Any]) -> list[str | bytes] | None:
            if "time" not in req:
                return None
            reply = {"msg_type": "time", "time": int(time.time()) + 100, "req_id": req["req_id"]}
            return [json.dumps(reply)]

        server.responder = ahead
        probes = [{"name": "time", "send": {"time": 1}, "interval": "50ms", "timeout": "40ms"}]
        h = await start_daemon(target("t", server.url, probes=probes))
        assert not h.exists("wsmon_server_time_offset_seconds", target="t")
        await h.wait_for(lambda: h.exists("wsmon_server_time_offset_seconds", target="t"))
        assert 99.0 <= h.value("wsmon_server_time_offset_seconds", target="t") <= 100.5


class TestCloseCodes:
    async def test_peer_close_frame_code(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """A close frame 4001 counts as code 4001, origin peer, and the target reconnects."""
        h = await start_daemon(target("t", server.url))
        await server.wait_for(lambda: server.open_connections == 1)
        await server.close_all(4001, b"bye")
        await server.wait_for(lambda: server.connections == 2)
        await h.wait_for(lambda: h.value("wsmon_connected", target="t") == 1)
        assert h.value("wsmon_disconnects_total", target="t", code="4001", origin="peer") == 1
        assert h.value("wsmon_disconnects_total", target="t", code="1006", origin="network") == 0
        assert h.value("wsmon_last_close_code", target="t") == 4001
        assert h.value("wsmon_reconnects_total", target="t") == server.connections - 1 == 1
        (event,) = h.events("disconnect")
        assert event["code"] == 4001
        assert event["origin"] == "peer"
        assert event["reason"] == "bye"
        assert event["uptime_s"] > 0

    async def test_tcp_abort_is_1006_network(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """A TCP reset without a close frame counts as 1006, origin network."""
        h = await start_daemon(target("t", server.url))
        await server.wait_for(lambda: server.open_connections == 1)
        await server.abort_all()
        await server.wait_for(lambda: server.connections == 2)
        await h.wait_for(lambda: h.value("wsmon_reconnects_total", target="t") == 1)
        assert h.value("wsmon_disconnects_total", target="t", code="1006", origin="network") == 1
        assert h.value("wsmon_disconnects_total", target="t", code="1000", origin="peer") == 0

    async def test_fin_without_close_frame_is_1006_network(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """A clean TCP FIN with no close frame is still 1006: no close frame, no peer code."""
        h = await start_daemon(target("t", server.url))
        await server.wait_for(lambda: server.open_connections == 1)
        await server.fin_all()
        await h.wait_for(lambda: h.value("wsmon_reconnects_total", target="t") == 1)
        assert h.value("wsmon_disconnects_total", target="t", code="1006", origin="network") == 1
        assert h.value("wsmon_disconnects_total", target="t", code="1000", origin="peer") == 0
        assert h.value("wsmon_last_close_code", target="t") == 1006

    async def test_counters_equal_server_truth_over_many_drops(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """After a mix of closes and aborts, every counter equals what the server saw."""
        h = await start_daemon(target("t", server.url))
        actions = [("close", 1001), ("abort", 0), ("close", 4002), ("fin", 0), ("close", 1001)]
        for n, (what, code) in enumerate(actions, start=1):
            await server.wait_for(
                lambda n=n: server.open_connections == 1 and server.connections == n
            )  # type: ignore[misc]
            if what == "close":
                await server.close_all(code)
            elif what == "abort":
                await server.abort_all()
            else:
                await server.fin_all()
        await server.wait_for(lambda: server.connections == len(actions) + 1)
        await h.wait_for(lambda: h.value("wsmon_connected", target="t") == 1)
        assert h.value("wsmon_reconnects_total", target="t") == len(actions)
        assert h.value("wsmon_disconnects_total", target="t", code="1001", origin="peer") == 2
        assert h.value("wsmon_disconnects_total", target="t", code="4002", origin="peer") == 1
        assert h.value("wsmon_disconnects_total", target="t", code="1006", origin="network") == 2
        assert h.value("wsmon_connect_attempts_total", target="t") == server.connections
        assert (
            h.value("wsmon_probes_sent_total", target="t", probe="ping")
            >= server.request_count("ping") - 1
        )


class TestDeadConnection:
    async def test_silent_server_is_closed_locally_and_reconnected(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """A server that stops answering is declared dead within 2 x (interval + timeout):
        two probe timeouts, a local close with 1011 that the server receives, a reconnect."""
        interval, timeout = 0.2, 0.1
        probes = [{**PING, "interval": f"{interval}s", "timeout": f"{timeout}s"}]
        h = await start_daemon(target("t", server.url, probes=probes))
        await h.wait_for(lambda: h.value("wsmon_up", target="t") == 1)
        loop = asyncio.get_running_loop()
        server.silent = True
        went_silent = loop.time()
        await h.wait_for(
            lambda: h.value("wsmon_disconnects_total", target="t", code="1011", origin="local") == 1
        )
        detected = loop.time() - went_silent
        assert detected <= 2 * (interval + timeout) + 0.05
        assert h.value("wsmon_probe_timeouts_total", target="t", probe="ping") == 2
        assert h.value("wsmon_up", target="t") == 0
        await server.wait_for(lambda: 1011 in server.close_frames)
        server.silent = False
        await h.wait_for(lambda: h.value("wsmon_up", target="t") == 1)
        assert h.value("wsmon_reconnects_total", target="t") == 1 == server.connections - 1
        assert len(h.events("probe.timeout")) == 2

    async def test_dead_after_timeouts_is_configurable(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """With dead_after_timeouts: 4 the connection survives three timeouts."""
        probes = [{**PING, "interval": "60ms", "timeout": "30ms"}]
        h = await start_daemon(target("t", server.url, probes=probes, dead_after_timeouts=4))
        await h.wait_for(lambda: h.value("wsmon_up", target="t") == 1)
        server.silent = True
        await h.wait_for(
            lambda: h.value("wsmon_probe_timeouts_total", target="t", probe="ping") >= 3
        )
        assert h.value("wsmon_disconnects_total", target="t", code="1011", origin="local") == 0
        await h.wait_for(
            lambda: h.value("wsmon_disconnects_total", target="t", code="1011", origin="local") == 1
        )
        assert h.value("wsmon_probe_timeouts_total", target="t", probe="ping") == 4

    async def test_unanswered_ping_frames_declare_dead(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """A server that never answers protocol pings is detected by a ws-ping probe."""
        server.answer_pings = False
        probes = [{"name": "frame", "kind": "ws-ping", "interval": "60ms", "timeout": "30ms"}]
        h = await start_daemon(target("t", server.url, probes=probes))
        await h.wait_for(
            lambda: h.value("wsmon_disconnects_total", target="t", code="1011", origin="local") >= 1
        )
        assert h.value("wsmon_probe_timeouts_total", target="t", probe="frame") >= 2


class TestReplies:
    async def test_api_error_reply(self, server: WSTestServer, start_daemon: StartDaemon) -> None:
        """A Deriv error reply counts as `api_error`, logs its code, and leaves up at 0."""

        def refused(req: dict[str, Any]) -> list[str | bytes]:
            err = {"code": "InvalidAppID", "message": "Your app_id is invalid."}
            return [json.dumps({"error": err, "msg_type": "ping", "req_id": req["req_id"]})]

        server.responder = refused
        h = await start_daemon(target("t", server.url))
        await h.wait_for(
            lambda: (
                h.value("wsmon_probe_errors_total", target="t", probe="ping", reason="api_error")
                >= 2
            )
        )
        assert h.value("wsmon_up", target="t") == 0
        assert h.value("wsmon_connected", target="t") == 1
        assert h.value("wsmon_probe_timeouts_total", target="t", probe="ping") == 0
        assert h.events("probe.error")[0]["error"] == "InvalidAppID"
        assert h.value("wsmon_disconnects_total", target="t", code="1011", origin="local") == 0

    async def test_rate_limited_reply_slows_the_probe_down(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """A `RateLimit` error reply counts as `rate_limited`, not `api_error`, and doubles
        the time to the probe's next send each time (the server sees gaps of 2, 4, 8
        intervals); a good reply brings the interval back."""
        loop = asyncio.get_running_loop()
        seen: list[float] = []

        def limited_three_times(req: dict[str, Any]) -> list[str | bytes]:
            seen.append(loop.time())
            reply: dict[str, Any] = {"msg_type": "ping", "ping": "pong", "req_id": req["req_id"]}
            if len(seen) <= 3:
                reply["error"] = {"code": "RateLimit", "message": "You have reached the limit"}
            return [json.dumps(reply)]

        server.responder = limited_three_times
        h = await start_daemon(target("t", server.url))
        await server.wait_for(lambda: len(seen) >= 6, timeout=5)  # 3 limited, 3 good
        gaps = [b - a for a, b in itertools.pairwise(seen)][:4]
        interval = 0.1
        for gap, intervals in zip(gaps, (2, 4, 8, 1), strict=True):
            assert intervals * interval - 0.03 <= gap <= intervals * interval + 0.05, gaps
        errors = {"target": "t", "probe": "ping"}
        assert h.value("wsmon_probe_errors_total", **errors, reason="rate_limited") == 3
        assert h.value("wsmon_probe_errors_total", **errors, reason="api_error") == 0
        assert [e["next_send_s"] for e in h.events("probe.error")] == pytest.approx(
            [0.2, 0.4, 0.8], abs=0.03
        )

    async def test_unexpected_reply(self, server: WSTestServer, start_daemon: StartDaemon) -> None:
        """A reply that fails the `expect` subset match counts as `unexpected_reply`."""
        server.responder = lambda req: [json.dumps({"msg_type": "other", "req_id": req["req_id"]})]
        h = await start_daemon(target("t", server.url))
        await h.wait_for(
            lambda: (
                h.value(
                    "wsmon_probe_errors_total", target="t", probe="ping", reason="unexpected_reply"
                )
                >= 2
            )
        )
        assert h.value("wsmon_up", target="t") == 0

    async def test_stray_replies_never_match_a_probe(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """Invalid JSON, binary frames, missing or unknown req_id are counted as unmatched and
        never complete a probe: every ping times out, the connection stays until dead."""

        def junk(req: dict[str, Any]) -> list[str | bytes]:
            return ["not json", b"\x00\x01", json.dumps({"msg_type": "ping"}),
                    json.dumps({"msg_type": "ping", "req_id": req["req_id"] + 1000}),
                    json.dumps({"msg_type": "ping", "req_id": True})]  # fmt: skip

        server.responder = junk
        probes = [{**PING, "interval": "100ms", "timeout": "50ms"}]
        h = await start_daemon(target("t", server.url, probes=probes, dead_after_timeouts=50))
        await h.wait_for(
            lambda: h.value("wsmon_probe_timeouts_total", target="t", probe="ping") >= 3
        )
        sent = h.value("wsmon_probes_sent_total", target="t", probe="ping")
        assert h.value("wsmon_probe_rtt_seconds_count", target="t", probe="ping") == 0
        unmatched = {
            r: h.value("wsmon_unmatched_messages_total", target="t", reason=r)
            for r in ("invalid_json", "binary", "missing_id", "unknown_id")
        }
        assert unmatched["invalid_json"] >= 3
        assert unmatched["binary"] >= 3
        assert unmatched["missing_id"] >= 6  # no req_id, and `true` is not an id
        assert unmatched["unknown_id"] >= 3
        assert unmatched["invalid_json"] <= sent
        assert h.value("wsmon_connected", target="t") == 1


class TestInOrder:
    async def test_null_correlation_matches_in_order(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """With `correlation_field: null` no id is added and replies match oldest-first."""
        probes = [{**PING, "interval": "60ms", "timeout": "50ms"}]
        h = await start_daemon(target("t", server.url, probes=probes, correlation_field=None))
        await h.wait_for(
            lambda: h.value("wsmon_probe_rtt_seconds_count", target="t", probe="ping") >= 3
        )
        assert all("req_id" not in r for r in server.requests)
        assert h.value("wsmon_probe_timeouts_total", target="t", probe="ping") == 0


class TestBackoffInPractice:
    async def test_try_again_later_waits_initial_delay(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """After close 1013 (try again later) the next handshake waits >= initial_delay."""
        reconnect = {"initial_delay": "300ms", "max_delay": "400ms", "reset_after": "10s"}
        h = await start_daemon(target("t", server.url, reconnect=reconnect))
        await server.wait_for(lambda: server.open_connections == 1)
        loop = asyncio.get_running_loop()
        await server.close_all(1013)
        closed = loop.time()
        await server.wait_for(lambda: server.connections == 2)
        assert loop.time() - closed >= 0.3
        (scheduled,) = h.events("reconnect.scheduled")
        assert scheduled["delay_s"] >= 0.3

    async def test_backoff_resets_only_after_a_stable_connection(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """Quick drops keep growing the attempt count; a connection that stayed up for
        `reset_after` starts it again from 1."""
        reconnect = {"initial_delay": "10ms", "max_delay": "20ms", "reset_after": "300ms"}
        h = await start_daemon(target("t", server.url, reconnect=reconnect))
        for n in (1, 2, 3):
            await server.wait_for(
                lambda n=n: server.connections == n and server.open_connections == 1
            )  # type: ignore[misc]
            await server.abort_all()
        await server.wait_for(lambda: server.connections == 4 and server.open_connections == 1)
        await asyncio.sleep(0.35)
        await server.abort_all()
        await server.wait_for(lambda: server.connections == 5)
        attempts = [e["attempt"] for e in h.events("reconnect.scheduled")]
        assert attempts == [1, 2, 3, 1]


async def test_server_pings_are_answered(start_daemon: StartDaemon) -> None:
    """Ping frames from the server are answered with matching pongs (the monitor handles
    ping/pong itself so that it can time its own pings)."""
    from aiohttp import WSMsgType, web

    pongs: list[bytes] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        for n in range(3):
            await ws.ping(f"srv-{n}".encode())
            msg = await ws.receive(timeout=2)
            while msg.type is WSMsgType.TEXT:  # skip probe traffic
                msg = await ws.receive(timeout=2)
            if msg.type is WSMsgType.PONG:
                pongs.append(msg.data)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        h = await start_daemon(target("t", f"ws://127.0.0.1:{port}/ws"))
        await h.wait_for(lambda: len(pongs) == 3)
        assert pongs == [b"srv-0", b"srv-1", b"srv-2"]
    finally:
        await runner.cleanup()


async def test_timestamps_durations_and_send_lag(
    server: WSTestServer, start_daemon: StartDaemon
) -> None:
    """Handshake durations are observed once per connection the server accepted; the
    connection and last-success timestamps fall inside the test's own clock readings; every
    probe sent has a send-lag sample, all of them small on an idle loop."""
    before = time.time()
    h = await start_daemon(target("t", server.url))
    await server.wait_for(lambda: server.request_count("ping") >= 3)
    await server.close_all(4001)
    await server.wait_for(lambda: server.connections == 2 and server.request_count("ping") >= 5)
    await h.daemon.stop()
    after = time.time()
    # one histogram for the daemon (metrics.per_target_connect_histogram: false)
    assert h.value("wsmon_connect_duration_seconds_count") == server.connections
    assert 0 < h.value("wsmon_connect_duration_seconds_sum") < 1.0
    assert not h.exists("wsmon_connect_duration_seconds_count", target="t")
    # Stopped: the connection is down, so its timestamp reads 0; the last success is real.
    assert h.value("wsmon_connection_established_timestamp_seconds", target="t") == 0
    assert (
        before
        <= h.value("wsmon_probe_last_success_timestamp_seconds", target="t", probe="ping")
        <= after
    )
    sent = h.value("wsmon_probes_sent_total", target="t", probe="ping")
    lag_count = h.value("wsmon_probe_send_lag_seconds_count")
    assert lag_count >= sent == server.request_count("ping")
    assert h.value("wsmon_probe_send_lag_seconds_bucket", le="0.05") == lag_count


async def test_established_timestamp_while_connected(
    server: WSTestServer, start_daemon: StartDaemon
) -> None:
    """While connected, the established timestamp is when the handshake finished."""
    before = time.time()
    h = await start_daemon(target("t", server.url))
    await h.wait_for(lambda: h.value("wsmon_connected", target="t") == 1)
    established = h.value("wsmon_connection_established_timestamp_seconds", target="t")
    assert before <= established <= time.time()


async def aligned_daemon(
    server: WSTestServer, start_daemon: StartDaemon, targets: int, interval: str
) -> tuple[Harness, list[float]]:
    """A daemon with `send_alignment: 100ms` and `targets` ping probes every `interval`, and
    the loop times at which the server received their requests (it shares the loop).
    Returned once the daemon's full collection after settling is over: in a large test
    process its pause (tens of ms) would delay sends and move them off the grid."""
    arrivals: list[float] = []
    loop = asyncio.get_running_loop()

    def note(_: dict[str, Any]) -> None:
        arrivals.append(loop.time())

    server.responder = note
    probes = [{**PING, "interval": interval, "timeout": "150ms"}]
    entries = [target(f"t{i}", server.url, probes=probes) for i in range(targets)]
    h = await start_daemon(*entries, send_alignment="100ms")
    await h.wait_for(lambda: bool(h.events("gc.full")), timeout=10)
    return h, arrivals


def off_grid(times: list[float]) -> list[float]:
    """Milliseconds past the 100 ms grid of the times more than 30 ms past it."""
    return [round((t % 0.1) * 1e3, 1) for t in times if t % 0.1 > 0.030]


class TestSendTiming:
    @pytest.mark.parametrize("receive_path", ["hooked"], indirect=True)
    async def test_rtt_ends_when_the_reply_is_read(
        self,
        server: WSTestServer,
        start_daemon: StartDaemon,
        monkeypatch: Any,
        proven_hooks: Hooks,
    ) -> None:
        """Work that runs between the read of a reply and the receive loop's turn is not
        the peer's: here every read of the daemon's connection is followed by 60 ms of
        blocking work, yet the round trips read the server's 30 ms delay plus a little."""
        require_hooks(proven_hooks, "stamp")
        server.reply_delay = 0.030
        probe = {"interval": "250ms", "timeout": "200ms", "rtt_buckets": [0.025, 0.05, 0.075]}
        h = await start_daemon(target("t", server.url, probes=[{**PING, **probe}]))
        stamp = aiohooks.ReadStamp.__call__

        def read_then_block(self: aiohooks.ReadStamp) -> None:
            stamp(self)
            time.sleep(0.060)

        monkeypatch.setattr(aiohooks.ReadStamp, "__call__", read_then_block)
        before = h.value("wsmon_probe_rtt_seconds_count", target="t", probe="ping")
        await h.wait_for(
            lambda: h.value("wsmon_probe_rtt_seconds_count", target="t", probe="ping") >= before + 4
        )
        count = h.value("wsmon_probe_rtt_seconds_count", target="t", probe="ping")
        # Every round trip: at least the server's delay, none with the 60 ms in it.
        assert h.value("wsmon_probe_rtt_seconds_bucket", target="t", probe="ping", le="0.025") == 0
        assert (
            h.value("wsmon_probe_rtt_seconds_bucket", target="t", probe="ping", le="0.075") == count
        )

    def test_a_reply_read_before_the_send_is_timed_to_the_receive_loop(self) -> None:
        """In-order matching can pair a request with a message read before it was sent;
        that round trip is never negative: it ends when the receive loop sees the message."""
        pending = Pending(None, lambda p, r: None)
        pending.sent_at = time.perf_counter()
        rtt = probes.round_trip(pending, Reply(pending.sent_at - 1.0, {"msg_type": "ping"}))
        assert 0.0 <= rtt < 1.0

    async def test_aligned_sends_leave_together_and_keep_their_interval(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """With `send_alignment: 100ms`, the requests of 12 targets reach the server on a
        100 ms grid of the loop's clock (daemon and server share it here), each target still
        sends once per interval, and every send is counted as the server saw it."""
        h, arrivals = await aligned_daemon(server, start_daemon, 12, "400ms")
        await server.wait_for(lambda: len(arrivals) >= 48, timeout=10)
        started = asyncio.get_running_loop().time()
        await asyncio.sleep(1.2)  # three intervals
        window = [t for t in arrivals if t >= started]
        await h.daemon.stop()
        late = off_grid(window)
        assert len(late) <= len(window) // 10, late  # random phases: about 70 % would be
        # Three intervals: three sends per target, give or take the window's edges.
        assert 12 * 2 <= len(window) <= 12 * 4
        sent = sum(h.value("wsmon_probes_sent_total", target=f"t{i}", probe="ping")
                   for i in range(12))  # fmt: skip
        assert sent == server.request_count("ping")

    async def test_a_stalled_loop_skips_sends_and_keeps_the_phase(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """After the event loop was blocked for three intervals, each target sends once
        (late), not three times, and its later sends are back on the 100 ms grid."""
        h, arrivals = await aligned_daemon(server, start_daemon, 4, "200ms")
        await server.wait_for(lambda: len(arrivals) >= 8, timeout=10)
        # Stall the loop (daemon and server alike) for at least 0.65 s, ending half way
        # between grid points, where a send scheduled from the stall's end would fall.
        end = asyncio.get_running_loop().time() + 0.65
        time.sleep(0.65 + (0.05 - end % 0.1) % 0.1)  # noqa: ASYNC251 - the stall is the point
        stalled_until = asyncio.get_running_loop().time()
        await asyncio.sleep(0.7)
        await h.daemon.stop()
        right_after = [t for t in arrivals if stalled_until <= t < stalled_until + 0.05]
        later = [t for t in arrivals if t >= stalled_until + 0.1]
        # One late send per target, plus what the server had not yet handled when the loop
        # stopped: at most 8. Catching up would be three sends per target (0.65 s / 0.2 s).
        assert len(right_after) <= 8
        assert later
        late = off_grid(later)
        assert len(late) <= len(later) // 10, late


@pytest.mark.parametrize("receive_path", ["hooked"], indirect=True)  # the stamp is the trigger
async def test_a_close_right_after_a_read_sends_our_code(
    server: WSTestServer, start_daemon: StartDaemon, monkeypatch: Any, proven_hooks: Hooks
) -> None:
    """A message read in the same turn as our close must not make aiohttp send its own
    close (code 1000) ahead of ours: the server sees the code we closed with."""
    require_hooks(proven_hooks, "stamp")
    server.stream_rate = 20.0  # an unsolicited message every 50 ms
    probes = [{**PING, "interval": "10s", "timeout": "5s"}]
    h = await start_daemon(target("t", server.url, probes=probes))
    runner = h.daemon.supervisor.runners["t"]
    await h.wait_for(lambda: runner.session is not None)
    session = runner.session
    assert session is not None
    stamp = aiohooks.ReadStamp.__call__

    def read_then_close(self: aiohooks.ReadStamp) -> None:
        stamp(self)  # the message is queued for the receive loop right after this
        session.close(1001, "going away")

    monkeypatch.setattr(aiohooks.ReadStamp, "__call__", read_then_close)
    await server.wait_for(lambda: len(server.close_frames) >= 1, timeout=5)
    assert server.close_frames[0] == 1001


class TestHandshakeOptions:
    async def test_subprotocols_offered_in_order_and_the_choice_logged(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """`subprotocols` go out in the upgrade in the configured order; the server's choice
        is what the connection runs and what `connect.ok` says."""
        server.subprotocols = ("v2.json",)  # speaks only the second the daemon offers
        h = await start_daemon(target("t", server.url, subprotocols=["v1.json", "v2.json"]))
        await h.wait_for(lambda: h.value("wsmon_connected", target="t") == 1)
        offered = server.upgrade_headers[0]["Sec-WebSocket-Protocol"]
        assert [p.strip() for p in offered.split(",")] == ["v1.json", "v2.json"]
        assert server.negotiated == ["v2.json"]
        (ok,) = h.events("connect.ok")
        assert ok["subprotocol"] == "v2.json"

    async def test_a_server_that_picks_none_is_connected_and_says_so(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """A server that accepts none of the offered subprotocols still upgrades; the log
        says no subprotocol was agreed (null), and probes run as usual."""
        h = await start_daemon(target("t", server.url, subprotocols=["v9"]))
        await h.wait_for(lambda: h.value("wsmon_connected", target="t") == 1)
        assert server.negotiated == [None]
        assert h.events("connect.ok")[0]["subprotocol"] is None

    async def test_origin_header_is_sent(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """`origin` is the upgrade's Origin header; without it none is sent."""
        h = await start_daemon(
            target("o", server.url, origin="https://app.example.com"),
            target("n", server.url),
        )
        await h.wait_for(lambda: server.connections == 2)
        origins = sorted(str(x.get("Origin")) for x in server.upgrade_headers)
        assert origins == ["None", "https://app.example.com"]
        assert "subprotocol" not in h.events("connect.ok")[0]
