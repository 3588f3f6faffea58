"""One open connection: the single receive loop, the inbox that takes replies around it, and
an honest account of how the connection ended (close-code attribution)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, cast

import aiohttp
from aiohttp import ClientWebSocketResponse, WSMessage, WSMsgType
from structlog.typing import FilteringBoundLogger

from . import ratelimits
from .aiohooks import Hooks, ReadStamp, direct_queue, trim
from .clock import Clock
from .config import TargetConfig
from .correlation import Correlator, PongWaiters, Reply
from .handles import TargetMetrics
from .probes import Liveness, ProbeRun
from .replies import parse
from .streammsg import subscription_of
from .streams import StreamRun

# Close codes that never travel in a close frame (RFC 6455, section 7.4.1).
NO_STATUS = 1005
ABNORMAL = 1006
# What the monitor closes with when its own handling of the connection failed.
INTERNAL_ERROR = 1011
# The longest nap of a throttled connection's receive loop (seconds).
THROTTLE_NAP = 0.1
# Kinds of message handled without an await: these go to the inbox while the loop waits.
INBOX_KINDS = frozenset({WSMsgType.TEXT, WSMsgType.PONG, WSMsgType.BINARY})
# The stream containers of a connection without stream probes (see `Session`): shared.
_NO_RUNS = ()
_NO_ENTRIES: MappingProxyType[Any, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Disconnect:
    """How a connection ended: the close code and who ended it."""

    code: int
    origin: str  # "peer" (close frame received), "local" (we closed), "network" (no close frame)
    reason: str


class Inbox:
    """Messages handed over as aiohttp parsed them, handled together right after the reads.

    A reply's round trip ends at its read (`ReadStamp`). When several connections are
    readable at once, the event loop reads them one after another; handling each reply in its
    read would push the reads (and stamps) of the others back by that work. So the first
    message of a turn schedules one callback, which handles everything handed over by then,
    in order. It runs before any task that a later message of the same connection wakes (the
    loop runs callbacks in the order they were scheduled), so each connection's messages keep
    their order.
    """

    __slots__ = ("items", "loop", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: list[tuple[Session, Any, float]] = []
        self.scheduled = False

    def put(self, session: Session, msg: Any, received: float) -> None:
        self.items.append((session, msg, received))
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        items = self.items
        self.items = []
        self.scheduled = False
        for session, msg, received in items:
            if session._ended:  # as a message left in aiohttp's queue when the loop ended
                continue
            try:
                session.handle(msg.type, msg.data, received)
            except Exception as exc:  # a fault of ours on that connection: it ends (1011)
                session.fail(exc)


@dataclass(frozen=True, slots=True)
class Runtime:
    """What every connection of one daemon shares: one clock, one inbox, and the hooks the
    start-up self-test allowed (`monitor.selftest`)."""

    clock: Clock
    inbox: Inbox
    hooks: Hooks

    @classmethod
    def create(cls, loop: asyncio.AbstractEventLoop, hooks: Hooks) -> Runtime:
        """The daemon's runtime on its event loop."""
        return cls(Clock(loop), Inbox(loop), hooks)


class Session:
    """An open connection: one receive loop, its probes (`ProbeRun`, on the clock), and how
    the connection ended."""

    __slots__ = (
        "_closer", "_ended", "_failure", "_local", "allowance", "allowance_at", "correlator",
        "log", "m", "pongs", "queue", "reads", "rng", "runtime", "stream_runs", "streams",
        "subscriptions", "target", "ws",
    )  # fmt: skip

    def __init__(
        self,
        target: TargetConfig,
        ws: ClientWebSocketResponse,
        metrics: TargetMetrics,
        log: FilteringBoundLogger,
        runtime: Runtime,
        rng: random.Random | None = None,
    ) -> None:
        self.target = target
        self.ws = ws
        self.m = metrics
        self.log = log
        self.runtime = runtime
        self.rng = rng or random.Random()
        self.correlator = Correlator(target.correlation_field)
        self.pongs = PongWaiters()
        # Stream probes: by the id of their current subscribe, and by the subscription id
        # their first message carried (`streams.StreamRun`). A target without any (most)
        # shares empty read-only ones: three containers a connection add up at thousands of
        # targets, and nothing is added to them (an add would raise, not reach another).
        self.stream_runs: list[StreamRun]
        self.streams: dict[int, StreamRun]
        self.subscriptions: dict[str, StreamRun]
        if any(p.kind == "stream" for p in target.probes):
            self.stream_runs, self.streams, self.subscriptions = [], {}, {}
        else:
            self.stream_runs = cast("list[StreamRun]", _NO_RUNS)
            self.streams = cast("dict[int, StreamRun]", _NO_ENTRIES)
            self.subscriptions = cast("dict[str, StreamRun]", _NO_ENTRIES)
        self._local: tuple[int, str] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._failure: str | None = None  # the first fault of our own (see `fail`)
        self._ended = False
        # Messages it may still deliver before its reading pauses (`max_messages_per_second`:
        # a bucket one second deep, refilled as time passes; see `_throttle`). Counted where a
        # message is handed over (`to_inbox`, or returned to the loop), not where handled.
        self.allowance = target.max_messages_per_second or math.inf
        self.allowance_at = runtime.clock.time()
        hooks = runtime.hooks
        if hooks.trim:
            trim(ws)  # where it cannot (a connection of another shape), it keeps it all
        self.reads = ReadStamp.install(ws) if hooks.stamp else None
        self.queue = direct_queue(ws) if hooks.inbox else None  # None: all through receive()

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> Disconnect:
        """Serve the connection until it ends; return how it ended.

        The receive loop is here rather than in a coroutine of its own: while a connection
        waits, its task holds this frame and the runner's (docs/performance.md).
        """
        runs: list[ProbeRun] = []
        try:
            self._start(runs)
            ws = self.ws
            reads = self.reads
            queue = self.queue
            to_inbox = self.to_inbox
            while True:
                if self.allowance <= 0.0:
                    await self._throttle()
                if self._local is not None:
                    # Closing from our side (the closer task sends our code): another
                    # receive() would find aiohttp closing and make it send its own close,
                    # code 1000, first. That happens when a message was read just before
                    # our close.
                    return Disconnect(self._local[0], "local", self._local[1])
                if queue is not None:
                    queue.to_inbox = to_inbox
                try:
                    msg = await ws.receive()
                finally:
                    if queue is not None:
                        queue.to_inbox = None  # breaks the cycle session -> queue -> session
                received = reads.at if reads is not None else time.perf_counter()
                kind = msg.type
                if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                    self.allowance -= 1.0
                if self.handle(kind, msg.data, received):
                    continue
                if kind is WSMsgType.PING:
                    # A failed pong means the connection is going away; the next receive
                    # says how.
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
        except Exception as exc:
            self.fail(exc)
            assert self._local is not None
            return Disconnect(self._local[0], "local", self._local[1])
        finally:
            await self._finish(runs)

    def _start(self, runs: list[ProbeRun]) -> None:
        """Start the probes (into `runs`, so that those made before a fault are stopped)
        and the streams' subscribes."""
        clock = self.runtime.clock
        streams = self.stream_runs
        if self.target.rate_limits is not None:
            ratelimits.query(self)
        liveness = Liveness(self.m.up, self.target.dead_after_timeouts, self.close)
        for probe in self.target.probes:
            if probe.kind == "stream":  # subscribed at once, after the auth
                streams.append(StreamRun(self, probe))
                streams[-1].subscribe()
                continue
            first = clock.time() + self.rng.uniform(0.0, probe.interval)
            runs.append(ProbeRun(self, probe, liveness, clock.phase(first, probe.interval)))
        if not runs:  # connect-only, or streams only (judged by wsmon_stream_stale)
            self.m.up.set(1)

    async def _finish(self, runs: list[ProbeRun]) -> None:
        """Stop the probes and streams, let their sends end, drop what still waits for a
        reply, and see the connection closed."""
        self._ended = True
        streams = self.stream_runs
        for run in runs:
            run.stop()
        for stream in streams:
            stream.stop()
        sending = [r.sending for r in runs] + [s.sending for s in streams]
        await asyncio.gather(*(t for t in sending if t is not None), return_exceptions=True)
        clock = self.runtime.clock
        for pending in (*self.correlator.drain(), *self.pongs.drain()):
            pending.done = True
            if pending.timer is not None:
                clock.cancel(pending.timer)
        if self._closer is not None:
            await self._closer
        elif not self.ws.closed:
            # Cancelled from outside: make sure the socket does not outlive us.
            await self._close_now(1001)

    def fail(self, exc: BaseException) -> None:
        """A fault in wsmon's own handling of this connection (a bug, not the peer's doing):
        say so once, and close the connection with 1011; the target then connects again."""
        if self._failure is None:
            self._failure = f"{type(exc).__name__}: {exc}"  # text only: no traceback cycle
            self.log.error(
                "session.failed", target=self.target.name, error=self._failure, exc_info=exc
            )
        self.close(INTERNAL_ERROR, "internal error")

    @property
    def closed_by_us(self) -> tuple[int, str] | None:
        """The code and reason we closed with, once we started closing."""
        return self._local

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake from our side; the receive loop then ends."""
        if self._local is not None:
            return
        self._local = (code, reason)
        for stream in self.stream_runs:  # the server hears the unsubscribes before the close
            stream.unsubscribe()
        self._closer = asyncio.create_task(self._close_now(code, reason))

    async def _close_now(self, code: int, reason: str = "") -> None:
        # aiohttp waits up to close_timeout for the peer's close frame; the extra second
        # bounds a send that is stuck behind a full socket buffer on a dead link (a close
        # cut short this way makes aiohttp drop the connection).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.target.close_timeout + 1.0):
                await self.ws.close(code=code, message=reason.encode()[:123])

    def to_inbox(self, msg: WSMessage) -> bool:
        """A message as aiohttp parses it, while the receive loop waits: one that needs no
        await (text, binary, pong) goes to the inbox; the others are left for the loop."""
        kind = msg.type
        if kind not in INBOX_KINDS or self.allowance <= 0.0:
            return False  # the loop's to handle (and, over the cap, to pause for)
        if kind is not WSMsgType.PONG:
            self.allowance -= 1.0
        reads = self.reads
        self.runtime.inbox.put(self, msg, reads.at if reads is not None else time.perf_counter())
        return True

    def handle(self, kind: WSMsgType, data: Any, received: float) -> bool:
        """Handle a message that needs no await (read at `received`); False for the others."""
        if kind is WSMsgType.TEXT:
            self.m.messages_received.value += 1.0  # (Series.inc without the call)
            message = parse(data)
            streams = self.streams
            if streams and message is not None:  # a stream's message is the usual one
                # `_stream_of`, its usual case inline: by the subscribe's id echoed
                key = message.get(self.correlator.field)  # type: ignore[arg-type]
                stream = streams.get(key) if type(key) is int else None
                if stream is None and self.subscriptions:
                    stream = self._stream_of(message)
                if stream is not None:
                    stream.on_message(message, received)
                    return True
            found = self.correlator.match(message)
            if isinstance(found, str):
                if (
                    found == "missing_id"
                    and message is not None
                    and self.correlator.field not in message
                    and not self.correlator.waiting
                ):
                    found = "unsolicited"  # a push: no id, and no request waits
                self.m.unmatched[found].inc()
            else:
                found.answer(Reply(received, message, data))
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

    def _stream_of(self, message: dict[str, Any]) -> StreamRun | None:
        """The stream a message belongs to: by its subscribe's id echoed in it, else by its
        `subscription.id`."""
        key = message.get(self.correlator.field)  # type: ignore[arg-type]
        if type(key) is int:  # (`true` == 1 and 1.0 == 1 are not ids)
            stream = self.streams.get(key)
            if stream is not None:
                return stream
        if self.subscriptions:
            sid = subscription_of(message)
            if sid is not None:
                return self.subscriptions.get(sid)
        return None

    async def _throttle(self) -> None:
        """The connection delivered more than `max_messages_per_second`: stop reading it
        until its allowance has grown back to a tenth of a second's worth. Meanwhile aiohttp
        queues what arrives, up to its limit, then stops reading the socket itself: the
        server meets TCP backpressure, and the event loop stays with the other targets. The
        pause is taken in short naps, so that a close of ours is seen at once."""
        rate = self.target.max_messages_per_second
        clock = self.runtime.clock
        started = paused = clock.time()
        while self._local is None:
            now = clock.time()
            self.allowance = min(rate, self.allowance + (now - self.allowance_at) * rate)
            self.allowance_at = now
            if self.allowance > 0.0:
                break
            await asyncio.sleep(min(THROTTLE_NAP, (0.1 * rate - self.allowance) / rate))
            paused = clock.time()
        if paused > started:
            self.m.throttled(paused - started)

    def _ended_without_close_frame(self, data: Any) -> Disconnect:
        if self._local is not None:
            return Disconnect(self._local[0], "local", self._local[1])
        if isinstance(data, aiohttp.WebSocketError):
            # aiohttp failed the connection itself (e.g. 1009 message too big) and sent
            # that code in its close frame.
            return Disconnect(int(data.code), "local", str(data))
        # No close frame arrived, whatever aiohttp's close_code says (it reports 1000 after
        # a plain TCP FIN). aiohttp does not keep the socket error (reset, timed out) for a
        # WebSocket, so only an error it reports with the message can be named.
        if isinstance(data, Exception):
            return Disconnect(ABNORMAL, "network", f"{type(data).__name__}: {data}")
        return Disconnect(ABNORMAL, "network", "connection lost without close frame")
