"""The fast renderer writes exactly what prometheus_client writes for the same samples."""

from __future__ import annotations

import math
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from monitor.config import MetricsConfig
from monitor.metrics import Metrics
from monitor.registry import Family, Registry, go_float


@settings(max_examples=500, derandomize=True)
@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**18), 10**18))
def test_go_float_matches_prometheus_client(value: float) -> None:
    """Every float is written as prometheus_client's floatToGoString writes it."""
    assert go_float(float(value)) == floatToGoString(float(value))


def populated(targets: int, seed: int) -> Registry:
    rng = random.Random(seed)
    registry = Registry()
    m = Metrics(registry, standard=False)  # compared byte for byte: no CPU time that moves
    handles = []
    for i in range(targets):
        name = f"t-{i}" if i != 7 else 'q"uote\\back\nline'  # escaping, as the format wants
        tm = m.for_target(name, [("ping", "message"), ("frame", "ws-ping")])
        handles.append(tm)
    for _ in range(targets * 20):  # updates in random order, across targets and families
        tm = rng.choice(handles)
        probe = tm.probes[rng.choice(["ping", "frame"])]
        what = rng.randrange(6)
        if what == 0:
            probe.rtt.observe(rng.choice([0.0, 0.001, 0.02, 0.5, 3.0, 1e6, math.inf]))
        elif what == 1:
            probe.sent.inc()
        elif what == 2:
            tm.disconnect(rng.choice([1000, 1006, 4001, 1011]), rng.choice(["peer", "network"]))
        elif what == 3:
            tm.set_time_offset(rng.uniform(-5, 5))
        elif what == 4:
            probe.last_success.set(1.7e9 + rng.random())
        else:
            tm.connect_failures["tls"].inc(rng.randrange(1, 3))
        if rng.random() < 0.05:
            registry.render()  # a scrape between updates leaves nothing behind
    m.send_lag.observe(0.003)
    m.targets.set(targets)
    m.remove_target("t-3")
    m.remove_probe("t-4", "frame")
    return registry


def test_render_is_byte_identical_to_generate_latest() -> None:
    """After random updates, removals and partial renders, the rendering equals
    prometheus_client's `generate_latest` over the same samples, byte for byte."""
    for seed in range(5):
        registry = populated(25, seed)
        ours = registry.render()
        reference = CollectorRegistry()
        reference.register(registry)  # type: ignore[arg-type]
        assert ours == generate_latest(reference)
        assert b't-3"' not in ours
        assert registry.known_key("t-3") is None  # a removed target leaves nothing behind
        assert b'probe="frame",target="t-4"' not in ours


def test_pieces_are_the_whole_text_in_bounded_pieces() -> None:
    """Streamed in small pieces, the exposition is the same text, and no piece is much
    longer than asked for (a chunk of series past the size): a scrape holds one piece."""
    registry = populated(50, 9)
    pieces = list(registry.pieces(size=4096))
    assert len(pieces) > 10
    assert b"".join(pieces) == registry.render()
    assert max(len(p) for p in pieces) < 4096 + 32 * 1024


def test_sample_lookup() -> None:
    """get_sample_value finds counters by their _total name and histogram parts."""
    registry = Registry()
    m = Metrics(registry)
    tm = m.for_target("a", [("ping", "message")])
    tm.probes["ping"].rtt.observe(0.02)
    tm.probes["ping"].sent.inc()
    get = registry.get_sample_value
    assert get("wsmon_probes_sent_total", {"target": "a", "probe": "ping"}) == 1
    assert get("wsmon_probe_rtt_seconds_count", {"target": "a", "probe": "ping"}) == 1
    assert (
        get("wsmon_probe_rtt_seconds_bucket", {"target": "a", "probe": "ping", "le": "0.025"}) == 1
    )
    assert (
        get("wsmon_probe_rtt_seconds_bucket", {"target": "a", "probe": "ping", "le": "0.01"}) == 0
    )
    assert get("wsmon_up", {"target": "zzz"}) is None


def test_reason_counters_share_a_group_and_count_where_they_belong() -> None:
    """Reason-like counters of a target live in one group; a lookup by reason, a reason
    added later and a close code not created up front all count in their own series."""
    registry = Registry()
    m = Metrics(registry, options=MetricsConfig(precreate="all"))
    a = m.for_target("a", [("ping", "message")])
    b = m.for_target("b", [("ping", "message")])
    a.unmatched["missing_id"].inc()
    a.unmatched["missing_id"].inc()
    a.unmatched["brand-new"].inc(3)  # not created up front: added to a's group
    b.unmatched["binary"].inc()
    a.disconnect(4001, "peer")
    a.probes["ping"].errors["api_error"].inc()
    get = registry.get_sample_value
    assert get("wsmon_unmatched_messages_total", {"target": "a", "reason": "missing_id"}) == 2
    assert get("wsmon_unmatched_messages_total", {"target": "a", "reason": "brand-new"}) == 3
    assert get("wsmon_unmatched_messages_total", {"target": "b", "reason": "brand-new"}) is None
    assert get("wsmon_unmatched_messages_total", {"target": "b", "reason": "binary"}) == 1
    assert get("wsmon_unmatched_messages_total", {"target": "a", "reason": "binary"}) == 0
    labels = {"target": "a", "code": "4001", "origin": "peer"}
    assert get("wsmon_disconnects_total", labels) == 1
    errors = {"target": "a", "probe": "ping", "reason": "api_error"}
    assert get("wsmon_probe_errors_total", errors) == 1
    # the two targets' groups share one tuple of label heads while their labels agree
    assert a.connect_failures.group.heads is b.connect_failures.group.heads
    assert a.unmatched.group.heads is not b.unmatched.group.heads


def test_pieces_carry_what_changed_while_streaming() -> None:
    """Series that change while the pieces are being streamed (a probe answered between
    two pieces) are written with their values at the time their piece is made, in chunks
    with and without targets of several probes."""
    registry = Registry()
    m = Metrics(registry, standard=False)
    tms = [
        m.for_target(f"t{i}", [("ping", "message")] + ([("frame", "ws-ping")] if i % 50 else []))
        for i in range(300)
    ]
    before = registry.render()
    pieces = registry.pieces(size=4096)
    first = next(pieces)
    for tm in tms[::7]:
        tm.up.set(1)
        tm.probes["ping"].rtt.observe(0.004)
    rest = b"".join(pieces)
    assert b'wsmon_up{target="t294"} 1.0' in rest  # its piece was made after the change
    assert before.startswith(first)
    reference = CollectorRegistry()
    reference.register(registry)  # type: ignore[arg-type]
    assert generate_latest(reference).endswith(rest)


# --- the registry counts what prometheus_client counts ---------------------------------------

# (name, kind, label names, grouped): plain and grouped families, with and without `target`.
SPECS = (
    ("c_plain", "counter", ("target", "probe"), False),
    ("c_reason", "counter", ("target", "probe", "reason"), True),
    ("c_code", "counter", ("code", "origin", "target"), True),
    ("c_bare", "counter", (), False),
    ("g_plain", "gauge", ("target",), False),
    ("g_reason", "gauge", ("target", "reason"), True),
    ("g_kind", "gauge", ("kind", "zone"), False),
    ("g_bare", "gauge", (), False),
    ("h_plain", "histogram", ("target", "probe"), False),
    ("h_bare", "histogram", (), False),
)
VALUES = {
    "target": ("a", "b", 'q"u\\o\nte'),  # escaping, as the format wants
    "probe": ("p", "q"),
    "reason": ("x", "y", "z"),
    "code": ("1000", "1006"),
    "origin": ("peer", "network"),
    "kind": ("k1", 'k"2'),
    "zone": ("z",),
}
# Which value of each label an operation uses (index modulo the label's choices): a few
# combinations, so that operations meet on one series; the first and last share a target
# and differ in probe (a target with a list of series).
PICKS = ((0, 0, 0), (1, 1, 1), (2, 0, 2), (0, 1, 2))
picks = st.sampled_from(PICKS)
amounts = st.sampled_from([0.0, 1.0, 0.5, 999_999.5, 1e6, 2.5e6, 1e12]) | st.floats(
    0, 1e15, allow_nan=False
)
gauge_values = st.sampled_from([0.0, -1.0, -1e6, -2.5e7, 1e6, math.inf, -math.inf]) | st.floats(
    allow_nan=False, allow_infinity=False
)


Op = tuple[str, str, tuple[int, ...], Any]
Program = tuple[tuple[float, ...], bool, list[tuple[list[Op], int]]]


@st.composite
def programs(draw: st.DrawFn) -> Program:
    """Histogram bounds; whether every family starts with a series per label pick, scraped
    (groups of several values to drop from); rounds of operations on families,
    each round followed by a scrape of a random kind (see `Twins.apply`)."""
    bounds = st.floats(1e-4, 1e7, allow_nan=False) | st.sampled_from([0.005, 0.25, 1.0, 2.5e6])
    buckets = tuple(sorted(draw(st.lists(bounds, min_size=1, max_size=5, unique=True))))
    # No NaN: wsmon counts it in the lowest bucket, prometheus_client in none (the daemon
    # observes differences of a monotonic clock only).
    observations = (
        st.sampled_from(buckets)  # on a bound: the `le` bucket counts it
        | st.sampled_from([0.0, -1.0, 1e6, 3e6, math.inf])
        | st.floats(-1e3, 1e9, allow_nan=False)
    )
    counters = [n for n, k, _, _ in SPECS if k == "counter"]
    gauges = [n for n, k, _, _ in SPECS if k == "gauge"]
    labelled = [n for n, _, labels, _ in SPECS if labels]
    inc = st.tuples(st.just("inc"), st.sampled_from(counters), picks, amounts)
    gauge = st.tuples(st.sampled_from(["set", "inc"]), st.sampled_from(gauges), picks, gauge_values)
    observe = st.tuples(
        st.just("observe"), st.sampled_from(["h_plain", "h_bare"]), picks, observations
    )
    remove = st.tuples(st.just("remove"), st.sampled_from(labelled), picks, st.integers(0, 2))
    forget = st.tuples(st.just("forget"), st.just(""), picks, st.just(0))
    # Updates most often, removals now and then, a whole target rarely (it wipes the rest);
    # weighted by repetition (one_of would drop the repeats).
    weighted = [inc, inc, inc, gauge, gauge, observe, observe, remove, remove, forget]
    op = st.sampled_from(weighted).flatmap(lambda strategy: strategy)
    rounds = st.lists(
        st.tuples(st.lists(op, min_size=1, max_size=8), st.integers(0, 2)), max_size=8
    )
    return buckets, draw(st.booleans()), draw(rounds)


class Twins:
    """The same families on wsmon's Registry and on a fresh prometheus_client registry."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.ours = Registry()
        self.theirs = CollectorRegistry()
        self.families: dict[str, Family] = {}
        self.metrics: dict[str, Any] = {}
        self.labelnames: dict[str, tuple[str, ...]] = {}
        self.created: dict[str, set[tuple[str, ...]]] = {}  # prometheus_client's children
        kinds = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
        for name, kind, labels, grouped in SPECS:
            doc = f"Help of {name}, with a back\\slash and a\nnewline."
            hist = {"buckets": buckets} if kind == "histogram" else {}
            family = Family(self.ours, name, doc, kind, labels, grouped=grouped, **hist)
            self.metrics[name] = kinds[kind](name, doc, labels, registry=self.theirs, **hist)
            self.families[name] = family
            self.labelnames[name] = labels
            self.created[name] = set()
            if not labels:  # prometheus_client has the series of a family without labels
                family.histogram() if kind == "histogram" else family.labels()

    def values(self, name: str, pick: tuple[int, ...]) -> tuple[str, ...]:
        labels = self.labelnames[name]
        return tuple(VALUES[n][i % len(VALUES[n])] for n, i in zip(labels, pick))  # noqa: B905

    def handles(self, name: str, pick: tuple[int, ...]) -> tuple[Any, Any]:
        labels = self.labelnames[name]
        values = self.values(name, pick)
        family = self.families[name]
        if family.kind == "histogram":
            ours: Any = family.histogram(*values)
        elif family.grouped:
            ours = family.item(*values)
        else:
            ours = family.labels(*values)
        if not labels:
            return ours, self.metrics[name]
        self.created[name].add(values)
        return ours, self.metrics[name].labels(*values)

    def remove(self, name: str, match: dict[str, str]) -> None:
        self.families[name].remove(**match)
        labels = self.labelnames[name]
        for values in list(self.created[name]):
            if all(dict(zip(labels, values, strict=True))[k] == v for k, v in match.items()):
                self.metrics[name].remove(*values)
                self.created[name].discard(values)

    def apply(self, op: Op) -> bytes | None:
        """Do one operation on both; a scrape returns wsmon's exposition."""
        what, name, pick, arg = op
        if what in ("inc", "set", "observe"):
            ours, theirs = self.handles(name, pick)
            if what == "observe":
                ours.observe(arg)
                theirs.observe(arg)
            elif what == "inc" and not math.isfinite(arg):  # a gauge: +inf - inf is NaN
                ours.set(arg)
                theirs.set(arg)
            else:
                getattr(ours, what)(arg)
                getattr(theirs, what)(arg)
        elif what == "remove":  # by target (or first label), with probe, or by another label
            labels = self.labelnames[name]
            first = "target" if "target" in labels else labels[0]
            others = [n for n in labels if n != first]
            chosen = {0: [first], 1: [first, *others[:1]], 2: others[-1:] or [first]}[arg]
            values = dict(zip(labels, self.values(name, pick), strict=True))
            self.remove(name, {n: values[n] for n in chosen})
        elif what == "forget":  # a target removed by a reload: every series, then its key
            target = VALUES["target"][pick[0] % 3]
            for family_name, labels in self.labelnames.items():
                if "target" in labels:
                    self.remove(family_name, {"target": target})
            self.ours.forget(target)
        elif arg == 0:
            return self.ours.render()
        elif arg == 1:  # streamed in small pieces
            return b"".join(self.ours.pieces(size=200))
        return None


def parsed(text: bytes) -> dict[tuple[str, str, str], dict[Any, Any]]:
    """Families by (name, type, help), each with its samples by (name, labels); `_created`
    samples and families (prometheus_client's, not wsmon's) left out."""
    out: dict[tuple[str, str, str], dict[Any, Any]] = {}
    for family in text_string_to_metric_families(text.decode()):
        if family.name.endswith("_created"):  # of a family without labels
            continue
        key = (family.name, family.type, family.documentation)
        assert key not in out, f"{family.name}: HELP and TYPE twice"
        samples: dict[Any, Any] = {}
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            sample = (s.name, tuple(sorted(s.labels.items())))
            assert sample not in samples, f"{sample} twice"
            samples[sample] = "NaN" if math.isnan(s.value) else s.value
        out[key] = samples
    return out


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(programs())
def test_registry_counts_what_prometheus_client_counts(program: Program) -> None:
    """The same random increments, sets, observations (on bucket bounds, huge, negative),
    removals and scrapes applied to prometheus_client's Counter / Gauge / Histogram and to
    wsmon's families (plain and grouped) leave the same samples with the same values in
    both expositions, at every scrape."""
    buckets, populated, rounds = program
    twins = Twins(buckets)
    if populated:
        for name in twins.families:
            for pick in PICKS:
                twins.handles(name, pick)
        twins.apply(("scrape", "", (0, 0, 0), 0))
    for ops, scrape in [*rounds, ([], 0)]:
        for op in ops:
            twins.apply(op)
        ours = twins.apply(("scrape", "", (0, 0, 0), scrape))
        if ours is not None:
            assert parsed(ours) == parsed(generate_latest(twins.theirs))
