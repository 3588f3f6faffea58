"""Metric families and their series: values kept compactly, text made only while scraped.

A series' exposition line is assembled from label text shared with other series (per target,
per family) when a scrape asks for it; nothing of a scrape's text stays behind
(`monitor.registry`). Counters by a reason-like label share one `Group` per target. A
histogram keeps its classic bucket counts, and, when asked for, sparse exponential buckets
for the native histograms of the protobuf exposition (`Native`).
"""

from __future__ import annotations

import bisect
import itertools
import math
from array import array
from collections.abc import Hashable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from .registry import Registry


INF = math.inf
T = TypeVar("T")


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


def each_series(found: Any) -> Any:
    """The series in one member of a family: a list of them, or one series (or group)."""
    return found if isinstance(found, list) else (found,)


def member_text(found: Any) -> str:
    """One member's text."""
    if isinstance(found, list):
        return "".join([s.render() for s in found])
    return str(found.render())


def escape_value(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels_text(pairs: Iterable[tuple[str, str]]) -> str:
    body = ",".join(f'{k}="{escape_value(v)}"' for k, v in sorted(pairs))
    return f"{{{body}}}" if body else ""


class Family:
    """One metric family: name, help, type, label names, and its series by target.

    A series' exposition line is `head + key + value`: `head` (the name and every label but
    `target`, which sorts last) is shared by all targets, `key` (`target="..."} `) by all
    families of one target. So a series holds no text of its own: a scrape makes its line.
    """

    def __init__(
        self,
        registry: Registry,
        name: str,
        documentation: str,
        kind: str,
        labelnames: tuple[str, ...] = (),
        buckets: tuple[float, ...] = (),
        grouped: bool = False,
        native: bool = False,
    ) -> None:
        self.registry = registry
        # Counters by a reason-like label: a target's series live in one `Group` (see there).
        self.grouped = grouped
        self.name = name
        self.documentation = documentation
        self.kind = kind  # "counter", "gauge" or "histogram"
        self.labelnames = labelnames
        # Histograms: the series' buckets unless they ask for others; native buckets too.
        self.native = native
        # Labels are written sorted: `target` must come last for the shared key to work.
        if "target" in labelnames:
            assert all(n <= "target" for n in labelnames), name
        self._target_at = labelnames.index("target") if "target" in labelnames else -1
        self._others = tuple(i for i, n in enumerate(labelnames) if n != "target")
        if kind == "histogram":
            # `le` sorts before every other label: every bucket line starts with one of these.
            assert all(n > "le" for n in labelnames), "histogram labels must sort after le"
            self.layout = Layout(name, buckets)
        self.sample_name = f"{name}_total" if kind == "counter" else name
        doc = documentation.replace("\\", r"\\").replace("\n", r"\n")
        self.header = (
            f"# HELP {self.sample_name} {doc}\n# TYPE {self.sample_name} {kind}\n".encode()
        )
        # key -> the series of one target (a list when it has several); insertion order is
        # output order, so a target's lines stay together.
        self.members: dict[str, Any] = {}  # Series, HistogramSeries, a list of them, or Group
        # other label values -> head (one copy shared by every target), and back
        self._heads: dict[tuple[str, ...], str] = {}
        self.extra_of: dict[str, tuple[str, ...]] = {}
        self._shared: dict[Hashable, Any] = {}  # see shared(): Group.heads, ByReason heads
        registry.families.append(self)

    def labels(self, *values: str) -> Series:
        """The series with these label values, created (at value 0) on first use."""
        series = self._series(values)
        assert isinstance(series, Series), self.name
        return series

    def _series(self, values: tuple[str, ...]) -> Series | HistogramSeries:
        if self.grouped:
            raise TypeError(f"{self.name}: a grouped family; use item()")
        key, head = self._place(values)
        found = self.members.get(key)
        assert not isinstance(found, Group)
        if found is not None:
            for series in found if isinstance(found, list) else (found,):
                if series.head is head:
                    return cast("Series | HistogramSeries", series)
        created: Series | HistogramSeries
        if self.kind == "histogram":
            created = HistogramSeries(self, head, key, self.layout, self.native)
        else:
            created = Series(self, head, key)
        if found is None:
            self.members[key] = created
        elif isinstance(found, list):
            found.append(created)
        else:
            self.members[key] = [found, created]
        return created

    def item(self, *values: str) -> Item:
        """A handle on the value with these labels in a grouped family (created at 0)."""
        if not self.grouped:
            raise TypeError(f"{self.name}: not a grouped family; use labels()")
        key, head = self._place(values)
        group = self.members.get(key)
        if group is None:
            group = self.members[key] = Group(self, key)
        assert isinstance(group, Group)
        i = group.index_of(head)
        if i is not None:
            return Item(group, i)
        heads = (*group.heads, head)
        group.heads = self.shared(heads, heads)
        group.values.append(0.0)
        return Item(group, len(group.heads) - 1)

    def shared(self, key: Hashable, value: T) -> T:
        """`value`, or the value first stored under `key`: one copy for every target."""
        return cast("T", self._shared.setdefault(key, value))

    def _place(self, values: tuple[str, ...]) -> tuple[str, str]:
        """The (key, head) pair of these label values; see the class docstring."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}")
        at = self._target_at
        key = self.registry.key(values[at]) if at >= 0 else ""
        extra = tuple(values[i] for i in self._others) if at >= 0 else values
        head = self._heads.get(extra)
        if head is None:
            head = self._heads[extra] = self._head(extra)
            self.extra_of[head] = extra
        return key, head

    def labels_of(self, head: str, key: str) -> dict[str, str]:
        """The labels of the series with this head and key."""
        labels = self.other_labels(head)
        if self._target_at >= 0:
            labels["target"] = self.registry.target_of[key]
        return labels

    def other_labels(self, head: str) -> dict[str, str]:
        """The labels a head tells: every one but `target`."""
        extra = self.extra_of[head]
        return {self.labelnames[i]: v for i, v in zip(self._others, extra, strict=True)}

    def _head(self, extra: tuple[str, ...]) -> str:
        pairs = sorted(zip((self.labelnames[i] for i in self._others), extra, strict=True))
        if self._target_at < 0 and self.kind != "histogram":
            return f"{self.sample_name}{_labels_text(pairs)} "
        inner = "".join(f'{k}="{escape_value(v)}",' for k, v in pairs)
        # histograms: the labels after `le`; others: the line up to the target label
        return inner if self.kind == "histogram" else f"{self.sample_name}{{{inner}"

    def histogram(self, *values: str, buckets: tuple[float, ...] | None = None) -> HistogramSeries:
        """`labels()` of a histogram family, typed as such; with `buckets` other than the
        family's, the series has those (a series whose bounds change starts again from 0:
        counts in other buckets cannot be carried over)."""
        series = self._series(values)
        assert isinstance(series, HistogramSeries), self.name
        if buckets is not None and series.layout.bounds[:-1] != buckets:
            layout = self._shared.get(("layout", buckets))
            if layout is None:
                layout = self._shared[("layout", buckets)] = Layout(self.name, buckets)
            series.layout = layout
            series.counts = array("Q", bytes(8 * len(series.layout.bounds)))
            series.sum = 0.0
            if series.native is not None:
                series.native = Native()
        return series

    def series_count(self, native: bool = False) -> tuple[int, dict[str, int]]:
        """The samples this family exposes: (those without a target, by target). A histogram
        is one series in the native exposition (`native` and the family keeps native
        buckets), its buckets, count and sum in the classic one."""
        by_target: dict[str, int] = {}
        other = 0
        for key, found in self.members.items():
            n = 0
            for series in each_series(found):
                if isinstance(series, Group):
                    n += len(series.values)
                elif isinstance(series, HistogramSeries):
                    n += 1 if native and series.native is not None else len(series.counts) + 2
                else:
                    n += 1
            if key:
                by_target[self.registry.target_of[key]] = n
            else:
                other += n
        return other, by_target

    def remove(self, **match: str) -> None:
        """Drop every series whose labels include `match`."""
        keys: Iterable[str] = list(self.members)
        if "target" in match and self._target_at >= 0:
            known = self.registry.known_key(match["target"])
            keys = [] if known is None else [known]
        for key in keys:
            found = self.members.get(key)
            if found is None:
                continue
            if isinstance(found, Group):
                if found.drop(match):
                    del self.members[key]
                continue
            group = found if isinstance(found, list) else [found]
            kept = []
            for series in group:
                labels = self.labels_of(series.head, series.key)
                if not all(labels.get(k) == v for k, v in match.items()):
                    kept.append(series)
            if not kept:
                del self.members[key]
            elif len(kept) < len(group):
                self.members[key] = kept if len(kept) > 1 else kept[0]

    def series(self) -> Iterator[Series | Group]:
        for found in self.members.values():
            if isinstance(found, list):
                yield from found
            else:
                yield found

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        for series in self.series():
            yield from series.samples()


class Series:
    """A counter or gauge value."""

    __slots__ = ("family", "head", "key", "value")

    def __init__(self, family: Family, head: str, key: str) -> None:
        self.family = family
        self.head = head  # shared, and tells the labels other than `target`: see Family
        self.key = key  # shared: the target's label text, or ""
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def set(self, value: float) -> None:
        self.value = float(value)

    def render(self) -> str:
        v = self.value
        if -INF < v < 1e6:  # repr is Go's format there, and cheaper
            return f"{self.head}{self.key}{v!r}\n"
        return f"{self.head}{self.key}{go_float(v)}\n"

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        yield self.family.sample_name, self.family.labels_of(self.head, self.key), self.value


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

    @property
    def count(self) -> int:
        return sum(self.counts)

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
            lines = [f"{h}{tail}{_count_text(n)}\n" for h, n in zip(heads, cumulative)]  # noqa: B905
        labels = f"{{{inner}" if inner else " "
        name = self.family.name
        lines.append(f"{name}_count{labels}{_count_text(total)}\n")
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


class Group:
    """The counters of one target in one family that differ only in a label like `reason`
    or `code`: one object and one array of values, much smaller than a Series each (most of
    them stay 0 for the life of the daemon)."""

    __slots__ = ("family", "heads", "key", "values")

    def __init__(self, family: Family, key: str) -> None:
        self.family = family
        self.key = key
        self.heads: tuple[str, ...] = ()  # shared with every target that has the same labels
        self.values = array("d")

    def index_of(self, head: str) -> int | None:
        """Where the value with this head is (heads are shared strings: found by identity)."""
        for i, h in enumerate(self.heads):
            if h is head:
                return i
        return None

    def render(self) -> str:
        key = self.key
        return "".join(
            [
                f"{h}{key}{v!r}\n" if -INF < v < 1e6 else f"{h}{key}{go_float(v)}\n"
                for h, v in zip(self.heads, self.values)  # noqa: B905
            ]
        )

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        family = self.family
        for head, value in zip(self.heads, self.values, strict=True):
            yield family.sample_name, family.labels_of(head, self.key), value

    def drop(self, match: dict[str, str]) -> bool:
        """Remove the values whose labels include `match`; True when none is left."""
        family = self.family
        kept = [
            (h, v)
            for h, v in zip(self.heads, self.values, strict=True)
            if not all(family.labels_of(h, self.key).get(k) == w for k, w in match.items())
        ]
        heads = tuple(h for h, _ in kept)
        self.heads = family.shared(heads, heads)
        self.values = array("d", [v for _, v in kept])
        return not kept


class Item:
    """A handle on one value of a Group (made when asked for: nothing to keep per value)."""

    __slots__ = ("group", "index")

    def __init__(self, group: Group, index: int) -> None:
        self.group = group
        self.index = index

    @property
    def value(self) -> float:
        return self.group.values[self.index]

    def inc(self, amount: float = 1.0) -> None:
        self.group.values[self.index] += amount

    def set(self, value: float) -> None:
        self.group.values[self.index] = value
