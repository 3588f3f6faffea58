"""Subscription streams on an open connection: subscribe, count what flows, notice when it
stops (stale), and resubscribe, reconnect or just report, as the probe says.

A stream is judged by its messages, not by replies to requests: a connection that answers
every ping can still have a subscription that stopped delivering (a zombie stream).
"""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType

from .clock import start_eagerly
from .config import ProbeConfig
from .correlation import Pending, Reply
from .probes import MAX_SLOWDOWN, SEND_ERRORS, message_template
from .replies import RATE_LIMIT_CODES, subset
from .streammsg import dig, epoch_seconds, subscription_of, unsubscribe_message

if TYPE_CHECKING:
    import asyncio

    from .session import Session

# What the monitor closes with when a stream went stale and the probe says `reconnect`
# (RFC 6455 leaves 4000-4999 to applications).
STALE_CLOSE_CODE = 4000
# A flowing stream's deadline is checked again at most this late (seconds), so that the
# checks of many streams fall on shared wake-ups of the event loop.
CHECK_GRID = 0.005


class StreamRun:
    """One stream probe on one open connection.

    No timer per message: one deadline per stream on the daemon's clock, at the latest
    moment the stream may stay silent as of when the deadline was set. When it fires,
    `fire()` looks at the time of the latest message and either sets the deadline again
    (messages came meanwhile) or declares the stream stale. A message costs a comparison
    and a few assignments.
    """

    __slots__ = (
        "awaiting_first", "build", "clock", "flat_expect", "lag_path", "last_at", "log",
        "mismatch_logged", "probe", "req_id", "retry", "retry_due", "sending", "sent_at",
        "session", "sm", "stale", "stale_since", "subscription_id", "timer", "wall_offset",
    )  # fmt: skip

    def __init__(self, session: Session, probe: ProbeConfig) -> None:
        self.session = session
        self.probe = probe
        self.sm = session.m.streams[probe.name]
        self.clock = session.runtime.clock
        self.log = session.log
        self.build = message_template(probe.send or {}, session.target.correlation_field)
        self.lag_path = tuple(probe.lag_field.split(".")) if probe.lag_field else None
        # `expect` of string values only (`{msg_type: tick}`): checked by plain equality.
        expect = probe.expect or {}
        self.flat_expect = (
            tuple(expect.items())
            if expect and all(type(v) is str for v in expect.values())
            else None
        )
        self.req_id: int | None = None
        self.subscription_id: str | None = None
        self.awaiting_first = True
        self.sent_at = 0.0  # time.perf_counter() of the latest subscribe
        self.wall_offset = time.time() - time.perf_counter()
        self.last_at = 0.0  # time.perf_counter() of the latest stream message
        self.stale = False
        self.stale_since = 0.0
        self.retry = 1  # subscribe_timeouts to wait before the next retry (doubling)
        self.retry_due = False  # the deadline is a retry of the subscribe, not a check
        self.mismatch_logged = False
        self.timer: int | None = None
        self.sending: asyncio.Task[None] | None = None

    # --- subscribing -----------------------------------------------------------------------

    def subscribe(self) -> None:
        """Send the subscribe request (a new id: replies to an earlier one are no longer
        this stream's) and wait for the first message."""
        session = self.session
        self._forget_ids()
        if session.closed_by_us is not None:
            return  # closing: nothing more to ask of this connection
        req_id = session.correlator.next_id()
        self.req_id = req_id
        session.streams[req_id] = self
        self.awaiting_first = True
        self.mismatch_logged = False
        self._arm(self.probe.first_message_within)
        self.sent_at = time.perf_counter()
        # Unix time minus the read stamps' clock, taken again at every subscribe (the wall
        # clock may be stepped): a message's Unix time without a clock read per message.
        self.wall_offset = time.time() - self.sent_at
        if self._write(self.build(req_id)):
            self.sm.subscribes.inc()

    def unsubscribe(self) -> None:
        """End the subscription on the server (when the probe has an unsubscribe message and
        the id it needs is known); its reply is expected, not counted as unmatched."""
        message = unsubscribe_message(self.probe, self.subscription_id)
        self._forget_ids()
        if message is None or self.session.ws.closed:
            return
        session = self.session
        field = session.target.correlation_field
        if field is not None:
            req_id = session.correlator.next_id()
            message[field] = req_id
            pending = Pending(req_id, self._unsubscribed, self._unanswered)
            session.correlator.register(pending)
            pending.timer = self.clock.call_at(
                self.clock.time() + self.probe.first_message_within, pending
            )
        self._write(json.dumps(message, separators=(",", ":")))
        self.log.debug("stream.unsubscribe", target=session.target.name, probe=self.probe.name)

    def _unsubscribed(self, pending: Pending, _: Reply) -> None:
        """The reply to an unsubscribe: expected, nothing to record."""
        if pending.timer is not None:
            self.clock.cancel(pending.timer)

    def _unanswered(self, pending: Pending) -> None:
        self.session.correlator.forget(pending)

    def _forget_ids(self) -> None:
        streams = self.session.streams
        if self.req_id is not None and streams.get(self.req_id) is self:
            del streams[self.req_id]
        subs = self.session.subscriptions
        if self.subscription_id is not None and subs.get(self.subscription_id) is self:
            del subs[self.subscription_id]
        self.req_id = None
        self.subscription_id = None

    def _write(self, text: str) -> bool:
        """Write a text frame; False when the connection is going away (its receive loop
        says how). A write that waits for room in the socket buffer finishes in a task."""
        if self.sending is not None and not self.sending.done():
            return False  # a peer that stopped reading: the deadline will tell
        try:
            self.sending = start_eagerly(self.session.ws.send_frame(text.encode(), WSMsgType.TEXT))
        except SEND_ERRORS as exc:
            self.log.warning(
                "probe.error",
                target=self.session.target.name,
                probe=self.probe.name,
                reason="send_failed",
                error=f"{type(exc).__name__}: {exc}",
            )
            self.sm.errors["send_failed"].inc()
            return False
        if self.sending is not None:
            self.sending.add_done_callback(_retrieve)
        return True

    # --- messages --------------------------------------------------------------------------

    def on_message(self, message: dict[str, Any], received: float) -> None:
        """A message of this stream (by its id), read at `received` (perf_counter)."""
        error = message.get("error")
        if isinstance(error, dict):
            self._refused(error)
            return
        flat = self.flat_expect
        if flat is not None:
            for key, value in flat:  # `subset` for string values: equality says the same
                if message.get(key) != value:
                    expected = False
                    break
            else:
                expected = True
        else:
            expect = self.probe.expect
            expected = expect is None or subset(expect, message)
        if not expected:
            self.sm.errors["unexpected_reply"].inc()
            if not self.mismatch_logged:  # once per subscribe: a stream can be fast
                self.mismatch_logged = True
                self.log.warning(
                    "probe.error",
                    target=self.session.target.name,
                    probe=self.probe.name,
                    reason="unexpected_reply",
                    error="stream message does not match `expect`",
                )
            return
        sm = self.sm
        if self.awaiting_first:
            self._first(message, received)
        else:
            gap = received - self.last_at
            sm.gap.observe(gap if gap > 0.0 else 0.0)
        self.last_at = received
        sm.messages.value += 1.0  # (Series.inc and .set, without the calls: the hot path)
        arrival = received + self.wall_offset  # Unix time of the read
        sm.last.value = arrival
        if self.lag_path is not None:
            stamp = epoch_seconds(dig(message, self.lag_path))
            if stamp is not None:
                offset = self.session.m.time_offset_value or 0.0
                sm.lag.observe(max(0.0, arrival - (stamp - offset)))
        if self.stale:
            self.stale = False
            sm.stale.set(0)
            self.log.info(
                "stream.recovered",
                target=self.session.target.name,
                probe=self.probe.name,
                stale_s=round(self.clock.time() - self.stale_since, 3),
            )
            if self.timer is None:
                self._arm(self.probe.max_gap or 0.0)

    def _first(self, message: dict[str, Any], received: float) -> None:
        """The subscription's first message: it took this long, and may name the
        subscription; from now on the gap between messages is what counts."""
        self.awaiting_first = False
        self.retry = 1
        self.sm.subscribe_time.observe(max(0.0, received - self.sent_at))
        sid = subscription_of(message)
        if sid is not None:
            self.subscription_id = sid
            self.session.subscriptions[sid] = self
        self._arm(self.probe.max_gap or 0.0)

    def _refused(self, error: dict[str, Any]) -> None:
        """An error reply to the subscribe (or in the stream): counted with its code; the
        subscribe is tried again later, each time twice as late (up to MAX_SLOWDOWN
        subscribe timeouts)."""
        code = error.get("code")
        reason = "rate_limited" if code in RATE_LIMIT_CODES else "api_error"
        self.sm.errors[reason].inc()
        self._forget_ids()
        delay = self.probe.first_message_within * self.retry
        self.retry = min(self.retry * 2, MAX_SLOWDOWN)
        self.log.warning(
            "stream.subscribe_failed",
            target=self.session.target.name,
            probe=self.probe.name,
            reason=reason,
            error=str(code or error.get("message") or "error"),
            retry_s=round(delay, 3),
        )
        self._go_stale("subscribe refused")
        self.retry_due = True
        self._arm(delay)

    # --- the deadline ----------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        if self.timer is not None:
            self.clock.cancel(self.timer)
        self.timer = self.clock.call_at(self.clock.time() + seconds, self)

    def fire(self) -> None:
        """The clock's call: a retry to send, or a deadline to check."""
        self.timer = None
        try:
            if self.retry_due:
                self.retry_due = False
                self.subscribe()
                return
            if self.awaiting_first:
                silent = time.perf_counter() - self.sent_at
                limit = self.probe.first_message_within
            else:
                silent = time.perf_counter() - self.last_at
                limit = self.probe.max_gap or 0.0
            if limit - silent > self.clock.slack:  # messages came meanwhile
                # On a grid of CHECK_GRID: the checks of many streams share a wake-up.
                when = self.clock.time() + limit - silent
                self.timer = self.clock.call_at(math.ceil(when / CHECK_GRID) * CHECK_GRID, self)
                return
            self._silent(silent)
        except Exception as exc:  # called by the clock: the session must learn of it
            self.session.fail(exc)

    def _silent(self, silent: float) -> None:
        first = self.awaiting_first
        if first:
            self.sm.timeouts.inc()
        self._go_stale("no first message" if first else "no message", silent)
        action = self.probe.on_stale
        if action == "reconnect":
            self.session.close(STALE_CLOSE_CODE, "stream stale")
        elif action == "resubscribe":
            self.log.warning(
                "stream.resubscribe", target=self.session.target.name, probe=self.probe.name
            )
            self.unsubscribe()
            if first:  # the last subscribe brought nothing: wait longer each time
                self.retry_due = True
                self._arm(self.probe.first_message_within * (self.retry - 1))
                self.retry = min(self.retry * 2, MAX_SLOWDOWN)
            else:
                self.subscribe()
        # report: only the metric and the log; the next message recovers the stream

    def _go_stale(self, why: str, silent: float | None = None) -> None:
        if self.stale:
            return
        self.stale = True
        self.stale_since = self.clock.time()
        self.sm.stale.set(1)
        self.sm.stalls.inc()
        self.log.warning(
            "stream.stale",
            target=self.session.target.name,
            probe=self.probe.name,
            why=why,
            **({"silent_s": round(silent, 3)} if silent is not None else {}),
            max_gap_s=self.probe.max_gap,
            on_stale=self.probe.on_stale,
        )

    def stop(self) -> None:
        """The connection is over: no deadline, and not stale (the connection is down,
        which `wsmon_connected` says)."""
        if self.timer is not None:
            self.clock.cancel(self.timer)
            self.timer = None
        self._forget_ids()
        if self.stale:
            self.stale = False
            self.sm.stale.set(0)
        if self.sending is not None and not self.sending.done():
            self.sending.cancel()


def _retrieve(task: asyncio.Task[None]) -> None:
    """A write that finished in a task: its failure means the connection is going away,
    which the receive loop reports."""
    if not task.cancelled():
        task.exception()
