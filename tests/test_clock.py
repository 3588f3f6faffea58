"""The clock that schedules probe sends and timeouts, and eager sends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from monitor.clock import Clock, start_eagerly


class Recorder:
    """A clock entry that notes the loop time it fired at."""

    def __init__(self, name: str, log: list[tuple[str, float]], loop: Any) -> None:
        self.name = name
        self.log = log
        self.loop = loop

    def fire(self) -> None:
        self.log.append((self.name, self.loop.time()))


async def test_entries_fire_in_deadline_order_never_early() -> None:
    loop = asyncio.get_running_loop()
    clk = Clock(loop)
    log: list[tuple[str, float]] = []
    start = loop.time()
    due = {"c": start + 0.030, "a": start + 0.010, "b": start + 0.020, "a2": start + 0.010}
    for name, when in due.items():
        clk.call_at(when, Recorder(name, log, loop))
    assert len(clk) == 4
    await asyncio.sleep(0.06)
    assert [n for n, _ in log] == ["a", "a2", "b", "c"]  # equal deadlines: in order added
    assert all(at >= due[n] - clk.slack for n, at in log), log
    assert len(clk) == 0


async def test_cancelled_entry_never_fires() -> None:
    loop = asyncio.get_running_loop()
    clk = Clock(loop)
    log: list[tuple[str, float]] = []
    keep = clk.call_at(loop.time() + 0.02, Recorder("keep", log, loop))
    drop = clk.call_at(loop.time() + 0.01, Recorder("drop", log, loop))
    clk.cancel(drop)
    clk.cancel(drop)  # twice is harmless
    assert len(clk) == 1
    await asyncio.sleep(0.04)
    assert [n for n, _ in log] == ["keep"]
    clk.cancel(keep)  # after firing: nothing happens


async def test_a_failing_entry_does_not_stop_the_others() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    try:
        clk = Clock(loop)
        log: list[tuple[str, float]] = []

        class Broken:
            def fire(self) -> None:
                raise ValueError("bug")

        now = loop.time()
        clk.call_at(now + 0.005, Broken())
        clk.call_at(now + 0.005, Recorder("same tick", log, loop))
        clk.call_at(now + 0.015, Recorder("later", log, loop))
        await asyncio.sleep(0.04)
    finally:
        loop.set_exception_handler(None)
    assert [n for n, _ in log] == ["same tick", "later"]
    assert len(errors) == 1
    assert isinstance(errors[0]["exception"], ValueError)


async def test_entries_added_while_firing_are_scheduled() -> None:
    """An entry that reschedules itself (as a probe does) keeps firing on its own cadence,
    and one loop timer serves however many entries wait."""
    loop = asyncio.get_running_loop()
    clk = Clock(loop)
    fired: list[float] = []

    class Ticker:
        def __init__(self) -> None:
            self.due = loop.time() + 0.005

        def fire(self) -> None:
            fired.append(loop.time())
            if len(fired) < 5:
                self.due += 0.005
                clk.call_at(self.due, self)

    clk.call_at(loop.time() + 0.005, Ticker())
    for i in range(50):  # idle entries far in the future share the same timer
        clk.call_at(loop.time() + 60 + i, Recorder(str(i), [], loop))
    await asyncio.sleep(0.1)
    assert len(fired) == 5
    timers = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
    assert len([h for h in timers if getattr(h, "_callback", None) == clk._run]) == 1


async def test_start_eagerly_finishes_a_send_that_does_not_wait() -> None:
    done: list[str] = []

    async def send() -> None:
        done.append("sent")

    assert start_eagerly(send()) is None
    assert done == ["sent"]


async def test_start_eagerly_raises_what_the_send_raises_at_once() -> None:
    async def send() -> None:
        raise ConnectionResetError("gone")

    with pytest.raises(ConnectionResetError):
        start_eagerly(send())


async def test_start_eagerly_continues_a_suspended_send_in_a_task() -> None:
    loop = asyncio.get_running_loop()
    room = loop.create_future()
    steps: list[str] = []

    async def send() -> None:
        steps.append("written")
        got = await room  # a full socket buffer: wait for drain
        steps.append(f"drained {got}")

    task = start_eagerly(send())
    assert task is not None
    assert steps == ["written"]
    await asyncio.sleep(0)
    assert not task.done()
    room.set_result("ok")
    await task
    assert steps == ["written", "drained ok"]


async def test_start_eagerly_task_cancellation_reaches_the_send() -> None:
    loop = asyncio.get_running_loop()
    steps: list[str] = []

    async def send() -> None:
        try:
            await loop.create_future()
        except asyncio.CancelledError:
            steps.append("cancelled")
            raise

    task = start_eagerly(send())
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps == ["cancelled"]


async def test_phase_is_the_time_itself_without_alignment() -> None:
    clk = Clock(asyncio.get_running_loop())
    assert clk.phase(123.4567, 30.0) == 123.4567


@pytest.mark.parametrize(("alignment", "interval", "step"), [
    (0.030, 30.0, 0.030),     # divides the interval: the step itself
    (0.030, 1.0, 1.0 / 34),   # does not: the largest divisor of the interval below it
    (0.5, 0.2, 0.2),          # longer than the interval: one point per interval
])  # fmt: skip
async def test_phase_is_the_next_point_of_a_grid_dividing_the_interval(
    alignment: float, interval: float, step: float
) -> None:
    """First sends land on the grid, never before the time asked for and less than a step
    after it; every later send (whole intervals on) stays on the same grid."""
    clk = Clock(asyncio.get_running_loop())
    clk.alignment = alignment
    for when in (1000.0, 1000.0001, 1234.56789, 98765.4321):
        at = clk.phase(when, interval)
        assert when <= at < when + step + 1e-9
        for k in (0, 1, 7, 1000):
            slots = (at + k * interval) / step
            assert abs(slots - round(slots)) < 1e-6, (when, k, slots)
