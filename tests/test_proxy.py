"""Targets through an HTTP CONNECT proxy: ws:// tunnelled too (never a plain GET), TLS to the
target inside the tunnel, credentials sent and never logged, a refusing proxy named."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import subprocess
import sys

import pytest
import yaml
from certs import PKI, make_pki
from conftest import StartDaemon, target
from connectproxy import ConnectProxy
from cryptography import x509
from wsserver import WSTestServer

from monitor import config as config_mod
from monitor.config import ConfigError


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def test_ws_is_tunnelled_with_connect(
    server: WSTestServer, start_daemon: StartDaemon
) -> None:
    """A ws:// target goes through CONNECT to its host and port (the proxy refuses plain
    requests, as CONNECT-only egress proxies do) and its probes are answered."""
    async with ConnectProxy() as proxy:
        h = await start_daemon(target("p", server.url, proxy=proxy.url))
        await h.wait_for(
            lambda: h.value("wsmon_probe_rtt_seconds_count", target="p", probe="ping") >= 2
        )
        assert [(r.method, r.target) for r in proxy.requests] == [
            ("CONNECT", f"127.0.0.1:{server.port}")
        ]
        assert proxy.tunnels == server.connections == 1
        assert server.request_count("ping") >= 2
        phases = h.events("connect.ok")[0]["phases_ms"]
        assert set(phases) == {"connect", "upgrade"}


async def test_wss_through_the_tunnel(pki: PKI, start_daemon: StartDaemon) -> None:
    """TLS to the target runs inside the tunnel, with the target's own trust and timing."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    pair = pki.issue(
        "proxied",
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        not_before=now - dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=20),
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pair.cert, pair.key)
    async with WSTestServer(ssl_context=ctx) as server, ConnectProxy() as proxy:
        h = await start_daemon(
            target("s", server.url, proxy=proxy.url, tls={"ca_file": str(pki.ca)})
        )
        await h.wait_for(
            lambda: h.value("wsmon_probe_rtt_seconds_count", target="s", probe="ping") >= 1
        )
        assert [r.method for r in proxy.requests] == ["CONNECT"]
        assert set(h.events("connect.ok")[0]["phases_ms"]) == {"connect", "tls", "upgrade"}
        assert h.value("wsmon_tls_cert_not_after_timestamp_seconds", target="s") > 0


async def test_credentials_are_sent_and_never_logged(
    server: WSTestServer, start_daemon: StartDaemon
) -> None:
    async with ConnectProxy(credentials=("wsmon", "proxy-pass-4711")) as proxy:
        url = proxy.url.replace("http://", "http://wsmon:proxy-pass-4711@")
        h = await start_daemon(target("p", server.url, proxy=url))
        await h.wait_for(lambda: h.value("wsmon_connected", target="p") == 1)
        assert proxy.tunnels == 1
        # a wrong password: the proxy's 407 is a connect failure of its own reason
        wrong = proxy.url.replace("http://", "http://wsmon:wrong-pass-0815@")
        h2 = await start_daemon(target("q", server.url, proxy=wrong))
        await h2.wait_for(
            lambda: h2.value("wsmon_connect_failures_total", target="q", reason="proxy") >= 1
        )
        text = h.stream.getvalue() + h2.stream.getvalue()
        assert "proxy-pass-4711" not in text
        assert "wrong-pass-0815" not in text
        assert proxy.tunnels == 1  # the wrong password never got a tunnel


async def test_an_unreachable_proxy_is_the_proxy_reason(start_daemon: StartDaemon) -> None:
    h = await start_daemon(target("p", "ws://127.0.0.1:9/ws", proxy="http://127.0.0.1:9"))
    await h.wait_for(
        lambda: h.value("wsmon_connect_failures_total", target="p", reason="proxy") >= 1
    )


@pytest.mark.parametrize(
    ("proxy", "problem"),
    [
        (
            "socks5://127.0.0.1:1080",
            "expected http://[user:password@]host:port (an HTTP CONNECT proxy)",
        ),
        ("http://127.0.0.1", "the proxy URL needs a port (http://host:port)"),
        ("http://127.0.0.1:3128/path", "a proxy URL has no path or query"),
    ],
)
def test_bad_proxy_urls_are_named(proxy: str, problem: str) -> None:
    doc = {"targets": [{"name": "a", "url": "ws://127.0.0.1:1/ws", "proxy": proxy}]}
    with pytest.raises(ConfigError) as caught:
        config_mod.loads(yaml.safe_dump(doc))
    assert caught.value.problems == [f"targets[0].proxy: {problem}"]


def test_proxy_credentials_are_secrets() -> None:
    doc = {
        "defaults": {"proxy": "http://user:pw-from-defaults@127.0.0.1:3128"},
        "targets": [{"name": "a", "url": "ws://127.0.0.1:1/ws"}],
    }
    cfg = config_mod.loads(yaml.safe_dump(doc))
    assert cfg.targets[0].proxy == "http://user:pw-from-defaults@127.0.0.1:3128"
    assert "pw-from-defaults" in cfg.secrets


def test_the_proxy_client_is_loaded_by_the_first_tunnel_only() -> None:
    """A daemon without proxies never imports the tunnel's library (nor bcrypt, which only a
    web config with users needs); the first tunnel loads it, and with it the errors a failed
    tunnel is told by."""
    code = (
        "import asyncio, sys\n"
        "from monitor import app, cli, proxy\n"
        "print(sorted(m for m in ('aiohttp_socks', 'bcrypt') if m in sys.modules))\n"
        "print(proxy.tunnel_errors())\n"
        "async def tunnel(): await proxy.tunnel('http://127.0.0.1:9/').close()\n"
        "asyncio.run(tunnel())\n"
        "print([e.__name__ for e in proxy.tunnel_errors()])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()
    assert out == ["[]", "()", "['ProxyConnectionError', 'ProxyError', 'ProxyTimeoutError']"]
