"""One connection's life: handshake, the single receive loop, probes, close-code attribution."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import math
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import ClientWebSocketResponse, WSMessage, WSMsgType
from aiohttp.connector import AddrInfoType
from structlog.typing import FilteringBoundLogger

from .aiohooks import ReadStamp, direct_queue, frame_writer, write_frame
from .clock import Clock, Inbox, clock, start_eagerly
from .config import ProbeConfig, TargetConfig, TCPConfig
from .log import redact_url
from .metrics import ProbeMetrics, TargetMetrics
from .probes import (
    Correlator,
    Pending,
    PongWaiters,
    Reply,
    judge,
    judge_auth,
    message_template,
    parse,
)
from .probes import server_time_offset as time_offset

# Close codes that never travel in a close frame (RFC 6455, section 7.4.1).
NO_STATUS = 1005
ABNORMAL = 1006
# What a failed send raises: the connection is going away (its receive loop says how).
SEND_ERRORS = (ConnectionError, aiohttp.ClientError, RuntimeError)
# What the monitor sends when it gives up on a connection whose probes go unanswered.
DEAD_CODE = 1011


@dataclass(frozen=True, slots=True)
class Disconnect:
    """How a connection ended: the close code and who ended it."""

    code: int
    origin: str  # "peer" (close frame received), "local" (we closed), "network" (no close frame)
    reason: str


class ConnectFailed(Exception):
    """A handshake that did not produce an open WebSocket."""

    def __init__(self, reason: str, error: str, duration: float = 0.0) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error
        self.duration = duration  # seconds from the start of the handshake to the failure


def classify(exc: BaseException) -> str:
    """The `reason` label of a failed handshake."""
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns"
    # aiohttp wraps a TLS alert read after the handshake (e.g. "certificate required")
    # in a plain OS error; the SSL error is its cause.
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return "tls"
        cause = cause.__cause__
    if isinstance(
        exc,
        aiohttp.ClientConnectorCertificateError
        | aiohttp.ClientConnectorSSLError
        | aiohttp.ClientSSLError
        | aiohttp.ServerFingerprintMismatch
        | ssl.SSLError,
    ):
        return "tls"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "refused" if isinstance(exc.os_error, ConnectionRefusedError) else "other"
    if isinstance(exc, aiohttp.WSServerHandshakeError | aiohttp.ClientResponseError):
        return "handshake"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return "handshake"
    return "other"


def describe(exc: BaseException) -> str:
    """A one-line description of a handshake error, without the URL's secrets."""
    if isinstance(exc, aiohttp.WSServerHandshakeError | aiohttp.ClientResponseError):
        return f"HTTP {exc.status}: {exc.message}"
    if isinstance(exc, TimeoutError):
        return "handshake timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def tls_context(target: TargetConfig) -> ssl.SSLContext | bool:
    """What aiohttp's `ssl` argument gets for this target (True: system defaults)."""
    return target.tls.context() if target.tls is not None else True


def socket_factory(tcp: TCPConfig) -> Callable[[AddrInfoType], socket.socket]:
    """Sockets with TCP keepalive and TCP_USER_TIMEOUT, so that a peer that vanished
    without a FIN or RST (a black hole) fails the connection even when no probe runs."""

    def make(addr_info: AddrInfoType) -> socket.socket:
        family, type_, proto, _, _ = addr_info
        sock = socket.socket(family, type_, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; other systems keep their defaults
            sock.setsockopt(
                socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(tcp.keepalive_idle))
            )
            sock.setsockopt(
                socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(tcp.keepalive_interval))
            )
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, tcp.keepalive_count)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(
                socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, int(tcp.user_timeout * 1000))
            )
        return sock

    return make


# Seconds spent resolving names during the current task's handshake (see dns_timing()).
_dns_seconds: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar(
    "wsmon_dns_seconds", default=None
)


def dns_timing() -> aiohttp.TraceConfig:
    """Trace hooks that time DNS lookups, so the handshake histogram can leave them out.

    The hooks run in the task that called ws_connect, so a context variable set by
    connect() tells them where to add the time.
    """

    async def start(_: Any, ctx: Any, __: Any) -> None:
        ctx.dns_started = time.perf_counter()

    async def end(_: Any, ctx: Any, __: Any) -> None:
        spent = _dns_seconds.get()
        if spent is not None and hasattr(ctx, "dns_started"):
            spent.append(time.perf_counter() - ctx.dns_started)

    trace = aiohttp.TraceConfig()
    trace.on_dns_resolvehost_start.append(start)
    trace.on_dns_resolvehost_end.append(end)
    trace.freeze()
    return trace


async def connect(
    http: aiohttp.ClientSession,
    target: TargetConfig,
    slots: asyncio.Semaphore,
    tls: ssl.SSLContext | bool = True,
) -> tuple[ClientWebSocketResponse, float]:
    """Open the target's WebSocket; return it and the TCP + TLS + upgrade time in seconds.

    The whole handshake (DNS, TCP, TLS, HTTP upgrade) is bounded by `connect_timeout`;
    waiting for a handshake slot is not part of it, and the returned duration leaves out
    name resolution.
    """
    dns: list[float] = []
    token = _dns_seconds.set(dns)
    try:
        return await _open(http, target, slots, tls, dns)
    finally:
        _dns_seconds.reset(token)  # the task's context would keep the list otherwise


async def _open(
    http: aiohttp.ClientSession,
    target: TargetConfig,
    slots: asyncio.Semaphore,
    tls: ssl.SSLContext | bool,
    dns: list[float],
) -> tuple[ClientWebSocketResponse, float]:
    async with slots:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(target.connect_timeout):
                ws = await http.ws_connect(
                    target.url,
                    headers=target.headers,
                    # Pings and pongs pass through the receive loop: pongs are timed by
                    # ws-ping probes, and the server's pings are answered there.
                    autoping=False,
                    # Close frames too: the peer's close is recorded the moment it arrives,
                    # before our reply, which can wait on a peer that never finishes.
                    autoclose=False,
                    max_msg_size=target.max_msg_size,
                    ssl=tls,
                    server_hostname=target.tls.server_name if target.tls else None,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=target.close_timeout),
                )
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError, ValueError) as exc:
            spent = time.perf_counter() - started
            raise ConnectFailed(classify(exc), describe(exc), spent) from exc
        return ws, max(0.0, time.perf_counter() - started - sum(dns))


async def authenticate(ws: ClientWebSocketResponse, target: TargetConfig, m: TargetMetrics) -> None:
    """Send the target's auth message and wait for a good reply, before any probe runs.

    Raises ConnectFailed("auth", ...) after closing the connection; the message itself
    (a credential) is never part of the error.
    """
    auth = target.auth
    assert auth is not None
    correlator = Correlator(target.correlation_field)
    req_id = correlator.next_id()
    body = dict(auth.send)
    if target.correlation_field is not None:
        body[target.correlation_field] = req_id
    started = time.perf_counter()
    problem: str | None = None
    try:
        async with asyncio.timeout(auth.timeout):
            await ws.send_str(json.dumps(body, separators=(",", ":")))
            while problem is None:
                msg = await ws.receive()
                if msg.type is WSMsgType.PING:
                    await ws.pong(msg.data)
                    continue
                if msg.type is WSMsgType.BINARY:
                    m.messages_received.inc()
                    continue
                if msg.type is not WSMsgType.TEXT:
                    problem = "connection closed before the auth reply"
                    break
                m.messages_received.inc()
                message = parse(msg.data)
                if target.correlation_field is not None:
                    key = None if message is None else message.get(target.correlation_field)
                    if type(key) is not int or key != req_id:
                        continue  # not the reply (yet); `true` and 1.0 are not ids
                outcome, detail = judge_auth(auth.expect, message)
                if outcome == "ok":
                    return
                problem = f"{outcome}: {detail}"
    except TimeoutError:
        problem = f"no auth reply within {auth.timeout:g}s"
    except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
        problem = f"{type(exc).__name__} during auth"
    with contextlib.suppress(TimeoutError, ConnectionError, aiohttp.ClientError, RuntimeError):
        async with asyncio.timeout(target.close_timeout):
            await ws.close(code=1000, message=b"auth failed")
    raise ConnectFailed("auth", problem, time.perf_counter() - started)


# What the receive loop leaves to the inbox while it waits: messages handled without an await.
TAKEN = frozenset({WSMsgType.TEXT, WSMsgType.PONG, WSMsgType.BINARY})


class Session:
    """An open connection: one receive loop, its probes (`ProbeRun`, on the loop's clock), and
    an honest account of how the connection ended."""

    __slots__ = (
        "_closer", "_ended", "_failure", "_local", "consecutive_timeouts", "correlator", "frames",
        "inbox", "log", "m", "pongs", "reads", "rng", "target", "ws",
    )  # fmt: skip

    def __init__(
        self,
        target: TargetConfig,
        ws: ClientWebSocketResponse,
        metrics: TargetMetrics,
        log: FilteringBoundLogger,
        rng: random.Random | None = None,
    ) -> None:
        self.target = target
        self.ws = ws
        self.m = metrics
        self.log = log
        self.rng = rng or random.Random()
        self.correlator = Correlator(target.correlation_field)
        self.pongs = PongWaiters()
        self.consecutive_timeouts = 0
        self._local: tuple[int, str] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._failure: Exception | None = None  # raised while handling a taken message
        self._ended = False
        self.inbox: Inbox  # the running loop's, from `run`
        self.reads = ReadStamp.install(ws)
        self.frames = frame_writer(ws)  # None: every send goes through send_frame

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> Disconnect:
        """Serve the connection until it ends; return how it ended."""
        clk = clock()
        runs = [
            ProbeRun(
                self, p, clk, clk.phase(clk.time() + self.rng.uniform(0.0, p.interval), p.interval)
            )
            for p in self.target.probes
        ]
        if not runs:
            self.m.up.set(1)
        self.inbox = clk.inbox
        try:
            ended = await self._receive_loop()
        finally:
            self._ended = True
            for run in runs:
                run.stop()
            await asyncio.gather(
                *(r.sending for r in runs if r.sending is not None), return_exceptions=True
            )
            for pending in (*self.correlator.drain(), *self.pongs.drain()):
                pending.done = True
                if pending.timer is not None:
                    clk.cancel(pending.timer)
            if self._closer is not None:
                await self._closer
            elif not self.ws.closed:
                # Cancelled from outside: make sure the socket does not outlive us.
                await self._close_now(1001)
        return ended

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake from our side; the receive loop then ends."""
        if self._local is not None:
            return
        self._local = (code, reason)
        self._closer = asyncio.create_task(self._close_now(code, reason))

    async def _close_now(self, code: int, reason: str = "") -> None:
        # aiohttp waits up to close_timeout for the peer's close frame; the extra second
        # bounds a send that is stuck behind a full socket buffer on a dead link.
        try:
            async with asyncio.timeout(self.target.close_timeout + 1.0):
                await self.ws.close(code=code, message=reason.encode()[:123])
        except TimeoutError:
            transport = self.ws.get_extra_info("transport")
            if transport is not None:
                transport.abort()

    # --- the one receive loop -----------------------------------------------------------

    async def _receive_loop(self) -> Disconnect:
        ws = self.ws
        reads = self.reads
        clock = time.perf_counter
        # While the loop waits, replies are handled as aiohttp parses them (`DirectQueue`);
        # what `_take` declines wakes the loop as before.
        queue = direct_queue(ws)
        take = self._take
        while True:
            if self._local is not None:
                # Closing from our side (the closer task sends our code): another receive()
                # would find aiohttp closing and make it send its own close, code 1000,
                # first. That happens when a message was read just before our close.
                return Disconnect(self._local[0], "local", self._local[1])
            if queue is not None:
                queue.take = take
            try:
                msg = await ws.receive()
            finally:
                if queue is not None:
                    queue.take = None  # also breaks the cycle session -> ws -> queue -> session
            if self._failure is not None:
                raise self._failure
            received = reads.at if reads is not None else clock()
            kind = msg.type
            if self._handle(kind, msg.data, received):
                continue
            if kind is WSMsgType.PING:
                # A failed pong means the connection is going away; the next receive says how.
                with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
                    await ws.pong(msg.data)
            elif kind is WSMsgType.CLOSE:
                if self._local is not None:  # the peer's answer to our close
                    return Disconnect(self._local[0], "local", self._local[1])
                # aiohttp reports a close frame without a status code as code 0.
                code = int(msg.data) if msg.data else NO_STATUS
                ended = Disconnect(code, "peer", str(msg.extra or ""))
                # Complete the closing handshake, echoing the peer's code as RFC 6455 asks.
                await self._close_now(code if code != NO_STATUS else 1000)
                return ended
            else:  # CLOSING, CLOSED, ERROR
                return self._ended_without_close_frame(msg.data)

    def _take(self, msg: WSMessage) -> bool:
        """A message as aiohttp parses it, while the receive loop waits: one that needs no
        await (text, binary, pong) goes to the inbox, the others are left for the loop."""
        if msg.type not in TAKEN:
            return False
        reads = self.reads
        self.inbox.put(self, msg, reads.at if reads is not None else time.perf_counter())
        return True

    def handle_taken(self, msg: WSMessage, received: float) -> None:
        """The inbox's turn for a message `_take` took."""
        if self._ended:
            return  # as a message left in aiohttp's queue when the loop ended
        try:
            self._handle(msg.type, msg.data, received)
        except Exception as exc:
            # The receive loop raises it, as when it handles a message itself: queue the
            # message for the loop, which wakes, finds the failure and raises it.
            self._failure = exc
            queue = direct_queue(self.ws)
            if queue is not None:
                queue.feed_loop(msg)

    def _handle(self, kind: WSMsgType, data: Any, received: float) -> bool:
        """Handle a message that needs no await; False for the others."""
        if kind is WSMsgType.TEXT:
            self.m.messages_received.inc()
            self._on_text(data, received)
        elif kind is WSMsgType.PONG:
            pending = self.pongs.match(data)
            if pending is not None:
                pending.answer(Reply(received, None))
        elif kind is WSMsgType.BINARY:
            self.m.messages_received.inc()
            self.m.unmatched["binary"].inc()
        else:
            return False
        return True

    def _ended_without_close_frame(self, data: Any) -> Disconnect:
        if self._local is not None:
            return Disconnect(self._local[0], "local", self._local[1])
        if isinstance(data, aiohttp.WebSocketError):
            # aiohttp failed the connection itself (e.g. 1009 message too big) and sent
            # that code in its close frame.
            return Disconnect(int(data.code), "local", str(data))
        # No close frame arrived, whatever aiohttp's close_code says (it reports 1000
        # after a plain TCP FIN).
        # aiohttp does not keep the socket error (reset, timed out) for a WebSocket, so
        # only an error it reports with the message can be named.
        if isinstance(data, Exception):
            return Disconnect(ABNORMAL, "network", f"{type(data).__name__}: {data}")
        return Disconnect(ABNORMAL, "network", "connection lost without close frame")

    def _on_text(self, text: str, received: float) -> None:
        message = parse(text)
        found = self.correlator.match(message)
        if isinstance(found, str):
            self.m.unmatched[found].inc()
            return
        found.answer(Reply(received, message, text))

    # --- what probes report ------------------------------------------------------------

    def _on_reply(self, probe: ProbeConfig, pm: ProbeMetrics, sent_wall: float, rtt: float,
                  reply: Reply) -> None:  # fmt: skip
        outcome, detail = judge(probe, reply)
        if outcome != "ok":
            self.consecutive_timeouts = 0  # the peer is alive, just wrong
            pm.errors[outcome].inc()
            self.m.up.set(0)
            self.log.warning(
                "probe.error",
                target=self.target.name,
                probe=probe.name,
                reason=outcome,
                error=detail,
                rtt_ms=round(rtt * 1000, 3),
            )
            return
        assert reply.message is not None
        offset = time_offset(reply.message, sent_wall, rtt)
        if offset is not None:
            self.m.set_time_offset(offset)
        self._answered(pm, rtt)

    def _timed_out(self, probe: ProbeConfig, pm: ProbeMetrics) -> None:
        pm.timeouts.inc()
        self.m.up.set(0)
        self.consecutive_timeouts += 1
        self.log.warning(
            "probe.timeout",
            target=self.target.name,
            probe=probe.name,
            timeout_s=probe.timeout,
            consecutive=self.consecutive_timeouts,
        )
        if self.consecutive_timeouts >= self.target.dead_after_timeouts:
            self.close(DEAD_CODE, "probe timeout")

    def _answered(self, pm: ProbeMetrics, rtt: float) -> None:
        self.consecutive_timeouts = 0
        pm.rtt.observe(rtt)
        pm.last_rtt.set(rtt)
        pm.last_success.set(time.time())
        self.m.up.set(1)

    def _send_failed(self, probe: ProbeConfig, pm: ProbeMetrics, exc: BaseException) -> None:
        pm.errors["send_failed"].inc()
        self.m.up.set(0)
        self.log.warning(
            "probe.error",
            target=self.target.name,
            probe=probe.name,
            reason="send_failed",
            error=f"{type(exc).__name__}: {exc}",
        )


def safe_url(target: TargetConfig) -> str:
    """The target's URL as it may appear in logs."""
    return redact_url(target.url)


def _rtt(pending: Pending, reply: Reply) -> float:
    """From the send to the read of the reply. A message read before the request went out
    (matched in order, without a correlation field) ends the round trip when the receive
    loop sees it instead, as if no read stamp existed."""
    rtt = reply.received_at - pending.sent_at
    return rtt if rtt >= 0.0 else time.perf_counter() - pending.sent_at


class ProbeRun:
    """One probe on one open connection: its sends, on the loop's clock, and what becomes of
    each request (a reply, an error or a timeout).

    No task per probe: the clock calls `fire()` at the scheduled time, which writes the
    request right there, and the request's own deadline on the same clock counts the
    timeout when no reply came. The reply reaches `_reply` from the loop's inbox right after
    its read (see `Session._take`), without a task wake-up. The first send is jittered over
    one interval.
    """

    __slots__ = (
        "build",
        "clock",
        "due",
        "pm",
        "probe",
        "sending",
        "session",
        "timer",
        "waiters",
    )

    def __init__(self, session: Session, probe: ProbeConfig, clk: Clock, first_due: float) -> None:
        self.session = session
        self.probe = probe
        self.pm = session.m.probes[probe.name]
        self.clock = clk
        self.waiters: Correlator | PongWaiters
        if probe.kind == "message":
            self.build: Callable[[int], str] | None = message_template(
                probe.send or {}, session.target.correlation_field
            )
            self.waiters = session.correlator
        else:
            self.build = None
            self.waiters = session.pongs
        self.sending: asyncio.Task[None] | None = None  # a send waiting for the socket buffer
        self.due = first_due
        self.timer = clk.call_at(first_due, self)

    def stop(self) -> None:
        """The connection is over: no more sends."""
        self.clock.cancel(self.timer)
        if self.sending is not None:
            self.sending.cancel()

    def fire(self) -> None:
        """Send now and schedule the next send; a loop that stalled past a whole interval
        skips ahead by whole intervals rather than bursting (the phase is kept). While an
        earlier send still waits for room in the socket buffer (a peer that stopped
        reading), no new request is added behind it."""
        clk = self.clock
        now = clk.time()
        due = self.due
        self.session.m.send_lag.observe(max(0.0, now - due))
        interval = self.probe.interval
        due += interval
        if due < now:  # whole intervals later, on the same phase, at least one from now
            due += math.ceil((now - due) / interval + 1.0) * interval
        self.due = due
        self.timer = clk.call_at(due, self)
        if self.sending is None:
            self._send(now + self.probe.timeout)

    def _send(self, deadline: float) -> None:
        session = self.session
        pending: Pending
        # The pending holds bound methods of this run (the run holds no pending): no
        # reference cycle, so everything is freed by reference counting.
        if self.build is not None:
            req_id = session.correlator.next_id()
            pending = Pending(req_id, self._reply, self._timed_out)
            payload = self.build(req_id).encode()
            opcode = WSMsgType.TEXT
        else:
            payload = session.pongs.next_payload()
            pending = Pending(payload, self._pong, self._timed_out)
            opcode = WSMsgType.PING
        # Register first: the reply can arrive before the send call returns.
        self.waiters.register(pending)
        pending.sent_wall = time.time()
        pending.sent_at = time.perf_counter()  # the clock starts right before the write
        frames = session.frames
        try:
            if frames is not None and write_frame(frames, payload, opcode):
                rest = None
            else:
                rest = start_eagerly(session.ws.send_frame(payload, opcode))
        except SEND_ERRORS as exc:
            self._failed(pending, exc)
            return
        if rest is None:
            self._sent(pending, deadline)
        else:
            self.sending = rest
            rest.add_done_callback(functools.partial(self._sent_later, pending, deadline))

    def _sent(self, pending: Pending, deadline: float) -> None:
        self.pm.sent.inc()
        if not pending.done:
            pending.timer = self.clock.call_at(deadline, pending)

    def _sent_later(self, pending: Pending, deadline: float, task: asyncio.Task[None]) -> None:
        self.sending = None
        if task.cancelled():
            self.waiters.forget(pending)
            return
        exc = task.exception()
        if exc is None:
            self._sent(pending, deadline)
        elif isinstance(exc, SEND_ERRORS):
            self._failed(pending, exc)
        else:
            self.waiters.forget(pending)
            raise exc

    def _failed(self, pending: Pending, exc: BaseException) -> None:
        pending.done = True
        self.waiters.forget(pending)
        self.session._send_failed(self.probe, self.pm, exc)

    def _reply(self, pending: Pending, reply: Reply) -> None:
        if pending.timer is not None:
            self.clock.cancel(pending.timer)
        self.session._on_reply(self.probe, self.pm, pending.sent_wall, _rtt(pending, reply), reply)

    def _pong(self, pending: Pending, reply: Reply) -> None:
        if pending.timer is not None:
            self.clock.cancel(pending.timer)
        self.session._answered(self.pm, _rtt(pending, reply))

    def _timed_out(self, pending: Pending) -> None:
        self.waiters.forget(pending)
        self.session._timed_out(self.probe, self.pm)
