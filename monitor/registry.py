"""A compact metric store with a fast, cached Prometheus text renderer.

prometheus_client formats every sample on every scrape (seconds for 10,000 targets, all of it
on the event loop). Here each family keeps its series grouped in chunks (one per target, say),
the text of a chunk is cached, and an update only marks its chunk stale: a scrape re-formats
what changed since the last one and joins cached bytes for the rest. The output is the text
format prometheus_client writes for the same samples, byte for byte.
"""

from __future__ import annotations

import bisect
import itertools
import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.metrics_core import Metric

INF = math.inf


def go_float(d: float) -> str:
    """A float as the Prometheus text format writes it (prometheus_client's floatToGoString:
    Go switches to exponent notation sooner than Python's repr). Between -inf and 1e6 (not
    included) it is repr(d); callers on hot paths test that range inline."""
    if d == INF:
        return "+Inf"
    if d == -INF:
        return "-Inf"
    if d != d:  # NaN
        return "NaN"
    s = repr(float(d))
    dot = s.find(".")
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _count_text(n: int) -> str:
    # go_float(float(n)), without its cost in the common case.
    return f"{n}.0" if n < 1_000_000 else go_float(float(n))


def _escape_value(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels_text(pairs: Iterable[tuple[str, str]]) -> str:
    body = ",".join(f'{k}="{_escape_value(v)}"' for k, v in sorted(pairs))
    return f"{{{body}}}" if body else ""


class Family:
    """One metric family: name, help, type, label names, and its series in chunks."""

    def __init__(
        self,
        registry: Registry,
        name: str,
        documentation: str,
        kind: str,
        labelnames: tuple[str, ...] = (),
        buckets: tuple[float, ...] = (),
        chunk_labels: tuple[str, ...] = ("target", "probe"),
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.kind = kind  # "counter", "gauge" or "histogram"
        self.labelnames = labelnames
        self.buckets = (*buckets, INF) if buckets else ()
        if kind == "histogram":
            # Labels are written sorted; `le` first lets every bucket line share one head.
            assert all(n > "le" for n in labelnames), "histogram labels must sort after le"
            self.bucket_heads = [f'{name}_bucket{{le="{go_float(b)}"' for b in self.buckets]
        self.sample_name = f"{name}_total" if kind == "counter" else name
        # Series sharing these label values are rendered (and cached) together.
        self._chunk_index = tuple(labelnames.index(n) for n in chunk_labels if n in labelnames)
        doc = documentation.replace("\\", r"\\").replace("\n", r"\n")
        self.header = (
            f"# HELP {self.sample_name} {doc}\n# TYPE {self.sample_name} {kind}\n".encode()
        )
        self.series: dict[tuple[str, ...], Series] = {}
        self.chunks: dict[str, list[Series]] = {}
        self.text: dict[str, str] = {}  # ASCII, encoded when joined for a scrape
        self.stale: set[str] = set()
        registry.families.append(self)

    def labels(self, *values: str) -> Series:
        """The series with these label values, created (at value 0) on first use."""
        found = self.series.get(values)
        if found is not None:
            return found
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}")
        # Interned: every family of a target shares one key string.
        key = sys.intern("\0".join(values[i] for i in self._chunk_index))
        created: Series
        if self.kind == "histogram":
            created = HistogramSeries(self, key, values)
        else:
            created = Series(self, key, values)
        self.series[values] = created
        if key not in self.chunks:
            self.chunks[key] = []
            self.text[key] = ""  # holds the chunk's place: output follows creation order
        self.chunks[key].append(created)
        self.stale.add(key)
        return created

    def histogram(self, *values: str) -> HistogramSeries:
        """`labels()` of a histogram family, typed as such."""
        series = self.labels(*values)
        assert isinstance(series, HistogramSeries), self.name
        return series

    def remove(self, **match: str) -> None:
        """Drop every series whose labels include `match`."""
        for values, series in list(self.series.items()):
            labels = dict(zip(self.labelnames, values, strict=True))
            if all(labels.get(k) == v for k, v in match.items()):
                del self.series[values]
                chunk = self.chunks[series.key]
                chunk.remove(series)
                if chunk:
                    self.stale.add(series.key)
                else:
                    del self.chunks[series.key]
                    self.text.pop(series.key, None)
                    self.stale.discard(series.key)

    def render_chunk(self, key: str) -> None:
        chunk = self.chunks[key]
        if self.kind == "histogram":
            self.text[key] = "".join([s.render() for s in chunk])
        elif len(chunk) == 1:  # most chunks: one target's one series
            s = chunk[0]
            v = s.value
            self.text[key] = f"{s.line}{v!r}\n" if -INF < v < 1e6 else s.render()
        else:
            # Series.render inlined: this runs for every changed chunk on every scrape.
            self.text[key] = "".join(
                [f"{s.line}{v!r}\n" if -INF < (v := s.value) < 1e6 else s.render() for s in chunk]
            )

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        for chunk in self.chunks.values():
            for series in chunk:
                yield from series.samples()


class Series:
    """A counter or gauge value; every change marks its chunk for re-rendering."""

    __slots__ = ("family", "key", "line", "value", "values")

    def __init__(self, family: Family, key: str, values: tuple[str, ...]) -> None:
        self.family = family
        self.key = key
        self.values = values  # the same tuple that keys family.series: no extra memory
        self.value = 0.0
        self.line = f"{family.sample_name}{_labels_text(self.pairs())} "

    def pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple(zip(self.family.labelnames, self.values, strict=True))

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount
        self.family.stale.add(self.key)

    def set(self, value: float) -> None:
        self.value = float(value)
        self.family.stale.add(self.key)

    def render(self) -> str:
        return f"{self.line}{go_float(self.value)}\n"

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        yield self.family.sample_name, dict(self.pairs()), self.value


class HistogramSeries(Series):
    """Bucket counts (not cumulative: one increment per observation), sum and count.

    To keep memory per target small, bucket lines are assembled from the family's shared
    `le` heads and this series' label text (`line` holds the latter)."""

    __slots__ = ("counts", "sum")

    def __init__(self, family: Family, key: str, values: tuple[str, ...]) -> None:
        self.family = family
        self.key = key
        self.values = values
        self.value = 0.0
        body = _labels_text(self.pairs())[1:-1]  # without the braces
        self.line = f",{body}}} " if body else "} "
        self.counts = [0] * len(family.buckets)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = "less or equal").
        self.counts[bisect.bisect_left(self.family.buckets, amount)] += 1
        self.sum += amount
        self.family.stale.add(self.key)

    def render(self) -> str:
        cumulative = list(itertools.accumulate(self.counts))
        total = cumulative[-1]
        tail = self.line
        heads = self.family.bucket_heads
        if total < 1_000_000:
            lines = [f"{h}{tail}{n}.0\n" for h, n in zip(heads, cumulative)]  # noqa: B905
        else:
            lines = [f"{h}{tail}{_count_text(n)}\n" for h, n in zip(heads, cumulative)]  # noqa: B905
        labels = "" if tail == "} " else f"{{{tail[1:-2]}}}"
        name = self.family.name
        lines.append(f"{name}_count{labels} {_count_text(total)}\n")
        lines.append(f"{name}_sum{labels} {go_float(self.sum)}\n")
        return "".join(lines)

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        name = self.family.name
        labels = dict(self.pairs())
        total = 0
        for bound, count in zip(self.family.buckets, self.counts, strict=True):
            total += count
            yield f"{name}_bucket", {**labels, "le": go_float(bound)}, float(total)
        yield f"{name}_count", labels, float(total)
        yield f"{name}_sum", labels, self.sum


class Registry:
    """The daemon's metrics: families in registration order, rendered incrementally."""

    def __init__(self) -> None:
        self.families: list[Family] = []

    def stale_chunks(self) -> int:
        return sum(len(f.stale) for f in self.families)

    def refresh(self, seconds: float | None = None) -> bool:
        """Re-render stale chunks; with `seconds`, stop after about that long.

        Returns True when nothing is left stale. Callers on the event loop pass a small
        time budget and yield between calls, so a large re-render never holds the loop.
        """
        deadline = math.inf if seconds is None else time.perf_counter() + seconds
        clock = time.perf_counter
        for family in self.families:
            stale = family.stale
            chunks = family.chunks
            render = family.render_chunk
            while stale:
                # A few chunks between looks at the clock: each takes microseconds.
                for _ in range(min(8, len(stale))):
                    key = stale.pop()
                    if key in chunks:
                        render(key)
                if clock() >= deadline:
                    return not any(f.stale for f in self.families)
        return True

    def pieces(self, chunks: int = 256) -> Iterator[bytes]:
        """The exposition text from the cached chunks, `chunks` of them per piece."""
        for family in self.families:
            texts = list(family.text.values())
            if not texts:
                yield family.header  # prometheus_client writes the header alone too
                continue
            for start in range(0, len(texts), chunks):
                part = "".join(texts[start : start + chunks]).encode()
                yield family.header + part if start == 0 else part

    def render(self) -> bytes:
        """The whole exposition at once (stale chunks are re-rendered first)."""
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

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The value of one sample, or None (the prometheus_client registry's API)."""
        wanted = labels or {}
        for family in self.families:
            if not name.startswith(family.name):
                continue
            for sample_name, sample_labels, value in family.samples():
                if sample_name == name and sample_labels == wanted:
                    return value
        return None

    def describe(self) -> list[Any]:
        return []
