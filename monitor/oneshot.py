"""One connection, each probe once: `wsmon probe` on a terminal and `GET /probe` for a
scraper (blackbox_exporter's multi-target pattern), one run for both.

A run opens the WebSocket (timing each phase), authenticates when the target says so, sends
its round trips, closes with 1000, and says what happened in a `ProbeResult`. One reader
task hands each reply to the round trip waiting for it (by correlation id, in order without
one, pongs by payload). Everything, the close included, ends by one deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientWebSocketResponse, WSMsgType

from .anatomy import TLSFacts
from .config import ProbeConfig, TargetConfig
from .handshake import ConnectFailed, authenticate, connect, tls_context
from .log import redact_url
from .probes import SEND_ERRORS, message_template
from .proxy import Sessions
from .replies import judge
from .streammsg import subscription_of, unsubscribe_message

CLOSE_CODE = 1000  # a one-shot run ends normally, whatever it found
# The close gets what is left of the deadline, but at least this long: a run that used all
# of its time still says goodbye (the scrape's margin covers it).
CLOSE_FLOOR = 0.25

Reply = tuple[float, dict[str, Any] | None]  # read at (perf_counter), the JSON object


@dataclass(slots=True)
class RoundTrip:
    """One request and what became of it."""

    probe: str
    seq: int  # the round it belongs to, from 1
    # ok, timeout, closed (the connection ended first), send_failed, or replies.judge's reasons
    outcome: str = "timeout"
    rtt: float | None = None  # seconds from the send to the reply's read, when one came
    detail: str = "no reply before the deadline"


@dataclass(slots=True)
class ProbeResult:
    """What one run found."""

    url: str  # as it may be shown: credentials redacted
    planned: int  # round trips the run meant to make
    success: bool = False
    duration: float = 0.0  # the whole run, close included
    phases: dict[str, float] = field(default_factory=dict)  # see anatomy.Timeline.phases
    status: int | None = None  # the upgrade's HTTP status (101), or a refusal's; None: no answer
    upgraded: bool = False
    tls: TLSFacts | None = None
    round_trips: list[RoundTrip] = field(default_factory=list)
    close_code: int | None = None
    close_origin: str | None = None  # local (we closed), peer (its close frame), network
    error: str | None = None  # why the run failed before or beside its round trips

    @property
    def rtts(self) -> list[float]:
        """Round-trip times of the requests that were answered."""
        return [t.rtt for t in self.round_trips if t.rtt is not None]


class _Ended(Exception):
    """The connection ended before the reply came."""


class _Replies:
    """The one reader of a one-shot connection: hands each reply to the round trip that
    waits for it."""

    def __init__(self, ws: ClientWebSocketResponse, correlation_field: str | None) -> None:
        self.ws = ws
        self.field = correlation_field
        self.ids = 0
        self.by_id: dict[int, asyncio.Future[Reply]] = {}
        self.in_order: deque[asyncio.Future[Reply]] = deque()
        self.pongs: dict[bytes, asyncio.Future[Reply]] = {}
        self.ended: str | None = None  # why the connection ended, once it did
        self.closed: tuple[int, str] | None = None  # its close code and origin, then
        self.close_timeout = 1.0

    def expect_reply(self) -> tuple[int, asyncio.Future[Reply]]:
        """A new request id, and the future its reply will be set on."""
        self.ids += 1
        future = asyncio.get_running_loop().create_future()
        if self.field is None:
            self.in_order.append(future)
        else:
            self.by_id[self.ids] = future
        return self.ids, future

    def expect_pong(self) -> tuple[bytes, asyncio.Future[Reply]]:
        self.ids += 1
        payload = self.ids.to_bytes(8, "big")
        future = self.pongs[payload] = asyncio.get_running_loop().create_future()
        return payload, future

    def forget(self, key: int | bytes, future: asyncio.Future[Reply]) -> None:
        if isinstance(key, bytes):
            self.pongs.pop(key, None)
        elif self.by_id.get(key) is future:
            del self.by_id[key]
        with contextlib.suppress(ValueError):
            self.in_order.remove(future)

    async def run(self) -> None:
        ws = self.ws
        while True:
            msg = await ws.receive()
            read_at = time.perf_counter()
            kind = msg.type
            if kind is WSMsgType.TEXT:
                self._text(msg.data, read_at)
            elif kind is WSMsgType.PONG:
                future = self.pongs.pop(bytes(msg.data), None)
                if future is not None and not future.done():
                    future.set_result((read_at, None))
            elif kind is WSMsgType.PING:
                with contextlib.suppress(*SEND_ERRORS):
                    await ws.pong(msg.data)
            elif kind is WSMsgType.BINARY:
                continue  # nothing a probe waits for
            elif kind is WSMsgType.CLOSE:
                # aiohttp reports a close frame without a status code as code 0.
                code = int(msg.data) if msg.data else 1005
                self._end(code, "peer", f"closed by the server with code {code}")
                with contextlib.suppress(TimeoutError, *SEND_ERRORS):
                    async with asyncio.timeout(self.close_timeout):
                        await ws.close(code=code if code != 1005 else CLOSE_CODE)
                return
            elif kind is WSMsgType.CLOSING:
                return  # we are closing (our close waits for the peer's answer)
            else:  # CLOSED, ERROR: no close frame came
                self._end(1006, "network", "connection lost without a close frame")
                return

    def _text(self, data: str, read_at: float) -> None:
        try:
            message = json.loads(data)
        except (ValueError, RecursionError):
            message = None
        if not isinstance(message, dict):
            message = None
        if self.field is None:
            if self.in_order:
                self.in_order.popleft().set_result((read_at, message))
            return
        key = None if message is None else message.get(self.field)
        if type(key) is int:  # `true` and 1.0 are not ids
            future = self.by_id.pop(key, None)
            if future is not None and not future.done():
                future.set_result((read_at, message))
        # anything else is a push, a late reply or a stream's next message: not waited for

    def _end(self, code: int, origin: str, why: str) -> None:
        self.ended = why
        self.closed = (code, origin)
        for future in (*self.by_id.values(), *self.in_order, *self.pongs.values()):
            if not future.done():
                future.set_exception(_Ended(why))
        self.by_id.clear()
        self.in_order.clear()
        self.pongs.clear()


async def probe_once(
    sessions: Sessions,
    target: TargetConfig,
    within: float,
    *,
    count: int = 1,
    interval: float = 1.0,
    on_open: Callable[[ProbeResult], None] | None = None,
    on_round_trip: Callable[[RoundTrip], None] | None = None,
) -> ProbeResult:
    """Connect to `target`, send each of its probes `count` times (rounds `interval`
    apart), close with 1000.

    The whole run (handshake, auth, round trips and the close) ends `within` seconds plus
    the time the rounds are spread over; each reply waits at most its probe's `timeout`
    (a stream's first message: its subscribe timeout). Success: the handshake (and auth)
    went through and every planned round trip was answered as expected.
    """
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    deadline = loop.time() + within + (count - 1) * interval
    result = ProbeResult(url=redact_url(target.url), planned=count * len(target.probes))
    try:
        await _run(sessions, target, result, deadline, count, interval, on_open, on_round_trip)
    finally:
        result.duration = time.perf_counter() - started
    result.success = (
        result.error is None
        and len(result.round_trips) == result.planned
        and all(t.outcome == "ok" for t in result.round_trips)
    )
    if result.error is None and len(result.round_trips) < result.planned:
        result.error = f"{result.planned - len(result.round_trips)} round trips not sent"
    return result


async def _run(
    sessions: Sessions,
    target: TargetConfig,
    result: ProbeResult,
    deadline: float,
    count: int,
    interval: float,
    on_open: Callable[[ProbeResult], None] | None,
    on_round_trip: Callable[[RoundTrip], None] | None,
) -> None:
    http = sessions.for_proxy(target.proxy)
    try:
        async with asyncio.timeout_at(deadline):
            # No handshake slots to share: a fresh semaphore (GET /probe has its own bound).
            opened = await connect(http, target, asyncio.Semaphore(), tls_context(target))
    except ConnectFailed as exc:
        result.status = exc.status
        result.error = f"{exc.reason}: {exc.error}"
        return
    except TimeoutError:
        result.error = "timeout: the handshake did not finish within the deadline"
        return
    ws = opened.ws
    result.upgraded, result.status = True, 101
    result.phases, result.tls = opened.phases, opened.tls
    if on_open is not None:
        on_open(result)
    replies = _Replies(ws, target.correlation_field)
    replies.close_timeout = target.close_timeout
    reader: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout_at(deadline):
            if target.auth is not None:
                # (it closes the connection with 1000 when the auth fails)
                await authenticate(ws, target)
            reader = asyncio.create_task(replies.run(), name="oneshot-reader")
            await _rounds(ws, target, replies, result, count, interval, on_round_trip)
    except ConnectFailed as exc:
        result.error = f"{exc.reason}: {exc.error}"
        result.close_code, result.close_origin = CLOSE_CODE, "local"
    except TimeoutError:
        result.error = "timeout: the deadline passed before the round trips were done"
    finally:
        await _close(ws, target, replies, reader, result, deadline)


async def _rounds(
    ws: ClientWebSocketResponse,
    target: TargetConfig,
    replies: _Replies,
    result: ProbeResult,
    count: int,
    interval: float,
    on_round_trip: Callable[[RoundTrip], None] | None,
) -> None:
    """Round `i` starts `i` intervals after the first, whether or not the earlier ones
    have their replies yet (as `ping` does); the probes of a round go one after another."""

    async def one_round(seq: int) -> None:
        for probe in target.probes:
            trip = RoundTrip(probe.name, seq)
            result.round_trips.append(trip)
            await _round_trip(ws, target, probe, replies, trip)
            if on_round_trip is not None:
                on_round_trip(trip)

    loop = asyncio.get_running_loop()
    first = loop.time()
    async with asyncio.TaskGroup() as group:
        for i in range(count):
            if i:
                await asyncio.sleep(max(0.0, first + i * interval - loop.time()))
            if replies.ended is not None:
                break
            group.create_task(one_round(i + 1))


async def _round_trip(
    ws: ClientWebSocketResponse,
    target: TargetConfig,
    probe: ProbeConfig,
    replies: _Replies,
    trip: RoundTrip,
) -> None:
    if replies.ended is not None:
        trip.outcome, trip.detail = "closed", replies.ended
        return
    wait = probe.first_message_within if probe.kind == "stream" else probe.timeout
    key: int | bytes
    if probe.kind == "ws-ping":
        key, future = replies.expect_pong()
        sent_at = time.perf_counter()
        send = ws.ping(key)
    else:
        key, future = replies.expect_reply()
        text = message_template(probe.send or {}, target.correlation_field)(key)
        sent_at = time.perf_counter()
        send = ws.send_str(text)
    try:
        async with asyncio.timeout(wait):
            await send
            read_at, message = await future
    except TimeoutError:
        trip.detail = f"no reply within {wait:g}s"
        return
    except _Ended as exc:
        trip.outcome, trip.detail = "closed", str(exc)
        return
    except SEND_ERRORS as exc:
        trip.outcome, trip.detail = "send_failed", f"{type(exc).__name__}: {exc}"
        return
    finally:
        replies.forget(key, future)
    trip.rtt = max(0.0, read_at - sent_at)
    if probe.kind == "ws-ping":
        trip.outcome, trip.detail = "ok", ""
        return
    trip.outcome, trip.detail = judge(probe, message)
    if probe.kind == "stream" and message is not None:
        await _unsubscribe(ws, target, probe, message, replies)


async def _unsubscribe(
    ws: ClientWebSocketResponse,
    target: TargetConfig,
    probe: ProbeConfig,
    first: dict[str, Any],
    replies: _Replies,
) -> None:
    """End a stream's subscription before the close, as the daemon does (the reply is not
    waited for: the close follows)."""
    message = unsubscribe_message(probe, subscription_of(first))
    if message is None:
        return
    if target.correlation_field is not None:
        replies.ids += 1
        message[target.correlation_field] = replies.ids
    with contextlib.suppress(TimeoutError, *SEND_ERRORS):
        async with asyncio.timeout(probe.first_message_within):
            await ws.send_str(json.dumps(message, separators=(",", ":")))


async def _close(
    ws: ClientWebSocketResponse,
    target: TargetConfig,
    replies: _Replies,
    reader: asyncio.Task[None] | None,
    result: ProbeResult,
    deadline: float,
) -> None:
    """Close with 1000 unless the connection already ended, within what is left of the
    deadline (at least CLOSE_FLOOR); then the reader is done."""
    loop = asyncio.get_running_loop()
    wait = min(target.close_timeout, max(deadline - loop.time(), CLOSE_FLOOR))
    if result.close_code is None and replies.closed is None and not ws.closed:
        with contextlib.suppress(TimeoutError, *SEND_ERRORS):
            async with asyncio.timeout(wait):
                await ws.close(code=CLOSE_CODE)
    if reader is not None:
        if not reader.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await asyncio.shield(reader)
        if not reader.done():
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        elif not reader.cancelled() and (fault := reader.exception()) is not None:
            raise fault  # a bug in the reader: not to be mistaken for a silent server
    if result.close_code is None:
        if replies.closed is not None:  # the peer closed first, or the connection was lost
            result.close_code, result.close_origin = replies.closed
        else:
            result.close_code, result.close_origin = CLOSE_CODE, "local"
    if replies.ended is not None and result.error is None:
        result.error = replies.ended
