"""Tests for the embedded simulated Deriv-style API (monitor.demo_api)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import math
import random
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from monitor.demo_api import CLOSE_CODES, DemoAPI, build_reply
from monitor.log import Logging

CODES = {code for code, _ in CLOSE_CODES}
STREAM_ID = re.compile(r"[0-9a-f]{32}")


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
        reply = await _request(ws, {"active_symbols": "brief", "req_id": 9})
        await ws.send_str("{not json")
        bad = json.loads((await ws.receive(timeout=2.0)).data)
    assert reply == {
        "echo_req": {"active_symbols": "brief", "req_id": 9},
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


# -- subscription streams ---------------------------------------------------------


@contextlib.asynccontextmanager
async def _serving(**kwargs: Any) -> AsyncIterator[DemoAPI]:
    """A running server with fast ticks and no lifetime misbehaviour unless overridden."""
    settings: dict[str, Any] = {
        "mean_lifetime": math.inf,
        "tick_interval": 0.02,
        "mean_stall_every": math.inf,
        "rng": random.Random(2024),
    }
    server = DemoAPI(**(settings | kwargs))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _receive(ws: aiohttp.ClientWebSocketResponse, timeout: float = 2.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    data: dict[str, Any] = json.loads(msg.data)
    return data


async def _reply_among_ticks(
    ws: aiohttp.ClientWebSocketResponse, req: dict[str, Any]
) -> tuple[dict[str, Any], int]:
    """Send a request and return its reply and how many ticks arrived before it."""
    await ws.send_json(req)
    ticks = 0
    while (data := await _receive(ws))["msg_type"] == "tick":
        ticks += 1
    return data, ticks


async def _subscribe(ws: aiohttp.ClientWebSocketResponse, symbol: str) -> str:
    """Subscribe to a symbol's ticks and return the stream id from its first tick."""
    await ws.send_json({"ticks": symbol, "subscribe": 1})
    while True:
        data = await _receive(ws)
        if data["echo_req"] == {"ticks": symbol, "subscribe": 1}:
            sub_id: str = data["subscription"]["id"]
            return sub_id


async def _assert_silent(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> None:
    """Nothing at all arrives for ``seconds``."""
    try:
        msg = await ws.receive(timeout=seconds)
    except TimeoutError:
        return
    pytest.fail(f"unexpected message {msg}")


async def _leftover_tasks(
    baseline: set[asyncio.Task[Any]], within: float
) -> set[asyncio.Task[Any]]:
    """Tasks started since ``baseline`` that are still running after up to ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while left := asyncio.all_tasks() - baseline:
        if loop.time() > deadline:
            break
        await asyncio.sleep(0.01)
    return left


async def test_subscribe_streams_ticks(session: aiohttp.ClientSession) -> None:
    """A subscription gets a tick at once, then one per tick_interval, all with one stream id.

    Each tick echoes the request and its req_id, and carries a 4-place quote of the symbol.
    """
    req = {"ticks": "R_50", "subscribe": 1, "req_id": 5}
    async with _serving() as server, session.ws_connect(server.url) as ws:
        await ws.send_json(req)
        first = await _receive(ws)
        t0 = time.monotonic()
        ticks = [first] + [await _receive(ws, timeout=1.0) for _ in range(20)]
        elapsed = time.monotonic() - t0
    sub_id = first["subscription"]["id"]
    assert STREAM_ID.fullmatch(sub_id)
    for tick in ticks:
        assert tick.keys() == {"echo_req", "msg_type", "subscription", "tick", "req_id"}
        assert tick["echo_req"] == req
        assert tick["msg_type"] == "tick"
        assert tick["req_id"] == 5
        assert tick["subscription"] == {"id": sub_id}
        body = tick["tick"]
        assert body.keys() == {"ask", "bid", "epoch", "id", "pip_size", "quote", "symbol"}
        assert body["id"] == sub_id
        assert body["symbol"] == "R_50"
        assert body["pip_size"] == 4
        assert body["ask"] == body["bid"] == body["quote"] == round(body["quote"], 4)
        assert isinstance(body["epoch"], int)
        assert abs(body["epoch"] - time.time()) < 2.0
    # A random walk: the quote moves, but by a fraction of a percent over 20 steps.
    quotes = [tick["tick"]["quote"] for tick in ticks]
    assert len(set(quotes)) > 10
    assert max(quotes) / min(quotes) < 1.01
    # 20 intervals of 20 ms after the first tick.
    assert 0.36 <= elapsed < 0.7


async def test_forget_stops_the_stream(session: aiohttp.ClientSession) -> None:
    """After the forget reply no tick of that stream arrives; a second forget finds nothing."""
    async with _serving() as server, session.ws_connect(server.url) as ws:
        sub_id = await _subscribe(ws, "R_50")
        await asyncio.sleep(0.1)  # let a few ticks queue up behind the forget
        reply, ticks_before = await _reply_among_ticks(ws, {"forget": sub_id, "req_id": 6})
        await _assert_silent(ws, 0.2)
        again, _ = await _reply_among_ticks(ws, {"forget": sub_id})
        resubscribed = await _subscribe(ws, "R_50")
    assert reply == {
        "echo_req": {"forget": sub_id, "req_id": 6},
        "forget": 1,
        "msg_type": "forget",
        "req_id": 6,
    }
    assert ticks_before >= 3
    assert again == {"echo_req": {"forget": sub_id}, "forget": 0, "msg_type": "forget"}
    assert STREAM_ID.fullmatch(resubscribed)
    assert resubscribed != sub_id


async def test_already_subscribed(session: aiohttp.ClientSession) -> None:
    """A second subscription to the same symbol on one connection is AlreadySubscribed."""
    req = {"ticks": "R_50", "subscribe": 1, "req_id": 8}
    async with _serving() as server, session.ws_connect(server.url) as ws:
        await _subscribe(ws, "R_50")
        reply, _ = await _reply_among_ticks(ws, req)
        # Another connection may subscribe to the same symbol.
        async with session.ws_connect(server.url) as other:
            other_id = await _subscribe(other, "R_50")
    assert reply == {
        "echo_req": req,
        "error": {"code": "AlreadySubscribed", "message": "You are already subscribed to R_50."},
        "msg_type": "error",
        "req_id": 8,
    }
    assert STREAM_ID.fullmatch(other_id)


async def test_invalid_symbol(session: aiohttp.ClientSession) -> None:
    """A symbol the API does not serve is InvalidSymbol, and no stream starts."""
    req = {"ticks": "R_999", "subscribe": 1, "req_id": 9}
    async with _serving() as server, session.ws_connect(server.url) as ws:
        reply = await _request(ws, req)
        await _assert_silent(ws, 0.1)
    assert reply == {
        "echo_req": req,
        "error": {"code": "InvalidSymbol", "message": "Symbol R_999 invalid."},
        "msg_type": "error",
        "req_id": 9,
    }


async def test_one_shot_tick(session: aiohttp.ClientSession) -> None:
    """{"ticks": ...} without subscribe gets one tick with no subscription, and nothing more."""
    req = {"ticks": "1HZ100V", "req_id": 4}
    async with _serving() as server, session.ws_connect(server.url) as ws:
        reply = await _request(ws, req)
        await _assert_silent(ws, 0.15)
    assert reply.keys() == {"echo_req", "msg_type", "tick", "req_id"}
    assert reply["echo_req"] == req
    assert reply["msg_type"] == "tick"
    assert reply["req_id"] == 4
    body = reply["tick"]
    assert body.keys() == {"ask", "bid", "epoch", "pip_size", "quote", "symbol"}
    assert body["symbol"] == "1HZ100V"
    assert body["ask"] == body["bid"] == body["quote"]


async def test_forget_all(session: aiohttp.ClientSession) -> None:
    """forget_all "ticks" ends every tick stream of the connection and lists their ids."""
    async with _serving() as server, session.ws_connect(server.url) as ws:
        ids = {await _subscribe(ws, "R_10"), await _subscribe(ws, "R_100")}
        reply, _ = await _reply_among_ticks(ws, {"forget_all": "ticks", "req_id": 12})
        await _assert_silent(ws, 0.15)
        again, _ = await _reply_among_ticks(ws, {"forget_all": ["ticks", "candles"]})
        bad, _ = await _reply_among_ticks(ws, {"forget_all": "tick"})
    assert sorted(reply.pop("forget_all")) == sorted(ids)
    assert reply == {
        "echo_req": {"forget_all": "ticks", "req_id": 12},
        "msg_type": "forget_all",
        "req_id": 12,
    }
    assert again == {
        "echo_req": {"forget_all": ["ticks", "candles"]},
        "forget_all": [],
        "msg_type": "forget_all",
    }
    assert bad["error"]["code"] == "InputValidationFailed"


async def test_website_status(api: DemoAPI, session: aiohttp.ClientSession) -> None:
    """website_status reports the site up, with the real API's call limits (and its spelling)."""
    async with session.ws_connect(api.url) as ws:
        reply = await _request(ws, {"website_status": 1, "req_id": 2})
    assert reply == {
        "echo_req": {"website_status": 1, "req_id": 2},
        "msg_type": "website_status",
        "website_status": {
            "api_call_limits": {
                "max_proposal_subscription": {
                    "applies_to": "subscribing to proposal concurrently",
                    "max": 5,
                },
                "max_requestes_general": {"applies_to": "rates", "hourly": 14400, "minutely": 180},
                "max_requestes_outcome": {
                    "applies_to": "portfolio, statement and proposal",
                    "hourly": 1500,
                    "minutely": 25,
                },
                "max_requestes_pricing": {
                    "applies_to": "proposal and proposal_open_contract",
                    "hourly": 3600,
                    "minutely": 80,
                },
            },
            "clients_country": "",
            "site_status": "up",
            "supported_languages": ["EN"],
        },
        "req_id": 2,
    }


async def test_stalled_stream_still_answers_pings(session: aiohttp.ClientSession) -> None:
    """A stalled stream sends no tick for stall_duration while pings are answered, then resumes.

    The stall is logged with its duration.
    """
    stream = io.StringIO()
    log = Logging("json", "info", stream=stream).logger
    loop = asyncio.get_running_loop()
    async with (
        _serving(mean_stall_every=0.05, stall_duration=(0.25, 0.3), log=log) as server,
        session.ws_connect(server.url) as ws,
    ):
        await _subscribe(ws, "R_25")
        last_tick = loop.time()
        pongs = 0
        gap = None
        next_ping = loop.time()
        deadline = loop.time() + 2.0
        req_id = 0
        while gap is None and loop.time() < deadline:
            if loop.time() >= next_ping:
                req_id += 1
                await ws.send_json({"ping": 1, "req_id": req_id})
                next_ping += 0.03
            try:
                data = await _receive(ws, timeout=max(0.0, next_ping - loop.time()))
            except TimeoutError:
                continue
            if data["msg_type"] == "ping":
                pongs += 1
                continue
            assert data["msg_type"] == "tick"
            now = loop.time()
            if now - last_tick >= 0.2:
                gap, pongs_in_gap = now - last_tick, pongs
            last_tick, pongs = now, 0
    stalls = [
        e
        for e in map(json.loads, stream.getvalue().splitlines())
        if e["event"] == "demo.stream.stall"
    ]
    assert gap is not None, "no stall within 2 s"
    # The stall itself, plus at most one tick interval before it began.
    assert 0.24 <= gap < 0.45
    assert pongs_in_gap >= 5
    assert stalls
    assert all(0.25 <= e["duration"] <= 0.3 for e in stalls)
    assert stalls[0]["symbol"] == "R_25"


async def test_steady_stream_never_stalls(session: aiohttp.ClientSession) -> None:
    """With mean_stall_every = inf no gap between ticks comes near a stall."""
    async with _serving() as server, session.ws_connect(server.url) as ws:
        await _subscribe(ws, "R_75")
        arrivals = []
        for _ in range(15):
            await _receive(ws, timeout=1.0)
            arrivals.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert max(gaps) < 0.1


async def test_ticks_are_not_activity(session: aiohttp.ClientSession) -> None:
    """A client that only receives ticks is still closed with 1001 "idle" after idle_timeout."""
    async with _serving(idle_timeout=0.3) as server, session.ws_connect(server.url) as ws:
        t0 = time.monotonic()
        await ws.send_json({"ticks": "R_50", "subscribe": 1})
        ticks = 0
        while (msg := await ws.receive(timeout=2.0)).type is aiohttp.WSMsgType.TEXT:
            ticks += 1
        elapsed = time.monotonic() - t0
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == 1001
    assert msg.extra == "idle"
    assert 0.28 <= elapsed < 0.8
    assert ticks >= 8


async def test_streams_end_with_the_connection(session: aiohttp.ClientSession) -> None:
    """When the client goes away its streams end at once, not at their next tick."""
    async with _serving(tick_interval=5.0) as server:
        baseline = asyncio.all_tasks()
        async with session.ws_connect(server.url) as ws:
            await _subscribe(ws, "R_10")
            await _subscribe(ws, "R_25")
        left = await _leftover_tasks(baseline, within=0.5)
    assert left == set()


async def test_stop_with_streams_is_quick(session: aiohttp.ClientSession) -> None:
    """stop() with live streams closes with 1001 promptly and leaves no task behind."""
    baseline = asyncio.all_tasks()
    server = DemoAPI(mean_lifetime=math.inf, tick_interval=5.0, rng=random.Random(9))
    await server.start()
    async with session.ws_connect(server.url) as ws:
        await _subscribe(ws, "R_50")
        await _subscribe(ws, "R_100")
        t0 = time.monotonic()
        await server.stop()
        elapsed = time.monotonic() - t0
        msg = await ws.receive(timeout=1.0)
    left = await _leftover_tasks(baseline, within=0.5)
    assert elapsed < 1.0
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == 1001
    assert left == set()
