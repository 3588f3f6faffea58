"""The garbage collector's schedule, for a daemon that holds thousands of connections.

Each open connection keeps a few live objects that the cyclic collector tracks and that are
re-created for every message (aiohttp's receive wait: coroutines, a future, the message).
They are freed by reference counting, never by the collector, yet a young collection walks
every one created since the last, holding the event loop and every probe in flight with it.

So a daemon with FREEZE_FROM targets or more moves what exists into the collector's
permanent generation every FREEZE_EVERY seconds (`gc.freeze()`, a constant-time splice): a
young collection then walks at most that long's new objects. Frozen objects are still freed
by reference counting; what the freeze hides is cyclic garbage that forms after it (aiohttp
makes some; the daemon clears the cycles of failed handshakes and ended connections, see
`handshake.let_go`). To bound the rest, a full collection (unfreeze, collect, freeze) runs
once the daemon has settled (every target had its first attempt, at start and after each
reload) and again whenever the interpreter's allocated memory blocks have grown
by GROWTH since the last full collection (`sys.getallocatedblocks()` is cheap; counting the
frozen objects would walk all of them).

Smaller daemons keep CPython's own schedule, where their young collections stay short, and
freeze only once, when settled, after a full collection; then their ticks stop until a
reload changes the targets (`idle`). There the growth rule would cost more than it saves (a
small daemon that reconnects all the time grows, then levels off, on CPython's schedule).
docs/performance.md has the measurements behind these choices.
"""

from __future__ import annotations

import gc
import sys
import time

from structlog.typing import FilteringBoundLogger

# Targets from which the daemon freezes every FREEZE_EVERY seconds (below: once settled).
FREEZE_FROM = 1000
# Seconds between freezes: a young collection walks at most this long's new objects.
FREEZE_EVERY = 0.25
# Seconds the targets must have been settled before the full collection: the first
# connections finish their set-up (and a retry is not held up by the pause).
SETTLE_FOR = 1.0
# Every this many ticks, the allocated blocks are compared with the baseline.
CHECK_EVERY = 40
# Growth of allocated memory blocks (since the last full collection) that triggers one.
GROWTH = 0.25


class Collector:
    """Freezes on every `tick`; collects in full when settled and when grown (see module)."""

    def __init__(self, log: FilteringBoundLogger) -> None:
        self.log = log
        # Allocated blocks right after the last full collection; None: none since (re)start.
        self.baseline: int | None = None
        self.full_collections = 0
        self._ticks = 0
        self._settled_ticks = 0

    def tick(self, settled: bool, targets: int) -> None:
        """Freeze what exists (with FREEZE_FROM targets or more); collect in full once
        `settled` and when grown. Call every FREEZE_EVERY seconds; `settled` is False while
        targets still make first attempts."""
        periodic = targets >= FREEZE_FROM
        if periodic:
            gc.freeze()
        if not settled:
            self._settled_ticks = 0
            return
        if self.baseline is None:
            self._settled_ticks += 1
            if self._settled_ticks * FREEZE_EVERY >= SETTLE_FOR:
                self.full("settled")
            return
        if not periodic:
            return
        self._ticks += 1
        if self._ticks >= CHECK_EVERY:
            self._ticks = 0
            if sys.getallocatedblocks() > self.baseline * (1.0 + GROWTH):
                self.full("grown")

    def idle(self, targets: int) -> bool:
        """Nothing left to do until the targets change: a daemon below FREEZE_FROM that has
        had its full collection (its ticks would do nothing)."""
        return targets < FREEZE_FROM and self.baseline is not None

    def unsettle(self) -> None:
        """A reload changed the targets: collect in full once they have settled again
        (for SETTLE_FOR seconds, counted from now)."""
        self.baseline = None
        self._settled_ticks = 0

    def full(self, reason: str) -> None:
        """Collect every generation, then freeze the survivors."""
        started = time.perf_counter()
        before = sys.getallocatedblocks()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self.baseline = sys.getallocatedblocks()
        self.full_collections += 1
        self.log.debug(
            "gc.full",
            reason=reason,
            blocks_before=before,
            blocks=self.baseline,
            unreachable=found,
            seconds=round(time.perf_counter() - started, 3),
        )
