"""Native histograms: the buckets they count in, and what the protobuf exposition says."""

from __future__ import annotations

import io
import math
from typing import Any

from google.protobuf import proto
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor import exposition, protoexpo
from monitor.config import MetricsConfig
from monitor.histograms import NATIVE_MAX_BUCKETS, Native, native_index
from monitor.metrics import Metrics
from monitor.metrics_pb2 import MetricFamily
from monitor.registry import Registry

positive = st.floats(min_value=1e-12, max_value=1e12, allow_nan=False, allow_infinity=False)


@settings(max_examples=500, derandomize=True)
@given(positive, st.integers(-4, 3))
def test_a_value_falls_in_the_bucket_whose_bounds_hold_it(value: float, schema: int) -> None:
    """Bucket i of schema s holds (2**((i-1)/2**s), 2**(i/2**s)]: upper bound included."""
    i = native_index(value, schema)
    scale = 2.0**schema
    upper = 2.0 ** (i / scale)
    lower = 2.0 ** ((i - 1) / scale)
    assert lower * (1 - 1e-12) < value <= upper * (1 + 1e-12)


def test_powers_of_two_are_upper_bounds() -> None:
    """2**k closes bucket k * 2**s (schema >= 0) exactly, as Prometheus's Go client has it."""
    for schema in range(4):
        for k in range(-20, 21):
            assert native_index(2.0**k, schema) == k * 2**schema
    assert native_index(4.0, -1) == 1  # (1, 4]
    assert native_index(4.000001, -1) == 2
    # On Prometheus's own bound for sqrt(2) (a float just below it), and the next float up
    assert native_index(2 * 0.7071067811865475, 3) == 4
    assert native_index(2 * 0.7071067811865476, 3) == 5


def decode(native: Native) -> dict[int, int]:
    """Bucket index -> count, read back from the spans and deltas."""
    spans, deltas = native.spans()
    out: dict[int, int] = {}
    counts = iter(deltas)
    count = 0
    index = 0
    for n, (offset, length) in enumerate(spans):
        index = offset if n == 0 else index + offset
        for _ in range(length):
            count += next(counts)
            if count:
                out[index] = count
            index += 1
    assert next(counts, None) is None
    return out


@settings(max_examples=300, derandomize=True)
@given(st.lists(positive | st.just(0.0), max_size=300))
def test_every_observation_is_counted_once_in_its_bucket(values: list[float]) -> None:
    """Whatever the spread (a wide one lowers the resolution), every value is counted once,
    in the bucket of the final schema that holds it, and the spans say the same."""
    native = Native()
    for v in values:
        native.observe(v)
    assert len(native.counts) <= NATIVE_MAX_BUCKETS
    expected: dict[int, int] = {}
    for v in values:
        if v > 0:
            i = native_index(v, native.schema)
            expected[i] = expected.get(i, 0) + 1
    assert native.zero == values.count(0.0)
    assert decode(native) == expected


def families(data: bytes) -> dict[str, Any]:
    stream = io.BytesIO(data)
    out = {}
    while stream.tell() < len(data):
        family = proto.parse_length_prefixed(MetricFamily, stream)
        assert family is not None
        out[family.name] = family
    return out


def observed(histograms: str) -> Registry:
    registry = Registry()
    m = Metrics(registry, standard=False, options=MetricsConfig(histograms=histograms))
    tm = m.for_target("a", [("ping", "message"), ("frame", "ws-ping", (0.1, 1.0))])
    for v in (0.0, 0.003, 0.0031, 0.2, 0.2, 7.0):
        tm.probes["ping"].rtt.observe(v)
        tm.probes["frame"].rtt.observe(v)
    return registry


def test_text_exposition_is_the_same_whatever_the_histograms() -> None:
    """Native buckets change nothing in the text format: classic, native and both write the
    same bytes after the same observations."""
    texts = {observed(h).render() for h in ("classic", "native", "both")}
    assert len(texts) == 1


def test_protobuf_carries_the_buckets_asked_for() -> None:
    """`native`: schema, zero bucket and spans, no classic buckets; `classic`: the classic
    buckets only; `both`: both. Counts and sums agree with the text format."""
    for histograms in ("classic", "native", "both"):
        registry = observed(histograms)
        encoder = protoexpo.Encoder(
            registry, native=histograms != "classic", classic=histograms != "native"
        )
        fam = families(b"".join(encoder.pieces()))["wsmon_probe_rtt_seconds"]
        by_probe = {{p.name: p.value for p in m.label}["probe"]: m.histogram for m in fam.metric}
        for probe, h in by_probe.items():
            assert h.sample_count == 6
            assert math.isclose(h.sample_sum, 7.4061)
            if histograms == "classic":
                assert not h.positive_span
                assert h.schema == 0
            else:
                assert h.schema == 3
                assert h.zero_count == 1
                assert sum(s.length for s in h.positive_span) >= 4
            if histograms == "native":
                assert not h.bucket
            else:
                bounds = [b.upper_bound for b in h.bucket]
                assert bounds == (
                    [0.1, 1.0] if probe == "frame" else list(MetricsConfig().rtt_buckets)
                )
                assert h.bucket[-1].cumulative_count == 5  # 7.0 is above the last bound


def test_accept_header_negotiation() -> None:
    """Protobuf only when asked for above text, as Prometheus asks with native histograms."""
    prom = (
        "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
        "encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
    )
    assert exposition.wants_protobuf(prom)
    assert not exposition.wants_protobuf("text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    assert not exposition.wants_protobuf("")
    assert not exposition.wants_protobuf("application/vnd.google.protobuf;q=0.9")  # no proto=
    assert not exposition.wants_protobuf(
        "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
        "encoding=delimited;q=0.2,text/plain;q=0.9"
    )
    assert not exposition.wants_protobuf("application/vnd.google.protobuf;q=oops")


def test_protobuf_families_built_in_chunks_survive_a_reload_meanwhile() -> None:
    """A family of hundreds of targets is built over many chunks and arrives as one message
    with every series; a target a reload removes between two chunks does not break the
    scrape (its series still written come from the snapshot taken at the start)."""
    registry = Registry()
    m = Metrics(registry, standard=False, options=MetricsConfig(histograms="native"))
    for i in range(300):
        m.for_target(f"t{i}", [("ping", "message")])
    pieces = protoexpo.Encoder(registry, native=True, classic=False).pieces()
    head = [next(pieces)]  # the first chunk of wsmon_up: t299 is in its second
    m.remove_target("t299")
    got = families(b"".join([*head, *pieces]))
    assert len(got["wsmon_up"].metric) == 300
    rtt = got["wsmon_probe_rtt_seconds"].metric
    assert len(rtt) == 299  # its chunks were built after the removal
    assert {p.value for m in rtt for p in m.label if p.name == "target"} == {
        f"t{i}" for i in range(299)
    }


def test_length_prefix_is_the_librarys() -> None:
    """The length written in front of a family serialized in parts is the varint the
    library writes for the whole message, across the one-, two- and three-byte sizes."""
    for size in (0, 1, 120, 127, 128, 300, 16_380, 16_384, 20_000, 2_100_000):
        message = MetricFamily(help="h" * size)
        data = message.SerializeToString()
        assert protoexpo.delimited(message) == protoexpo.varint(len(data)) + data
