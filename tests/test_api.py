"""GET /api/v1/targets against real servers: states that agree with wsmon_connected, the
failed / backoff / connecting states, the last close as the server made it, filters and paging,
URLs without secrets, bad parameters named."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
from conftest import Harness, StartDaemon, target
from wsserver import WSTestServer

SLOW = {"initial_delay": "2s", "max_delay": "2s"}  # a pause long enough to be seen


async def api(h: Harness, query: str = "", status: int = 200) -> Any:
    url = f"{h.base_url}/api/v1/targets{query}"
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        assert r.status == status, await r.text()
        return await r.json()


def by_name(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in body["targets"]}


async def test_states_agree_with_wsmon_connected(
    server: WSTestServer, start_daemon: StartDaemon
) -> None:
    """connected, failed (a closed port) and backoff (a connection lost); the close as the
    server made it; the summary counts all."""
    h = await start_daemon(
        target("up", server.url),
        target("lost", server.url.replace("/ws", "/ws?which=lost"), reconnect=SLOW),
        target("refused", "ws://127.0.0.1:9/ws", reconnect=SLOW),
    )
    await h.wait_for(lambda: h.value("wsmon_up", target="lost") == 1)
    await h.wait_for(
        lambda: h.value("wsmon_probe_rtt_seconds_count", target="up", probe="ping") >= 1
    )
    body = await api(h)
    t = by_name(body)
    for name in ("up", "lost", "refused"):
        assert (t[name]["state"] == "connected") == (h.value("wsmon_connected", target=name) == 1)
    assert t["refused"]["state"] == "failed"
    assert t["up"]["last_rtt_seconds"]["ping"] > 0
    assert len(t["up"]["recent_rtt_seconds"]["ping"]) == h.value(
        "wsmon_probe_rtt_seconds_count", target="up", probe="ping"
    )
    assert body["summary"]["connected"] == 2
    assert body["summary"]["failed"] == 1
    assert body["targets"][0]["name"] == "refused"  # problems first
    # `problem` is the rule the order and the summary go by (the page's red rows too)
    assert [n for n, v in t.items() if v["problem"]] == ["refused"]
    assert body["summary"]["problems"] == 1

    await server.close_all(4001, b"bye")  # both connections; "up" reconnects at once
    await h.wait_for(lambda: h.value("wsmon_connected", target="lost") == 0)
    t = by_name(await api(h))
    lost = t["lost"]
    assert lost["state"] == "backoff"
    assert lost["last_close"]["code"] == 4001
    assert lost["last_close"]["origin"] == "peer"
    assert lost["last_close"]["reason"] == "bye"
    assert lost["since"] >= lost["last_close"]["at"] - 0.01
    await h.wait_for(lambda: h.value("wsmon_reconnects_total", target="up") == 1)
    t = by_name(await api(h))
    assert t["up"]["reconnects"] == t["up"]["reconnects_last_hour"] == 1


async def test_connecting_while_the_handshake_waits(
    server: WSTestServer, start_daemon: StartDaemon
) -> None:
    server.handshake_delay = 1.0
    h = await start_daemon(target("slow", server.url))
    await server.wait_for(lambda: server.handshakes_in_progress == 1)
    (slow,) = (await api(h))["targets"]
    assert slow["state"] == "connecting"
    assert h.value("wsmon_connected", target="slow") == 0


async def test_filters_paging_and_no_secrets(
    server: WSTestServer, start_daemon: StartDaemon
) -> None:
    url = server.url.replace("127.0.0.1", "user:pass-9876@127.0.0.1") + "?token=s3cret-4321"
    names = [f"api-{i:02}" for i in range(12)]
    h = await start_daemon(
        *(target(n, url, probes=[]) for n in names),
        target("other", "ws://127.0.0.1:9/ws", reconnect=SLOW),
    )
    await h.wait_for(lambda: all(h.value("wsmon_connected", target=n) == 1 for n in names))
    await h.wait_for(
        lambda: h.value("wsmon_connect_failures_total", target="other", reason="refused") >= 1
    )
    page = await api(h, "?q=API-&limit=5&offset=10")
    assert page["total"] == 12
    assert [t["name"] for t in page["targets"]] == ["api-10", "api-11"]
    assert page["summary"]["targets"] == 13
    failed = await api(h, "?state=failed,backoff")
    assert [t["name"] for t in failed["targets"]] == ["other"]
    url = f"{h.base_url}/api/v1/targets?limit=1000"
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        text = await r.text()
    assert "s3cret-4321" not in text
    assert "pass-9876" not in text
    assert "[REDACTED]" in text


async def test_bad_parameters_are_named(server: WSTestServer, start_daemon: StartDaemon) -> None:
    h = await start_daemon(target("a", server.url))
    body = await api(h, "?state=up", status=400)
    assert body["error"] == "unknown state 'up': one of connected, connecting, backoff, failed"
    body = await api(h, "?limit=0", status=400)
    assert body["error"] == "limit must be a whole number from 1 to 1000, not '0'"
    body = await api(h, "?offset=-1", status=400)
    assert body["error"] == "offset must be a whole number from 0, not '-1'"


async def test_streams_and_their_freshness(server: WSTestServer, start_daemon: StartDaemon) -> None:
    ticks = {
        "name": "ticks", "kind": "stream", "send": {"ticks": "R_50", "subscribe": 1},
        "max_gap": "150ms",
    }  # fmt: skip
    h = await start_daemon(target("s", server.url, probes=[ticks]))
    await h.wait_for(lambda: h.value("wsmon_stream_messages_total", target="s", probe="ticks") >= 3)
    (s,) = (await api(h))["targets"]
    assert s["streams"]["ticks"]["stale"] is False
    assert s["streams"]["ticks"]["last_message_at"] > 1e9
    server.stalled = True
    await h.wait_for(lambda: h.value("wsmon_stream_stale", target="s", probe="ticks") == 1)
    body = await api(h)
    assert body["targets"][0]["streams"]["ticks"]["stale"] is True
    # Stale after 150 ms of silence: every tick the server sent has arrived, and counts.
    assert body["targets"][0]["streams"]["ticks"]["messages"] == server.ticks_sent
    assert body["summary"]["problems"] == 1


def test_the_rings_keep_the_latest_values_oldest_first() -> None:
    """A probe's recent round trips and a target's reconnect times are rings: the latest
    RECENT (and RECONNECTS_KEPT) stay, oldest first, whatever came before."""
    from monitor import status

    recent = status.Recent()
    for i in range(status.RECENT + 7):
        recent.add(i / 1000)
    assert recent.values() == [i / 1000 for i in range(7, status.RECENT + 7)]
    times = status.ReconnectTimes()
    for i in range(status.RECONNECTS_KEPT + 10):
        times.add(1e9 + i)  # Unix times: 8-byte floats keep them exact
    assert times.values() == [1e9 + i for i in range(10, status.RECONNECTS_KEPT + 10)]
    state = status.TargetState()
    assert state.reconnects_since(0.0) == 0
    for _ in range(status.RECONNECTS_KEPT + 10):
        state.reconnected()
    assert state.reconnects_since(0.0) == status.RECONNECTS_KEPT
    assert state.reconnects_since(time.time() + 1) == 0
