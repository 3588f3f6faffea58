"""Simulated Deriv-style WebSocket API that ``wsmon demo`` runs in-process and monitors.

The server listens on 127.0.0.1 (by default on an ephemeral port) and serves
``/websockets/v3``.  It answers the two requests a keepalive monitor sends --
``{"ping": 1}`` and ``{"time": 1}`` -- in the Deriv API reply shapes, with a
small random latency, and answers everything else with a Deriv-style error.

To give the monitor something to observe it also misbehaves: every connection
gets a random lifetime (exponentially distributed with mean ``mean_lifetime``
seconds).  When the lifetime expires the server either drops the TCP
connection abruptly (``SO_LINGER`` 0 + abort, no close frame) or sends a close
frame with one of the codes 1001, 1011, 1012 or 4001.  Like the real API it
closes a connection with 1001 "idle" when the client sends no message for
``idle_timeout`` seconds (120 s by default); WebSocket ping frames are
answered but, being control frames rather than messages, do not count as
activity.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import random
import socket
import struct
import time
from typing import Any, Final

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

__all__ = ["CLOSE_CODES", "DEFAULT_APP_ID", "WS_PATH", "DemoAPI"]

WS_PATH: Final = "/websockets/v3"
DEFAULT_APP_ID: Final = 1089

#: Close codes the server picks from when a connection's lifetime expires gracefully.
CLOSE_CODES: Final[tuple[tuple[int, bytes], ...]] = (
    (1001, b"going away"),
    (1011, b"internal error"),
    (1012, b"service restart"),
    (4001, b"custom"),
)

_SPIKE_PROBABILITY: Final = 0.02
_SPIKE_MIN: Final = 0.100
_SPIKE_MAX: Final = 0.300
_DROP_PROBABILITY: Final = 0.5


def _error(echo_req: Any, code: str, message: str) -> dict[str, Any]:
    """Build a Deriv API error reply, echoing ``req_id`` when the request had one."""
    reply: dict[str, Any] = {
        "echo_req": echo_req,
        "error": {"code": code, "message": message},
        "msg_type": "error",
    }
    if isinstance(echo_req, dict) and "req_id" in echo_req:
        reply["req_id"] = echo_req["req_id"]
    return reply


def build_reply(data: str | bytes) -> dict[str, Any]:
    """Return the Deriv-style reply for one client message (a text or binary frame payload)."""
    if isinstance(data, bytes):
        return _error({}, "InputValidationFailed", "Input validation failed: binary frame")
    try:
        req = json.loads(data)
    except ValueError:
        return _error({}, "InputValidationFailed", "Input validation failed: invalid JSON")
    if not isinstance(req, dict):
        return _error(req, "InputValidationFailed", "Input validation failed: expected object")
    reply: dict[str, Any]
    if "ping" in req:
        reply = {"echo_req": req, "msg_type": "ping", "ping": "pong"}
    elif "time" in req:
        reply = {"echo_req": req, "msg_type": "time", "time": int(time.time())}
    else:
        return _error(req, "UnrecognisedRequest", "Unrecognised request")
    if "req_id" in req:
        reply["req_id"] = req["req_id"]
    return reply


class DemoAPI:
    """Simulated Deriv-style API on 127.0.0.1."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        mean_lifetime: float = 60.0,
        min_delay: float = 0.005,
        max_delay: float = 0.040,
        rng: random.Random | None = None,
        log: Any = None,
        idle_timeout: float = 120.0,
        close_timeout: float = 1.0,
    ) -> None:
        """Configure the server; nothing listens until :meth:`start`.

        ``mean_lifetime`` is the mean of the exponential per-connection lifetime in
        seconds (``math.inf`` disables the misbehaviour).  Replies are delayed by
        a uniform ``[min_delay, max_delay]`` seconds, with an occasional 100-300 ms
        spike.  ``close_timeout`` bounds every server-initiated close handshake
        and the shutdown in :meth:`stop`.
        """
        if not mean_lifetime > 0:
            raise ValueError(f"mean_lifetime must be > 0, got {mean_lifetime!r}")
        if not 0 <= min_delay <= max_delay:
            raise ValueError(f"need 0 <= min_delay <= max_delay, got {min_delay!r}, {max_delay!r}")
        if not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be > 0, got {idle_timeout!r}")
        if not close_timeout > 0:
            raise ValueError(f"close_timeout must be > 0, got {close_timeout!r}")
        self._host = host
        self._port = port
        self._mean_lifetime = mean_lifetime
        self._min_delay = min_delay
        self._max_delay = max_delay
        self._rng = rng if rng is not None else random.Random()
        self._log: Any = log if log is not None else structlog.get_logger(__name__)
        self._idle_timeout = idle_timeout
        self._close_timeout = close_timeout
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self._stopping = False
        self._conn_ids = itertools.count(1)
        self._conns: dict[int, web.WebSocketResponse] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """WebSocket URL of the running server, Deriv style (``.../websockets/v3?app_id=1089``)."""
        if self._bound_port is None:
            raise RuntimeError("DemoAPI is not started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"ws://{host}:{self._bound_port}{WS_PATH}?app_id={DEFAULT_APP_ID}"

    async def start(self) -> None:
        """Bind and start serving; the URL is available afterwards."""
        if self._runner is not None:
            raise RuntimeError("DemoAPI already started")
        app = web.Application()
        app.router.add_get(WS_PATH, self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self._close_timeout)
        await runner.setup()
        started = False
        try:
            await web.TCPSite(runner, self._host, self._port).start()
            started = True
        finally:
            if not started:
                await runner.cleanup()
        self._runner = runner
        self._stopping = False
        self._bound_port = int(runner.addresses[0][1])
        self._log.info("demo.start", url=self.url, mean_lifetime=self._mean_lifetime)

    async def stop(self) -> None:
        """Close open connections with 1001, cancel pending replies and stop listening.

        Idempotent; bounded by roughly twice ``close_timeout`` even if clients
        never answer the close frame.
        """
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping = True
        conns = list(self._conns.values())
        if conns:
            closes = (ws.close(code=1001, message=b"server shutdown") for ws in conns)
            # ws.close() turns a cancellation into an abnormal close of the transport.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._close_timeout):
                    await asyncio.gather(*closes, return_exceptions=True)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()
        self._bound_port = None
        self._log.info("demo.stop", open_connections=len(conns))

    # -- per connection ----------------------------------------------------------

    def _reply_delay(self) -> float:
        if self._rng.random() < _SPIKE_PROBABILITY:
            return self._rng.uniform(_SPIKE_MIN, _SPIKE_MAX)
        return self._rng.uniform(self._min_delay, self._max_delay)

    def _lifetime(self) -> float:
        if math.isinf(self._mean_lifetime):
            return math.inf
        return self._rng.expovariate(1.0 / self._mean_lifetime)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Serve one WebSocket connection until it closes, idles out or its lifetime expires."""
        if self._stopping:
            return web.Response(status=503, text="shutting down")
        ws = web.WebSocketResponse(autoping=True, heartbeat=None, timeout=self._close_timeout)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="expected a WebSocket upgrade")
        conn = next(self._conn_ids)
        lifetime = self._lifetime()
        log = self._log.bind(conn=conn, peer=request.remote, lifetime=round(lifetime, 3))
        replies: set[asyncio.Task[None]] = set()
        try:
            await ws.prepare(request)
        except OSError as exc:
            log.info("demo.connection.lost", phase="handshake", error=repr(exc))
            return ws
        self._conns[conn] = ws
        log.debug("demo.connection.open")
        loop = asyncio.get_running_loop()
        died_at = loop.time() + lifetime
        try:
            await self._serve(ws, request, log, died_at, replies)
        except OSError as exc:
            log.info("demo.connection.lost", error=repr(exc))
        finally:
            del self._conns[conn]
            for task in replies:
                task.cancel()
            code = ws.close_code
            log.debug("demo.connection.end", close_code=None if code is None else int(code))
        return ws

    async def _serve(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        log: Any,
        died_at: float,
        replies: set[asyncio.Task[None]],
    ) -> None:
        loop = asyncio.get_running_loop()
        idle_at = loop.time() + self._idle_timeout
        while True:
            deadline = min(idle_at, died_at)
            try:
                async with asyncio.timeout_at(deadline if deadline < math.inf else None):
                    msg = await ws.receive()
            except TimeoutError:
                if ws.closed:
                    return
                if died_at <= idle_at:
                    await self._misbehave(ws, request, log)
                else:
                    log.info("demo.idle", idle_timeout=self._idle_timeout)
                    await ws.close(code=1001, message=b"idle")
                return
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                idle_at = loop.time() + self._idle_timeout
                payload = json.dumps(build_reply(msg.data))
                task = asyncio.create_task(self._reply(ws, payload, log))
                replies.add(task)
                task.add_done_callback(replies.discard)
                self._tasks.add(task)
                task.add_done_callback(self._reply_done)
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return
            elif msg.type is WSMsgType.ERROR:
                log.info("demo.connection.error", error=repr(ws.exception()))
                return

    async def _misbehave(self, ws: web.WebSocketResponse, request: web.Request, log: Any) -> None:
        """End the connection the way a flaky upstream would: abrupt drop or close frame."""
        if self._rng.random() < _DROP_PROBABILITY:
            log.info("demo.drop", how="abort")
            transport = request.transport
            if transport is None:
                return
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
            # Mark the response closed; writing the close frame fails quietly on the dead
            # transport, so aiohttp will not try again when the handler returns.
            await ws.close(code=WSCloseCode.ABNORMAL_CLOSURE, drain=False)
            return
        code, reason = self._rng.choice(CLOSE_CODES)
        log.info("demo.close", code=code, reason=reason.decode())
        await ws.close(code=code, message=reason)

    def _reply_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._log.warning("demo.reply.failed", error=repr(exc))

    async def _reply(self, ws: web.WebSocketResponse, payload: str, log: Any) -> None:
        """Send one reply after a simulated processing delay; vanished clients are ignored."""
        await asyncio.sleep(self._reply_delay())
        if ws.closed:
            return
        try:
            await ws.send_str(payload)
        except ConnectionError as exc:
            log.debug("demo.reply.dropped", error=repr(exc))
