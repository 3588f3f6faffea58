"""Reconnect delays: exponential backoff with full jitter, as a pure generator (no I/O)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import NamedTuple


def capped(initial: float, maximum: float, multiplier: float, attempt: int) -> float:
    """The ceiling of the delay before retry number `attempt` (0-based)."""
    # Compare exponents first so a long outage cannot overflow the float.
    if multiplier > 1.0 and attempt > 0:
        ceiling = initial
        for _ in range(attempt):
            ceiling *= multiplier
            if ceiling >= maximum:
                return maximum
        return ceiling
    return min(initial, maximum)


class Delay(NamedTuple):
    """One reconnect delay and the window it was drawn from."""

    seconds: float
    ceiling: float


def full_jitter(
    initial: float,
    maximum: float,
    multiplier: float,
    rng: random.Random | None = None,
) -> Iterator[Delay]:
    """Yield delays `uniform(0, min(maximum, initial * multiplier**n))` for n = 0, 1, 2, ...

    Full jitter spreads a fleet of clients that lost their connections at the same moment
    over the whole window instead of having them retry in lockstep.
    """
    draw = (rng or random.Random()).uniform
    attempt = 0
    while True:
        ceiling = capped(initial, maximum, multiplier, attempt)
        yield Delay(draw(0.0, ceiling), ceiling)
        attempt += 1
