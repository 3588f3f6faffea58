"""Handles on one target's series, made when the target is configured (`Metrics.for_target`):
the hot path holds these and does no label lookups. Which counters by reason or close code
exist from the start (`metrics.precreate`) is decided here."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from .config import TargetConfig
from .families import Family, Group, Item, Series
from .histograms import HistogramSeries
from .status import Recent

if TYPE_CHECKING:
    from .metrics import Metrics

CONNECT_FAILURE_REASONS = (
    "dns", "refused", "timeout", "tls", "handshake", "auth", "resource", "proxy", "other",
)  # fmt: skip
PROBE_ERROR_REASONS = (
    "api_error", "rate_limited", "unexpected_reply", "invalid_json", "send_failed",
)  # fmt: skip
UNMATCHED_REASONS = ("invalid_json", "binary", "missing_id", "unknown_id", "unsolicited")
# Disconnect series created up front with `precreate: all`: the common codes.
COMMON_DISCONNECTS = (
    ("1000", "peer"), ("1001", "peer"), ("1006", "network"), ("1011", "peer"), ("1011", "local"),
)  # fmt: skip
# With `precreate: alerts`, only the series the shipped alert rules name (deploy/prometheus):
# a rate over a series that appears at 1 misses that first increment.
ALERT_DISCONNECTS = (("1006", "network"), ("1011", "local"))
ALERT_CONNECT_FAILURES = ("resource",)
NO_STREAMS: Mapping[str, StreamMetrics] = MappingProxyType({})
# A probe as `for_target` takes it: (name, kind) or (name, kind, rtt_buckets or None).
ProbeSpec = tuple[str, str] | tuple[str, str, tuple[float, ...] | None]


class ByReason:
    """`view[reason]`: a counter of one family by its last label (`reason`, say).

    The `reasons` given exist from the start (a rate of an absent series is no rate); the
    rest are made on first use. They live in the target's `Group`; a lookup finds the
    reason's place in it by identity, without building label tuples: unmatched messages (a
    subscription stream) are counted at this speed."""

    __slots__ = ("family", "group", "heads", "values")

    def __init__(self, family: Family, values: tuple[str, ...], reasons: Iterable[str]) -> None:
        self.family = family
        self.values = values
        self.group: Group | None = None
        heads: dict[str, str] = {}
        for reason in reasons:
            item = family.item(*values, reason)
            self.group = item.group
            heads[reason] = item.group.heads[item.index]
        # one dict for every target with these labels (the heads do not name the target)
        self.heads = family.shared(("by-reason", values[1:]), heads)

    def __getitem__(self, reason: str) -> Item:
        group = self.group
        if group is not None:
            head = self.heads.get(reason)
            if head is not None:
                i = group.index_of(head)
                if i is not None:
                    return Item(group, i)
        item = self.family.item(*self.values, reason)  # made now
        self.group = item.group
        self.heads.setdefault(reason, item.group.heads[item.index])
        return item


class ProbeMetrics:
    """Pre-bound series of one probe."""

    __slots__ = ("errors", "last_rtt", "last_success", "recent", "rtt", "sent", "timeouts")

    def __init__(
        self, m: Metrics, target: str, probe: str, kind: str, buckets: tuple[float, ...] | None
    ) -> None:
        self.rtt = m.rtt.histogram(target, probe, buckets=buckets or m.options.rtt_buckets)
        self.last_rtt = m.last_rtt.labels(target, probe)
        self.sent = m.probes_sent.labels(target, probe)
        self.timeouts = m.probe_timeouts.labels(target, probe)
        reasons: tuple[str, ...] = ()
        if m.options.precreate == "all":
            reasons = PROBE_ERROR_REASONS if kind == "message" else ("send_failed",)
        self.errors = ByReason(m.probe_errors, (target, probe), reasons)
        self.last_success = m.last_success.labels(target, probe)
        # The latest round trips, for the status page (made at the first answer).
        self.recent: Recent | None = None

    def answered(self, rtt: float) -> None:
        """A good reply `rtt` seconds after its request."""
        self.rtt.observe(rtt)
        self.last_rtt.set(rtt)
        self.last_success.set(time.time())
        if self.recent is None:
            self.recent = Recent()
        self.recent.add(rtt)


def planned_requests(target: TargetConfig, window: float) -> float:
    """Requests a connection of `target` sends in `window` seconds by its configuration:
    every message probe's sends, the auth, the rate-limit query and each stream's subscribe
    (the last three once per connection). Protocol pings are frames, not requests."""
    once = (target.auth is not None) + (target.rate_limits is not None)
    planned = 0.0
    for p in target.probes:
        if p.kind == "message":
            planned += window / p.interval
        elif p.kind == "stream":
            once += 1
    return planned + once


class StreamMetrics:
    """Pre-bound series of one stream probe (its errors and subscribe timeouts are counted
    with the other probes' in `wsmon_probe_errors_total` and `wsmon_probe_timeouts_total`)."""

    __slots__ = (
        "_lag", "_m", "errors", "gap", "labels", "last", "messages", "stale", "stalls",
        "subscribe_time", "subscribes", "timeouts",
    )  # fmt: skip

    def __init__(
        self, m: Metrics, target: str, probe: str, buckets: tuple[float, ...] | None
    ) -> None:
        self._m = m
        self.labels = (target, probe)
        self.messages = m.stream_messages.labels(target, probe)
        self.last = m.stream_last.labels(target, probe)
        self.gap = m.stream_gap.histogram(target, probe)
        self.stale = m.stream_stale.labels(target, probe)
        self.stalls = m.stream_stalls.labels(target, probe)
        self.subscribes = m.stream_subscribes.labels(target, probe)
        self.subscribe_time = m.stream_subscribe_time.histogram(
            target, probe, buckets=buckets or m.options.rtt_buckets
        )
        self.timeouts = m.probe_timeouts.labels(target, probe)
        reasons = PROBE_ERROR_REASONS if m.options.precreate == "all" else ()
        self.errors = ByReason(m.probe_errors, (target, probe), reasons)
        self._lag: HistogramSeries | None = None  # made on the first message with a timestamp

    @property
    def lag(self) -> HistogramSeries:
        if self._lag is None:
            buckets = self.subscribe_time.layout.bounds[:-1]
            self._lag = self._m.stream_lag.histogram(*self.labels, buckets=buckets)
        return self._lag


class TargetMetrics:
    """Pre-bound series of one target, so the hot path does no label lookups."""

    __slots__ = (
        "_m", "_throttled", "_time_offset", "cert_not_after", "connect_attempts",
        "connect_duration", "connect_failures", "connected", "established", "last_close_code",
        "messages_received", "probes", "reconnects", "send_lag", "streams", "target",
        "time_offset_value", "unmatched", "up",
    )  # fmt: skip

    def __init__(self, m: Metrics, target: str, probes: tuple[ProbeSpec, ...]) -> None:
        self._m = m
        self.target = target
        every = m.options.precreate == "all"
        self.up = m.up.labels(target)
        self.connected = m.connected.labels(target)
        self.connect_attempts = m.connect_attempts.labels(target)
        self.connect_failures = ByReason(
            m.connect_failures,
            (target,),
            CONNECT_FAILURE_REASONS if every else ALERT_CONNECT_FAILURES,
        )
        self.connect_duration = (
            m.connect_duration.histogram(target)
            if m.options.per_target_connect_histogram
            else m.connect_duration.histogram()
        )
        self.reconnects = m.reconnects.labels(target)
        for code, origin in COMMON_DISCONNECTS if every else ALERT_DISCONNECTS:
            m.disconnects.item(target, code, origin)
        self.last_close_code = m.last_close_code.labels(target)
        self.established = m.established.labels(target)
        # Created on the first `time` reply: an offset of 0 before any reply would claim
        # a perfectly synchronised clock.
        self._time_offset: Series | None = None
        self.messages_received = m.messages_received.labels(target)
        self.unmatched = ByReason(m.unmatched, (target,), UNMATCHED_REASONS if every else ())
        # Created when the target is first throttled: most never are, and a series per target
        # would cost every scrape.
        self._throttled: Series | None = None
        self.probes = {
            spec[0]: ProbeMetrics(m, target, spec[0], spec[1], spec[2] if len(spec) > 2 else None)
            for spec in probes
            if spec[1] != "stream"
        }
        self.streams: Mapping[str, StreamMetrics] = {
            spec[0]: StreamMetrics(m, target, spec[0], spec[2] if len(spec) > 2 else None)
            for spec in probes
            if spec[1] == "stream"
        } or NO_STREAMS  # most targets have none: one shared empty mapping
        self.time_offset_value: float | None = None
        self.cert_not_after: float | None = None  # as of the latest TLS connection
        self.send_lag = m.send_lag

    def throttled(self, seconds: float) -> None:
        if self._throttled is None:
            self._throttled = self._m.throttled.labels(self.target)
        self._throttled.inc(seconds)

    def set_time_offset(self, seconds: float) -> None:
        if self._time_offset is None:
            self._time_offset = self._m.time_offset.labels(self.target)
        self._time_offset.set(seconds)
        self.time_offset_value = seconds

    def handshake(self, duration: float, phases: dict[str, float]) -> None:
        """A successful handshake: its time, and each phase's."""
        self.connect_duration.observe(duration)
        m = self._m
        per_target = m.options.per_target_connect_histogram
        for phase, seconds in phases.items():
            labels = (phase, self.target) if per_target else (phase,)
            m.connect_phase.histogram(*labels).observe(seconds)

    def tls(self, version: str, cipher: str, not_after: float | None) -> None:
        """What the latest TLS connection told: one `wsmon_tls_info` series per target."""
        m = self._m
        labels = (self.target, version, cipher)
        before = m.tls_labels.get(self.target)
        if labels != before:
            if before is not None:
                m.tls_info.remove(*before)
            m.tls_info.labels(*labels).set(1)
            m.tls_labels[self.target] = labels
        if not_after is not None:
            m.tls_not_after.labels(self.target).set(not_after)
        self.cert_not_after = not_after

    def set_rate_limit(self, window: str, requests: float) -> None:
        self._m.rate_limit.labels(self.target, window).set(requests)
        self._m.rate_limited.add(self.target)

    def disconnect(self, code: int, origin: str) -> None:
        self._m.disconnects.item(self.target, str(code), origin).inc()
        self.last_close_code.set(code)
