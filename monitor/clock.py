"""Many deadlines on one event-loop timer, and sends that do not need a task.

Every probe has two deadlines per round trip: when to send, and when to give up on the reply.
With `asyncio.sleep` and `loop.call_later` each of them costs a future, a timer handle and a
context copy that live until the deadline, and a task wake-up; at thousands of targets those
objects are most of what the garbage collector walks. `Clock` keeps the deadlines in one heap
of plain numbers and holds a single loop timer for the earliest live one; cancelling an entry
(an answered probe, a closed connection) is one dict deletion.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Protocol


class Entry(Protocol):
    """What the clock calls at its deadline."""

    def fire(self) -> None: ...


class Clock:
    """A heap of (deadline, number) served by one `loop.call_at` timer; the entries wait in
    a dict by number, so that cancelling drops the entry at once (an answered request is
    freed right away) and the heap holds only numbers, which the garbage collector skips."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.time = loop.time
        self._heap: list[tuple[float, int]] = []
        self._entries: dict[int, Entry] = {}
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed = math.inf
        # The step of the grid that `phase` puts first sends on (0: no grid); the daemon
        # sets it from the config's `send_alignment`.
        self.alignment = 0.0
        # How early the loop may run a timer by its own clock: asyncio's runs a handle due
        # within the clock's resolution; uvloop keeps time (and timers) in whole milliseconds,
        # so an entry up to 1 ms ahead by loop.time() is due (else the timer would spin).
        self.slack = (
            time.get_clock_info("monotonic").resolution
            if isinstance(loop, asyncio.BaseEventLoop)
            else 0.001
        )

    def __len__(self) -> int:
        """Entries waiting (cancelled ones not counted)."""
        return len(self._entries)

    def call_at(self, when: float, entry: Entry) -> int:
        """Fire `entry` at loop time `when`; returns the number that cancels it. Entries due
        at the same time fire in the order they were added."""
        seq = next(self._seq)
        self._entries[seq] = entry
        heapq.heappush(self._heap, (when, seq))
        if when < self._armed:
            self._arm(when)
        return seq

    def phase(self, when: float, interval: float) -> float:
        """When a periodic entry with this interval should first fire, at or after `when`.

        Without alignment, `when` itself. With it, the next point of a grid whose step
        divides the interval evenly and is the largest such step not above `alignment`:
        every later firing (`when + k * interval`) stays on the grid, so the entries of
        many targets come due together, a handful per wake-up instead of one. On a virtual
        machine a wake-up from idle can cost more CPU than the round trip it serves. The
        schedule is not delayed: the grid only narrows the choice of phase.
        """
        if not self.alignment:
            return when
        step = interval / math.ceil(interval / self.alignment)
        return math.ceil(when / step) * step

    def cancel(self, seq: int) -> None:
        """Forget the entry `call_at` numbered `seq` (nothing if it fired already)."""
        self._entries.pop(seq, None)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self.loop.call_at(when, self._run)
        self._armed = when

    def _run(self) -> None:
        self._handle = None
        self._armed = -math.inf  # what fired entries add is armed once, below
        heap = self._heap
        entries = self._entries
        pop = heapq.heappop
        now = self.loop.time() + self.slack
        try:
            while heap:
                when, seq = heap[0]
                if seq not in entries:  # cancelled
                    pop(heap)
                    continue
                if when > now:
                    break
                pop(heap)
                entry = entries.pop(seq)
                try:
                    entry.fire()
                except Exception as exc:  # one entry's bug must not stop every other timer
                    self.loop.call_exception_handler(
                        {"message": "clock entry failed", "exception": exc, "entry": entry}
                    )
        finally:
            self._armed = math.inf
            if heap:
                self._arm(heap[0][0])


class LagSampler:
    """How late the event loop runs a timer, sampled every `every` seconds on the clock:
    the daemon's own delay, which every round trip measured meanwhile may include. Its times
    are put on the clock's grid (`Clock.phase`), so that with `send_alignment` it shares a
    wake-up with the probes."""

    __slots__ = ("clock", "due", "every", "observe", "seq")

    def __init__(self, clock: Clock, every: float, observe: Callable[[float], None]) -> None:
        self.clock = clock
        self.every = every
        self.observe = observe
        self.due = clock.phase(clock.time() + every, every)
        self.seq = clock.call_at(self.due, self)

    def fire(self) -> None:
        now = self.clock.time()
        self.observe(max(0.0, now - self.due))
        self.due += self.every
        if self.due <= now:  # stalled past a whole period: the next one from now
            self.due = now + self.every
        self.seq = self.clock.call_at(self.due, self)

    def stop(self) -> None:
        self.clock.cancel(self.seq)


def start_eagerly(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run `coro` now, up to its first suspension.

    A WebSocket send writes its frame and returns without suspending unless the socket's
    buffer is full, so it usually finishes here: None. Otherwise the rest runs in a task,
    which is returned. An exception raised before the first suspension propagates.
    """
    try:
        suspended_on = coro.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_finish(coro, suspended_on))


async def _finish(coro: Coroutine[Any, Any, None], suspended_on: Any) -> None:
    await _Resume(coro, suspended_on)


class _Resume:
    """Awaitable that hands the task what `coro` suspended on, then drives `coro` on."""

    __slots__ = ("coro", "suspended_on")

    def __init__(self, coro: Coroutine[Any, Any, None], suspended_on: Any) -> None:
        self.coro = coro
        self.suspended_on = suspended_on

    def __await__(self) -> Generator[Any, Any, None]:
        coro = self.coro
        yielded = self.suspended_on
        while True:
            try:
                value = yield yielded
            except BaseException as exc:  # cancellation and the like go to the coroutine
                try:
                    yielded = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    yielded = coro.send(value)
                except StopIteration:
                    return
