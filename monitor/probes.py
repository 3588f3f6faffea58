"""Message and ws-ping probes: correlation of replies, timing, and checking what came back."""

from __future__ import annotations

import collections
import contextlib
import json
import math
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from .config import ProbeConfig

Outcome = Literal["ok", "api_error", "unexpected_reply", "invalid_json"]


@dataclass(slots=True)
class Reply:
    """What the session hands to a waiting probe."""

    received_at: float  # time.perf_counter() when the message was taken off the socket
    message: dict[str, Any] | None  # None: the text was not a JSON object
    raw: str = ""


@dataclass(slots=True, eq=False)
class Pending:
    """A request waiting for its reply: the session hands the reply to `on_reply`
    directly (no task to wake); if none came by its deadline, the clock calls `fire()`,
    which hands it to `on_timeout`. Whichever comes first marks it `done`; `timer` is the
    deadline's number on the clock, which `on_reply` cancels."""

    key: Any
    # Called as on_reply(pending, reply) and on_timeout(pending). Taking the pending as an
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
        # Only correlation by order uses the queue (a deque costs some 600 bytes).
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
            self._by_id.pop(pending.key, None)

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
        pending = self._by_id.pop(key, None)
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


def build_message(probe: ProbeConfig, correlation_field: str | None, req_id: int) -> str:
    """The JSON text a message probe sends."""
    body: dict[str, Any] = dict(probe.send or {})
    if correlation_field is not None:
        body[correlation_field] = req_id
    return json.dumps(body, separators=(",", ":"))


def message_template(send: dict[str, Any], correlation_field: str | None) -> Callable[[int], str]:
    """A fast builder of `build_message`'s text: the JSON is serialised once, and only the
    increasing id is spliced in per send."""
    if correlation_field is None:
        text = json.dumps(send, separators=(",", ":"))
        return lambda _: text
    if correlation_field in send or not send:
        return lambda req_id: json.dumps({**send, correlation_field: req_id}, separators=(",", ":"))
    head = json.dumps(send, separators=(",", ":"))[:-1] + "," + json.dumps(correlation_field) + ":"
    return lambda req_id: f"{head}{req_id}}}"


# The scanner `json.loads` runs (its default decoder's), without the layers around it. The
# decoder makes it in __init__, where the type stubs do not see it.
_decoder: Any = json.JSONDecoder()
_scan_once: Callable[[str, int], tuple[Any, int]] = _decoder.scan_once


def parse(text: str) -> dict[str, Any] | None:
    """The JSON object in a text frame, or None when it is not one; exactly what `json.loads`
    reads. A reply that is one object with nothing around it (nearly every reply) is
    scanned directly; anything else goes through `json.loads`, which decides."""
    if text[:1] == "{":
        try:
            value, end = _scan_once(text, 0)
        except (StopIteration, ValueError, RecursionError):  # what json.loads fails on too
            return None
        if end == len(text):
            return value  # type: ignore[no-any-return]
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return None
    return value if isinstance(value, dict) else None


_SCALARS = (str, int, float)


def subset(expected: Any, actual: Any) -> bool:
    """True when every key of `expected` is in `actual` with a matching value, recursively."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return False
        for k, v in expected.items():
            if k not in actual:
                return False
            a = actual[k]
            # Fast path for the usual `{msg_type: ping}`: plain strings and numbers (bool
            # has its own type, so `true` never equals 1 here).
            if type(v) in _SCALARS and type(a) in _SCALARS:
                if v != a:
                    return False
            elif not subset(v, a):
                return False
        return True
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(subset(e, a) for e, a in zip(expected, actual, strict=True))
        )
    # 1 and 1.0 are the same JSON number, but `true` is not the number 1.
    return bool(expected == actual) and isinstance(expected, bool) == isinstance(actual, bool)


def judge(probe: ProbeConfig, reply: Reply) -> tuple[Outcome, str]:
    """Classify a matched reply: ok, or the error reason and a short detail for the log."""
    msg = reply.message
    if msg is None:
        return "invalid_json", "reply is not a JSON object"
    error = msg.get("error")
    if isinstance(error, dict):
        return "api_error", str(error.get("code") or error.get("message") or "error")
    if probe.expect is not None and not subset(probe.expect, msg):
        return "unexpected_reply", "reply does not match `expect`"
    return "ok", ""


def judge_auth(expect: dict[str, Any] | None, msg: dict[str, Any] | None) -> tuple[str, str]:
    """Classify the reply to an auth message; the detail never repeats what was sent."""
    if msg is None:
        return "invalid_json", "reply is not a JSON object"
    error = msg.get("error")
    if isinstance(error, dict):
        return "api_error", str(error.get("code") or "error")
    if expect is not None and not subset(expect, msg):
        return "unexpected_reply", "reply does not match `expect`"
    return "ok", ""


def server_time_offset(msg: dict[str, Any], sent_wall: float, rtt: float) -> float | None:
    """Server clock minus ours, if the reply carries a `time` epoch (seconds).

    The server read its clock somewhere in the round trip; the midpoint is the best guess.
    """
    raw = msg.get("time")
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    try:
        value = float(raw)
    except OverflowError:  # an integer beyond any float
        return None
    if not math.isfinite(value) or value < 1e9:  # not an epoch (e.g. the `{"time": 1}` echo)
        return None
    if value >= 1e11:  # milliseconds: seconds will not reach 1e11 before the year 5000
        value = value / 1000.0
    return float(value) - (sent_wall + rtt / 2)


def now() -> tuple[float, float]:
    """(monotonic, wall) clocks read together."""
    return time.perf_counter(), time.time()
