"""A compact metric store with a fast, cached Prometheus text renderer.

prometheus_client formats every sample on every scrape, all of it on the event loop. Here
every series caches its text, and an update only empties that cache: a scrape re-formats
what changed since the last one (in short slices, see `Registry.refresh`) and joins cached
text for the rest. A series holds its value and references to label text shared with other
series (per target, per family); counters by a reason-like label share one `Group` per
target, so a target's series cost little before the first scrape and the size of their text
after it (figures in docs/performance.md). The output is the text format prometheus_client
writes for the same samples, byte for byte. Collectors in prometheus_client's own sense
(the standard process and Python families) are registered alongside and written after
wsmon's families."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import CollectorRegistry

from .families import (
    Family,
    Group,
    HistogramSeries,
    Item,
    Series,
    each_series,
    escape_value,
    go_float,
    member_text,
)

__all__ = ["Family", "Group", "HistogramSeries", "Item", "Registry", "Series", "go_float"]


class Registry:
    """The daemon's metrics: families in registration order, rendered incrementally, then
    the families of the prometheus_client collectors registered on `collectors`."""

    def __init__(self) -> None:
        self.families: list[Family] = []
        # prometheus_client collectors (register them here, never on the library's global
        # registry): collected on every scrape, written after the families, and included in
        # `collect` and `get_sample_value`. Their names are checked against each other's.
        self.collectors = CollectorRegistry(auto_describe=True)
        self._keys: dict[str, str] = {}  # target -> 'target="..."} ', shared by its series
        self.target_of: dict[str, str] = {}  # and back
        self._scan: Iterator[None] | None = None  # a refresh in progress

    def key(self, target: str) -> str:
        """The label text that ends every line of this target's series (one shared str)."""
        key = self._keys.get(target)
        if key is None:
            key = self._keys[target] = f'target="{escape_value(target)}"}} '
            self.target_of[key] = target
        return key

    def known_key(self, target: str) -> str | None:
        """`key(target)` if the target has one, without making it."""
        return self._keys.get(target)

    def forget(self, target: str) -> None:
        """Drop the target's shared key once its series are gone (a later use makes a new one)."""
        key = self._keys.pop(target, None)
        if key is not None:
            del self.target_of[key]

    def stale_series(self) -> int:
        """Series changed since they were last rendered."""
        return sum(not s.text for f in self.families for s in f.series())

    def refresh(self, seconds: float | None = None) -> bool:
        """Re-render stale series; with `seconds`, stop after about that long.

        Returns True when a pass over every series has finished. Callers on the event loop
        pass a small time budget and yield between calls, so a large re-render never holds
        the loop; the next call goes on where the previous one stopped.
        """
        deadline = math.inf if seconds is None else time.perf_counter() + seconds
        clock = time.perf_counter
        if self._scan is None:
            self._scan = self._render_stale()
        for _ in self._scan:
            if clock() >= deadline:
                return False
        self._scan = None
        return True

    def _render_stale(self) -> Iterator[None]:
        """Render every series whose text is empty, pausing (yielding) every few targets.

        A scan, not a set of stale series: a set costs memory per series (and never
        shrinks), while a look at every series is cheap when done a chunk of members per
        comprehension, falling back to a member by member look where a chunk holds a list."""
        for family in self.families:
            # changes between pauses go unseen; Any: lists fail the fast path, on purpose
            members: list[Any] = list(family.members.values())
            for start in range(0, len(members), 32):
                chunk = members[start : start + 32]
                try:
                    stale = [m for m in chunk if not m.text]
                except AttributeError:  # a list: the series of several probes of a target
                    stale = [s for found in chunk for s in each_series(found) if not s.text]
                for s in stale:
                    s.render()
                yield

    def pieces(self, size: int = 256 * 1024) -> Iterator[bytes]:
        """The exposition text, in pieces of about `size` characters: a caller on the event
        loop yields between pieces, so no piece holds the loop for long. A series that
        `refresh` has not rendered (created since) is rendered here. The registered
        collectors' families come last, as `generate_latest` writes them."""
        for family in self.families:
            members: list[Any] = list(family.members.values())  # may change meanwhile
            if not members:
                yield family.header  # prometheus_client writes the header alone too
                continue
            head = family.header
            parts: list[str] = []
            length = 0
            for start in range(0, len(members), 64):
                chunk = members[start : start + 64]
                try:
                    texts = [m.text for m in chunk]
                except AttributeError:  # a list: the series of several probes of a target
                    texts = [member_text(m) for m in chunk]
                else:
                    if "" in texts:  # changed since `refresh`
                        texts = [member_text(m) for m in chunk]
                text = "".join(texts)
                parts.append(text)
                length += len(text)
                if length >= size:
                    yield head + "".join(parts).encode()
                    head, parts, length = b"", [], 0
            if parts:
                yield head + "".join(parts).encode()
        extra = generate_latest(self.collectors)  # a few small families: one piece
        if extra:
            yield extra

    def render(self) -> bytes:
        """The whole exposition at once (stale series are re-rendered first)."""
        self.refresh()
        return b"".join(self.pieces())

    # --- prometheus_client compatibility ---------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """The same samples as prometheus_client Metric families (a Collector), so that
        `generate_latest` can render them too: the baseline and the byte-for-byte check."""
        for family in self.families:
            metric = Metric(family.name, family.documentation, family.kind)
            for name, labels, value in family.samples():
                metric.add_sample(name, labels, value)
            yield metric
        yield from self.collectors.collect()

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The value of one sample, or None (the prometheus_client registry's API)."""
        wanted = labels or {}
        for family in self.families:
            if not name.startswith(family.name):
                continue
            for sample_name, sample_labels, value in family.samples():
                if sample_name == name and sample_labels == wanted:
                    return value
        return self.collectors.get_sample_value(name, wanted)

    def describe(self) -> list[Any]:
        return []
