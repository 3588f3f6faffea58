"""A compact metric store with a fast, cached Prometheus text renderer.

prometheus_client formats every sample on every scrape (seconds for 10,000 targets, all of it
on the event loop). Here every series caches its text, and an update only marks it stale: a
scrape re-formats what changed since the last one and joins cached text for the rest. A
series holds its value and references to label text shared with other series (per target,
per family), so a target's thirty-odd series cost a few KiB. The output is the text format
prometheus_client writes for the same samples, byte for byte.
"""

from __future__ import annotations

import bisect
import itertools
import math
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
    """One metric family: name, help, type, label names, and its series by target.

    A series' exposition line is `head + key + value`: `head` (the name and every label but
    `target`, which sorts last) is shared by all targets, `key` (`target="..."} `) by all
    families of one target. So a series holds no text of its own until a scrape renders it.
    """

    def __init__(
        self,
        registry: Registry,
        name: str,
        documentation: str,
        kind: str,
        labelnames: tuple[str, ...] = (),
        buckets: tuple[float, ...] = (),
    ) -> None:
        self.registry = registry
        self.name = name
        self.documentation = documentation
        self.kind = kind  # "counter", "gauge" or "histogram"
        self.labelnames = labelnames
        self.buckets = (*buckets, INF) if buckets else ()
        # Labels are written sorted: `target` must come last for the shared key to work.
        if "target" in labelnames:
            assert all(n <= "target" for n in labelnames), name
        self._target_at = labelnames.index("target") if "target" in labelnames else -1
        self._others = tuple(i for i, n in enumerate(labelnames) if n != "target")
        if kind == "histogram":
            # `le` sorts before every other label: every bucket line starts with one of these.
            assert all(n > "le" for n in labelnames), "histogram labels must sort after le"
            self.bucket_heads = [f'{name}_bucket{{le="{go_float(b)}"' for b in self.buckets]
        self.sample_name = f"{name}_total" if kind == "counter" else name
        doc = documentation.replace("\\", r"\\").replace("\n", r"\n")
        self.header = (
            f"# HELP {self.sample_name} {doc}\n# TYPE {self.sample_name} {kind}\n".encode()
        )
        # key -> the series of one target (a list when it has several); insertion order is
        # output order, so a target's lines stay together.
        self.members: dict[str, Series | list[Series]] = {}
        self.stale: set[Series] = set()
        # other label values -> (that tuple, head): one copy shared by every target
        self._heads: dict[tuple[str, ...], tuple[tuple[str, ...], str]] = {}
        registry.families.append(self)

    def labels(self, *values: str) -> Series:
        """The series with these label values, created (at value 0) on first use."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}")
        at = self._target_at
        key = self.registry.key(values[at]) if at >= 0 else ""
        extra = tuple(values[i] for i in self._others) if at >= 0 else values
        found = self.members.get(key)
        if found is not None:
            for series in found if isinstance(found, list) else (found,):
                if series.extra == extra:
                    return series
        shared = self._heads.get(extra)
        if shared is None:
            shared = self._heads[extra] = (extra, self._head(extra))
        created: Series
        if self.kind == "histogram":
            created = HistogramSeries(self, shared[1], key, shared[0])
        else:
            created = Series(self, shared[1], key, shared[0])
        if found is None:
            self.members[key] = created
        elif isinstance(found, list):
            found.append(created)
        else:
            self.members[key] = [found, created]
        self.stale.add(created)
        return created

    def _head(self, extra: tuple[str, ...]) -> str:
        pairs = sorted(zip((self.labelnames[i] for i in self._others), extra, strict=True))
        if self._target_at < 0 and self.kind != "histogram":
            return f"{self.sample_name}{_labels_text(pairs)} "
        inner = "".join(f'{k}="{_escape_value(v)}",' for k, v in pairs)
        # histograms: the labels after `le`; others: the line up to the target label
        return inner if self.kind == "histogram" else f"{self.sample_name}{{{inner}"

    def histogram(self, *values: str) -> HistogramSeries:
        """`labels()` of a histogram family, typed as such."""
        series = self.labels(*values)
        assert isinstance(series, HistogramSeries), self.name
        return series

    def remove(self, **match: str) -> None:
        """Drop every series whose labels include `match`."""
        keys: Iterable[str] = list(self.members)
        if "target" in match and self._target_at >= 0:
            keys = [self.registry.key(match["target"])]
        for key in keys:
            found = self.members.get(key)
            if found is None:
                continue
            group = found if isinstance(found, list) else [found]
            kept = []
            for series in group:
                labels = series.labels()
                if all(labels.get(k) == v for k, v in match.items()):
                    self.stale.discard(series)
                else:
                    kept.append(series)
            if not kept:
                del self.members[key]
            elif len(kept) < len(group):
                self.members[key] = kept if len(kept) > 1 else kept[0]

    def series(self) -> Iterator[Series]:
        for found in self.members.values():
            if isinstance(found, list):
                yield from found
            else:
                yield found

    def texts(self) -> list[str]:
        """The cached text of every series, in output order."""
        texts = []
        for found in self.members.values():
            if isinstance(found, list):
                texts += [s.text for s in found]
            else:
                texts.append(found.text)
        return texts

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        for series in self.series():
            yield from series.samples()


class Series:
    """A counter or gauge value; every change marks it for re-rendering."""

    __slots__ = ("extra", "family", "head", "key", "text", "value")

    def __init__(self, family: Family, head: str, key: str, extra: tuple[str, ...]) -> None:
        self.family = family
        self.head = head  # shared: see Family
        self.key = key  # shared: the target's label text, or ""
        self.extra = extra  # shared: the values of the labels other than `target`
        self.value = 0.0
        self.text = ""  # the rendered lines, as of the latest scrape

    def labels(self) -> dict[str, str]:
        family = self.family
        labels = {family.labelnames[i]: v for i, v in zip(family._others, self.extra)}  # noqa: B905
        if family._target_at >= 0:
            labels["target"] = family.registry.target_of[self.key]
        return labels

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount
        self.family.stale.add(self)

    def set(self, value: float) -> None:
        self.value = float(value)
        self.family.stale.add(self)

    def render(self) -> None:
        v = self.value
        if -INF < v < 1e6:  # repr is Go's format there, and cheaper
            self.text = f"{self.head}{self.key}{v!r}\n"
        else:
            self.text = f"{self.head}{self.key}{go_float(v)}\n"

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        yield self.family.sample_name, self.labels(), self.value


class HistogramSeries(Series):
    """Bucket counts (not cumulative: one increment per observation), sum and count.

    Bucket lines are assembled from the family's shared `le` heads, `head` (the labels
    between `le` and `target`) and the target's key."""

    __slots__ = ("counts", "sum")

    def __init__(self, family: Family, head: str, key: str, extra: tuple[str, ...]) -> None:
        super().__init__(family, head, key, extra)
        self.counts = [0] * len(family.buckets)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = "less or equal").
        self.counts[bisect.bisect_left(self.family.buckets, amount)] += 1
        self.sum += amount
        self.family.stale.add(self)

    def render(self) -> None:
        cumulative = list(itertools.accumulate(self.counts))
        total = cumulative[-1]
        # the labels after `le`, closed: 'probe="p",target="t"} ', or None without labels
        if self.key:
            inner: str | None = self.head + self.key
        else:
            inner = f"{self.head[:-1]}}} " if self.head else None
        tail = f",{inner}" if inner else "} "
        heads = self.family.bucket_heads
        if total < 1_000_000:
            lines = [f"{h}{tail}{n}.0\n" for h, n in zip(heads, cumulative)]  # noqa: B905
        else:
            lines = [f"{h}{tail}{_count_text(n)}\n" for h, n in zip(heads, cumulative)]  # noqa: B905
        labels = f"{{{inner}" if inner else " "
        name = self.family.name
        lines.append(f"{name}_count{labels}{_count_text(total)}\n")
        lines.append(f"{name}_sum{labels}{go_float(self.sum)}\n")
        self.text = "".join(lines)

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        name = self.family.name
        labels = self.labels()
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
        self._keys: dict[str, str] = {}  # target -> 'target="..."} ', shared by its series
        self.target_of: dict[str, str] = {}  # and back

    def key(self, target: str) -> str:
        """The label text that ends every line of this target's series (one shared str)."""
        key = self._keys.get(target)
        if key is None:
            key = self._keys[target] = f'target="{_escape_value(target)}"}} '
            self.target_of[key] = target
        return key

    def forget(self, target: str) -> None:
        """Drop the target's shared key once its series are gone (a later use makes a new one)."""
        key = self._keys.pop(target, None)
        if key is not None:
            del self.target_of[key]

    def stale_chunks(self) -> int:
        """Series changed since they were last rendered."""
        return sum(len(f.stale) for f in self.families)

    def refresh(self, seconds: float | None = None) -> bool:
        """Re-render stale series; with `seconds`, stop after about that long.

        Returns True when nothing is left stale. Callers on the event loop pass a small
        time budget and yield between calls, so a large re-render never holds the loop.
        """
        deadline = math.inf if seconds is None else time.perf_counter() + seconds
        clock = time.perf_counter
        for family in self.families:
            stale = family.stale
            pop = stale.pop
            while stale:
                # Several series between looks at the clock: each takes a microsecond or so.
                for _ in range(min(16, len(stale))):
                    pop().render()
                if clock() >= deadline:
                    return not any(f.stale for f in self.families)
        return True

    def pieces(self, lines: int = 2048) -> Iterator[bytes]:
        """The exposition text from the cached series texts, `lines` of them per piece."""
        for family in self.families:
            texts = family.texts()
            if not texts:
                yield family.header  # prometheus_client writes the header alone too
                continue
            for start in range(0, len(texts), lines):
                part = "".join(texts[start : start + lines]).encode()
                yield family.header + part if start == 0 else part

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
