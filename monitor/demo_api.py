"""Simulated Deriv-style WebSocket API that ``wsmon demo`` runs in-process and monitors.

The server listens on 127.0.0.1 (by default on an ephemeral port) and serves
``/websockets/v3``.  It answers the two requests a keepalive monitor sends --
``{"ping": 1}`` and ``{"time": 1}`` -- in the Deriv API reply shapes, with a
small random latency; ``{"website_status": 1}`` gets a fixed status (``site_status``
"up" and the API call limits), and anything else a Deriv-style error.

Subscription streams work as on the real API.  ``{"ticks": SYMBOL, "subscribe": 1}``
for one of the synthetic indices in :data:`SYMBOLS` starts a stream on the
connection: a tick at once, then one every ``tick_interval`` seconds, each carrying
the stream's 32-hex-digit id in ``subscription.id`` and a quote from a random walk
per symbol.  Without ``subscribe`` the reply is a single tick.  ``{"forget": ID}``
and ``{"forget_all": "ticks"}`` end streams, and a connection's streams end with it.
Ticks are not client activity: a client that only listens is still idled out.

To give the monitor something to observe it also misbehaves: every connection
gets a random lifetime (exponentially distributed with mean ``mean_lifetime``
seconds).  When the lifetime expires the server either drops the TCP
connection abruptly (``SO_LINGER`` 0 + abort, no close frame) or sends a close
frame with one of the codes 1001, 1011, 1012 or 4001.  Like the real API it
closes a connection with 1001 "idle" when the client sends no message for
``idle_timeout`` seconds (120 s by default); WebSocket ping frames are
answered but, being control frames rather than messages, do not count as
activity.

Streams misbehave too.  Every so often (exponential gaps with mean
``mean_stall_every`` seconds) a stream stalls: it sends no tick for a uniform
``stall_duration`` seconds while the connection keeps answering pings and time
requests.  Such a zombie stream looks healthy to a ping probe; only the stream's
own messages give it away.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import math
import random
import socket
import struct
import uuid
from collections.abc import Coroutine
from typing import Any, Final

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from .demo_replies import (
    PIP_SIZE,
    STEP_SCALE,
    SYMBOLS,
    Rejected,
    Stream,
    build_reply,
    decode,
    error_reply,
    forget,
    forget_all,
    stateless_reply,
    tick_message,
)

__all__ = ["CLOSE_CODES", "DEFAULT_APP_ID", "SYMBOLS", "WS_PATH", "DemoAPI", "build_reply"]

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
        tick_interval: float = 1.0,
        mean_stall_every: float = 45.0,
        stall_duration: tuple[float, float] = (4.0, 12.0),
    ) -> None:
        """Configure the server; nothing listens until :meth:`start`.

        ``mean_lifetime`` is the mean of the exponential per-connection lifetime in
        seconds (``math.inf`` disables the misbehaviour).  Replies are delayed by
        a uniform ``[min_delay, max_delay]`` seconds, with an occasional 100-300 ms
        spike.  ``close_timeout`` bounds every server-initiated close handshake
        and the shutdown in :meth:`stop`.

        A tick stream sends a tick every ``tick_interval`` seconds.  The gaps
        between its stalls are exponential with mean ``mean_stall_every`` seconds
        (``math.inf`` disables stalls); each stall lasts a uniform
        ``stall_duration`` ``(min, max)`` seconds.
        """
        if not mean_lifetime > 0:
            raise ValueError(f"mean_lifetime must be > 0, got {mean_lifetime!r}")
        if not 0 <= min_delay <= max_delay:
            raise ValueError(f"need 0 <= min_delay <= max_delay, got {min_delay!r}, {max_delay!r}")
        if not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be > 0, got {idle_timeout!r}")
        if not close_timeout > 0:
            raise ValueError(f"close_timeout must be > 0, got {close_timeout!r}")
        if not tick_interval > 0:
            raise ValueError(f"tick_interval must be > 0, got {tick_interval!r}")
        if not mean_stall_every > 0:
            raise ValueError(f"mean_stall_every must be > 0, got {mean_stall_every!r}")
        stall_min, stall_max = stall_duration
        if not 0 <= stall_min <= stall_max < math.inf:
            raise ValueError(f"need 0 <= min <= max in stall_duration, got {stall_duration!r}")
        self._host = host
        self._port = port
        self._mean_lifetime = mean_lifetime
        self._min_delay = min_delay
        self._max_delay = max_delay
        self._rng = rng if rng is not None else random.Random()
        self._log: Any = log if log is not None else structlog.get_logger(__name__)
        self._idle_timeout = idle_timeout
        self._close_timeout = close_timeout
        self._tick_interval = tick_interval
        self._mean_stall_every = mean_stall_every
        self._stall_duration = (stall_min, stall_max)
        self._quotes = {symbol: opening for symbol, (opening, _) in SYMBOLS.items()}
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

    def _exponential(self, mean: float) -> float:
        if math.isinf(mean):
            return math.inf
        return self._rng.expovariate(1.0 / mean)

    def _lifetime(self) -> float:
        return self._exponential(self._mean_lifetime)

    def _tick(self, req: dict[str, Any], symbol: str, sub_id: str | None) -> dict[str, Any]:
        """Step the symbol's random walk (geometric, like the index) and build the tick."""
        volatility = SYMBOLS[symbol][1]
        quote = self._quotes[symbol] * math.exp(volatility * STEP_SCALE * self._rng.gauss())
        self._quotes[symbol] = quote
        return tick_message(req, symbol, round(quote, PIP_SIZE), sub_id)

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
        streams: dict[str, Stream] = {}
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
            await self._serve(ws, request, log, died_at, replies, streams)
        except OSError as exc:
            log.info("demo.connection.lost", error=repr(exc))
        finally:
            del self._conns[conn]
            for task in replies:
                task.cancel()
            ended = [stream.task for stream in streams.values()]
            for task in ended:
                task.cancel()
            await asyncio.gather(*ended, return_exceptions=True)
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
        streams: dict[str, Stream],
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
                reply = self._answer(ws, log, msg.data, streams)
                if reply is not None:
                    task = self._spawn(self._reply(ws, json.dumps(reply), log), "demo.reply.failed")
                    replies.add(task)
                    task.add_done_callback(replies.discard)
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

    def _answer(
        self, ws: web.WebSocketResponse, log: Any, data: str | bytes, streams: dict[str, Stream]
    ) -> dict[str, Any] | None:
        """Reply to one client message; a new stream's first tick is sent by the stream instead."""
        try:
            req = decode(data)
        except Rejected as exc:
            return exc.reply
        if "ticks" in req:
            return self._ticks(ws, log, req, streams)
        if "forget" in req:
            return forget(req, streams)
        if "forget_all" in req:
            return forget_all(req, streams)
        return stateless_reply(req)

    def _ticks(
        self, ws: web.WebSocketResponse, log: Any, req: dict[str, Any], streams: dict[str, Stream]
    ) -> dict[str, Any] | None:
        symbol = req["ticks"]
        if not (isinstance(symbol, str) and symbol in SYMBOLS):
            return error_reply(req, "InvalidSymbol", f"Symbol {symbol} invalid.")
        subscribe = req.get("subscribe", 0)
        if subscribe not in (0, 1):
            return error_reply(req, "InputValidationFailed", "Input validation failed: subscribe")
        if not subscribe:
            return self._tick(req, symbol, None)
        if any(stream.symbol == symbol for stream in streams.values()):
            return error_reply(req, "AlreadySubscribed", f"You are already subscribed to {symbol}.")
        sub_id = uuid.uuid4().hex
        stream_log = log.bind(subscription=sub_id, symbol=symbol)
        task = self._spawn(self._stream(ws, stream_log, req, symbol, sub_id), "demo.stream.failed")
        streams[sub_id] = Stream(symbol, task)
        task.add_done_callback(lambda _: streams.pop(sub_id, None))
        return None

    async def _stream(
        self, ws: web.WebSocketResponse, log: Any, req: dict[str, Any], symbol: str, sub_id: str
    ) -> None:
        """Send one subscription's ticks until cancelled, stalling now and then."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self._reply_delay())
        next_tick = loop.time()
        stall_at = next_tick + self._exponential(self._mean_stall_every)
        while await self._send(ws, log, self._tick(req, symbol, sub_id)):
            next_tick = max(next_tick + self._tick_interval, loop.time())
            if stall_at <= next_tick:
                await asyncio.sleep(stall_at - loop.time())
                duration = self._rng.uniform(*self._stall_duration)
                log.info("demo.stream.stall", duration=round(duration, 3))
                await asyncio.sleep(duration)
                next_tick = max(next_tick, loop.time())
                stall_at = loop.time() + self._exponential(self._mean_stall_every)
            await asyncio.sleep(next_tick - loop.time())

    async def _send(self, ws: web.WebSocketResponse, log: Any, message: dict[str, Any]) -> bool:
        """Send one stream message; False once the client is gone."""
        if ws.closed:
            return False
        try:
            await ws.send_str(json.dumps(message))
        except ConnectionError as exc:
            log.debug("demo.stream.dropped", error=repr(exc))
            return False
        return True

    def _spawn(self, coro: Coroutine[Any, Any, None], failed_event: str) -> asyncio.Task[None]:
        """Start a task that :meth:`stop` cancels and awaits; failures are logged."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, failed_event))
        return task

    def _task_done(self, failed_event: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._log.warning(failed_event, error=repr(exc))

    async def _reply(self, ws: web.WebSocketResponse, payload: str, log: Any) -> None:
        """Send one reply after a simulated processing delay; vanished clients are ignored."""
        await asyncio.sleep(self._reply_delay())
        if ws.closed:
            return
        try:
            await ws.send_str(payload)
        except ConnectionError as exc:
            log.debug("demo.reply.dropped", error=repr(exc))
