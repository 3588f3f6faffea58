"""Tests for the embedded simulated Deriv-style API (monitor.demo_api)."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from monitor.demo_api import CLOSE_CODES, DemoAPI, build_reply

CODES = {code for code, _ in CLOSE_CODES}


@pytest.fixture
async def api() -> AsyncIterator[DemoAPI]:
    """A well-behaved server (no lifetime misbehaviour) with a seeded rng."""
    server = DemoAPI(mean_lifetime=math.inf, rng=random.Random(1234))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that is always closed."""
    async with aiohttp.ClientSession() as s:
        yield s


async def _request(ws: aiohttp.ClientWebSocketResponse, req: dict[str, Any]) -> dict[str, Any]:
    await ws.send_json(req)
    msg = await ws.receive(timeout=2.0)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


async def test_url_shape(api: DemoAPI) -> None:
    """The URL is a Deriv-style ws:// URL on 127.0.0.1 with the bound port and app_id."""
    assert api.url.startswith("ws://127.0.0.1:")
    assert api.url.endswith("/websockets/v3?app_id=1089")
    assert not api.url.startswith("ws://127.0.0.1:0/")


async def test_ping_reply_shape(api: DemoAPI, session: aiohttp.ClientSession) -> None:
    """{"ping": 1, "req_id": N} gets the Deriv ping reply with echo_req and req_id echoed."""
    async with session.ws_connect(api.url) as ws:
        reply = await _request(ws, {"ping": 1, "req_id": 7})
    assert reply == {
        "echo_req": {"ping": 1, "req_id": 7},
        "msg_type": "ping",
        "ping": "pong",
        "req_id": 7,
    }


async def test_time_reply(api: DemoAPI, session: aiohttp.ClientSession) -> None:
    """{"time": 1} gets an integer epoch within 2 s of the local clock; req_id only if sent."""
    async with session.ws_connect(api.url) as ws:
        reply = await _request(ws, {"time": 1})
        with_id = await _request(ws, {"time": 1, "req_id": 3})
    assert reply["msg_type"] == "time"
    assert reply["echo_req"] == {"time": 1}
    assert "req_id" not in reply
    assert isinstance(reply["time"], int)
    assert abs(reply["time"] - time.time()) < 2.0
    assert with_id["req_id"] == 3


async def test_unknown_request_gives_error(api: DemoAPI, session: aiohttp.ClientSession) -> None:
    """An unknown request gets UnrecognisedRequest; invalid JSON gets InputValidationFailed."""
    async with session.ws_connect(api.url) as ws:
        reply = await _request(ws, {"ticks": "R_100", "req_id": 9})
        await ws.send_str("{not json")
        bad = json.loads((await ws.receive(timeout=2.0)).data)
    assert reply == {
        "echo_req": {"ticks": "R_100", "req_id": 9},
        "error": {"code": "UnrecognisedRequest", "message": "Unrecognised request"},
        "msg_type": "error",
        "req_id": 9,
    }
    assert bad["msg_type"] == "error"
    assert bad["error"]["code"] == "InputValidationFailed"


def test_build_reply_non_object() -> None:
    """JSON that is not an object is an input validation error, not a crash."""
    assert build_reply("[1, 2]")["error"]["code"] == "InputValidationFailed"
    assert build_reply(b"\x00")["error"]["code"] == "InputValidationFailed"


async def test_concurrent_replies(api: DemoAPI, session: aiohttp.ClientSession) -> None:
    """Many pipelined requests are all answered, each with its own req_id, well under 1 s."""
    async with session.ws_connect(api.url) as ws:
        t0 = time.monotonic()
        for i in range(1, 31):
            await ws.send_json({"ping": 1, "req_id": i})
        seen = set()
        for _ in range(30):
            msg = await ws.receive(timeout=2.0)
            seen.add(json.loads(msg.data)["req_id"])
        elapsed = time.monotonic() - t0
    assert seen == set(range(1, 31))
    # Sequential handling would take ~30 * 22 ms on average; concurrent takes one delay.
    assert elapsed < 0.5


async def test_ws_ping_frame_answered(api: DemoAPI, session: aiohttp.ClientSession) -> None:
    """A protocol-level ping frame is answered with a pong carrying the same payload."""
    async with session.ws_connect(api.url, autoping=False) as ws:
        await ws.ping(b"probe-1")
        msg = await ws.receive(timeout=2.0)
    assert msg.type is aiohttp.WSMsgType.PONG
    assert msg.data == b"probe-1"


async def test_idle_timeout_closes_with_1001(session: aiohttp.ClientSession) -> None:
    """A client that sends no message for idle_timeout is closed with 1001 "idle"."""
    server = DemoAPI(mean_lifetime=3600.0, idle_timeout=0.2, rng=random.Random(5))
    await server.start()
    try:
        async with session.ws_connect(server.url) as ws:
            msg = await ws.receive(timeout=2.0)
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert msg.data == 1001
            assert msg.extra == "idle"
    finally:
        await server.stop()


async def test_short_lifetime_ends_connections(session: aiohttp.ClientSession) -> None:
    """With a tiny mean lifetime every connection ends within 1 s, by close code or abrupt drop.

    Over a dozen connections (seeded) both kinds of misbehaviour are seen.
    """
    server = DemoAPI(mean_lifetime=0.05, rng=random.Random(42))
    await server.start()
    outcomes: list[str] = []
    try:
        for _ in range(12):
            async with session.ws_connect(server.url) as ws:
                msg = await ws.receive(timeout=1.0)
                if msg.type is aiohttp.WSMsgType.CLOSE:
                    assert msg.data in CODES
                    outcomes.append(f"close:{msg.data}")
                else:
                    # No close frame: the TCP connection just went away.
                    assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), msg
                    outcomes.append("abrupt")
    finally:
        await server.stop()
    assert "abrupt" in outcomes
    assert any(o.startswith("close:") for o in outcomes)


async def test_stop_is_quick_and_idempotent(session: aiohttp.ClientSession) -> None:
    """stop() closes open connections with 1001 promptly, and a second stop() is a no-op."""
    server = DemoAPI(mean_lifetime=3600.0, rng=random.Random(7))
    await server.start()
    async with session.ws_connect(server.url) as ws:
        await ws.send_json({"ping": 1})  # leave a reply possibly in flight
        t0 = time.monotonic()
        await server.stop()
        elapsed = time.monotonic() - t0
        msgs = []
        while True:
            msg = await ws.receive(timeout=1.0)
            msgs.append(msg)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
    assert elapsed < 1.5
    assert msgs[-1].type is aiohttp.WSMsgType.CLOSE
    assert msgs[-1].data == 1001
    await server.stop()
    with pytest.raises(RuntimeError):
        _ = server.url


async def test_stop_with_silent_client_is_bounded() -> None:
    """stop() stays bounded when a client never answers the close handshake."""
    server = DemoAPI(mean_lifetime=3600.0, close_timeout=0.3, rng=random.Random(8))
    await server.start()
    async with aiohttp.ClientSession() as s, s.ws_connect(server.url, autoclose=False) as ws:
        t0 = time.monotonic()
        await server.stop()
        elapsed = time.monotonic() - t0
        assert not ws.closed  # the client never took part in the close handshake
    assert elapsed < 1.0
