"""The protobuf exposition, which a Prometheus with native histograms asks for.

Each metric family is one length-delimited `io.prometheus.client.MetricFamily` message, built
with the classes generated from Prometheus's client_model (`monitor.metrics_pb2`). A
histogram carries its native buckets (`metrics.histograms: native`), its classic ones
(`classic`), or both; the text format is unchanged by any of it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

from google.protobuf import proto

from .families import NATIVE_ZERO_THRESHOLD, Family, Group, HistogramSeries, Series
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
CHUNK = 256  # series added to a message between two pauses


def wants_protobuf(accept: str) -> bool:
    """True when the Accept header ranks the delimited MetricFamily protobuf above text
    (Prometheus sends it first when its native histograms are on)."""
    best_proto = best_text = 0.0
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        args = {}
        for p in params:
            k, _, v = p.partition("=")
            args[k.strip().lower()] = v.strip().strip('"')
        try:
            q = float(args.get("q", "1"))
        except ValueError:
            q = 0.0
        media = media.lower()
        if (
            media == "application/vnd.google.protobuf"
            and args.get("proto") == "io.prometheus.client.MetricFamily"
            and args.get("encoding") == "delimited"
        ):
            best_proto = max(best_proto, q)
        elif media in ("text/plain", "text/*", "*/*", "application/openmetrics-text"):
            best_text = max(best_text, q)
    return best_proto > 0 and best_proto >= best_text


def delimited(message: Any) -> bytes:
    """A message with its length in front, as the delimited format wants."""
    out = io.BytesIO()
    proto.serialize_length_prefixed(message, out)
    return out.getvalue()


class Encoder:
    """Our families as MetricFamily messages; `native`/`classic`: which buckets histograms
    carry."""

    def __init__(self, registry: Registry, native: bool, classic: bool) -> None:
        self.registry = registry
        self.native = native
        self.classic = classic

    def pieces(self) -> Iterator[bytes]:
        """One delimited message per family; b"" between chunks of series, where the caller
        yields to the event loop (a family of 10,000 targets is built over many turns)."""
        for family in self.registry.families:
            message = MetricFamily(
                name=family.sample_name, help=family.documentation, type=_TYPES[family.kind]
            )
            pairs = _Pairs(family)
            members: list[Any] = list(family.members.values())  # may change meanwhile
            for start in range(0, len(members), CHUNK):
                for found in members[start : start + CHUNK]:
                    for series in found if isinstance(found, list) else (found,):
                        self._add(message, family, pairs, series)
                yield b""
            yield delimited(message)
        for metric in self.registry.collectors.collect():
            yield delimited(_client_family(metric))

    def _add(self, message: Any, family: Family, pairs: _Pairs, series: Any) -> None:
        kind = family.kind
        if isinstance(series, Group):
            for head, value in zip(series.heads, series.values, strict=True):
                m = message.metric.add(label=pairs(head, series.key))
                m.counter.value = value
        elif isinstance(series, HistogramSeries):
            m = message.metric.add(label=pairs(series.head, series.key))
            self._histogram(m.histogram, series)
        else:
            assert isinstance(series, Series)
            m = message.metric.add(label=pairs(series.head, series.key))
            if kind == "counter":
                m.counter.value = series.value
            else:
                m.gauge.value = series.value

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


class _Pairs:
    """The label pairs of a family's series, from its shared heads and target keys."""

    def __init__(self, family: Family) -> None:
        self.family = family
        self.cache: dict[tuple[str, str], list[dict[str, str]]] = {}

    def __call__(self, head: str, key: str) -> list[dict[str, str]]:
        found = self.cache.get((head, key))
        if found is None:
            labels = self.family.labels_of(head, key)
            found = [{"name": k, "value": v} for k, v in labels.items()]
            if len(self.cache) < 4096:  # label sets without a target repeat; per target, not
                self.cache[(head, key)] = found
        return found


def _client_family(metric: Any) -> Any:
    """A prometheus_client family (process_*, python_*) as a MetricFamily."""
    kind = _CLIENT_TYPES.get(metric.type, MetricType.UNTYPED)
    name = metric.name + "_total" if metric.type == "counter" else metric.name
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
