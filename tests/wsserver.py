"""Misbehaving aiohttp WebSocket test server that records server-side truth for wsmon tests.

``WSTestServer`` listens on ``ws://127.0.0.1:<random port>/ws`` and answers Deriv-API style
JSON requests (``{"ping": 1}``, ``{"time": 1}``, anything else gets an ``UnrecognisedRequest``
error).  Plain attributes act as knobs that may be flipped while it runs (reply delay, refused
handshake, silence, unanswered protocol pings, custom responder), and action methods make every
open connection misbehave (close frame with a chosen code, TCP RST, TCP FIN without a close
frame).  Everything the server actually saw is recorded so tests can compare the daemon's
metrics against ground truth.

Timing of knobs: ``silent``, ``reply_delay`` and ``answer_pings`` are read when a message
arrives; ``responder`` and the default reply are evaluated when the reply is sent (after the
delay).  Invalid messages (non-JSON-object text, binary) are counted and never answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import WSMsgType, web

__all__ = ["Responder", "WSTestServer", "main"]

Responder = Callable[[dict[str, Any]], list[str | bytes] | None]

_WS_PATH = "/ws"
_STOP_CLOSE_TIMEOUT = 0.25  # seconds stop() grants the close handshake before aborting
_MAX_MSG_SIZE = 32 << 20  # room for the largest request a test sends (aiohttp's default: 4 MiB)
_CLOSE_REPLY_TIMEOUT = 2.0  # seconds the server waits for the client's close frame
_FINISH_TIMEOUT = 5.0  # seconds the actions wait for handlers to notice the connection is gone


@dataclass(eq=False)
class _Conn:
    """One accepted WebSocket connection."""

    request: web.Request
    ws: web.WebSocketResponse
    done: asyncio.Event = field(default_factory=asyncio.Event)
    close_request: asyncio.Future[tuple[int, bytes]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    last_message: float = 0.0
    pong_seen: bool = False
    # subscription id -> the task sending its ticks
    subscriptions: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    # What this connection saw and did, in order: "subscribe", "forget", "authorize",
    # "website_status", "close:<code>" (the client's close frame).
    events: list[str] = field(default_factory=list)


def default_reply(request: dict[str, Any]) -> dict[str, Any]:
    """Build the Deriv-API style reply to one JSON request."""
    reply: dict[str, Any]
    if "ping" in request:
        reply = {"echo_req": request, "msg_type": "ping", "ping": "pong"}
    elif "time" in request:
        reply = {"echo_req": request, "msg_type": "time", "time": int(time.time())}
    else:
        reply = {
            "echo_req": request,
            "error": {"code": "UnrecognisedRequest", "message": "Unrecognised request"},
            "msg_type": "error",
        }
    if "req_id" in request:
        reply["req_id"] = request["req_id"]
    return reply


class WSTestServer:
    """Deliberately misbehaving WebSocket server on 127.0.0.1, port chosen by the OS."""

    def __init__(
        self,
        *,
        reply_delay: float = 0.0,
        ssl_context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.ssl_context = ssl_context
        self.host = host
        self.requested_port = port  # 0: the OS chooses; else e.g. to come back on a known port
        # knobs
        self.reply_delay: float = reply_delay
        self.handshake_delay: float = 0.0  # seconds to stall before answering the upgrade
        self.idle_timeout: float | None = None  # close 1001 after this long without a message
        self.stream_rate: float = 0.0  # unsolicited messages per second on every connection
        self.ping_interval: float | None = None  # server-initiated ping frames
        self.close_unponged: bool = False  # with ping_interval: close 1011 if no pong came
        self.handshake_status: int | None = None
        self.silent: bool = False
        self.answer_pings: bool = True
        self.responder: Responder | None = None
        self.subprotocols: tuple[str, ...] = ()  # the ones it accepts, its favourite first
        # subscriptions (`{"ticks": X, "subscribe": 1}`): ticks a second on each, paused
        # while `stalled`; `subscribe_error` refuses subscribes with that error code
        self.tick_rate: float = 20.0
        self.stalled: bool = False
        self.subscribe_error: str | None = None
        self.authorize_token: str | None = None  # answer `authorize` (Deriv style) if set
        # truth
        self.http_requests: int = 0
        self.connections: int = 0
        self.open_connections: int = 0
        self.requests: list[dict[str, Any]] = []
        self.invalid_messages: int = 0
        self.pings_received: int = 0
        self.close_frames: list[int | None] = []
        self.reply_errors: list[Exception] = []  # exceptions swallowed while sending replies
        self.handshakes_in_progress: int = 0
        self.max_concurrent_handshakes: int = 0
        self.accepted_at: list[float] = []  # loop.time() of every accepted handshake
        self.idle_closes: int = 0
        self.server_pings_sent: int = 0
        self.pongs_received: int = 0
        self.streamed: int = 0
        self.big_sent: int = 0
        self.reply_holds: list[float] = []  # seconds each reply was held: receipt to send
        self.upgrade_headers: list[dict[str, str]] = []  # of every upgrade request
        self.upgrade_paths: list[str] = []  # path and query of every upgrade request
        self.negotiated: list[str | None] = []  # the subprotocol each handshake agreed on
        self.ticks_sent: int = 0  # stream messages sent, every subscription
        self.subscribes: int = 0
        self.last_tick_at: float = 0.0  # loop.time() of the latest tick sent
        self.forgets: list[str] = []  # subscription ids the client asked to forget
        self.conn_events: list[list[str]] = []  # each connection's `events`, in accept order
        # internals
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._conns: set[_Conn] = set()
        self._reply_tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind 127.0.0.1:0 and start serving ``/ws``."""
        if self._runner is not None:
            raise RuntimeError("WSTestServer already started")
        app = web.Application()
        app.router.add_get(_WS_PATH, self._handle)
        app.router.add_get("/_stats", self._stats)
        app.router.add_post("/_control", self._control)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.requested_port, ssl_context=self.ssl_context)
            await site.start()
            self._port = int(runner.addresses[0][1])
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self) -> None:
        """Close every connection and the listener; quick and idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        conns = list(self._conns)
        if conns:
            # Polite close first, bounded; whatever is still open afterwards gets aborted.
            for conn in conns:
                self._request_close(conn, 1001, b"server stopping")
            waits = [asyncio.ensure_future(c.done.wait()) for c in conns]
            _, pending = await asyncio.wait(waits, timeout=_STOP_CLOSE_TIMEOUT)
            for fut in pending:
                fut.cancel()
            for conn in conns:
                if not conn.done.is_set() and conn.request.transport is not None:
                    conn.request.transport.abort()
        tasks = list(self._reply_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()

    async def __aenter__(self) -> WSTestServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port (only valid after start())."""
        if self._port is None:
            raise RuntimeError("WSTestServer not started")
        return self._port

    @property
    def url(self) -> str:
        """WebSocket URL of the server."""
        scheme = "wss" if self.ssl_context is not None else "ws"
        return f"{scheme}://{self.host}:{self.port}{_WS_PATH}"

    # ------------------------------------------------------------------ truth helpers

    def request_count(self, kind: str) -> int:
        """Number of received JSON requests that have top-level key ``kind``."""
        return sum(1 for request in self.requests if kind in request)

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,
    ) -> None:
        """Poll ``predicate`` every 10 ms; raise AssertionError if still false after timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() >= deadline:
                name = getattr(predicate, "__qualname__", repr(predicate))
                raise AssertionError(f"condition {name} not true within {timeout} s")
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------ actions

    async def close_all(self, code: int, message: bytes = b"") -> None:
        """Send a close frame with ``code`` on every open connection and wait until closed.

        Runs a proper close handshake: the server waits (up to 2 s) for the client's close
        frame, records its code in ``close_frames``, then closes TCP.  The client must be
        reading concurrently, otherwise this takes the full 2 s and the client sees 1006.
        """
        conns = list(self._conns)
        for conn in conns:
            self._request_close(conn, code, message)
        await self._wait_done(conns)

    async def close_no_status_all(self) -> None:
        """Send a close frame with no status code (empty payload) on every connection."""
        conns = list(self._conns)
        for conn in conns:
            self._request_close(conn, 0, b"")
        await self._wait_done(conns)

    async def abort_all(self) -> None:
        """Reset every open connection (TCP RST via SO_LINGER 0); no close frame."""
        conns = list(self._conns)
        for conn in conns:
            transport = conn.request.transport
            if transport is None or transport.is_closing():
                continue
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        await self._wait_done(conns)

    async def send_big(self, size: int) -> None:
        """Send one text message of `size` bytes on every open connection (and count the
        connections it went to in ``big_sent``)."""
        payload = "x" * size
        for conn in list(self._conns):
            if conn.ws.closed:
                continue
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.big_sent += 1
                await conn.ws.send_str(payload)

    async def fin_all(self) -> None:
        """Close the TCP connection cleanly (FIN) on every open connection; no close frame."""
        conns = list(self._conns)
        for conn in conns:
            transport = conn.request.transport
            if transport is not None and not transport.is_closing():
                transport.close()
        await self._wait_done(conns)

    # ------------------------------------------------------------------ remote control

    KNOBS = (
        "reply_delay", "handshake_status", "silent", "answer_pings", "handshake_delay",
        "idle_timeout", "stream_rate", "ping_interval", "close_unponged", "tick_rate",
        "stalled", "subscribe_error",
    )  # fmt: skip

    def stats(self) -> dict[str, Any]:
        """Everything the server saw, as plain JSON-able data."""
        holds = self.reply_holds
        return {
            "http_requests": self.http_requests,
            "connections": self.connections,
            "open_connections": self.open_connections,
            "requests": {k: self.request_count(k) for k in ("ping", "time")},
            "pings_received": self.pings_received,
            "close_frames": self.close_frames,
            "server_pings_sent": self.server_pings_sent,
            "pongs_received": self.pongs_received,
            "streamed": self.streamed,
            "big_sent": self.big_sent,
            "reply_holds": holds,
            "ticks_sent": self.ticks_sent,
            "subscribes": self.subscribes,
            "forgets": len(self.forgets),
        }

    async def _stats(self, _: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _control(self, request: web.Request) -> web.Response:
        """Set knobs ({"knob": value}) or run an action ({"action": "abort_all"})."""
        body: dict[str, Any] = await request.json()
        action = body.pop("action", None)
        size = body.pop("size", 0)  # of send_big's message
        for key, value in body.items():
            if key not in self.KNOBS:
                return web.json_response({"error": f"unknown knob {key}"}, status=400)
            setattr(self, key, value)
        if action == "close_all":
            await self.close_all(int(body.get("code", 1000)))
        elif action in ("abort_all", "fin_all", "close_no_status_all"):
            await getattr(self, action)()
        elif action == "send_big":
            await self.send_big(int(size))
        return web.json_response(self.stats())

    # ------------------------------------------------------------------ internals

    def _request_close(self, conn: _Conn, code: int, message: bytes) -> None:
        if not conn.close_request.done():
            conn.close_request.set_result((code, message))

    async def _wait_done(self, conns: list[_Conn]) -> None:
        waits = [asyncio.ensure_future(c.done.wait()) for c in conns if not c.done.is_set()]
        if not waits:
            return
        _, pending = await asyncio.wait(waits, timeout=_FINISH_TIMEOUT)
        for fut in pending:
            fut.cancel()
        if pending:
            raise AssertionError(f"{len(pending)} connection handler(s) did not finish")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.http_requests += 1
        if self.handshake_status is not None:
            return web.Response(status=self.handshake_status)
        self.upgrade_headers.append(dict(request.headers))
        self.upgrade_paths.append(request.path_qs)
        ws = web.WebSocketResponse(
            autoping=False, autoclose=True, timeout=_CLOSE_REPLY_TIMEOUT,
            max_msg_size=_MAX_MSG_SIZE, protocols=self.subprotocols,
        )  # fmt: skip
        self.handshakes_in_progress += 1
        self.max_concurrent_handshakes = max(
            self.max_concurrent_handshakes, self.handshakes_in_progress
        )
        try:
            if self.handshake_delay > 0:
                await asyncio.sleep(self.handshake_delay)
            await ws.prepare(request)
            self.negotiated.append(ws.ws_protocol)
        except web.HTTPException:
            raise  # not a valid upgrade request: let aiohttp answer it
        except Exception:
            return ws  # client vanished during the handshake
        finally:
            self.handshakes_in_progress -= 1
        self.accepted_at.append(asyncio.get_running_loop().time())
        conn = _Conn(request, ws)
        self.conn_events.append(conn.events)
        self.connections += 1
        self.open_connections += 1
        self._conns.add(conn)
        reader = asyncio.create_task(self._read_loop(conn))
        extras = [asyncio.create_task(self._background(conn))]
        try:
            either: list[asyncio.Future[Any]] = [reader, conn.close_request]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            for task in extras:
                task.cancel()
            await asyncio.gather(*extras, return_exceptions=True)
            if not reader.done() and conn.close_request.result()[0] == 0:
                # A close frame without a status code, written by hand (aiohttp always
                # sends one); the reader records the client's answer.
                await ws._writer.send_frame(b"", WSMsgType.CLOSE)  # type: ignore[union-attr]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(reader), _CLOSE_REPLY_TIMEOUT)
                if request.transport is not None:
                    request.transport.close()
            elif not reader.done():
                # close_all()/stop(): stop reading, then run the close handshake from this task
                # so that aiohttp waits for (and reports) the client's close frame.
                reader.cancel()
                await asyncio.wait([reader])
                code, message = conn.close_request.result()
                # True + no exception: the client answered with a close frame (code in close_code)
                answered = await ws.close(code=code, message=message)
                if answered and ws.exception() is None and ws.close_code is not None:
                    self.close_frames.append(ws.close_code or None)
        except asyncio.CancelledError:
            raise
        except Exception:
            pass  # a disappearing client is normal here: end quietly
        finally:
            extras.extend(conn.subscriptions.values())
            for task in extras:
                task.cancel()
            await asyncio.gather(*extras, return_exceptions=True)
            if not reader.done():
                reader.cancel()
                await asyncio.wait([reader])
            if not reader.cancelled():
                reader.exception()  # mark as retrieved
            self.open_connections -= 1
            self._conns.discard(conn)
            conn.done.set()
        return ws

    async def _background(self, conn: _Conn) -> None:
        """Per-connection behaviours that run beside the reader: idle timeout, server pings,
        a message stream. Any of them ending the connection requests a close."""
        loop = asyncio.get_running_loop()
        conn.last_message = loop.time()
        next_ping = loop.time() + (self.ping_interval or 0)
        streamed_at = loop.time()
        ponged = True
        tick = 0.01
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            if self.idle_timeout is not None and now - conn.last_message > self.idle_timeout:
                self.idle_closes += 1
                self._request_close(conn, 1001, b"idle")
                return
            if self.ping_interval is not None and now >= next_ping:
                if self.close_unponged and not ponged:
                    self._request_close(conn, 1011, b"no pong")
                    return
                ponged = False
                conn.pong_seen = False
                await conn.ws.ping(b"srv")
                self.server_pings_sent += 1
                next_ping = now + self.ping_interval
            ponged = ponged or conn.pong_seen
            if self.stream_rate > 0:
                due = int((now - streamed_at) * self.stream_rate)
                for _ in range(due):
                    self.streamed += 1
                    tick_msg = {"msg_type": "tick", "tick": {"quote": 1.2345, "n": self.streamed}}
                    await conn.ws.send_str(json.dumps(tick_msg))
                streamed_at += due / self.stream_rate

    async def _read_loop(self, conn: _Conn) -> None:
        ws = conn.ws
        while True:
            msg = await ws.receive()
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                conn.last_message = asyncio.get_running_loop().time()
            if msg.type is WSMsgType.TEXT:
                self._on_text(conn, msg.data)
            elif msg.type is WSMsgType.BINARY:
                self.invalid_messages += 1
            elif msg.type is WSMsgType.PING:
                self.pings_received += 1
                if self.answer_pings:
                    await ws.pong(msg.data)
            elif msg.type is WSMsgType.PONG:
                self.pongs_received += 1
                conn.pong_seen = True
            elif msg.type is WSMsgType.CLOSE:
                # autoclose already answered; aiohttp reports an empty close frame as code 0
                code = int(msg.data)
                self.close_frames.append(code or None)
                conn.events.append(f"close:{code}")
                return
            else:  # CLOSING (we closed it), CLOSED (EOF) or ERROR
                return

    def _on_text(self, conn: _Conn, data: str) -> None:
        try:
            request = json.loads(data)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            self.invalid_messages += 1
            return
        self.requests.append(request)
        if self.silent:
            return
        if self._subscription_request(conn, request):
            return
        received = asyncio.get_running_loop().time()
        task = asyncio.create_task(self._reply(conn, request, self.reply_delay, received))
        self._reply_tasks.add(task)
        task.add_done_callback(self._reply_tasks.discard)

    def _subscription_request(self, conn: _Conn, request: dict[str, Any]) -> bool:
        """Subscribe, forget and authorize, answered at once; False for other requests."""
        reply: dict[str, Any]
        if request.get("subscribe") == 1:
            conn.events.append("subscribe")
            self.subscribes += 1
            if self.subscribe_error is not None:
                reply = {
                    "echo_req": request,
                    "error": {"code": self.subscribe_error, "message": "refused"},
                    "msg_type": "tick",
                }
            else:
                sid = uuid.uuid4().hex
                conn.subscriptions[sid] = asyncio.create_task(self._ticks(conn, request, sid))
                return True
        elif "forget" in request:
            conn.events.append("forget")
            self.forgets.append(str(request["forget"]))
            task = conn.subscriptions.pop(str(request["forget"]), None)
            if task is not None:
                task.cancel()
            reply = {"echo_req": request, "forget": int(task is not None), "msg_type": "forget"}
        elif "authorize" in request and self.authorize_token is not None:
            conn.events.append("authorize")
            if request["authorize"] == self.authorize_token:
                reply = {"echo_req": request, "msg_type": "authorize", "authorize": {}}
            else:
                reply = {
                    "echo_req": request,
                    "error": {"code": "InvalidToken", "message": "invalid"},
                    "msg_type": "authorize",
                }
        elif "website_status" in request:
            conn.events.append("website_status")
            general = {"applies_to": "rates", "hourly": 14400, "minutely": 180}
            limits = {"api_call_limits": {"max_requestes_general": general}}
            reply = {"echo_req": request, "msg_type": "website_status", "website_status": limits}
        else:
            return False
        if "req_id" in request:
            reply["req_id"] = request["req_id"]
        task = asyncio.create_task(self._send_now(conn, json.dumps(reply)))
        self._reply_tasks.add(task)
        task.add_done_callback(self._reply_tasks.discard)
        return True

    async def _send_now(self, conn: _Conn, text: str) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            if not (conn.ws.closed or conn.close_request.done()):
                await conn.ws.send_str(text)

    async def _ticks(self, conn: _Conn, request: dict[str, Any], sid: str) -> None:
        """A subscription's messages, Deriv style, every 1/tick_rate seconds while not
        `stalled`; the first one at once."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        n = 0
        while not (conn.ws.closed or conn.close_request.done()):
            if not self.stalled:
                n += 1
                tick = {
                    "epoch": int(time.time()),
                    "quote": 1.0 + n / 1e4,
                    "symbol": request["ticks"],
                }
                message: dict[str, Any] = {
                    "echo_req": request,
                    "msg_type": "tick",
                    "subscription": {"id": sid},
                    "tick": {**tick, "id": sid},
                }
                if "req_id" in request:
                    message["req_id"] = request["req_id"]
                try:
                    await conn.ws.send_str(json.dumps(message))
                except (ConnectionError, RuntimeError):
                    return
                self.ticks_sent += 1
                self.last_tick_at = loop.time()
            due = max(due + 1.0 / self.tick_rate, loop.time())
            await asyncio.sleep(due - loop.time())

    async def _reply(
        self, conn: _Conn, request: dict[str, Any], delay: float, received: float
    ) -> None:
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            frames: list[str | bytes] | None = None
            if self.responder is not None:
                frames = self.responder(request)
            if frames is None:
                frames = [json.dumps(default_reply(request))]
            for frame in frames:
                if conn.ws.closed or conn.close_request.done() or conn.done.is_set():
                    return  # never send data after (or while) closing
                if isinstance(frame, bytes):
                    await conn.ws.send_bytes(frame)
                else:
                    self.reply_holds.append(asyncio.get_running_loop().time() - received)
                    await conn.ws.send_str(frame)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.reply_errors.append(exc)  # connection gone while replying, or responder bug


async def _serve_forever(host: str) -> None:
    async with WSTestServer(host=host) as server:
        print(server.port, flush=True)
        await asyncio.Event().wait()


def main() -> None:
    """Run as its own process (for tests that freeze it with SIGSTOP or need a separate
    event loop): prints the port, then serves until killed; `/_control` and `/_stats`
    drive it."""
    host = sys.argv[sys.argv.index("--host") + 1] if "--host" in sys.argv else "127.0.0.1"
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(host))


if __name__ == "__main__":
    main()
