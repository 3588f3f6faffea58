"""How many series a configuration exports: what `check-config` tells before a deploy.

Counted, not estimated: the daemon's own metric families are built for the config on a
registry of their own, with every target's series that exist from the start, and counted
the way the scraper stores them (each classic bucket a series, or a native histogram one).
Series made later (a close code or a reason seen for the first time, the server time offset
once a reply carries one) come on top; `ceiling` counts them too, for the known reasons.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable
from dataclasses import dataclass
from urllib.parse import urlsplit

from .config import Config, MetricsConfig, TargetConfig
from .httpguard import Guard
from .metrics import RATE_WINDOWS, Metrics
from .registry import Registry


def _built(config: Config, options: MetricsConfig | None = None) -> tuple[Registry, Metrics]:
    """The daemon's families for `config`, with the series it makes when it starts serving
    (the HTTP side's, the web config's)."""
    registry = Registry()
    metrics = Metrics(registry, options=options or config.metrics)
    Guard(config.http, metrics.http_connections, metrics.http_dropped)  # its series
    if config.web_config_file:
        metrics.web_reload_ok.set(1)
    metrics.targets.set(len(config.targets))
    s = config.sharding
    metrics.set_shard(s.index, s.count, s.replicas)
    return registry, metrics


@dataclass(frozen=True)
class SeriesCount:
    """Series at start: per target, and those not labelled with a target (the daemon's)."""

    per_target: dict[str, int]
    daemon: int

    @property
    def total(self) -> int:
        return self.daemon + sum(self.per_target.values())

    def spread(self) -> str:
        """'25 per target', or '25 to 31 per target (most: deriv)'."""
        if not self.per_target:
            return "no targets"
        low, high = min(self.per_target.values()), max(self.per_target.values())
        if low == high:
            return f"{low} per target"
        most = max(self.per_target, key=lambda t: self.per_target[t])
        return f"{low} to {high} per target (most: {most})"


def count(config: Config, native: bool = False) -> SeriesCount:
    """The series `config` exports at start; with `native`, as a scraper that takes native
    histograms stores them (only where `metrics.histograms` makes them)."""
    classic, with_native = census(config)
    return with_native if native else classic


def _shape(target: TargetConfig, wire: bool) -> Hashable:
    """What the number of a target's series depends on: its probes, which rate limits it
    has, and (`wire`: once connected) its handshake's phases. Not its name: targets of one
    shape have as many series each."""
    probes = tuple((p.name, p.kind, p.rtt_buckets) for p in target.probes)
    limits = target.rate_limits
    known = None if limits is None else tuple(getattr(limits, w) is None for w, _ in RATE_WINDOWS)
    return (probes, known, phases_of(target.url) if wire else None)


def _representatives(config: Config, wire: bool) -> tuple[list[TargetConfig], dict[str, str]]:
    """One target of each shape, and the name of its shape's representative for every
    target: the series are built for the representatives only (a config of 100,000 targets
    usually has a handful of shapes)."""
    chosen: dict[Hashable, TargetConfig] = {}
    of: dict[str, str] = {}
    for target in config.targets:
        of[target.name] = chosen.setdefault(_shape(target, wire), target).name
    return list(chosen.values()), of


def census(config: Config) -> tuple[SeriesCount, SeriesCount]:
    """The series at start in the classic exposition and with native histograms, counted on
    one build of the families."""
    registry, metrics = _built(config)
    representatives, of = _representatives(config, wire=False)
    for target in representatives:
        metrics.for_config(target)

    def counted(native: bool) -> SeriesCount:
        daemon, per_target = registry.series_count(native)
        return SeriesCount({name: per_target.get(rep, 0) for name, rep in of.items()}, daemon)

    return counted(False), counted(True)


def phases_of(url: str) -> tuple[str, ...]:
    """The handshake phases a connection to `url` has (`anatomy.PHASES`): no name to
    resolve for an IP address, TLS only for wss://."""
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
        resolve: tuple[str, ...] = ()
    except ValueError:
        resolve = ("resolve",)
    return (*resolve, "connect", *(("tls",) if url.startswith("wss:") else ()), "upgrade")


def ceiling(config: Config) -> int:
    """Series in all once every known reason has occurred and the common close codes were
    seen, and every target has connected (handshake phases, TLS facts), has a server time
    offset, has been throttled and its streams have lag, in the classic exposition (a
    server's own close codes, 4xxx, add one each on top)."""
    registry, metrics = _built(config, config.metrics.model_copy(update={"precreate": "all"}))
    representatives, of = _representatives(config, wire=True)
    for target in representatives:
        tm = metrics.for_config(target)
        tm.set_time_offset(0.0)
        tm.throttled(0.0)
        tm.handshake(0.0, dict.fromkeys(phases_of(target.url), 0.0))
        if target.url.startswith("wss:"):
            tm.tls("TLSv1.3", "cipher", 0.0)
        for stream in tm.streams.values():
            stream.lag.observe(0.0)
    daemon, per_target = registry.series_count()
    return daemon + sum(per_target.get(rep, 0) for rep in of.values())
