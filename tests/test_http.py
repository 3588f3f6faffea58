"""The HTTP endpoints and the metric families every target has from the start."""

from __future__ import annotations

import gzip
import io
import itertools
import socket

import aiohttp
import pytest
from conftest import StartDaemon, target
from prometheus_client.parser import text_string_to_metric_families
from wsserver import WSTestServer

from monitor import series
from monitor.handles import CONNECT_FAILURE_REASONS
from monitor.metrics import CONNECT_BUCKETS, Metrics
from monitor.registry import Registry

CONTRACT_FAMILIES = {
    "wsmon_up", "wsmon_connected", "wsmon_connect_attempts", "wsmon_connect_failures",
    "wsmon_connect_duration_seconds", "wsmon_reconnects", "wsmon_disconnects",
    "wsmon_last_close_code", "wsmon_connection_established_timestamp_seconds",
    "wsmon_probe_rtt_seconds", "wsmon_probe_last_rtt_seconds", "wsmon_probes_sent",
    "wsmon_probe_timeouts", "wsmon_probe_errors", "wsmon_probe_last_success_timestamp_seconds",
    "wsmon_server_time_offset_seconds", "wsmon_messages_received", "wsmon_targets",
    "wsmon_build_info", "wsmon_config_last_reload_successful",
    "wsmon_config_last_reload_success_timestamp_seconds",
}  # fmt: skip


def test_every_contract_metric_is_registered() -> None:
    """Every metric the contract names exists on a fresh registry, and nothing is global."""
    registry = Registry()
    Metrics(registry)
    names = {m.name for m in registry.collect()}
    assert names >= CONTRACT_FAMILIES


@pytest.mark.parametrize("precreate", ["alerts", "all"])
async def test_endpoints(precreate: str, server: WSTestServer, start_daemon: StartDaemon) -> None:
    """/metrics (plain and gzip), /healthz and /readyz answer; series exist up front: with
    `precreate: alerts` (the default) those the alert rules name, 25 for a target with one
    probe; with `all`, every reason."""
    h = await start_daemon(target("t", server.url), metrics={"precreate": precreate})
    await h.wait_for(lambda: h.value("wsmon_connected", target="t") == 1)
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        plain = {"Accept-Encoding": "identity"}
        async with http.get(f"{h.base_url}/metrics", headers=plain) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = (await r.read()).decode()
        async with http.get(f"{h.base_url}/metrics", headers={"Accept-Encoding": "gzip"}) as r:
            assert r.headers["Content-Encoding"] == "gzip"
            unzipped = gzip.decompress(await r.read()).decode()

        # The same lines in the same order: values may have moved on between the scrapes,
        # and the time offset appears with the first `time` reply.
        def heads(body: str) -> list[str]:
            lines = body.splitlines()
            return [x.rsplit(" ", 1)[0] for x in lines if "server_time_offset" not in x]

        assert heads(unzipped) == heads(text)
        async with http.get(f"{h.base_url}/healthz") as r:
            assert r.status == 200
        async with http.get(f"{h.base_url}/readyz") as r:
            assert r.status == 200
            assert "1 targets" in await r.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) >= CONTRACT_FAMILIES - {"wsmon_server_time_offset_seconds"}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))) for f in families.values() for s in f.samples
    }
    every = precreate == "all"
    for reason in CONNECT_FAILURE_REASONS:
        key = ("wsmon_connect_failures_total", (("reason", reason), ("target", "t")))
        assert (key in samples) == (every or reason == "resource"), key
    for reason in ("api_error", "rate_limited", "unexpected_reply", "invalid_json", "send_failed"):
        key = ("wsmon_probe_errors_total", (("probe", "ping"), ("reason", reason), ("target", "t")))
        assert (key in samples) == every
    for code, origin in (("1006", "network"), ("1011", "local")):
        key = ("wsmon_disconnects_total", (("code", code), ("origin", origin), ("target", "t")))
        assert key in samples
    samples_text = [x for x in text.splitlines() if x and not x.startswith("#")]
    per_target = [x for x in samples_text if 'target="t"' in x and "time_offset" not in x]
    if not every:
        assert len(per_target) == 25, per_target  # the budget of the default config
    # what check-config says this config exports is what the daemon exports
    counted = series.count(h.daemon.config)
    assert counted.per_target == {"t": len(per_target)}
    # made later, not at start: by a reply, by the first handshake (its phases)
    later = [x for x in samples_text if "time_offset" in x or "connect_phase" in x]
    assert len([x for x in later if "connect_phase" in x]) == 2 * (len(CONNECT_BUCKETS) + 3)
    assert counted.daemon == len(samples_text) - len(per_target) - len(later)
    assert not any(s[0].endswith("_created") for s in samples)
    assert h.value("wsmon_targets") == 1
    assert h.value("wsmon_config_last_reload_successful") == 1


async def test_readyz_waits_for_first_attempt(start_daemon: StartDaemon) -> None:
    """/readyz is 503 while a target's first handshake is still in flight."""
    with socket.socket() as listener:  # accepts TCP, never answers the upgrade
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        h = await start_daemon(target("slow", f"ws://127.0.0.1:{port}/", connect_timeout="1s"))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{h.base_url}/readyz") as r:
                assert r.status == 503
                assert "slow" in await r.text()
            await h.wait_for(
                lambda: h.value("wsmon_connect_failures_total", target="slow", reason="timeout"),
                timeout=3,
            )
            async with http.get(f"{h.base_url}/readyz") as r:
                assert r.status == 200


async def test_reload_keeps_unchanged_and_drops_removed(
    server: WSTestServer, other_server: WSTestServer, start_daemon: StartDaemon
) -> None:
    """A reload keeps an unchanged target's connection, closes a removed one with 1001 and
    removes its series."""
    from monitor import config

    keep = target("keep", server.url)
    h = await start_daemon(keep, target("gone", other_server.url))
    await server.wait_for(lambda: server.open_connections == 1)
    await other_server.wait_for(lambda: other_server.open_connections == 1)
    import yaml

    new = config.loads(yaml.safe_dump({"listen": "127.0.0.1:0", "targets": [keep]}))
    assert await h.daemon.reload(new)
    await other_server.wait_for(lambda: 1001 in other_server.close_frames)
    assert server.connections == 1
    assert not h.exists("wsmon_connected", target="gone")
    assert h.value("wsmon_connected", target="keep") == 1
    assert h.value("wsmon_targets") == 1


PROTOBUF = (
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
    "encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3"
)


async def test_protobuf_scrape_counts_what_the_server_answered(
    server: WSTestServer, start_daemon: StartDaemon
) -> None:
    """Asked for protobuf, /metrics writes every family the text format has, as delimited
    MetricFamily messages (gzip too). The RTT histogram counts the requests the server
    answered (give or take the one in flight at the scrape), and its native buckets and
    zero bucket hold every one of them."""
    from google.protobuf import proto

    from monitor.metrics_pb2 import MetricFamily

    h = await start_daemon(target("t", server.url), metrics={"histograms": "both"})
    await server.wait_for(lambda: server.request_count("ping") >= 5)
    async with aiohttp.ClientSession() as http:
        before = server.request_count("ping")
        headers = {"Accept": PROTOBUF, "Accept-Encoding": "gzip"}
        async with http.get(f"{h.base_url}/metrics", headers=headers) as r:
            assert r.headers["Content-Type"].startswith("application/vnd.google.protobuf")
            body = await r.read()
        after = server.request_count("ping")
        async with http.get(f"{h.base_url}/metrics") as r:
            text = await r.text()
    stream = io.BytesIO(body)
    families = {}
    while stream.tell() < len(body):
        family = proto.parse_length_prefixed(MetricFamily, stream)
        assert family is not None
        families[family.name] = family
    names = set()
    for f in text_string_to_metric_families(text):
        names.add(f"{f.name}_total" if f.type == "counter" else f.name)
    assert set(families) == names
    (rtt,) = families["wsmon_probe_rtt_seconds"].metric
    hist = rtt.histogram
    assert before - 1 <= hist.sample_count <= after
    assert hist.zero_count + sum(itertools.accumulate(hist.positive_delta)) == hist.sample_count
    assert hist.bucket[-1].cumulative_count <= hist.sample_count  # the classic ones too
