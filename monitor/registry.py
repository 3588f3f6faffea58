"""A compact metric store with a fast Prometheus text renderer.

prometheus_client builds a sample object per series on every scrape. Here a series holds its
value and references to label text shared with other series (per target, per family), and a
scrape writes each line straight from those, a piece at a time, keeping nothing of the text
afterwards: the memory a scrape uses is one piece, whatever the number of series (figures in
docs/performance.md). Counters by a reason-like label share one `Group` per target. The
output is the text format prometheus_client writes for the same samples, byte for byte.
Collectors in prometheus_client's own sense (the standard process and Python families) are
registered alongside and written after wsmon's families."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import CollectorRegistry

from .families import Family, Group, Item, Series, member_text
from .histograms import HistogramSeries
from .textformat import escape_value, go_float

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

    def pieces(self, size: int = 256 * 1024) -> Iterator[bytes]:
        """The exposition text, in pieces of about `size` characters, each made when it is
        asked for: a caller on the event loop yields between pieces, so no piece holds the
        loop for long, and no more than a piece is held at a time. The registered
        collectors' families come last, as `generate_latest` writes them."""
        for family in self.families:
            members: list[Any] = list(family.members.values())  # may change meanwhile
            if not members:
                yield family.header  # prometheus_client writes the header alone too
                continue
            head = family.header
            parts: list[str] = []
            length = 0
            step = 8 if family.kind == "histogram" else 64  # a few KiB of text per chunk
            for start in range(0, len(members), step):
                chunk = members[start : start + step]
                try:
                    text = "".join([m.render() for m in chunk])
                except AttributeError:  # a list: the series of several probes of a target
                    text = "".join([member_text(m) for m in chunk])
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
        """The whole exposition at once."""
        return b"".join(self.pieces())

    def series_count(self, native: bool = False) -> tuple[int, dict[str, int]]:
        """Series exposed now: (those without a target, by target); see `Family.series_count`.
        The collectors' samples count by their `target` label too."""
        other = 0
        by_target: dict[str, int] = {}
        for family in self.families:
            n, per = family.series_count(native)
            other += n
            for target, k in per.items():
                by_target[target] = by_target.get(target, 0) + k
        for metric in self.collectors.collect():
            for sample in metric.samples:
                owner = sample.labels.get("target")
                if owner is None:
                    other += 1
                else:
                    by_target[owner] = by_target.get(owner, 0) + 1
        return other, by_target

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
