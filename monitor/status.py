"""What each target is doing now, for people: its state and since when, its latest round trips
and a short history of them, how its latest connection ended, its streams and certificate.
`GET /api/v1/targets` serves it (docs/api.md) and the status page at `/` shows it.

The state is kept by the target's runner as it moves (`TargetState`); everything else is read
from the metric series the daemon keeps anyway, so the page costs nothing until asked for.
"""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from .log import redact_url

if TYPE_CHECKING:
    from .handles import TargetMetrics
    from .supervisor import TargetRunner

STATES = ("connected", "connecting", "backoff", "failed")
# Round trips kept per probe for the page's sparkline (4 bytes each).
RECENT = 30
# Reconnect times kept per target, to say how many fell in the last hour.
RECONNECTS_KEPT = 64
HOUR = 3600.0
MAX_LIMIT = 1000  # targets in one answer at most
# Targets looked at, and described, between two yields to the event loop.
SLICE = 250
DESCRIBE_SLICE = 50


class Recent:
    """The latest RECENT round trips of a probe, oldest first, in a ring of 4-byte floats."""

    __slots__ = ("at", "ring")
    SIZE: ClassVar[int] = RECENT
    TYPECODE: ClassVar[Literal["f", "d"]] = "f"

    def __init__(self) -> None:
        self.ring: array[float] = array(self.TYPECODE)
        self.at = 0  # where the next value goes, once the ring is full

    def add(self, value: float) -> None:
        ring = self.ring
        if len(ring) < self.SIZE:
            ring.append(value)
        else:
            ring[self.at] = value
            self.at = (self.at + 1) % self.SIZE

    def values(self) -> list[float]:
        ring = self.ring
        return [round(v, 6) for v in (*ring[self.at :], *ring[: self.at])]


class ReconnectTimes(Recent):
    """The latest RECONNECTS_KEPT reconnect times (Unix time), in a ring of 8-byte floats."""

    __slots__ = ()
    SIZE = RECONNECTS_KEPT
    TYPECODE = "d"


class TargetState:
    """A target's connection state and since when (Unix time), and how its latest connection
    ended: kept by its `TargetRunner`."""

    __slots__ = ("last_close", "reconnect_times", "since", "state")

    def __init__(self) -> None:
        self.state = "connecting"
        self.since = time.time()
        self.last_close: dict[str, Any] | None = None
        self.reconnect_times: ReconnectTimes | None = None  # made at the first reconnect

    def enter(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.since = time.time()

    def closed(self, code: int, origin: str, reason: str) -> None:
        self.last_close = {"code": code, "origin": origin, "reason": reason, "at": time.time()}

    def reconnected(self) -> None:
        times = self.reconnect_times
        if times is None:
            times = self.reconnect_times = ReconnectTimes()
        times.add(time.time())

    def reconnects_since(self, when: float) -> int:
        times = self.reconnect_times
        return 0 if times is None else sum(1 for t in times.ring if t >= when)


def describe(runner: TargetRunner, now: float) -> dict[str, Any]:
    """One target as the API shows it."""
    t, m, s = runner.target, runner.m, runner.state
    return {
        "name": t.name,
        "url": redact_url(t.url),
        "state": s.state,
        "since": round(s.since, 3),
        "up": m.up.value == 1,
        "problem": problem(runner),
        "last_rtt_seconds": _last_rtts(m),
        "recent_rtt_seconds": {
            name: pm.recent.values() if pm.recent is not None else []
            for name, pm in m.probes.items()
        },
        "reconnects": int(m.reconnects.value),
        "reconnects_last_hour": s.reconnects_since(now - HOUR),
        "last_close": s.last_close,
        "streams": {
            name: {
                "stale": sm.stale.value == 1,
                "last_message_at": sm.last.value or None,
                "messages": int(sm.messages.value),
            }
            for name, sm in m.streams.items()
        },
        "tls": None if m.cert_not_after is None else {"not_after": m.cert_not_after},
    }


def _last_rtts(m: TargetMetrics) -> dict[str, float | None]:
    """Every probe's latest RTT, or None until one was answered."""
    return {
        name: pm.last_rtt.value if pm.recent is not None else None for name, pm in m.probes.items()
    }


def problem(runner: TargetRunner) -> bool:
    """Needs a look: not connected, probes failing, or a stream stale."""
    m = runner.m
    return (
        runner.state.state != "connected"
        or m.up.value != 1
        or any(sm.stale.value == 1 for sm in m.streams.values())
    )


async def listing(runners: Iterable[TargetRunner], query: Mapping[str, str]) -> dict[str, Any]:
    """`GET /api/v1/targets`: the targets that match `state` (comma-separated) and `q` (part of
    the name, any case), problems first, then by name, a page of them (`limit`, `offset`),
    with a summary of all. Raises ValueError for a bad parameter.

    The pass over every target yields to the event loop every SLICE targets, the page's
    descriptions every DESCRIBE_SLICE: at 10,000 targets an answer must not hold the
    probes' timing up for its whole length."""
    states = {x for x in query.get("state", "").split(",") if x}
    if unknown := states - set(STATES):
        raise ValueError(f"unknown state {sorted(unknown)[0]!r}: one of {', '.join(STATES)}")
    needle = query.get("q", "").lower()
    limit = _whole(query, "limit", 100, 1, MAX_LIMIT)
    offset = _whole(query, "offset", 0, 0, math.inf)
    everything = list(runners)
    by_state = dict.fromkeys(STATES, 0)
    worst: tuple[float, str, str] | None = None
    problems = 0
    matched: list[tuple[bool, str, TargetRunner]] = []
    for i, r in enumerate(everything):
        if i and not i % SLICE:
            await asyncio.sleep(0)
        state = r.state.state
        by_state[state] += 1
        for name, pm in r.m.probes.items():
            if pm.recent is not None and (worst is None or pm.last_rtt.value > worst[0]):
                worst = (pm.last_rtt.value, r.target.name, name)
        trouble = problem(r)
        problems += trouble
        if (not states or state in states) and (not needle or needle in r.target.name.lower()):
            matched.append((not trouble, r.target.name, r))
    matched.sort()  # problems first, then by name (names are unique: no tie reaches a runner)
    now = time.time()
    page: list[dict[str, Any]] = []
    for i, (_, _, r) in enumerate(matched[offset : offset + limit]):
        if i and not i % DESCRIBE_SLICE:
            await asyncio.sleep(0)
        page.append(describe(r, now))
    return {
        "summary": {
            "targets": len(everything),
            **by_state,
            "problems": problems,
            "worst_rtt": None
            if worst is None
            else {"seconds": worst[0], "target": worst[1], "probe": worst[2]},
        },
        "total": len(matched),
        "offset": offset,
        "limit": limit,
        "targets": page,
    }


def _whole(query: Mapping[str, str], key: str, default: int, low: int, high: float) -> int:
    raw = query.get(key)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        top = "" if high == math.inf else f" to {int(high)}"
        raise ValueError(f"{key} must be a whole number from {low}{top}, not {raw!r}")
    return int(raw)
