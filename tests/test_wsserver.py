"""Tests for the misbehaving WebSocket test server (tests/wsserver.py) using a plain client."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from wsserver import WSTestServer

WSMsgType = aiohttp.WSMsgType


@pytest.fixture
async def server() -> AsyncIterator[WSTestServer]:
    """A started server, always stopped."""
    async with WSTestServer() as srv:
        yield srv


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that is always closed."""
    async with aiohttp.ClientSession() as s:
        yield s


async def _json(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=2.0)
    assert msg.type is WSMsgType.TEXT, msg
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


async def _raw_connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a TCP connection and complete the WebSocket handshake by hand."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


async def test_default_replies_and_truth(
    server: WSTestServer, session: aiohttp.ClientSession
) -> None:
    """ping/time/unknown get Deriv-style replies with req_id echoed; all requests recorded."""
    assert server.url == f"ws://127.0.0.1:{server.port}/ws"
    async with session.ws_connect(server.url) as ws:
        await server.wait_for(lambda: server.open_connections == 1)
        await ws.send_json({"ping": 1, "req_id": 7})
        assert await _json(ws) == {
            "echo_req": {"ping": 1, "req_id": 7},
            "msg_type": "ping",
            "ping": "pong",
            "req_id": 7,
        }
        await ws.send_json({"time": 1})
        reply = await _json(ws)
        assert reply["msg_type"] == "time"
        assert "req_id" not in reply
        assert abs(reply["time"] - time.time()) < 5
        await ws.send_json({"ticks": "R_100"})
        reply = await _json(ws)
        assert reply["msg_type"] == "error"
        assert reply["error"]["code"] == "UnrecognisedRequest"
    await server.wait_for(lambda: server.open_connections == 0)
    assert server.requests == [{"ping": 1, "req_id": 7}, {"time": 1}, {"ticks": "R_100"}]
    assert (server.request_count("ping"), server.request_count("time")) == (1, 1)
    assert (server.http_requests, server.connections) == (1, 1)
    assert server.close_frames == [1000]


async def test_reply_delay_is_per_message_not_serialised(session: aiohttp.ClientSession) -> None:
    """Three requests with reply_delay=0.2 are all answered after ~0.2 s, not 0.6 s."""
    async with WSTestServer(reply_delay=0.2) as server, session.ws_connect(server.url) as ws:
        start = time.monotonic()
        for i in range(3):
            await ws.send_json({"ping": 1, "req_id": i})
        ids = {(await _json(ws))["req_id"] for _ in range(3)}
        elapsed = time.monotonic() - start
    assert ids == {0, 1, 2}
    assert 0.2 <= elapsed < 0.5


async def test_handshake_status_refuses_upgrade(
    server: WSTestServer, session: aiohttp.ClientSession
) -> None:
    """With handshake_status=503 the upgrade fails with 503; clearing it lets clients in."""
    server.handshake_status = 503
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await session.ws_connect(server.url)
    assert info.value.status == 503
    assert (server.http_requests, server.connections) == (1, 0)
    server.handshake_status = None
    async with session.ws_connect(server.url):
        pass
    assert (server.http_requests, server.connections) == (2, 1)


async def test_silent_records_but_never_replies(
    server: WSTestServer, session: aiohttp.ClientSession
) -> None:
    """A silent server records the request but sends nothing back."""
    server.silent = True
    async with session.ws_connect(server.url) as ws:
        await ws.send_json({"ping": 1})
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive(timeout=0.1)
    assert server.request_count("ping") == 1


async def test_answer_pings_knob(server: WSTestServer, session: aiohttp.ClientSession) -> None:
    """Protocol pings are always counted; they are answered with pong only if answer_pings."""
    async with session.ws_connect(server.url, autoping=False) as ws:
        await ws.ping(b"a")
        msg = await ws.receive(timeout=2.0)
        assert (msg.type, msg.data) == (WSMsgType.PONG, b"a")
        server.answer_pings = False
        await ws.ping(b"b")
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive(timeout=0.1)
    assert server.pings_received == 2


async def test_responder_overrides_default_reply(
    server: WSTestServer, session: aiohttp.ClientSession
) -> None:
    """A responder's frames (str -> text, bytes -> binary) replace the reply; None keeps it."""

    def responder(request: dict[str, Any]) -> list[str | bytes] | None:
        return None if "ping" in request else ["garbage", b"\x00\x01"]

    server.responder = responder
    async with session.ws_connect(server.url) as ws:
        await ws.send_json({"time": 1})
        first = await ws.receive(timeout=2.0)
        second = await ws.receive(timeout=2.0)
        assert (first.type, first.data) == (WSMsgType.TEXT, "garbage")
        assert (second.type, second.data) == (WSMsgType.BINARY, b"\x00\x01")
        await ws.send_json({"ping": 1})
        assert (await _json(ws))["msg_type"] == "ping"


async def test_invalid_messages_counted_not_answered(
    server: WSTestServer, session: aiohttp.ClientSession
) -> None:
    """Non-JSON text, non-object JSON and binary frames are counted as invalid, not recorded."""
    async with session.ws_connect(server.url) as ws:
        await ws.send_str("not json")
        await ws.send_str("[1, 2]")
        await ws.send_bytes(b"{}")
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive(timeout=0.1)
    assert server.invalid_messages == 3
    assert server.requests == []


async def test_close_all_sends_code_and_records_client_reply(
    server: WSTestServer, session: aiohttp.ClientSession
) -> None:
    """close_all(4000) reaches the client as CLOSE 4000; the client's reply code is recorded."""
    async with session.ws_connect(server.url) as ws:
        await server.wait_for(lambda: server.open_connections == 1)
        receiving = asyncio.create_task(ws.receive(timeout=2.0))
        await server.close_all(4000, b"bye")
        msg = await receiving
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4000, "bye")
        assert ws.close_code == 4000
    assert server.open_connections == 0
    assert server.close_frames == [1000]  # aiohttp's autoclose answers with 1000


async def test_client_close_frames_recorded(server: WSTestServer) -> None:
    """Client close frames are recorded by code; an empty close frame is recorded as None."""
    _, writer = await _raw_connect(server.port)
    writer.write(b"\x88\x80" + os.urandom(4))  # masked close frame, no payload
    await server.wait_for(lambda: server.close_frames == [None])
    writer.close()
    async with aiohttp.ClientSession() as s, s.ws_connect(server.url) as ws:
        await ws.close(code=4001)
    await server.wait_for(lambda: server.close_frames == [None, 4001])


async def test_abort_all_sends_rst(server: WSTestServer, session: aiohttp.ClientSession) -> None:
    """abort_all resets TCP (raw reader gets ECONNRESET); aiohttp sees CLOSED with code 1006."""
    reader, writer = await _raw_connect(server.port)
    ws = await session.ws_connect(server.url)
    await server.wait_for(lambda: server.open_connections == 2)
    await server.abort_all()
    with pytest.raises(ConnectionResetError):
        await reader.read(100)
    writer.close()
    msg = await ws.receive(timeout=2.0)
    assert msg.type is WSMsgType.CLOSED
    assert ws.close_code == 1006
    assert server.open_connections == 0
    assert server.close_frames == []


async def test_fin_all_closes_without_close_frame(
    server: WSTestServer, session: aiohttp.ClientSession
) -> None:
    """fin_all gives a clean EOF with no close frame bytes; aiohttp sees CLOSED, code 1006."""
    reader, writer = await _raw_connect(server.port)
    ws = await session.ws_connect(server.url)
    await server.wait_for(lambda: server.open_connections == 2)
    await server.fin_all()
    assert await reader.read(100) == b""
    writer.close()
    msg = await ws.receive(timeout=2.0)
    assert msg.type is WSMsgType.CLOSED
    assert ws.close_code == 1006
    assert server.open_connections == 0


async def test_stop_is_quick_and_idempotent(session: aiohttp.ClientSession) -> None:
    """stop() with an open, non-reading client finishes well under a second; twice is fine."""
    server = WSTestServer()
    await server.start()
    ws = await session.ws_connect(server.url)
    await server.wait_for(lambda: server.open_connections == 1)
    start = time.monotonic()
    await server.stop()
    assert time.monotonic() - start < 1.0
    await server.stop()
    assert server.open_connections == 0
    assert (await ws.receive(timeout=2.0)).type in {WSMsgType.CLOSE, WSMsgType.CLOSED}
    await ws.close()


async def test_wait_for_times_out_with_assertion(server: WSTestServer) -> None:
    """wait_for raises AssertionError when the predicate never becomes true."""
    with pytest.raises(AssertionError, match="not true within"):
        await server.wait_for(lambda: False, timeout=0.05)
