"""Message and ws-ping probes on an open connection: when to send, what to send, and what
each request came to (a good reply, a wrong one, a timeout, a failed send), in metrics and
log events."""

from __future__ import annotations

import asyncio
import functools
import json
import math
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import WSMsgType

from .clock import start_eagerly
from .config import ProbeConfig
from .correlation import Correlator, Pending, PongWaiters, Reply
from .families import Series
from .replies import judge, server_time_offset

if TYPE_CHECKING:
    from .session import Session

# What a failed send raises: the connection is going away (its receive loop says how).
SEND_ERRORS = (ConnectionError, aiohttp.ClientError, RuntimeError)
# What the monitor closes with when it gives up on a connection whose probes go unanswered.
UNANSWERED_CLOSE_CODE = 1011
# A probe answered "rate limited" sends at most this many times less often (see `_slow_down`).
MAX_SLOWDOWN = 32


def build_message(probe: ProbeConfig, correlation_field: str | None, req_id: int) -> str:
    """The JSON text a message probe sends."""
    body: dict[str, Any] = dict(probe.send or {})
    if correlation_field is not None:
        body[correlation_field] = req_id
    return json.dumps(body, separators=(",", ":"))


# The builders in use, by what they build: every connection of targets that send the same
# message shares one (an entry goes with the last connection that holds it).
_TEMPLATES: weakref.WeakValueDictionary[tuple[str, str | None], Callable[[int], str]] = (
    weakref.WeakValueDictionary()
)


def message_template(send: dict[str, Any], correlation_field: str | None) -> Callable[[int], str]:
    """A fast builder of `build_message`'s text: the JSON is serialised once, and only the
    increasing id is spliced in per send."""
    text = json.dumps(send, separators=(",", ":"))
    key = (text, correlation_field)
    build = _TEMPLATES.get(key)
    if build is None:
        build = _TEMPLATES[key] = _template(send, text, correlation_field)
    return build


def _template(
    send: dict[str, Any], text: str, correlation_field: str | None
) -> Callable[[int], str]:
    if correlation_field is None:
        return lambda _: text
    if correlation_field in send or not send:
        return lambda req_id: json.dumps({**send, correlation_field: req_id}, separators=(",", ":"))
    head = text[:-1] + "," + json.dumps(correlation_field) + ":"
    return lambda req_id: f"{head}{req_id}}}"


class Liveness:
    """What the probes of one connection say together: `wsmon_up`, and the rule that closes
    a connection whose probes time out `dead_after` times in a row (a wrong reply proves the
    peer alive and starts the count again)."""

    __slots__ = ("close", "consecutive_timeouts", "dead_after", "up")

    def __init__(self, up: Series, dead_after: int, close: Callable[[int, str], None]) -> None:
        self.up = up
        self.dead_after = dead_after
        self.close = close
        self.consecutive_timeouts = 0

    def answered(self) -> None:
        self.consecutive_timeouts = 0
        self.up.set(1)

    def wrong_reply(self) -> None:
        self.consecutive_timeouts = 0
        self.up.set(0)

    def send_failed(self) -> None:
        self.up.set(0)

    def timed_out(self) -> int:
        """Count a timeout; the number in a row so far."""
        self.up.set(0)
        self.consecutive_timeouts += 1
        return self.consecutive_timeouts

    def close_if_dead(self) -> None:
        """Close the connection when its probes have timed out `dead_after` times in a row."""
        if self.consecutive_timeouts >= self.dead_after:
            self.close(UNANSWERED_CLOSE_CODE, "probe timeout")


def round_trip(pending: Pending, reply: Reply) -> float:
    """From the send to the read of the reply. A message read before the request went out
    (matched in order, without a correlation field) ends the round trip when it is handled
    instead, as if no read stamp existed."""
    rtt = reply.received_at - pending.sent_at
    return rtt if rtt >= 0.0 else time.perf_counter() - pending.sent_at


class ProbeRun:
    """One probe on one open connection: its sends, on the daemon's clock, and what becomes
    of each request.

    No task per probe: the clock calls `fire()` at the scheduled time, which writes the
    request right there, and the request's own deadline on the same clock counts the timeout
    when no reply came. The session hands the reply to `_reply` (or `_pong`) as it handles
    the message. The first send is jittered over one interval by the session.
    """

    __slots__ = (
        "build", "clock", "due", "liveness", "pm", "probe", "sending", "session", "slowdown",
        "timer", "waiters",
    )  # fmt: skip

    def __init__(
        self, session: Session, probe: ProbeConfig, liveness: Liveness, first_due: float
    ) -> None:
        self.session = session
        self.probe = probe
        self.liveness = liveness
        self.pm = session.m.probes[probe.name]
        self.clock = session.runtime.clock
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
        # Intervals between sends: 1, or more while the server answers "rate limited"
        self.slowdown = 1
        self.due = first_due
        self.timer = self.clock.call_at(first_due, self)

    def stop(self) -> None:
        """The connection is over: no more sends."""
        self.clock.cancel(self.timer)
        if self.sending is not None:
            self.sending.cancel()

    # --- sending ---------------------------------------------------------------------------

    def fire(self) -> None:
        """Send now and schedule the next send; a loop that stalled past a whole interval
        skips ahead by whole intervals rather than bursting (the phase is kept). While an
        earlier send still waits for room in the socket buffer (a peer that stopped
        reading), no new request is added behind it (see `_blocked`)."""
        clock = self.clock
        now = clock.time()
        scheduled = self.due
        interval = self.probe.interval * self.slowdown
        due = scheduled + interval
        if due < now:  # whole intervals later, on the same phase, at least one from now
            due += math.ceil((now - due) / interval + 1.0) * interval
        self.due = due
        self.timer = clock.call_at(due, self)
        try:
            self.session.m.send_lag.observe(max(0.0, now - scheduled))
            if self.sending is None or self.sending.done():  # (its callback may not have run)
                self._send(now + self.probe.timeout)
            else:
                self._blocked()
        except Exception as exc:  # called by the clock: the session must learn of it
            self.session.fail(exc)

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
        # Register first: the reply can arrive before the send call returns. The deadline
        # runs from now: a request stuck behind a full socket buffer (a peer that stopped
        # reading) goes unanswered just the same.
        self.waiters.register(pending)
        pending.timer = self.clock.call_at(deadline, pending)
        pending.sent_wall = time.time()
        pending.sent_at = time.perf_counter()  # the clock starts right before the write
        try:
            rest = start_eagerly(session.ws.send_frame(payload, opcode))
        except SEND_ERRORS as exc:
            self._failed(pending, exc)
            return
        except BaseException:  # not sent: no deadline may count it (the session fails)
            self._abandon(pending)
            raise
        # Sent: the write began. One that waits for room counts too; its deadline runs.
        self.pm.sent.inc()
        if rest is not None:
            self.sending = rest
            rest.add_done_callback(functools.partial(self._sent_later, pending))

    def _sent_later(self, pending: Pending, task: asyncio.Task[None]) -> None:
        """The rest of a write that waited for room in the socket buffer is done. If it
        failed, the connection is going: the request is abandoned like any other in flight
        when a connection ends (its deadline may already have counted it as a timeout)."""
        if self.sending is task:  # (a send made after it finished, before this ran, stays)
            self.sending = None
        if task.cancelled():
            self._abandon(pending)
            return
        exc = task.exception()
        if exc is not None:
            self._abandon(pending)
            if not isinstance(exc, SEND_ERRORS):  # a done callback: the session must learn
                self.session.fail(exc)

    def _abandon(self, pending: Pending) -> None:
        if pending.timer is not None:
            self.clock.cancel(pending.timer)
        pending.done = True
        self.waiters.forget(pending)

    # --- outcomes --------------------------------------------------------------------------

    def _failed(self, pending: Pending, exc: BaseException) -> None:
        self._abandon(pending)
        self.pm.errors["send_failed"].inc()
        self.liveness.send_failed()
        self.session.log.warning(
            "probe.error",
            target=self.session.target.name,
            probe=self.probe.name,
            reason="send_failed",
            error=f"{type(exc).__name__}: {exc}",
        )

    def _reply(self, pending: Pending, reply: Reply) -> None:
        if pending.timer is not None:
            self.clock.cancel(pending.timer)
        rtt = round_trip(pending, reply)
        outcome, detail = judge(self.probe, reply.message)
        if outcome != "ok":
            self.pm.errors[outcome].inc()
            self.liveness.wrong_reply()
            extra = {"next_send_s": self._slow_down()} if outcome == "rate_limited" else {}
            self.session.log.warning(
                "probe.error",
                target=self.session.target.name,
                probe=self.probe.name,
                reason=outcome,
                error=detail,
                rtt_ms=round(rtt * 1000, 3),
                **extra,
            )
            return
        if self.slowdown > 1:
            self._speed_up()
        assert reply.message is not None
        offset = server_time_offset(reply.message, pending.sent_wall, rtt)
        if offset is not None:
            self.session.m.set_time_offset(offset)
        self._answered(rtt)

    def _slow_down(self) -> float:
        """The server says too many requests: double the time between this probe's sends
        (up to MAX_SLOWDOWN intervals) until it answers well again, starting with the send
        already scheduled. Returns the seconds to the next send."""
        slower = min(self.slowdown * 2, MAX_SLOWDOWN)
        if slower != self.slowdown:
            self.due += self.probe.interval * (slower - self.slowdown)
            self.slowdown = slower
            self.clock.cancel(self.timer)
            self.timer = self.clock.call_at(self.due, self)
        return round(self.due - self.clock.time(), 3)

    def _speed_up(self) -> None:
        """A good reply after rate-limited ones: the next send one interval after this one,
        and the interval back to normal."""
        self.due = max(self.due - self.probe.interval * (self.slowdown - 1), self.clock.time())
        self.slowdown = 1
        self.clock.cancel(self.timer)
        self.timer = self.clock.call_at(self.due, self)

    def _pong(self, pending: Pending, reply: Reply) -> None:
        if pending.timer is not None:
            self.clock.cancel(pending.timer)
        self._answered(round_trip(pending, reply))

    def _answered(self, rtt: float) -> None:
        self.pm.answered(rtt)
        self.liveness.answered()

    def _blocked(self) -> None:
        """Time to send, and the previous request still waits for room in the socket buffer
        (a peer that stopped reading): this one cannot be written. It counts as `send_failed`
        and, towards `dead_after_timeouts`, like a timeout: the peer is not reading."""
        self.pm.errors["send_failed"].inc()
        consecutive = self.liveness.timed_out()
        self.session.log.warning(
            "probe.error",
            target=self.session.target.name,
            probe=self.probe.name,
            reason="send_failed",
            error="the previous request still waits for room in the socket buffer",
            consecutive=consecutive,
        )
        self.liveness.close_if_dead()

    def _timed_out(self, pending: Pending) -> None:
        try:
            self.waiters.forget(pending)
            self.pm.timeouts.inc()
            consecutive = self.liveness.timed_out()
            self.session.log.warning(
                "probe.timeout",
                target=self.session.target.name,
                probe=self.probe.name,
                timeout_s=self.probe.timeout,
                consecutive=consecutive,
            )
            self.liveness.close_if_dead()
        except Exception as exc:  # called by the clock: the session must learn of it
            self.session.fail(exc)
