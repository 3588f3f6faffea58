"""One-shot probes: `wsmon probe` as a user runs it, and `GET /probe` as Prometheus scrapes
it, against real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import yaml
from aiohttp import web
from certs import PKI, make_pki
from conftest import Harness, StartDaemon, target
from prometheus_client.parser import text_string_to_metric_families
from wsserver import WSTestServer

from monitor import config as config_mod
from monitor.cli import main
from monitor.config import ConfigError
from monitor.config.probeurls import parse_probe_url, parse_target_pattern
from monitor.exposition import scrape_deadline

WSMON = [sys.executable, "-m", "monitor"]
PING = {"name": "ping", "send": {"ping": 1}, "expect": {"msg_type": "ping"}, "timeout": "1s"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("oneshot-pki"))


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wsmon_probe(*args: str) -> tuple[int, str, str]:
    """`wsmon probe ARGS` in its own process, without blocking the servers of the test."""
    proc = await asyncio.create_subprocess_exec(
        *WSMON, "probe", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# --- wsmon probe ------------------------------------------------------------------------------


class TestCommand:
    async def test_delayed_server_rtts_at_least_the_delay(self) -> None:
        """Every round trip's RTT is at least the server's reply delay; the handshake's
        phases are timed; the connection is closed with 1000; exit 0."""
        async with WSTestServer(reply_delay=0.1) as server:
            code, out, _ = await wsmon_probe(
                server.url, "--count", "3", "--interval", "50ms", "--json"
            )
            await server.wait_for(lambda: server.close_frames == [1000])
        assert code == 0
        doc = json.loads(out)
        assert doc["success"] is True
        assert len(doc["rtt_seconds"]) == 3
        assert all(0.1 <= rtt < 0.5 for rtt in doc["rtt_seconds"])
        assert set(doc["phases"]) == {"connect", "upgrade"}
        assert doc["close_code"] == 1000
        assert doc["error"] is None
        assert doc["tls"] is None
        assert [t["outcome"] for t in doc["round_trips"]] == ["ok"] * 3
        assert server.request_count("ping") == 3

    async def test_human_output_like_ping(self, server: WSTestServer) -> None:
        """Without --json: the phases, one line per round trip, and a summary."""
        code, out, _ = await wsmon_probe(server.url, "--count", "2", "--interval", "20ms")
        assert code == 0
        lines = out.splitlines()
        assert lines[0] == f"connected to {server.url} (HTTP 101)"
        assert any(line.split()[0] == "connect" for line in lines[1:3])
        assert [line.split(" time=")[0] for line in lines if line.startswith("reply:")] == [
            "reply: ping seq=1",
            "reply: ping seq=2",
        ]
        assert "2 round trips, 2 good, 0% failed, close code 1000 (local)" in lines
        assert lines[-1].startswith("rtt min/avg/max = ")

    def test_closed_port_exits_1(self) -> None:
        """Nothing listening: exit 1, `refused`, no round trip, no close code."""
        proc = subprocess.run(
            [*WSMON, "probe", f"ws://127.0.0.1:{closed_port()}/", "--json"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert proc.returncode == 1
        doc = json.loads(proc.stdout)
        assert doc["success"] is False
        assert doc["error"].startswith("refused: ")
        assert doc["rtt_seconds"] == []
        assert doc["close_code"] is None
        assert doc["upgraded"] is False

    @pytest.mark.parametrize(
        ("args", "problem"),
        [
            (["--send", "{bad"], "--send: not JSON"),
            (["--send", "[1]"], "--send: expected a JSON object"),
            (["--expect", "3"], "--expect: expected a JSON object"),
            (["--ws-ping", "--expect", "{}"], "--expect: a ws-ping probe is answered by a pong"),
            (["--count", "0"], "--count: must be at least 1"),
            (["--timeout", "soon"], "--timeout: invalid duration 'soon'"),
            (["--header", "NoColon"], "--header 'NoColon': expected NAME:VALUE"),
            (["--proxy", "socks5://p:1"], "--proxy: expected http://"),
            (["--insecure"], "--ca-file/--insecure: `tls` options need a wss:// URL"),
        ],
    )
    def test_usage_errors_exit_2(
        self, args: list[str], problem: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A bad flag is exit 2 and a message naming it; nothing is contacted."""
        with pytest.raises(SystemExit) as exc:
            main(["probe", "ws://127.0.0.1:9/", *args])
        assert exc.value.code == 2
        assert f"wsmon probe: error: {problem}" in capsys.readouterr().err

    def test_usage_error_in_a_process(self) -> None:
        """The same as the user sees it: exit 2, the usage and the problem on stderr."""
        proc = subprocess.run(
            [*WSMON, "probe", "http://example.com/"], capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 2
        assert proc.stdout == ""
        assert "usage: wsmon probe" in proc.stderr
        assert "URL: URL scheme must be ws or wss, not 'http'" in proc.stderr

    async def test_ws_ping(self, server: WSTestServer) -> None:
        """--ws-ping times a protocol ping frame to its pong."""
        code, out, _ = await wsmon_probe(server.url, "--ws-ping", "--json")
        assert code == 0
        doc = json.loads(out)
        assert [t["probe"] for t in doc["round_trips"]] == ["ws-ping"]
        assert server.pings_received == 1
        assert server.requests == []

    async def test_unexpected_reply_exits_1(self, server: WSTestServer) -> None:
        """A reply that does not match --expect is a failed round trip: exit 1."""
        code, out, _ = await wsmon_probe(
            server.url, "--send", '{"time": 1}', "--expect", '{"msg_type": "nope"}', "--json"
        )
        assert code == 1
        (trip,) = json.loads(out)["round_trips"]
        assert trip["probe"] == "time"
        assert trip["outcome"] == "unexpected_reply"
        assert trip["rtt_seconds"] is not None

    async def test_silent_server_bounded_by_the_timeout(self, server: WSTestServer) -> None:
        """A server that never answers: the run ends by --timeout, closing with 1000."""
        server.silent = True
        started = time.monotonic()
        code, out, _ = await wsmon_probe(server.url, "--timeout", "300ms", "--json")
        assert code == 1
        doc = json.loads(out)
        assert doc["duration_seconds"] < 0.6
        assert doc["round_trips"][0]["outcome"] == "timeout"
        assert doc["close_code"] == 1000
        assert time.monotonic() - started < 2.0
        await server.wait_for(lambda: server.close_frames == [1000])

    async def test_refused_upgrade(self, server: WSTestServer) -> None:
        """An upgrade answered 403: exit 1 with the HTTP status."""
        server.handshake_status = 403
        code, out, _ = await wsmon_probe(server.url, "--json")
        assert code == 1
        doc = json.loads(out)
        assert doc["status_code"] == 403
        assert doc["upgraded"] is False
        assert doc["error"].startswith("handshake: HTTP 403")

    async def test_wss_certificate(self, pki: PKI) -> None:
        """For wss://: the TLS phase, the version and the certificate's subject, issuer and
        expiry; with --header sent in the upgrade."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki.server.cert, pki.server.key)
        async with WSTestServer(ssl_context=ctx) as server:
            code, out, _ = await wsmon_probe(
                server.url, "--ca-file", str(pki.ca), "--header", "X-Probe: yes", "--json"
            )
            assert code == 0
            doc = json.loads(out)
            assert set(doc["phases"]) == {"connect", "tls", "upgrade"}
            assert doc["tls"]["version"].startswith("TLSv1.")
            assert "commonName=server" in doc["tls"]["subject"]
            assert doc["tls"]["issuer"] != doc["tls"]["subject"]
            assert doc["tls"]["not_after"] > time.time()
            assert server.upgrade_headers[0]["X-Probe"] == "yes"
            code, out, _ = await wsmon_probe(server.url)  # the test CA is not trusted
            assert code == 1
            assert "FAILED: tls: " in out

    async def test_through_a_proxy(self, server: WSTestServer) -> None:
        """--proxy tunnels with CONNECT."""
        from connectproxy import ConnectProxy

        async with ConnectProxy() as proxy:
            code, _, _ = await wsmon_probe(server.url, "--proxy", proxy.url)
            assert code == 0
            assert [(r.method, r.target) for r in proxy.requests] == [
                ("CONNECT", f"127.0.0.1:{server.port}")
            ]


# --- allowed targets ----------------------------------------------------------------------


class TestAllowedTargets:
    @pytest.mark.parametrize(
        ("pattern", "url", "allowed"),
        [
            ("wss://*.example.com/*", "wss://api.example.com/v3?app_id=1", True),
            ("wss://*.example.com/*", "WSS://API.Example.COM:443/v3", True),
            ("wss://*.example.com/*", "wss://evil.com/.example.com/", False),
            ("wss://*.example.com/*", "wss://evil.com:443/.example.com/x", False),
            ("wss://*.example.com/*", "wss://example.com.evil.com/", False),
            ("wss://*.example.com/*", "wss://api.example.com:8443/", False),
            ("wss://*.example.com/*", "ws://api.example.com/", False),
            ("ws://127.0.0.1:*", "ws://127.0.0.1:8080/ws", True),
            ("ws://127.0.0.1:*", "ws://127.0.0.10:80/", False),
            ("ws://127.0.0.1:*", "ws://127.0.0.1.evil.example/", False),
            ("ws://127.0.0.1:9815/ws", "ws://127.0.0.1:9815/ws", True),
            ("ws://127.0.0.1:9815/ws", "ws://127.0.0.1:9815/ws?x=1", False),
            ("ws://[::1]:*", "ws://[0:0::1]:80/", True),
        ],
    )
    def test_patterns_match_part_by_part(self, pattern: str, url: str, allowed: bool) -> None:
        """A `*` stands for any run of characters within its part of the URL: a host
        pattern cannot reach into the port or the path."""
        assert parse_target_pattern(pattern).matches(parse_probe_url(url)) is allowed

    @pytest.mark.parametrize(
        ("url", "problem"),
        [
            ("ws://127.0.0.1:80@evil.example/", "must not carry user:password@"),
            ("ws://user@127.0.0.1/", "must not carry user:password@"),
            ("ws://127.0.0.1:80%40evil.example/", "port must be a number"),
            ("ws://127.0.0.1\\@evil.example/", "no spaces, control characters or backslashes"),
            ("ws://127.0.0.1/ x", "no spaces"),
            ("http://127.0.0.1/", "scheme must be ws or wss"),
            ("ws://ex%61mple.com/", "invalid host"),
            ("ws:///path", "has no host"),
        ],
    )
    def test_refused_targets(self, url: str, problem: str) -> None:
        """Targets that could mean one host to the matcher and another to the connection
        are refused outright."""
        with pytest.raises(ValueError, match=problem):
            parse_probe_url(url)


# --- the probe_endpoint configuration ---------------------------------------------------------


def load(block: dict[str, Any]) -> config_mod.Config:
    return config_mod.loads(yaml.safe_dump({"probe_endpoint": block}))


def problems(block: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load(block)
    return exc.value.problems


class TestConfig:
    def test_a_config_of_probe_modules_only(self) -> None:
        """`targets` may be left out when /probe is configured; module keys are target
        keys, their header values secrets."""
        cfg = load(
            {
                "allowed_targets": ["wss://*.example.com/*"],
                "modules": {"m": {"probes": [PING], "headers": {"Authorization": "Bearer t0k3n"}}},
            }
        )
        assert cfg.targets == ()
        assert cfg.probe_endpoint is not None
        assert cfg.probe_endpoint.max_concurrent == 20
        assert cfg.probe_endpoint.modules["m"].probes[0].timeout == 1.0
        assert "Bearer t0k3n" in cfg.secrets

    @pytest.mark.parametrize(
        ("block", "expected"),
        [
            (
                {"allowed_targets": ["ws://h:*"], "modules": {"m": {"probes": [{"name": "p"}]}}},
                "probe_endpoint.modules.m.probes[0].send: a message probe needs `send` "
                "(the JSON object to send)",
            ),
            (
                {"allowed_targets": ["ws://h:*"], "modules": {"m": {"probs": []}}},
                "probe_endpoint.modules.m.probs: unknown key (did you mean 'probes'?)",
            ),
            (
                {"allowed_targets": ["ws://h:*"], "modules": {"m": {"reconnect": {}}}},
                "probe_endpoint.modules.m: `reconnect` does not apply to a /probe module "
                "(one connection, each probe sent once)",
            ),
            (
                {"allowed_targets": ["http://h/"], "modules": {"m": {}}},
                "probe_endpoint.allowed_targets[0]: invalid target pattern 'http://h/': the "
                "scheme must be ws or wss",
            ),
            (
                {"allowed_targets": ["ws://u@h/"], "modules": {"m": {}}},
                "probe_endpoint.allowed_targets[0]: invalid target pattern 'ws://u@h/': "
                "targets carry no user:password@",
            ),
            (
                {"allowed_targets": [], "modules": {"m": {}}},
                "probe_endpoint.allowed_targets: list at least one pattern: /probe contacts "
                "only targets that match one",
            ),
            (
                {"allowed_targets": ["ws://h:*"], "modules": {"a b": {}}},
                "probe_endpoint.modules.a b: invalid name 'a b': use letters, digits, '_', "
                "'.', '-'",
            ),
            (
                {"allowed_targets": ["ws://h:*"], "modules": {}, "max_concurent": 2},
                "probe_endpoint.max_concurent: unknown key (did you mean 'max_concurrent'?)",
            ),
        ],
    )
    def test_problems_by_path(self, block: dict[str, Any], expected: str) -> None:
        """Module problems carry their path, as a target's do."""
        assert expected in problems(block)


# --- GET /probe ---------------------------------------------------------------------------------


def endpoint(*patterns: str, **modules: Any) -> dict[str, Any]:
    return {
        "allowed_targets": list(patterns),
        "max_concurrent": 4,
        "modules": modules or {"ping": {"probes": [PING], "close_timeout": "500ms"}},
    }


async def get_probe(
    h: Harness, target: str | None, module: str | None = "ping", **headers: str
) -> tuple[int, str]:
    params = {k: v for k, v in (("target", target), ("module", module)) if v is not None}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{h.base_url}/probe", params=params, headers=headers) as r,
    ):
        return r.status, await r.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def test_deadline_from_the_header() -> None:
    """The scrape timeout header less 0.5 s, at least half of it, at most 120 s; 10 s
    without a header."""
    assert scrape_deadline(None) == 10.0
    assert scrape_deadline("10") == 9.5
    assert scrape_deadline("0.6") == 0.3
    assert scrape_deadline("600") == 120.0
    for bad in ("-1", "0", "nan"):
        with pytest.raises(ValueError, match="positive number of seconds"):
            scrape_deadline(bad)
    with pytest.raises(ValueError, match="could not convert"):
        scrape_deadline("soon")


# The endpoint does not depend on how the daemon's own targets read their sockets.
@pytest.mark.parametrize("receive_path", ["hooked"], indirect=True)
class TestEndpoint:
    async def test_success(self, start_daemon: StartDaemon) -> None:
        """A good probe: success, HTTP 101, upgraded, the RTT of each probe (at least the
        server's delay), every phase, closed with 1000; all gauges, from a fresh registry."""
        async with WSTestServer(reply_delay=0.05) as server:
            h = await start_daemon(probe_endpoint=endpoint("ws://127.0.0.1:*"))
            status, text = await get_probe(h, server.url)
            await server.wait_for(lambda: server.close_frames == [1000])
        assert status == 200
        assert value(text, "probe_success") == 1
        assert value(text, "probe_websocket_status_code") == 101
        assert value(text, "probe_websocket_connection_upgraded") == 1
        assert 0.05 <= value(text, "probe_websocket_rtt_seconds", probe="ping") < 0.5
        assert value(text, "probe_websocket_probe_success", probe="ping") == 1
        assert value(text, "probe_websocket_close_code") == 1000
        assert value(text, "probe_duration_seconds") >= 0.05
        for phase in ("resolve", "connect", "tls", "upgrade"):
            assert value(text, "probe_websocket_duration_seconds", phase=phase) >= 0
        types = {f.name: f.type for f in text_string_to_metric_families(text)}
        assert set(types.values()) == {"gauge"}
        assert "probe_ssl_earliest_cert_expiry" not in types
        # a second probe starts from nothing: nothing of the first is carried over
        status, text = await get_probe(h, f"ws://127.0.0.1:{closed_port()}/")
        assert value(text, "probe_success") == 0
        assert not [k for k in samples(text) if k[0] == "probe_websocket_rtt_seconds"]

    async def test_failure_is_200_with_probe_success_0(self, start_daemon: StartDaemon) -> None:
        """Nothing listening: HTTP 200 with probe_success 0 and status code 0."""
        h = await start_daemon(probe_endpoint=endpoint("ws://127.0.0.1:*"))
        status, text = await get_probe(h, f"ws://127.0.0.1:{closed_port()}/ws")
        assert status == 200
        assert value(text, "probe_success") == 0
        assert value(text, "probe_websocket_status_code") == 0
        assert value(text, "probe_websocket_connection_upgraded") == 0
        assert value(text, "probe_websocket_probe_success", probe="ping") == 0
        assert not [k for k in samples(text) if k[0] == "probe_websocket_close_code"]

    async def test_refused_handshake(self, server: WSTestServer, start_daemon: StartDaemon) -> None:
        """An upgrade refused with 403 is a failed probe (HTTP 200), its status recorded."""
        server.handshake_status = 403
        h = await start_daemon(probe_endpoint=endpoint("ws://127.0.0.1:*"))
        status, text = await get_probe(h, server.url)
        assert status == 200
        assert value(text, "probe_success") == 0
        assert value(text, "probe_websocket_status_code") == 403
        assert value(text, "probe_websocket_connection_upgraded") == 0

    async def test_bad_requests(self, server: WSTestServer, start_daemon: StartDaemon) -> None:
        """Unknown or missing module, missing or malformed target, a bad timeout header:
        400; a target no pattern allows: 403. None of them is contacted."""
        h = await start_daemon(probe_endpoint=endpoint(f"ws://127.0.0.1:{server.port}/ws"))
        cases = [
            (await get_probe(h, server.url, "nope"), 400, "unknown module 'nope' (modules: ping)"),
            (await get_probe(h, server.url, None), 400, "the module parameter is missing"),
            (await get_probe(h, None), 400, "the target parameter is missing"),
            (
                await get_probe(h, f"ws://127.0.0.1:{server.port}@evil.example/ws"),
                400,
                "bad target: a probe target must not carry user:password@",
            ),
            (
                await get_probe(h, f"ws://127.0.0.1:{server.port}/other"),
                403,
                "target not allowed by probe_endpoint.allowed_targets",
            ),
            (
                await get_probe(h, server.url, **{"X-Prometheus-Scrape-Timeout-Seconds": "x"}),
                400,
                "bad X-Prometheus-Scrape-Timeout-Seconds",
            ),
        ]
        for (status, text), want_status, want_text in cases:
            assert status == want_status, text
            assert want_text in text
        assert server.http_requests == server.connections == 0
        assert h.events("probe_endpoint.denied")[0]["target"] == (
            f"ws://127.0.0.1:{server.port}/other"
        )

    async def test_not_allowed_is_never_contacted(self, start_daemon: StartDaemon) -> None:
        """A listening server outside `allowed_targets` sees no connection at all, however
        the URL is dressed up."""
        async with WSTestServer() as allowed, WSTestServer() as other:
            h = await start_daemon(probe_endpoint=endpoint(f"ws://127.0.0.1:{allowed.port}/*"))
            port = other.port
            for url in (
                other.url,
                f"ws://127.0.0.1:{allowed.port}@127.0.0.1:{port}/ws",
                f"ws://127.0.0.1:{port}/ws#127.0.0.1:{allowed.port}/ws",
                f"ws://127.0.0.1:{port}/127.0.0.1:{allowed.port}/ws",
                f"WS://127.0.0.1:{port}/ws",
            ):
                status, _ = await get_probe(h, url)
                assert status in (400, 403), url
            assert other.http_requests == other.connections == 0
            assert (await get_probe(h, allowed.url))[0] == 200
            assert allowed.connections == 1

    async def test_no_probe_endpoint_is_404(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """Without a `probe_endpoint` block /probe is 404."""
        h = await start_daemon(
            {"name": "t", "url": server.url, "probes": []},
        )
        status, text = await get_probe(h, server.url)
        assert status == 404
        assert text == "no probe_endpoint in the configuration\n"

    async def test_over_max_concurrent_is_503_at_once(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """With every slot taken, the next request is answered 503 at once."""
        server.silent = True
        slow = {"probes": [{**PING, "timeout": "600ms"}], "close_timeout": "200ms"}
        block = {**endpoint("ws://127.0.0.1:*", ping=slow), "max_concurrent": 1}
        h = await start_daemon(probe_endpoint=block)
        first = asyncio.create_task(get_probe(h, server.url))
        await server.wait_for(lambda: server.request_count("ping") == 1)
        started = time.monotonic()
        status, text = await get_probe(h, server.url)
        assert time.monotonic() - started < 0.3
        assert status == 503
        assert "1 probes in flight (probe_endpoint.max_concurrent)" in text
        status, text = await first
        assert status == 200
        assert value(text, "probe_success") == 0
        assert server.connections == 1

    async def test_deadline_from_the_scrape_timeout(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """A server that never answers: the probe ends by the scrape timeout less 0.5 s,
        though its own timeout is longer, and still closes with 1000."""
        server.silent = True
        slow = {"probes": [{**PING, "timeout": "5s"}], "close_timeout": "500ms"}
        h = await start_daemon(probe_endpoint=endpoint("ws://127.0.0.1:*", ping=slow))
        started = time.monotonic()
        status, text = await get_probe(
            h, server.url, **{"X-Prometheus-Scrape-Timeout-Seconds": "1.2"}
        )
        assert status == 200
        assert time.monotonic() - started < 1.2
        assert 0.7 <= value(text, "probe_duration_seconds") < 1.0
        assert value(text, "probe_success") == 0
        await server.wait_for(lambda: server.close_frames == [1000])

    async def test_basic_auth_applies(
        self, server: WSTestServer, start_daemon: StartDaemon, tmp_path: Path
    ) -> None:
        """The web config's basic auth guards /probe as it does /metrics: without
        credentials 401 and the target is not contacted."""
        password = "correct horse"
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        web = tmp_path / "web.yml"
        web.write_text(yaml.safe_dump({"basic_auth_users": {"prom": hashed}}))
        h = await start_daemon(
            probe_endpoint=endpoint("ws://127.0.0.1:*"), web_config_file=str(web)
        )
        status, _ = await get_probe(h, server.url)
        assert status == 401
        assert server.http_requests == 0
        token = base64.b64encode(f"prom:{password}".encode()).decode()
        status, text = await get_probe(h, server.url, Authorization=f"Basic {token}")
        assert status == 200
        assert value(text, "probe_success") == 1

    async def test_auth_and_stream_modules(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """A module's auth runs first; a stream probe succeeds on its first message and is
        unsubscribed before the close. A wrong token fails the probe after the upgrade."""
        server.authorize_token = "s3cret-token"
        stream = {
            "name": "ticks", "kind": "stream", "send": {"ticks": "R_100", "subscribe": 1},
            "max_gap": "1s", "subscribe_timeout": "500ms",
        }  # fmt: skip
        good = {"auth": {"send": {"authorize": "s3cret-token"}}, "probes": [PING, stream]}
        bad = {"auth": {"send": {"authorize": "wrong-token"}}, "probes": [PING]}
        h = await start_daemon(probe_endpoint=endpoint("ws://127.0.0.1:*", good=good, bad=bad))
        status, text = await get_probe(h, server.url, "good")
        assert status == 200
        assert value(text, "probe_success") == 1
        assert value(text, "probe_websocket_probe_success", probe="ticks") == 1
        assert value(text, "probe_websocket_rtt_seconds", probe="ticks") >= 0
        await server.wait_for(
            lambda: len(server.conn_events) == 1 and "close:1000" in server.conn_events[0]
        )
        assert server.conn_events[0][:3] == ["authorize", "subscribe", "forget"]
        status, text = await get_probe(h, server.url, "bad")
        assert value(text, "probe_success") == 0
        assert value(text, "probe_websocket_connection_upgraded") == 1
        assert value(text, "probe_websocket_close_code") == 1000
        assert "s3cret-token" not in h.stream.getvalue()

    async def test_wss_certificate_expiry(self, pki: PKI, start_daemon: StartDaemon) -> None:
        """For wss://: probe_ssl_earliest_cert_expiry and the TLS version, with the
        module's `tls` options."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki.server.cert, pki.server.key)
        module = {"probes": [PING], "tls": {"ca_file": str(pki.ca)}}
        async with WSTestServer(ssl_context=ctx) as server:
            h = await start_daemon(probe_endpoint=endpoint("wss://127.0.0.1:*", ping=module))
            status, text = await get_probe(h, server.url)
        assert status == 200
        assert value(text, "probe_success") == 1
        assert value(text, "probe_ssl_earliest_cert_expiry") > time.time()
        assert value(text, "probe_websocket_duration_seconds", phase="tls") > 0
        versions = [k for k in samples(text) if k[0] == "probe_tls_version_info"]
        assert len(versions) == 1

    async def test_reload_brings_the_endpoint(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """A reload that adds `probe_endpoint` turns /probe on; one that drops it, off."""
        h = await start_daemon({"name": "t", "url": server.url, "probes": []})
        assert (await get_probe(h, server.url))[0] == 404
        doc = {
            "listen": "127.0.0.1:0",
            "targets": [{"name": "t", "url": server.url, "probes": []}],
            "probe_endpoint": endpoint("ws://127.0.0.1:*"),
        }
        assert await h.daemon.reload(config_mod.loads(yaml.safe_dump(doc)))
        assert (await get_probe(h, server.url))[0] == 200
        del doc["probe_endpoint"]
        assert await h.daemon.reload(config_mod.loads(yaml.safe_dump(doc)))
        assert (await get_probe(h, server.url))[0] == 404


@contextlib.asynccontextmanager
async def redirecting(elsewhere: WSTestServer) -> AsyncIterator[str]:
    """A WebSocket URL whose upgrade is answered with a redirect to `elsewhere`."""

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{elsewhere.port}/ws")

    app = web.Application()
    app.router.add_get("/ws", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"ws://127.0.0.1:{runner.addresses[0][1]}/ws"
    finally:
        await runner.cleanup()


class TestRedirects:
    async def test_a_redirect_is_not_followed(self) -> None:
        """An upgrade answered with a redirect fails with its status; the place it points
        to is never contacted (a /probe target could otherwise lead anywhere)."""
        async with WSTestServer() as elsewhere, redirecting(elsewhere) as url:
            code, out, _ = await wsmon_probe(url, "--json")
        assert code == 1
        doc = json.loads(out)
        assert doc["status_code"] == 302
        assert doc["error"] == (
            f"handshake: HTTP 302: redirect to http://127.0.0.1:{elsewhere.port}/ws not followed"
        )
        assert elsewhere.http_requests == 0

    async def test_the_daemon_follows_no_redirect_either(self, start_daemon: StartDaemon) -> None:
        """A configured target that redirects fails its handshake (`handshake`, HTTP 302): its
        headers and auth message go to no other host."""
        async with WSTestServer() as elsewhere, redirecting(elsewhere) as url:
            h = await start_daemon(target("r", url, headers={"X-Api-Key": "k-123456"}))
            await h.wait_for(
                lambda: h.value("wsmon_connect_failures_total", target="r", reason="handshake") >= 1
            )
            (failed, *_) = h.events("connect.failed")
            assert failed["error"].startswith("HTTP 302: redirect to")
            assert elsewhere.http_requests == 0
