"""Every metric family of the daemon, built on a registry that is passed in; the handles a
target's code holds on its series are in `monitor.handles`."""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterable

from prometheus_client import Gauge, GCCollector, PlatformCollector

from . import __version__
from .config import MetricsConfig, TargetConfig
from .families import Family, Series
from .handles import (
    ProbeSpec,
    TargetMetrics,
    planned_requests,
)
from .process import ProcessCollector
from .registry import Registry

CONNECT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Time between a stream's messages: from a busy feed (many a second) to a quiet one.
GAP_BUCKETS = (0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# The windows of `rate_limits` (the Deriv API's names) and their seconds.
RATE_WINDOWS = (("minutely", 60.0), ("hourly", 3600.0))
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
# `wsmon_build_info{receive_path}`: replies taken from aiohttp's parser by the guarded inbox
# hook (monitor/aiohooks.py), or all of them returned by aiohttp's public receive().
RECEIVE_PATHS = ("hooked", "portable")


class Metrics:
    """The daemon's metric families; one instance per registry.

    With `standard` (the default), the registry also gets the families every Prometheus
    exporter has: `process_*`, `python_info`, `python_gc_*`. Tests that compare two
    renderings byte for byte leave them out: CPU time moves between the two."""

    def __init__(
        self,
        registry: Registry,
        *,
        standard: bool = True,
        options: MetricsConfig | None = None,
    ) -> None:
        self.registry = r = registry
        self.options = o = options or MetricsConfig()
        native = o.histograms != "classic"
        t = ("target",)
        tp = ("target", "probe")
        self.up = Family(
            r,
            "wsmon_up",
            "1 while the connection is open and its latest probe was answered correctly in time.",
            "gauge",
            t,
        )
        self.connected = Family(
            r, "wsmon_connected", "1 while the WebSocket connection is open.", "gauge", t
        )
        self.connect_attempts = Family(
            r, "wsmon_connect_attempts", "WebSocket handshakes started.", "counter", t
        )
        self.connect_failures = Family(
            r,
            "wsmon_connect_failures",
            "Failed WebSocket handshakes, by reason.",
            "counter",
            ("target", "reason"),
            grouped=True,
        )
        self.connect_duration = Family(
            r,
            "wsmon_connect_duration_seconds",
            "TCP + TLS + HTTP upgrade time of successful handshakes.",
            "histogram",
            t if o.per_target_connect_histogram else (),
            buckets=CONNECT_BUCKETS,
            native=native,
        )
        self.connect_phase = Family(
            r,
            "wsmon_connect_phase_seconds",
            "Time of each phase of successful handshakes: resolve (DNS), connect (TCP), tls, "
            "upgrade (HTTP request to 101).",
            "histogram",
            ("phase", "target") if o.per_target_connect_histogram else ("phase",),
            buckets=CONNECT_BUCKETS,
            native=native,
        )
        self.tls_not_after = Family(
            r,
            "wsmon_tls_cert_not_after_timestamp_seconds",
            "Unix time the earliest-expiring certificate the server presented expires, as of "
            "the latest connection.",
            "gauge",
            t,
        )
        # `version` sorts after `target`, which `Family` needs last (see rate_limit below);
        # the labels of each target's one series, to replace it.
        self.tls_labels: dict[str, tuple[str, str, str]] = {}
        self.tls_info = Gauge(
            "wsmon_tls_info",
            "Always 1; labels tell the TLS version and cipher of the latest connection.",
            ("target", "version", "cipher"),
            registry=r.collectors,
        )
        self.reconnects = Family(
            r,
            "wsmon_reconnects",
            "Connections established after an earlier connection of the target was lost.",
            "counter",
            t,
        )
        self.disconnects = Family(
            r,
            "wsmon_disconnects",
            "Connections lost, by close code and by who ended them (peer, local, network).",
            "counter",
            ("target", "code", "origin"),
            grouped=True,
        )
        self.last_close_code = Family(
            r, "wsmon_last_close_code", "Close code of the latest disconnect.", "gauge", t
        )
        self.established = Family(
            r,
            "wsmon_connection_established_timestamp_seconds",
            "Unix time the current connection opened; 0 while down.",
            "gauge",
            t,
        )
        self.rtt = Family(
            r,
            "wsmon_probe_rtt_seconds",
            "Send-to-matching-reply time of answered probes.",
            "histogram",
            tp,
            buckets=o.rtt_buckets,
            native=native,
        )
        self.last_rtt = Family(
            r, "wsmon_probe_last_rtt_seconds", "RTT of the latest answered probe.", "gauge", tp
        )
        self.probes_sent = Family(r, "wsmon_probes_sent", "Probes sent.", "counter", tp)
        self.probe_timeouts = Family(
            r, "wsmon_probe_timeouts", "Probes not answered within their timeout.", "counter", tp
        )
        self.probe_errors = Family(
            r,
            "wsmon_probe_errors",
            "Probes answered, but wrongly, or that could not be sent; by reason.",
            "counter",
            ("target", "probe", "reason"),
            grouped=True,
        )
        self.last_success = Family(
            r,
            "wsmon_probe_last_success_timestamp_seconds",
            "Unix time of the latest good reply.",
            "gauge",
            tp,
        )
        self.stream_messages = Family(
            r,
            "wsmon_stream_messages",
            "Messages of a subscription stream that matched its `expect`.",
            "counter",
            tp,
        )
        self.stream_last = Family(
            r,
            "wsmon_stream_last_message_timestamp_seconds",
            "Unix time of the stream's latest message.",
            "gauge",
            tp,
        )
        self.stream_gap = Family(
            r,
            "wsmon_stream_gap_seconds",
            "Time between consecutive messages of a stream.",
            "histogram",
            tp,
            buckets=GAP_BUCKETS,
            native=native,
        )
        self.stream_stale = Family(
            r,
            "wsmon_stream_stale",
            "1 while the stream is stale (no message for max_gap, none since the subscribe "
            "within subscribe_timeout, or the subscribe refused); 0 otherwise and while the "
            "connection is down.",
            "gauge",
            tp,
        )
        self.stream_stalls = Family(
            r,
            "wsmon_stream_stalls",
            "Times the stream went stale (wsmon_stream_stale went from 0 to 1).",
            "counter",
            tp,
        )
        self.stream_subscribes = Family(
            r,
            "wsmon_stream_subscribes",
            "Subscribe requests sent: after each connect, on resubscribe and after a refusal.",
            "counter",
            tp,
        )
        self.stream_subscribe_time = Family(
            r,
            "wsmon_stream_subscribe_seconds",
            "From the subscribe request to the stream's first message.",
            "histogram",
            tp,
            buckets=o.rtt_buckets,
            native=native,
        )
        self.stream_lag = Family(
            r,
            "wsmon_stream_lag_seconds",
            "Arrival of a stream message minus the server timestamp in it (`lag_field`), "
            "corrected by the server clock offset when known.",
            "histogram",
            tp,
            buckets=o.rtt_buckets,
            native=native,
        )
        # `window` sorts after `target`, which `Family` needs last: these few series (two
        # per target with `rate_limits`) are prometheus_client gauges.
        self.rate_limit = Gauge(
            "wsmon_rate_limit_requests",
            "Requests per window the server allows (`rate_limits`).",
            ("target", "window"),
            registry=r.collectors,
        )
        self.planned = Gauge(
            "wsmon_planned_requests",
            "Requests per window a connection of the target sends by its configured probes.",
            ("target", "window"),
            registry=r.collectors,
        )
        self.rate_limited: set[str] = set()  # the targets these gauges have series of
        self.time_offset = Family(
            r,
            "wsmon_server_time_offset_seconds",
            "Server clock minus local clock, from replies carrying a `time` epoch.",
            "gauge",
            t,
        )
        self.messages_received = Family(
            r, "wsmon_messages_received", "Every message received.", "counter", t
        )
        self.unmatched = Family(
            r,
            "wsmon_unmatched_messages",
            "Messages received that matched no waiting probe, by reason.",
            "counter",
            ("target", "reason"),
            grouped=True,
        )
        self.send_lag = Family(
            r,
            "wsmon_probe_send_lag_seconds",
            "How late probes were sent compared with their schedule (event loop delay).",
            "histogram",
            buckets=LAG_BUCKETS,
            native=native,
        ).histogram()
        self.throttled = Family(
            r,
            "wsmon_throttled_seconds",
            "Seconds the connection's reading was paused because it delivered more than "
            "max_messages_per_second.",
            "counter",
            t,
        )
        self.loop_lag = Family(
            r,
            "wsmon_event_loop_lag_seconds",
            "How late the event loop ran a timer, sampled every second: the daemon's own delay.",
            "histogram",
            buckets=LAG_BUCKETS,
            native=native,
        ).histogram()
        self.http_connections = Family(
            r, "wsmon_http_connections", "HTTP connections open now.", "gauge"
        )
        self.http_dropped = Family(
            r,
            "wsmon_http_connections_dropped",
            "HTTP connections closed or refused by the daemon, by reason (header_timeout, "
            "idle_timeout, evicted, refused).",
            "counter",
            ("reason",),
        )
        self.targets = Family(
            r, "wsmon_targets", "Targets this daemon monitors (its shard's share).", "gauge"
        ).labels()
        self.config_targets = Family(
            r,
            "wsmon_config_targets",
            "Targets in the whole configuration, whichever shard monitors them.",
            "gauge",
        ).labels()
        self.shard_info = Family(
            r,
            "wsmon_shard_info",
            "Always 1; labels tell this daemon's shard of the fleet.",
            "gauge",
            ("count", "index", "replicas"),
        )
        self.build_info = Family(
            r,
            "wsmon_build_info",
            "Always 1; labels tell the build.",
            "gauge",
            ("python", "receive_path", "version"),
        )
        self.set_receive_path("portable")
        self.reload_ok = Family(
            r,
            "wsmon_config_last_reload_successful",
            "1 if the latest configuration load succeeded.",
            "gauge",
        ).labels()
        self.reload_ts = Family(
            r,
            "wsmon_config_last_reload_success_timestamp_seconds",
            "Unix time of the latest successful configuration load.",
            "gauge",
        ).labels()
        self._web_reload = Family(
            r,
            "wsmon_web_config_last_reload_successful",
            "1 if the latest read of the web config (TLS, basic auth) succeeded.",
            "gauge",
        )
        if standard:
            r.collectors.register(ProcessCollector())
            PlatformCollector(registry=r.collectors)
            GCCollector(registry=r.collectors)  # registers itself where gc has stats (CPython)

    def set_shard(self, index: int, count: int, replicas: int) -> None:
        """Leave one `wsmon_shard_info` series, for this shard."""
        self.shard_info.remove()
        self.shard_info.labels(str(count), str(index), str(replicas)).set(1)

    def set_receive_path(self, path: str) -> None:
        """Leave one `wsmon_build_info` series, with `receive_path` = `path` ("hooked" or
        "portable"): the daemon says which way replies reach their probes."""
        if path not in RECEIVE_PATHS:
            raise ValueError(f"receive_path must be one of {RECEIVE_PATHS}, not {path!r}")
        self.build_info.remove()
        self.build_info.labels(platform.python_version(), path, __version__).set(1)

    @property
    def web_reload_ok(self) -> Series:
        """Created when a web config is in use (the series would say nothing otherwise)."""
        return self._web_reload.labels()

    def for_target(self, name: str, probes: Iterable[ProbeSpec]) -> TargetMetrics:
        """Create the series of a target that exist from the start (`precreate`) and return
        handles to them.

        `probes` holds (name, kind) or (name, kind, rtt_buckets) tuples; a ws-ping probe can
        only fail to send, so it gets no series for reasons that apply to replies.
        """
        return TargetMetrics(self, name, tuple(probes))

    def for_config(self, target: TargetConfig) -> TargetMetrics:
        """`for_target` for a configured target and its probes; with `rate_limits`, the
        requests its probes plan per window."""
        tm = self.for_target(target.name, ((p.name, p.kind, p.rtt_buckets) for p in target.probes))
        if target.name in self.rate_limited:  # a changed target may have dropped the key
            self._remove_rate_limits(target.name)
        if target.rate_limits is not None:
            self.rate_limited.add(target.name)
            for window, seconds in RATE_WINDOWS:
                self.planned.labels(target.name, window).set(planned_requests(target, seconds))
                known = getattr(target.rate_limits, window)
                if known is not None:
                    self.rate_limit.labels(target.name, window).set(known)
        return tm

    def _target_families(self) -> tuple[Family, ...]:
        return (
            self.up, self.connected, self.connect_attempts, self.connect_failures,
            self.connect_duration, self.connect_phase, self.tls_not_after, self.reconnects,
            self.disconnects, self.last_close_code,
            self.established, self.rtt, self.last_rtt, self.probes_sent, self.probe_timeouts,
            self.probe_errors, self.last_success, self.time_offset, self.messages_received,
            self.unmatched, self.throttled, *self._stream_families(),
        )  # fmt: skip

    def _stream_families(self) -> tuple[Family, ...]:
        return (
            self.stream_messages, self.stream_last, self.stream_gap, self.stream_stale,
            self.stream_stalls, self.stream_subscribes, self.stream_subscribe_time,
            self.stream_lag,
        )  # fmt: skip

    def remove_target(self, name: str) -> None:
        """Drop every series labelled with this target (after a reload removed it)."""
        for family in self._target_families():
            family.remove(target=name)
        self._remove_rate_limits(name)
        tls = self.tls_labels.pop(name, None)
        if tls is not None:
            self.tls_info.remove(*tls)
        self.registry.forget(name)

    def _remove_rate_limits(self, target: str) -> None:
        self.rate_limited.discard(target)
        for gauge in (self.rate_limit, self.planned):
            for window, _ in RATE_WINDOWS:
                with contextlib.suppress(KeyError):
                    gauge.remove(target, window)

    def remove_probe(self, target: str, probe: str) -> None:
        """Drop the series of a probe that a reload removed from a target."""
        for family in (
            self.rtt, self.last_rtt, self.probes_sent, self.probe_timeouts, self.probe_errors,
            self.last_success, *self._stream_families(),
        ):  # fmt: skip
            family.remove(target=target, probe=probe)
