"""The protobuf exposition, which a Prometheus with native histograms asks for.

Each metric family is one length-delimited `io.prometheus.client.MetricFamily` message, built
with the classes generated from Prometheus's client_model (`monitor.metrics_pb2`). A
histogram carries its native buckets (`metrics.histograms: native`), its classic ones
(`classic`), or both; the text format is unchanged by any of it.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterator
from typing import Any

from google.protobuf import proto

from .families import Family, Group
from .histograms import NATIVE_ZERO_THRESHOLD, HistogramSeries
from .metrics_pb2 import Metric, MetricFamily, MetricType
from .registry import Registry

CONTENT_TYPE = (
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
)
_TYPES = {"counter": MetricType.COUNTER, "gauge": MetricType.GAUGE,
          "histogram": MetricType.HISTOGRAM}  # fmt: skip
# prometheus_client's family types (the standard collectors) as the protobuf knows them
_CLIENT_TYPES = {"counter": MetricType.COUNTER, "gauge": MetricType.GAUGE,
                 "info": MetricType.GAUGE}  # fmt: skip
_CLIENT_SUFFIXES = {"counter": "_total", "info": "_info"}  # what their samples are named
# Series built, serialized and handed on between two pauses: about a millisecond's work.
CHUNK = 256
HISTOGRAM_CHUNK = 32


def delimited(message: Any) -> bytes:
    """A message with its length in front, as the delimited format wants."""
    out = io.BytesIO()
    proto.serialize_length_prefixed(message, out)
    return out.getvalue()


def varint(n: int) -> bytes:
    """The length in front of a delimited message (a protobuf base-128 varint), for a
    message serialized in parts (see `Encoder.pieces`)."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class Encoder:
    """Our families as MetricFamily messages; `native`/`classic`: which buckets histograms
    carry."""

    def __init__(self, registry: Registry, native: bool, classic: bool) -> None:
        self.registry = registry
        self.native = native
        self.classic = classic

    def pieces(self) -> Iterator[bytes]:
        """One delimited message per family, made a chunk of series at a time; b"" between
        chunks, where the caller yields to the event loop.

        Each chunk is a MetricFamily holding only those series, serialized by the library:
        protobuf merges concatenated messages (repeated fields append), so the family's
        header and its chunks, one after another, are one message, and only its length is
        written here. A family of 10,000 targets is built over many turns of the loop."""
        # The targets as they are now: a reload meanwhile may forget one whose series this
        # scrape still writes.
        target_of = dict(self.registry.target_of)
        for family in self.registry.families:
            header = MetricFamily(
                name=family.sample_name, help=family.documentation, type=_TYPES[family.kind]
            ).SerializeToString()
            labels = _Labels(family, target_of)
            step = CHUNK
            if family.kind == "histogram":
                add = functools.partial(self._histograms, labels)
                step = HISTOGRAM_CHUNK
            elif family.grouped:
                add = functools.partial(_groups, labels)
            else:
                add = functools.partial(_values, labels, family.kind == "counter")
            members: list[Any] = list(family.members.values())  # may change meanwhile
            parts = [header]
            for start in range(0, len(members), step):
                chunk = MetricFamily()
                add(chunk, members[start : start + step])
                parts.append(chunk.SerializeToString())
                yield b""
            yield varint(sum(map(len, parts)))
            yield from parts
        for metric in self.registry.collectors.collect():
            yield delimited(_client_family(metric))

    def _histograms(self, labels: _Labels, message: Any, members: list[Any]) -> None:
        for found in members:
            for series in found if isinstance(found, list) else (found,):
                m = message.metric.add(label=labels(series.head, series.key))
                self._histogram(m.histogram, series)

    def _histogram(self, h: Any, series: HistogramSeries) -> None:
        counts = series.counts
        h.sample_count = sum(counts)
        h.sample_sum = series.sum
        native = series.native if self.native else None
        if self.classic or native is None:
            cumulative = 0
            for bound, n in zip(series.layout.bounds[:-1], counts, strict=False):
                cumulative += n
                h.bucket.add(cumulative_count=cumulative, upper_bound=bound)
        if native is not None:
            h.schema = native.schema
            h.zero_threshold = NATIVE_ZERO_THRESHOLD
            h.zero_count = native.zero
            spans, deltas = native.spans()
            for offset, length in spans or [(0, 0)]:
                # (an empty span marks a histogram without observations as native all the same)
                h.positive_span.add(offset=offset, length=length)
            h.positive_delta.extend(deltas)


def _values(labels: _Labels, counter: bool, message: Any, members: list[Any]) -> None:
    add = message.metric.add
    for found in members:
        for series in found if isinstance(found, list) else (found,):
            m = add(label=labels(series.head, series.key))
            (m.counter if counter else m.gauge).value = series.value


def _groups(labels: _Labels, message: Any, members: list[Group]) -> None:
    add = message.metric.add
    for group in members:
        for head, value in zip(group.heads, group.values, strict=True):
            add(label=labels(head, group.key)).counter.value = value


class _Labels:
    """The label pairs of a family's series: those of its shared head (made once per head)
    and the target's."""

    def __init__(self, family: Family, target_of: dict[str, str]) -> None:
        self.family = family
        self.target_of = target_of
        self.heads: dict[str, list[dict[str, str]]] = {}

    def __call__(self, head: str, key: str) -> list[dict[str, str]]:
        pairs = self.heads.get(head)
        if pairs is None:
            labels = self.family.other_labels(head)
            pairs = self.heads[head] = [{"name": k, "value": v} for k, v in labels.items()]
        if not key:
            return pairs
        return [*pairs, {"name": "target", "value": self.target_of[key]}]


def _client_family(metric: Any) -> Any:
    """A prometheus_client family (process_*, python_*) as a MetricFamily."""
    kind = _CLIENT_TYPES.get(metric.type, MetricType.UNTYPED)
    name = metric.name + _CLIENT_SUFFIXES.get(metric.type, "")
    message = MetricFamily(name=name, help=metric.documentation, type=kind)
    for sample in metric.samples:
        if sample.name.endswith("_created"):
            continue
        labels = [{"name": k, "value": v} for k, v in sample.labels.items()]
        m: Metric = message.metric.add(label=labels)
        if kind == MetricType.COUNTER:
            m.counter.value = sample.value
        elif kind == MetricType.GAUGE:
            m.gauge.value = sample.value
        else:
            m.untyped.value = sample.value
    return message
