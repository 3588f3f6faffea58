"""The garbage collector's schedule: young objects frozen, cyclic garbage still bounded."""

from __future__ import annotations

import gc
import math
import weakref
from collections.abc import Iterator

import pytest
import structlog

from monitor import collector as collector_mod
from monitor.collector import FREEZE_EVERY, FREEZE_FROM, SETTLE_FOR, Collector


class Node:
    """One half of a reference cycle, with a weak reference to tell when it is freed."""

    def __init__(self) -> None:
        self.other: Node | None = None
        self.pad = [0] * 8  # a few more allocated blocks per cycle


def cycles(n: int) -> tuple[list[Node], weakref.ref[Node]]:
    nodes = []
    for _ in range(n):
        a, b = Node(), Node()
        a.other, b.other = b, a
        nodes.append(a)
    return nodes, weakref.ref(nodes[0])


def settle(c: Collector, targets: int) -> None:
    """Ticks of settled targets: the full collection comes once they have been for
    SETTLE_FOR seconds, not before."""
    ticks = math.ceil(SETTLE_FOR / FREEZE_EVERY)
    for _ in range(ticks - 1):
        c.tick(settled=True, targets=targets)
    assert c.full_collections == 0
    c.tick(settled=True, targets=targets)
    assert c.full_collections == 1


@pytest.fixture
def clean_gc() -> Iterator[None]:
    gc.collect()
    yield
    gc.unfreeze()
    gc.collect()


def test_a_large_daemon_freezes_young_objects_and_collects_frozen_cycles_once_grown(
    clean_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(collector_mod, "CHECK_EVERY", 2)  # growth looked at every 2nd tick
    c = Collector(structlog.get_logger())
    c.tick(settled=False, targets=FREEZE_FROM)  # still starting: freeze, no full collection
    assert c.full_collections == 0
    assert gc.get_count()[0] < 100  # what existed went to the permanent generation
    settle(c, FREEZE_FROM)
    # Cycles frozen while alive and dropped afterwards: only a full collection finds them.
    nodes, first = cycles(200_000)
    c.tick(settled=True, targets=FREEZE_FROM)  # first tick after the full one: freeze only
    assert c.full_collections == 1
    del nodes
    assert first() is not None  # frozen garbage, invisible to young collections
    gc.collect(1)
    assert first() is not None
    c.tick(settled=True, targets=FREEZE_FROM)  # blocks grew by far more than a quarter
    assert c.full_collections == 2
    assert first() is None


def test_a_small_daemon_keeps_the_default_schedule(clean_gc: None) -> None:
    c = Collector(structlog.get_logger())
    c.tick(settled=False, targets=FREEZE_FROM - 1)
    assert gc.get_freeze_count() == 0
    settle(c, FREEZE_FROM - 1)  # a full collection, then a freeze
    nodes, first = cycles(1000)
    del nodes
    c.tick(settled=True, targets=FREEZE_FROM - 1)
    assert gc.get_freeze_count() > 0
    gc.collect()  # young cycles are found by the collector as usual
    assert first() is None
    assert c.full_collections == 1
