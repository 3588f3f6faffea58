"""Which waiting request a reply answers: by a correlation id, in order, or by pong payload."""

from __future__ import annotations

import collections
import contextlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Reply:
    """What the session hands to a waiting request."""

    # time.perf_counter() when the message was read from the socket (with the read stamp),
    # else when it was handed over or handled
    received_at: float
    message: dict[str, Any] | None  # None: the text was not a JSON object
    raw: str = ""


@dataclass(slots=True, eq=False)
class Pending:
    """A request waiting for its reply. The session hands the reply to `on_reply` directly
    (no task to wake); if none came by its deadline, the clock calls `fire()`, which hands
    it to `on_timeout`. Whichever comes first marks it `done`; `timer` is the deadline's
    number on the clock, which the reply cancels."""

    key: Any
    # Called as on_reply(pending, reply) and on_timeout(pending): taking the pending as an
    # argument (not closing over it) lets one bound method serve every request of a probe.
    on_reply: Callable[[Pending, Reply], None]
    on_timeout: Callable[[Pending], None] | None = None
    sent_at: float = 0.0  # time.perf_counter()
    sent_wall: float = 0.0  # time.time()
    done: bool = False  # answered (possibly before the send call even returned) or expired
    timer: int | None = None

    def answer(self, reply: Reply) -> None:
        self.done = True
        self.on_reply(self, reply)

    def fire(self) -> None:
        """The deadline passed without a reply (the clock skips a pending that is done)."""
        self.done = True
        if self.on_timeout is not None:
            self.on_timeout(self)


_NO_QUEUE: collections.deque[Any] = collections.deque(maxlen=0)  # shared, always empty


class Correlator:
    """Matches replies to the message probes waiting for them on one connection.

    With a correlation field (`req_id`), every request carries a fresh integer and a reply is
    matched only by that integer, so a stray, late or duplicate reply never completes the
    wrong probe. Without one, replies are matched to the oldest waiting request, in order.
    """

    __slots__ = ("_by_id", "_in_order", "_next", "field")

    def __init__(self, field_name: str | None) -> None:
        self.field = field_name
        self._next = 0
        self._by_id: dict[int, Pending] = {}
        # Only correlation by order uses a queue (an empty deque still costs memory).
        self._in_order: collections.deque[Pending] = (
            collections.deque() if field_name is None else _NO_QUEUE
        )

    def next_id(self) -> int:
        self._next += 1
        return self._next

    def register(self, pending: Pending) -> None:
        if self.field is None:
            self._in_order.append(pending)
        else:
            self._by_id[pending.key] = pending

    def forget(self, pending: Pending) -> None:
        if self.field is None:
            with contextlib.suppress(ValueError):
                self._in_order.remove(pending)
        else:
            self._take(pending.key)

    def _take(self, key: Any) -> Pending | None:
        """The request waiting under `key`, no longer waiting. An emptied dict keeps its
        table, and most of the time a connection waits for nothing: the last one out gives
        it back (`clear`), a few hundred bytes a connection."""
        by_id = self._by_id
        pending = by_id.pop(key, None)
        if not by_id:
            by_id.clear()
        return pending

    def match(self, message: dict[str, Any] | None) -> Pending | str:
        """The waiting probe this message answers, or the reason it answers none."""
        if self.field is None:
            if not self._in_order:
                return "unknown_id"
            return self._in_order.popleft()
        if message is None:
            return "invalid_json"
        key = message.get(self.field)
        # bool is an int subclass; `true` must not match request 1.
        if not isinstance(key, int) or isinstance(key, bool):
            return "missing_id"
        pending = self._take(key)
        return "unknown_id" if pending is None else pending

    @property
    def waiting(self) -> int:
        return len(self._by_id) + len(self._in_order)

    def drain(self) -> Iterator[Pending]:
        """Every waiting request, forgotten (the connection is over)."""
        yield from self._by_id.values()
        yield from self._in_order
        self._by_id = {}
        if self.field is None:
            self._in_order = collections.deque()


class PongWaiters:
    """Matches pong frames to ws-ping probes by their 8-byte payload."""

    __slots__ = ("_next", "_waiting")

    def __init__(self) -> None:
        self._next = 0
        self._waiting: dict[bytes, Pending] = {}

    def next_payload(self) -> bytes:
        self._next += 1
        return struct.pack(">Q", self._next)

    def register(self, pending: Pending) -> None:
        self._waiting[pending.key] = pending

    def forget(self, pending: Pending) -> None:
        self._waiting.pop(pending.key, None)

    def match(self, payload: bytes) -> Pending | None:
        # Unknown payloads are unsolicited pongs, which RFC 6455 allows as a heartbeat.
        return self._waiting.pop(payload, None)

    def drain(self) -> Iterator[Pending]:
        yield from self._waiting.values()
        self._waiting = {}
