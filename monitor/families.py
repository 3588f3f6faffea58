"""Metric families and their series: values kept compactly, text made only while scraped.

A series' exposition line is assembled from label text shared with other series (per target,
per family) when a scrape asks for it; nothing of a scrape's text stays behind
(`monitor.registry`). Counters by a reason-like label share one `Group` per target;
histograms are `monitor.histograms`.
"""

from __future__ import annotations

from array import array
from collections.abc import Hashable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .histograms import HistogramSeries, Layout, Native
from .textformat import INF, escape_value, go_float, labels_text

if TYPE_CHECKING:
    from .registry import Registry

T = TypeVar("T")


def each_series(found: Any) -> Any:
    """The series in one member of a family: a list of them, or one series (or group)."""
    return found if isinstance(found, list) else (found,)


def member_text(found: Any) -> str:
    """One member's text."""
    if isinstance(found, list):
        return "".join([s.render() for s in found])
    return str(found.render())


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
            return f"{self.sample_name}{labels_text(pairs)} "
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
