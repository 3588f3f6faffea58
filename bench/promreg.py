"""Scrape-cost baseline: ``prometheus_client.generate_latest`` on a registry with wsmon's series.

``python -m bench.promreg --targets N [--repeat K]`` builds, in this process, a
``CollectorRegistry`` holding the series wsmon's contract defines for N targets with one
message probe each, every series populated (answered probes in the RTT histogram, handshake
durations, a few disconnects, counters and gauges set), then times ``generate_latest`` K
times and prints one JSON line.

The registry comes from ``monitor.metrics.Metrics(CollectorRegistry())`` while that still
builds prometheus_client families (its ``for_target`` handles populate it); if the metrics
code no longer works that way, the same families are built here directly from a copy of the
contract (``docs``: per target up, connected, connect attempts/failures by reason, handshake
histogram with 12 buckets, reconnects, disconnects by code/origin, last close code,
established timestamp, messages received, unmatched by reason; per probe the RTT histogram
with 19 buckets, last RTT, sent, timeouts, errors by reason, last success).  ``source`` in
the output says which one was used.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .common import emit, rss_kb, summary

RTT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
CONNECT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONNECT_FAILURE_REASONS = ("dns", "refused", "timeout", "tls", "handshake", "auth", "other")
PROBE_ERROR_REASONS = ("api_error", "unexpected_reply", "invalid_json", "send_failed")
UNMATCHED_REASONS = ("invalid_json", "binary", "missing_id", "unknown_id")
COMMON_DISCONNECTS = (
    ("1000", "peer"), ("1001", "peer"), ("1006", "network"), ("1011", "peer"), ("1011", "local"),
)  # fmt: skip


def _populate_values(rng: random.Random, i: int) -> dict[str, Any]:
    now = time.time()
    return {
        "rtts": [rng.uniform(0.0002, 0.004) for _ in range(5)],
        "connect": rng.uniform(0.001, 0.01),
        "now": now,
        "drop": i % 2000 == 0,
    }


def build_from_monitor(targets: int, seed: int = 1) -> CollectorRegistry:
    """wsmon's own Metrics on a fresh registry, populated through its per-target handles."""
    from prometheus_client import disable_created_metrics

    from monitor.metrics import Metrics

    disable_created_metrics()  # type: ignore[no-untyped-call]  # as the daemon does
    registry = CollectorRegistry(auto_describe=True)
    m = Metrics(registry)
    rng = random.Random(seed)
    m.targets.set(targets)
    m.reload_ok.set(1)
    m.reload_ts.set(time.time())
    for i in range(targets):
        v = _populate_values(rng, i)
        tm = m.for_target(f"t{i}", [("ping", "message")])
        tm.connect_attempts.inc()
        tm.connect_duration.observe(v["connect"])
        tm.connected.set(1)
        tm.up.set(1)
        tm.established.set(v["now"])
        tm.messages_received.inc(len(v["rtts"]))
        pm = tm.probes["ping"]
        for rtt in v["rtts"]:
            pm.sent.inc()
            pm.rtt.observe(rtt)
        pm.last_rtt.set(v["rtts"][-1])
        pm.last_success.set(v["now"])
        if v["drop"]:
            tm.disconnect(1001, "peer")
            tm.reconnects.inc()
    if not any(True for _ in registry.collect()):
        raise RuntimeError("monitor.metrics.Metrics registered nothing on the registry")
    return registry


def build_direct(targets: int, seed: int = 1) -> CollectorRegistry:
    """The contract's families built directly with prometheus_client (the fallback)."""
    from prometheus_client import disable_created_metrics

    disable_created_metrics()  # type: ignore[no-untyped-call]
    r = CollectorRegistry(auto_describe=True)
    t = ("target",)
    tp = ("target", "probe")
    up = Gauge("wsmon_up", "up", t, registry=r)
    connected = Gauge("wsmon_connected", "connected", t, registry=r)
    attempts = Counter("wsmon_connect_attempts", "attempts", t, registry=r)
    failures = Counter("wsmon_connect_failures", "failures", ("target", "reason"), registry=r)
    duration = Histogram(
        "wsmon_connect_duration_seconds", "duration", t, buckets=CONNECT_BUCKETS, registry=r
    )
    reconnects = Counter("wsmon_reconnects", "reconnects", t, registry=r)
    disconnects = Counter(
        "wsmon_disconnects", "disconnects", ("target", "code", "origin"), registry=r
    )
    last_close = Gauge("wsmon_last_close_code", "close code", t, registry=r)
    established = Gauge(
        "wsmon_connection_established_timestamp_seconds", "established", t, registry=r
    )
    rtt = Histogram("wsmon_probe_rtt_seconds", "rtt", tp, buckets=RTT_BUCKETS, registry=r)
    last_rtt = Gauge("wsmon_probe_last_rtt_seconds", "last rtt", tp, registry=r)
    sent = Counter("wsmon_probes_sent", "sent", tp, registry=r)
    timeouts = Counter("wsmon_probe_timeouts", "timeouts", tp, registry=r)
    errors = Counter("wsmon_probe_errors", "errors", ("target", "probe", "reason"), registry=r)
    last_success = Gauge(
        "wsmon_probe_last_success_timestamp_seconds", "last success", tp, registry=r
    )
    received = Counter("wsmon_messages_received", "received", t, registry=r)
    unmatched = Counter("wsmon_unmatched_messages", "unmatched", ("target", "reason"), registry=r)
    Gauge("wsmon_targets", "targets", registry=r).set(targets)
    Gauge("wsmon_build_info", "build", ("version", "python"), registry=r).labels("bench", "3").set(
        1
    )
    Gauge("wsmon_config_last_reload_successful", "ok", registry=r).set(1)
    Gauge("wsmon_config_last_reload_success_timestamp_seconds", "ts", registry=r).set(time.time())
    rng = random.Random(seed)
    for i in range(targets):
        v = _populate_values(rng, i)
        name = f"t{i}"
        up.labels(name).set(1)
        connected.labels(name).set(1)
        attempts.labels(name).inc()
        for reason in CONNECT_FAILURE_REASONS:
            failures.labels(name, reason)
        duration.labels(name).observe(v["connect"])
        reconnects.labels(name)
        for code, origin in COMMON_DISCONNECTS:
            disconnects.labels(name, code, origin)
        last_close.labels(name)
        established.labels(name).set(v["now"])
        received.labels(name).inc(len(v["rtts"]))
        for reason in UNMATCHED_REASONS:
            unmatched.labels(name, reason)
        h = rtt.labels(name, "ping")
        for x in v["rtts"]:
            h.observe(x)
        last_rtt.labels(name, "ping").set(v["rtts"][-1])
        sent.labels(name, "ping").inc(len(v["rtts"]))
        timeouts.labels(name, "ping")
        for reason in PROBE_ERROR_REASONS:
            errors.labels(name, "ping", reason)
        last_success.labels(name, "ping").set(v["now"])
        if v["drop"]:
            disconnects.labels(name, "1001", "peer").inc()
            last_close.labels(name).set(1001)
            reconnects.labels(name).inc()
    return r


def measure(targets: int, repeat: int, source: str = "auto") -> dict[str, Any]:
    """Build the registry, time `repeat` calls of generate_latest; the figures as a dict."""
    t0 = time.perf_counter()
    used = source
    error = ""
    registry: CollectorRegistry | None = None
    if source in ("auto", "monitor"):
        try:
            registry = build_from_monitor(targets)
            used = "monitor.metrics.Metrics"
        except Exception as exc:  # the metrics code is being rewritten; fall back
            if source == "monitor":
                raise
            error = f"{type(exc).__name__}: {exc}"
    if registry is None:
        registry = build_direct(targets)
        used = "bench.promreg.build_direct (contract copy)"
    build_s = time.perf_counter() - t0
    times: list[float] = []
    body = b""
    for _ in range(repeat):
        t = time.perf_counter()
        body = generate_latest(registry)
        times.append(time.perf_counter() - t)
    lines = [ln for ln in body.split(b"\n") if ln and not ln.startswith(b"#")]
    return {
        "event": "baseline",
        "targets": targets,
        "source": used,
        "monitor_error": error,
        "build_s": build_s,
        "generate_latest_s": summary(times),
        "series": len(lines),
        "bytes": len(body),
        "rss_kb": rss_kb(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.promreg", description=__doc__)
    p.add_argument("--targets", type=int, required=True)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--source", choices=("auto", "monitor", "direct"), default="auto")
    args = p.parse_args(argv)
    emit(measure(args.targets, args.repeat, args.source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
