"""Stream probes against a real server that counts what it sent: messages, staleness,
resubscribe, reconnect, unsubscribe before close, refused subscribes; unsolicited pushes and
the server's rate limits."""

from __future__ import annotations

import asyncio
import io
import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Harness, StartDaemon, target
from wsserver import WSTestServer

from monitor import config as config_mod
from monitor import series
from monitor.app import Daemon
from monitor.cli import main
from monitor.config import ConfigError
from monitor.demo import demo_config
from monitor.demo_api import DemoAPI
from monitor.log import Logging

TICKS = {"ticks": "R_50", "subscribe": 1}


def stream(**extra: Any) -> dict[str, Any]:
    probe = {"name": "ticks", "kind": "stream", "send": TICKS, "expect": {"msg_type": "tick"}}
    probe.update(extra)
    return probe


def tp(h: Harness, name: str, t: str = "s", probe: str = "ticks") -> float:
    return h.value(name, target=t, probe=probe)


async def test_every_tick_sent_is_counted(server: WSTestServer, start_daemon: StartDaemon) -> None:
    """Ticks sent = messages counted; one subscribe, timed once; a gap per later message."""
    server.tick_rate = 100.0
    h = await start_daemon(target("s", server.url, probes=[stream(max_gap="2s")]))
    await h.wait_for(lambda: tp(h, "wsmon_stream_messages_total") >= 30)
    server.stalled = True
    await asyncio.sleep(0.05)  # what was in flight arrives
    sent = server.ticks_sent
    await h.wait_for(lambda: tp(h, "wsmon_stream_messages_total") == sent)
    assert tp(h, "wsmon_stream_gap_seconds_count") == sent - 1
    assert tp(h, "wsmon_stream_subscribes_total") == server.subscribes == 1
    assert tp(h, "wsmon_stream_subscribe_seconds_count") == 1
    assert tp(h, "wsmon_stream_stale") == 0
    assert tp(h, "wsmon_stream_last_message_timestamp_seconds") > 1e9
    assert h.value("wsmon_up", target="s") == 1  # streams alone: up while connected
    assert h.value("wsmon_unmatched_messages_total", target="s", reason="unknown_id") == 0


async def test_a_stall_is_caught_within_max_gap_and_counted_once(
    server: WSTestServer, start_daemon: StartDaemon
) -> None:
    """A stream that stops while pings are answered is stale within max_gap + 50 ms (by the
    server's clock: its last tick), counted once however long it stays stale, and recovers."""
    server.tick_rate = 50.0
    ping = {"name": "ping", "send": {"ping": 1}, "interval": "50ms", "timeout": "40ms"}
    h = await start_daemon(target("s", server.url, probes=[ping, stream(max_gap="200ms")]))
    await h.wait_for(lambda: tp(h, "wsmon_stream_messages_total") >= 10)
    loop = asyncio.get_running_loop()
    server.stalled = True  # read before each tick: none is sent after this
    await h.wait_for(lambda: tp(h, "wsmon_stream_stale") == 1, timeout=2)
    caught = loop.time() - server.last_tick_at
    assert caught <= 0.2 + 0.05 + 0.01  # (+ the 10 ms this test polls at)
    (stale,) = h.events("stream.stale")
    assert 0.2 <= stale["silent_s"] <= 0.25
    pings = server.request_count("ping")
    await asyncio.sleep(0.6)  # three times max_gap more: still one stall
    assert tp(h, "wsmon_stream_stalls_total") == 1
    assert server.request_count("ping") >= pings + 8  # the connection stayed alive
    assert h.value("wsmon_up", target="s") == 1
    server.stalled = False
    await h.wait_for(lambda: tp(h, "wsmon_stream_stale") == 0)
    assert tp(h, "wsmon_stream_stalls_total") == 1
    assert len(h.events("stream.recovered")) == 1
    assert server.connections == 1
    assert server.subscribes == 1


async def test_reconnects_authenticate_then_resubscribe(
    server: WSTestServer, start_daemon: StartDaemon
) -> None:
    """After N forced reconnects the server saw N + 1 subscribes, each after an authorize,
    and the rate-limit query, on every connection, in that order."""
    server.authorize_token = "tok-1234"
    auth = {"send": {"authorize": "tok-1234"}, "expect": {"msg_type": "authorize"}}
    h = await start_daemon(
        target(
            "s",
            server.url,
            auth=auth,
            rate_limits={"source": "website_status"},
            probes=[stream(max_gap="1s")],
        )
    )
    for n in range(1, 4):
        await h.wait_for(lambda n=n: tp(h, "wsmon_stream_messages_total") >= 3 * n)  # type: ignore[misc]
        await server.abort_all()
        await h.wait_for(lambda n=n: server.subscribes == n + 1)  # type: ignore[misc]
    await h.wait_for(lambda: tp(h, "wsmon_stream_subscribe_seconds_count") == 4)
    assert tp(h, "wsmon_stream_subscribes_total") == 4
    assert server.connections == 4
    for events in server.conn_events:
        assert events[:3] == ["authorize", "website_status", "subscribe"]
    assert tp(h, "wsmon_stream_stalls_total") == 0


async def test_resubscribe_on_the_same_connection(
    server: WSTestServer, start_daemon: StartDaemon
) -> None:
    """on_stale: resubscribe forgets the old subscription and subscribes again, on the same
    connection; the new subscription's messages count."""
    h = await start_daemon(
        target("s", server.url, probes=[stream(max_gap="150ms", on_stale="resubscribe")])
    )
    await h.wait_for(lambda: tp(h, "wsmon_stream_messages_total") >= 5)
    server.stalled = True
    await h.wait_for(lambda: server.subscribes == 2)
    server.stalled = False
    counted = tp(h, "wsmon_stream_messages_total")
    await h.wait_for(lambda: tp(h, "wsmon_stream_messages_total") >= counted + 5)
    await h.wait_for(lambda: tp(h, "wsmon_stream_stale") == 0)
    assert server.connections == 1
    assert server.conn_events[0][:3] == ["subscribe", "forget", "subscribe"]
    assert len(server.forgets) == 1
    assert tp(h, "wsmon_stream_stalls_total") == 1
    assert tp(h, "wsmon_stream_subscribes_total") == 2
    assert len(h.events("stream.resubscribe")) == 1


async def test_reconnect_closes_with_4000_after_the_unsubscribe(
    server: WSTestServer, start_daemon: StartDaemon
) -> None:
    h = await start_daemon(
        target("s", server.url, probes=[stream(max_gap="150ms", on_stale="reconnect")])
    )
    await h.wait_for(lambda: tp(h, "wsmon_stream_messages_total") >= 3)
    server.stalled = True
    await h.wait_for(lambda: server.connections == 2)
    server.stalled = False
    await h.wait_for(lambda: tp(h, "wsmon_stream_stale") == 0 and server.subscribes == 2)
    assert server.conn_events[0][-2:] == ["forget", "close:4000"]
    assert h.value("wsmon_disconnects_total", target="s", code="4000", origin="local") == 1
    assert tp(h, "wsmon_stream_stalls_total") == 1


async def test_shutdown_and_reload_unsubscribe_before_closing(
    server: WSTestServer, other_server: WSTestServer, start_daemon: StartDaemon
) -> None:
    """Stopping the daemon sends the unsubscribe, then the 1001 close; a reload that
    removes the stream probe (the target changes) the same."""
    h = await start_daemon(
        target("s", server.url, probes=[stream(max_gap="2s")]),
        target("o", other_server.url, probes=[stream(max_gap="2s")]),
    )
    await h.wait_for(lambda: tp(h, "wsmon_stream_messages_total", t="o") >= 2)
    await h.wait_for(lambda: tp(h, "wsmon_stream_messages_total") >= 2)
    cfg = config_mod.loads(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:0",
                "targets": [
                    target("s", server.url, probes=[stream(max_gap="2s")]),
                    target("o", other_server.url, probes=[]),  # the stream probe removed
                ],
            }
        )
    )
    assert await h.daemon.reload(cfg)
    await other_server.wait_for(lambda: other_server.connections == 2)
    assert other_server.conn_events[0][-2:] == ["forget", "close:1001"]
    assert not h.exists("wsmon_stream_messages_total", target="o", probe="ticks")
    await h.daemon.stop()
    assert server.conn_events[0][-2:] == ["forget", "close:1001"]
    assert other_server.conn_events[1] == ["close:1001"]  # connect-only: nothing to forget


async def test_refused_subscribe_backs_off_then_recovers(
    server: WSTestServer, start_daemon: StartDaemon
) -> None:
    """A RateLimit reply to the subscribe is counted as rate_limited and makes the stream
    stale; the retries come at 1, 2, 4 subscribe timeouts; an accepted one recovers it."""
    server.subscribe_error = "RateLimit"
    h = await start_daemon(target("s", server.url, probes=[stream(max_gap="100ms")]))
    loop = asyncio.get_running_loop()
    times: list[float] = []
    for n in range(1, 4):
        await h.wait_for(lambda n=n: server.subscribes == n)  # type: ignore[misc]
        times.append(loop.time())
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 0.09 <= gaps[0] <= 0.16, gaps
    assert 0.19 <= gaps[1] <= 0.27, gaps
    errors = h.value("wsmon_probe_errors_total", target="s", probe="ticks", reason="rate_limited")
    assert errors == 3
    assert tp(h, "wsmon_stream_stale") == 1
    assert tp(h, "wsmon_stream_stalls_total") == 1
    server.subscribe_error = "InvalidSymbol"
    await h.wait_for(lambda: server.subscribes == 4)
    await h.wait_for(
        lambda: (
            h.value("wsmon_probe_errors_total", target="s", probe="ticks", reason="api_error") == 1
        )
    )
    server.subscribe_error = None
    await h.wait_for(lambda: tp(h, "wsmon_stream_stale") == 0, timeout=3)
    assert tp(h, "wsmon_stream_subscribes_total") == server.subscribes == 5
    assert tp(h, "wsmon_stream_stalls_total") == 1


async def test_a_slow_start_is_not_a_stall(server: WSTestServer, start_daemon: StartDaemon) -> None:
    """subscribe_timeout, not max_gap, bounds the wait for the first message."""
    server.stalled = True
    h = await start_daemon(
        target("s", server.url, probes=[stream(max_gap="50ms", subscribe_timeout="400ms")])
    )
    await h.wait_for(lambda: server.subscribes == 1)
    await asyncio.sleep(0.25)
    assert tp(h, "wsmon_stream_stale") == 0
    server.stalled = False
    await h.wait_for(lambda: tp(h, "wsmon_stream_messages_total") >= 1)
    assert tp(h, "wsmon_probe_timeouts_total") == 0
    server.stalled = True
    await h.wait_for(lambda: tp(h, "wsmon_stream_stale") == 1)  # now max_gap counts
    assert tp(h, "wsmon_probe_timeouts_total") == 0


async def test_no_first_message_times_out(server: WSTestServer, start_daemon: StartDaemon) -> None:
    server.stalled = True
    h = await start_daemon(target("s", server.url, probes=[stream(max_gap="100ms")]))
    await h.wait_for(lambda: tp(h, "wsmon_stream_stale") == 1)
    assert tp(h, "wsmon_probe_timeouts_total") == 1
    assert tp(h, "wsmon_stream_subscribe_seconds_count") == 0


async def test_lag_from_the_server_timestamp(
    server: WSTestServer, start_daemon: StartDaemon
) -> None:
    """Every message with a `tick.epoch` (whole seconds) gives a lag within that second."""
    h = await start_daemon(
        target("s", server.url, probes=[stream(max_gap="1s", lag_field="tick.epoch")])
    )
    await h.wait_for(lambda: tp(h, "wsmon_stream_messages_total") >= 10)
    server.stalled = True
    await asyncio.sleep(0.05)
    count = tp(h, "wsmon_stream_lag_seconds_count")
    assert count == tp(h, "wsmon_stream_messages_total")
    assert 0 <= tp(h, "wsmon_stream_lag_seconds_sum") / count <= 1.05


async def test_pushes_outside_any_stream_are_unsolicited(
    server: WSTestServer, start_daemon: StartDaemon
) -> None:
    """A connect-only target holds the connection; what the server pushes is counted as
    unsolicited, message for message, and is no error."""
    server.stream_rate = 200.0
    h = await start_daemon(target("s", server.url, probes=[]))
    await h.wait_for(
        lambda: h.value("wsmon_unmatched_messages_total", target="s", reason="unsolicited") >= 20
    )
    server.stream_rate = 0.0
    await asyncio.sleep(0.05)
    unsolicited = h.value("wsmon_unmatched_messages_total", target="s", reason="unsolicited")
    assert unsolicited == server.streamed
    assert h.value("wsmon_up", target="s") == 1


async def test_rate_limits_beside_the_plan(server: WSTestServer, start_daemon: StartDaemon) -> None:
    """The server's limits (website_status) and what the probes plan, per window; a plan
    over a limit is a warning in the log."""
    fast = {"name": "ping", "send": {"ping": 1}, "interval": "100ms", "timeout": "50ms"}
    h = await start_daemon(
        target("s", server.url, probes=[fast, stream(max_gap="1s")], rate_limits={})
    )

    def limit(window: str) -> float:
        return h.value("wsmon_rate_limit_requests", target="s", window=window)

    await h.wait_for(lambda: limit("hourly") == 14400)
    assert limit("minutely") == 180
    planned = {
        w: h.value("wsmon_planned_requests", target="s", window=w) for w in ("minutely", "hourly")
    }
    # 600 pings a minute, one subscribe and one website_status per connection
    assert planned == {"minutely": 602, "hourly": 36002}
    (over,) = [e for e in h.events("rate_limit.plan_exceeds") if e["window"] == "minutely"]
    assert (over["planned"], over["limit"]) == (602, 180)
    assert h.value("wsmon_unmatched_messages_total", target="s", reason="unknown_id") == 0
    await asyncio.sleep(1.1)  # past the query's deadline (connect_timeout): it was answered
    assert h.events("rate_limit.unknown") == []


@pytest.mark.parametrize(
    ("probe", "problem"),
    [
        ({"name": "t", "kind": "stream", "send": TICKS}, "a stream probe needs `max_gap`"),
        (
            {"name": "t", "kind": "stream", "send": TICKS, "max_gap": "1s", "interval": "5s"},
            "a stream probe takes no `interval`",
        ),
        ({"name": "t", "send": {"ping": 1}, "max_gap": "1s"}, "`max_gap` applies to stream"),
        ({"name": "t", "kind": "stream", "max_gap": "1s"}, "a stream probe needs `send`"),
        (
            {"name": "t", "kind": "stream", "send": TICKS, "max_gap": "1s", "unsubscribe": {}},
            "the unsubscribe message must not be empty",
        ),
        (
            {"name": "t", "kind": "stream", "send": TICKS, "max_gap": "1s", "lag_field": "a..b"},
            "invalid field path 'a..b'",
        ),
        (
            {"name": "t", "kind": "stream", "send": TICKS, "max_gap": "1s", "on_stale": "wait"},
            "Input should be 'report', 'resubscribe' or 'reconnect'",
        ),
    ],
)
def test_bad_stream_probes_are_named(probe: dict[str, Any], problem: str) -> None:
    doc = {"targets": [{"name": "a", "url": "ws://127.0.0.1:1/ws", "probes": [probe]}]}
    with pytest.raises(ConfigError) as caught:
        config_mod.loads(yaml.safe_dump(doc))
    (line,) = caught.value.problems
    assert line.startswith("targets[0].probes[0]"), line
    assert problem in line, line


def test_streams_need_a_correlation_field() -> None:
    doc = {
        "targets": [
            {
                "name": "a",
                "url": "ws://127.0.0.1:1/ws",
                "correlation_field": None,
                "probes": [{"name": "t", "kind": "stream", "send": TICKS, "max_gap": "1s"}],
            }
        ]
    }
    with pytest.raises(ConfigError) as caught:
        config_mod.loads(yaml.safe_dump(doc))
    assert caught.value.problems == [
        "targets[0]: stream probes need `correlation_field` (their messages are recognised "
        "by the subscribe's id echoed in them)"
    ]


def test_check_config_warns_when_the_plan_exceeds_a_known_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A limit the config states is compared before any connection: 60 pings a minute, the
    subscribe and the query are 62 requests against a limit of 61."""
    ping = {"name": "ping", "send": {"ping": 1}, "interval": "1s", "timeout": "500ms"}
    doc = {
        "targets": [
            target("a", "ws://127.0.0.1:1/ws", probes=[ping, stream(max_gap="1s")],
                   rate_limits={"minutely": 61, "hourly": 3660}),
        ]
    }  # fmt: skip
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["check-config", str(path)]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert warnings == [
        f"{path}: warning: target 'a' plans 62 requests minutely and its rate_limits.minutely "
        "is 61: longer probe intervals, or fewer probes"
    ]  # (hourly: 3602 planned, under 3660)


async def test_the_demo_catches_its_zombie_stream() -> None:
    """`wsmon demo`'s config against its API with a stall due at once: the stalled ticks
    are caught after max_gap (3 s) while pings go on, resubscribed, and flow again."""
    api = DemoAPI(mean_stall_every=0.05, stall_duration=(3.2, 3.4), tick_interval=0.1)
    await api.start()
    stream_log = io.StringIO()
    daemon = Daemon(
        demo_config(api.url, "127.0.0.1:0"),
        Logging("json", "info", stream=stream_log),
        stop_timeout=2.0,
    )
    try:
        await daemon.start()
        h = Harness(daemon, stream_log)
        await h.wait_for(lambda: len(h.events("stream.recovered")) >= 1, timeout=6)
        stale = [e for e in h.events("stream.stale") if e["target"] == "demo-api"]
        assert stale
        assert stale[0]["on_stale"] == "resubscribe"
        assert h.value("wsmon_up", target="demo-api") == 1
        assert h.value("wsmon_rate_limit_requests", target="demo-api", window="minutely") == 180
    finally:
        await daemon.stop()
        await api.stop()


def test_series_of_a_stream_probe_as_documented() -> None:
    """docs/metrics.md: a stream probe costs 29 series, `rate_limits` 2 at start."""
    doc = {
        "targets": [
            {"name": "a", "url": "ws://127.0.0.1:1/ws", "probes": [stream(max_gap="1s")]},
            {"name": "b", "url": "ws://127.0.0.1:1/ws", "probes": [], "rate_limits": {}},
            {"name": "c", "url": "ws://127.0.0.1:1/ws", "probes": []},
        ]
    }
    counted = series.count(config_mod.loads(yaml.safe_dump(doc))).per_target
    assert counted == {"a": 10 + 29, "b": 10 + 2, "c": 10}
