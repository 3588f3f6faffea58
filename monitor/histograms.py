"""Histogram series: classic bucket counts, and the sparse exponential buckets of a native
histogram (the protobuf exposition's) when asked for."""

from __future__ import annotations

import bisect
import itertools
import math
from array import array
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .textformat import INF, count_text, go_float

if TYPE_CHECKING:
    from .families import Family


class Layout:
    """The classic buckets of a histogram: upper bounds (the last +Inf) and the start of
    each bucket's line, shared by every series with these bounds."""

    __slots__ = ("bounds", "heads")

    def __init__(self, name: str, buckets: tuple[float, ...]) -> None:
        self.bounds = (*buckets, INF)
        self.heads = [f'{name}_bucket{{le="{go_float(b)}"' for b in self.bounds]


# Native histograms: bucket i of schema s holds values in (2**((i-1)/2**s), 2**(i/2**s)].
# Schema 3 (8 buckets per doubling, each about 9 % wide) is what Prometheus's own clients use
# by default; a series spread over more than NATIVE_MAX_BUCKETS halves its resolution.
NATIVE_SCHEMA = 3
NATIVE_MAX_BUCKETS = 160
NATIVE_ZERO_THRESHOLD = 2.0**-128  # values this small (or 0) go to the zero bucket


# The mantissas at which each schema's buckets end within one doubling: Prometheus's own
# table (client_golang's nativeHistogramBounds; the server computes bucket bounds from the
# same), so that a value on a bound lands in the bucket Prometheus says it does.
_NATIVE_BOUNDS = {
    0: [0.5],
    1: [0.5, 0.7071067811865475],
    2: [0.5, 0.5946035575013605, 0.7071067811865475, 0.8408964152537144],
    3: [0.5, 0.5452538663326288, 0.5946035575013605, 0.6484197773255048,
        0.7071067811865475, 0.7711054127039704, 0.8408964152537144, 0.9170040432046711],
}  # fmt: skip


def native_index(value: float, schema: int) -> int:
    """The native bucket of a positive value (as Prometheus's Go client computes it: from
    the exact mantissa and exponent, so bounds fall where they belong)."""
    frac, exp = math.frexp(value)
    if schema > 0:
        bounds = _NATIVE_BOUNDS[schema]
        return bisect.bisect_left(bounds, frac) + (exp - 1) * len(bounds)
    key = exp - 1 if frac == 0.5 else exp
    offset = (1 << -schema) - 1
    return (key + offset) >> -schema


class Native:
    """Sparse exponential buckets of one histogram: the counts of a contiguous run of bucket
    indexes (`first` is the first), at `schema`; most RTTs fall in a few doublings, so the
    run stays short."""

    __slots__ = ("counts", "first", "schema", "zero")

    def __init__(self) -> None:
        self.schema = NATIVE_SCHEMA
        self.first = 0
        self.counts = array("Q")
        self.zero = 0

    def observe(self, value: float) -> None:
        if value <= NATIVE_ZERO_THRESHOLD:  # RTTs and durations are never negative
            self.zero += 1
            return
        i = native_index(value, self.schema)
        counts = self.counts
        if not counts:
            self.first = i
            counts.append(1)
            return
        at = i - self.first
        if 0 <= at < len(counts):
            counts[at] += 1
            return
        if at < 0:
            self.counts = array("Q", bytes(8 * -at)) + counts
            self.first = i
            at = 0
        else:
            counts.extend([0] * (at - len(counts) + 1))
        self.counts[at] += 1
        while len(self.counts) > NATIVE_MAX_BUCKETS and self.schema > -4:
            self._halve()

    def _halve(self) -> None:
        """One schema down: bucket i becomes bucket ceil(i / 2), every two merge into one."""
        merged: dict[int, int] = {}
        for at, n in enumerate(self.counts):
            if n:
                j = (self.first + at + 1) // 2
                merged[j] = merged.get(j, 0) + n
        self.schema -= 1
        if not merged:
            self.counts = array("Q")
            return
        lo, hi = min(merged), max(merged)
        self.first = lo
        self.counts = array("Q", [merged.get(j, 0) for j in range(lo, hi + 1)])

    def spans(self) -> tuple[list[tuple[int, int]], list[int]]:
        """The `positive_span`s (offset, length) and the delta-coded counts of the buckets
        they cover, as the protobuf exposition wants them: the first offset is the first
        bucket's index, later ones the empty buckets since the span before. A gap of more
        than two empty buckets starts a new span; shorter ones are carried as zeros."""
        spans: list[tuple[int, int]] = []
        run: list[int] = []
        last = 0  # index of the last bucket covered so far
        for at, n in enumerate(self.counts):
            if not n:
                continue
            i = self.first + at
            if spans and i - last - 1 <= 2:
                run.extend([0] * (i - last - 1))
                offset, length = spans[-1]
                spans[-1] = (offset, length + i - last)
            else:
                spans.append((i if not spans else i - last - 1, 1))
            run.append(n)
            last = i
        deltas = [b - a for a, b in zip([0, *run], run)]  # noqa: B905
        return spans, deltas


class HistogramSeries:
    """Bucket counts (not cumulative: one increment per observation), sum and count; with
    `native`, sparse exponential buckets too.

    Bucket lines are assembled from the layout's shared `le` heads, `head` (the labels
    between `le` and `target`) and the target's key."""

    __slots__ = ("counts", "family", "head", "key", "layout", "native", "sum")

    def __init__(
        self, family: Family, head: str, key: str, layout: Layout, native: bool = False
    ) -> None:
        self.family = family
        self.head = head
        self.key = key
        self.layout = layout
        self.counts = array("Q", bytes(8 * len(layout.bounds)))  # no int object per count
        self.sum = 0.0
        self.native = Native() if native else None

    def observe(self, amount: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = "less or equal").
        self.counts[bisect.bisect_left(self.layout.bounds, amount)] += 1
        self.sum += amount
        if self.native is not None:
            self.native.observe(amount)

    def render(self) -> str:
        cumulative = list(itertools.accumulate(self.counts))
        total = cumulative[-1]
        # the labels after `le`, closed: 'probe="p",target="t"} ', or None without labels
        if self.key:
            inner: str | None = self.head + self.key
        else:
            inner = f"{self.head[:-1]}}} " if self.head else None
        tail = f",{inner}" if inner else "} "
        heads = self.layout.heads
        if total < 1_000_000:
            lines = [f"{h}{tail}{n}.0\n" for h, n in zip(heads, cumulative)]  # noqa: B905
        else:
            lines = [f"{h}{tail}{count_text(n)}\n" for h, n in zip(heads, cumulative)]  # noqa: B905
        labels = f"{{{inner}" if inner else " "
        name = self.family.name
        lines.append(f"{name}_count{labels}{count_text(total)}\n")
        total_sum = self.sum
        sum_text = repr(total_sum) if -INF < total_sum < 1e6 else go_float(total_sum)
        lines.append(f"{name}_sum{labels}{sum_text}\n")
        return "".join(lines)

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        name = self.family.name
        labels = self.family.labels_of(self.head, self.key)
        total = 0
        for bound, count in zip(self.layout.bounds, self.counts, strict=True):
            total += count
            yield f"{name}_bucket", {**labels, "le": go_float(bound)}, float(total)
        yield f"{name}_count", labels, float(total)
        yield f"{name}_sum", labels, self.sum
