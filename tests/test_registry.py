"""The fast renderer writes exactly what prometheus_client writes for the same samples."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.utils import floatToGoString

from monitor.metrics import Metrics
from monitor.registry import Registry, go_float


@settings(max_examples=500, derandomize=True)
@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**18), 10**18))
def test_go_float_matches_prometheus_client(value: float) -> None:
    """Every float is written as prometheus_client's floatToGoString writes it."""
    assert go_float(float(value)) == floatToGoString(float(value))


def populated(targets: int, seed: int) -> Registry:
    rng = random.Random(seed)
    registry = Registry()
    m = Metrics(registry)
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
            registry.render()  # some chunks cached, some stale at the end
    m.send_lag.observe(0.003)
    m.targets.set(targets)
    m.remove_target("t-3")
    m.remove_probe("t-4", "frame")
    return registry


def test_render_is_byte_identical_to_generate_latest() -> None:
    """After random updates, removals and partial renders, the cached rendering equals
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


def test_sliced_refresh_renders_everything() -> None:
    """A refresh in tiny time slices ends with nothing stale and the same text."""
    registry = populated(50, 9)
    slices = 0
    while not registry.refresh(0.0):
        slices += 1
    assert slices > 1
    assert registry.stale_series() == 0
    reference = CollectorRegistry()
    reference.register(registry)  # type: ignore[arg-type]
    assert registry.render() == generate_latest(reference)


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
        get("wsmon_probe_rtt_seconds_bucket", {"target": "a", "probe": "ping", "le": "0.02"}) == 1
    )
    assert (
        get("wsmon_probe_rtt_seconds_bucket", {"target": "a", "probe": "ping", "le": "0.015"}) == 0
    )
    assert get("wsmon_up", {"target": "zzz"}) is None


def test_reason_counters_share_a_group_and_count_where_they_belong() -> None:
    """Reason-like counters of a target live in one group; a lookup by reason, a reason
    added later and a close code not created up front all count in their own series."""
    registry = Registry()
    m = Metrics(registry)
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


def test_pieces_render_what_changed_after_the_refresh() -> None:
    """Series that change between the refresh and the streaming of the pieces (a probe
    answered meanwhile) are streamed with their new values, in chunks with and without
    targets of several probes."""
    registry = Registry()
    m = Metrics(registry)
    tms = [
        m.for_target(f"t{i}", [("ping", "message")] + ([("frame", "ws-ping")] if i % 50 else []))
        for i in range(300)
    ]
    registry.refresh()
    for tm in tms[::7]:
        tm.up.set(1)
        tm.probes["ping"].rtt.observe(0.004)
    assert registry.stale_series() > 0
    reference = CollectorRegistry()
    reference.register(registry)  # type: ignore[arg-type]
    assert b"".join(registry.pieces(size=4096)) == generate_latest(reference)
