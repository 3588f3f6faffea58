"""TLS: certificate problems fail the handshake as `reason="tls"` with OpenSSL's own words in
the log, and the target's `tls` options make each of those servers work when configured.

Every certificate is generated here, into a temporary directory, by a throw-away test CA
(EC P-256 keys, so the whole set costs milliseconds); the system trust store never trusts it.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from certs import PKI, KeyPair, make_pki
from conftest import Harness, StartDaemon, target
from wsserver import WSTestServer

from monitor import config
from monitor.handles import CONNECT_FAILURE_REASONS


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A test CA and the certificates of every case, generated once per test run."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_context(pair: KeyPair, client_ca: Path | None = None) -> ssl.SSLContext:
    """The test server's side: present `pair`; with `client_ca`, demand a client certificate
    issued by it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pair.cert, pair.key)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    return ctx


class AlertingTLSServer:
    """A TLS listener on 127.0.0.1 that fails every handshake the way OpenSSL servers do.

    asyncio's server side (and so WSTestServer) drops the connection without flushing the
    alert OpenSSL queued; nginx, HAProxy or `openssl s_server` send it. This blocking-socket
    server in a thread lets OpenSSL write the alert to the socket, then drains what the client
    sent before closing, so that the client reads the alert instead of a TCP reset.
    """

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.errors: list[str] = []  # why each handshake failed, as the server saw it
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self._listener.getsockname()[1]}/ws"

    def __enter__(self) -> AlertingTLSServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(2)
            with self.ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False) as tls:
                try:
                    tls.do_handshake()
                except (ssl.SSLError, OSError) as exc:
                    self.errors.append(str(exc))
                with contextlib.suppress(OSError):
                    tls.shutdown(socket.SHUT_WR)  # leaves TLS: the socket is plain from here
                    while tls.recv(4096):
                        pass


# --------------------------------------------------------------------------- assertions


def failures(h: Harness) -> dict[str, float]:
    """Handshake failures of target "t" by reason."""
    return {
        r: h.value("wsmon_connect_failures_total", target="t", reason=r)
        for r in CONNECT_FAILURE_REASONS
    }


async def assert_fails(h: Harness, reason: str, *words: str) -> str:
    """The handshake failed with `reason` only, never connected, and the `connect.failed`
    log event carries `words`; returns the event's error text."""
    await h.wait_for(lambda: len(h.events("connect.failed")) >= 2)
    counted = failures(h)
    assert counted[reason] >= 2, counted
    assert sum(v for r, v in counted.items() if r != reason) == 0, counted
    assert h.value("wsmon_connected", target="t") == 0
    assert h.value("wsmon_up", target="t") == 0
    event = h.events("connect.failed")[0]
    assert event["target"] == "t"
    assert event["reason"] == reason
    for word in words:
        assert word in event["error"], event["error"]
    return str(event["error"])


async def assert_works(h: Harness, server: WSTestServer) -> None:
    """Connected at the first attempt and the ping probe is answered over it."""
    await h.wait_for(
        lambda: h.value("wsmon_probe_rtt_seconds_count", target="t", probe="ping") >= 1
    )
    assert h.value("wsmon_connected", target="t") == 1
    assert h.value("wsmon_up", target="t") == 1
    assert server.connections == 1
    assert server.request_count("ping") >= 1
    assert sum(failures(h).values()) == 0
    assert h.events("connect.failed") == []


def tls_server(pair: KeyPair, client_ca: Path | None = None) -> WSTestServer:
    return WSTestServer(ssl_context=server_context(pair, client_ca))


# --------------------------------------------------------------------------- the cases


class TestSelfSigned:
    async def test_rejected_by_default(self, pki: PKI, start_daemon: StartDaemon) -> None:
        """A self-signed server certificate is not trusted: `reason="tls"`, retried, and the
        log says "self-signed certificate"; the HTTP upgrade is never sent."""
        async with tls_server(pki.self_signed) as server:
            h = await start_daemon(target("t", server.url))
            error = await assert_fails(h, "tls", "certificate verify failed")
            assert "self-signed certificate" in error
            assert server.http_requests == 0

    async def test_trusted_as_ca_file(self, pki: PKI, start_daemon: StartDaemon) -> None:
        """`tls.ca_file` pointing at the self-signed certificate itself makes it trusted."""
        async with tls_server(pki.self_signed) as server:
            h = await start_daemon(
                target("t", server.url, tls={"ca_file": str(pki.self_signed.cert)})
            )
            await assert_works(h, server)

    async def test_insecure_skip_verify(self, pki: PKI, start_daemon: StartDaemon) -> None:
        """`tls.insecure_skip_verify: true` connects without checking the certificate."""
        async with tls_server(pki.self_signed) as server:
            h = await start_daemon(target("t", server.url, tls={"insecure_skip_verify": True}))
            await assert_works(h, server)


class TestPrivateCA:
    async def test_not_trusted_by_default(self, pki: PKI, start_daemon: StartDaemon) -> None:
        """Without `ca_file` only the system store counts: a certificate from a private CA fails
        with "unable to get local issuer certificate"."""
        async with tls_server(pki.server) as server:
            h = await start_daemon(target("t", server.url))
            await assert_fails(h, "tls", "unable to get local issuer certificate")
            assert server.http_requests == 0

    @pytest.mark.parametrize("server_name", [None, "wsmon.test"])
    async def test_trusted_with_ca_file(
        self, server_name: str | None, pki: PKI, start_daemon: StartDaemon
    ) -> None:
        """With the CA as `ca_file` the certificate (SAN 127.0.0.1 and wsmon.test) verifies,
        by IP address and by the `server_name` it also carries."""
        tls = {"ca_file": str(pki.ca), "server_name": server_name}
        async with tls_server(pki.server) as server:
            h = await start_daemon(target("t", server.url, tls=tls))
            await assert_works(h, server)


class TestWrongHostName:
    async def test_ip_address_mismatch(self, pki: PKI, start_daemon: StartDaemon) -> None:
        """A trusted certificate for other.test does not cover 127.0.0.1: `reason="tls"`,
        "IP address mismatch, certificate is not valid for '127.0.0.1'"."""
        async with tls_server(pki.other_host) as server:
            h = await start_daemon(target("t", server.url, tls={"ca_file": str(pki.ca)}))
            await assert_fails(
                h, "tls", "IP address mismatch, certificate is not valid for '127.0.0.1'"
            )
            assert server.http_requests == 0

    async def test_server_name_is_checked(self, pki: PKI, start_daemon: StartDaemon) -> None:
        """`server_name` replaces the URL's host in the check: a name the certificate lacks
        fails with "Hostname mismatch"."""
        tls = {"ca_file": str(pki.ca), "server_name": "wsmon.test"}
        async with tls_server(pki.other_host) as server:
            h = await start_daemon(target("t", server.url, tls=tls))
            await assert_fails(
                h, "tls", "Hostname mismatch, certificate is not valid for 'wsmon.test'"
            )

    async def test_server_name_fixes_it(self, pki: PKI, start_daemon: StartDaemon) -> None:
        """`server_name: other.test` (the name in the certificate) makes it connect."""
        tls = {"ca_file": str(pki.ca), "server_name": "other.test"}
        async with tls_server(pki.other_host) as server:
            h = await start_daemon(target("t", server.url, tls=tls))
            await assert_works(h, server)


class TestExpired:
    async def test_rejected(self, pki: PKI, start_daemon: StartDaemon) -> None:
        """An expired certificate from a trusted CA fails with "certificate has expired"."""
        async with tls_server(pki.expired) as server:
            h = await start_daemon(target("t", server.url, tls={"ca_file": str(pki.ca)}))
            await assert_fails(h, "tls", "certificate verify failed", "certificate has expired")
            assert server.http_requests == 0

    async def test_insecure_skip_verify(self, pki: PKI, start_daemon: StartDaemon) -> None:
        """`insecure_skip_verify: true` accepts the expired certificate."""
        async with tls_server(pki.expired) as server:
            h = await start_daemon(target("t", server.url, tls={"insecure_skip_verify": True}))
            await assert_works(h, server)


class TestMutualTLS:
    async def test_no_client_certificate(self, pki: PKI, start_daemon: StartDaemon) -> None:
        """A server that demands a client certificate and gets none ends the connection.

        With TLS 1.3 the client's half of the handshake is done before the server checks the
        certificate, and asyncio's server side closes without sending its alert, so all the
        client sees is the server hanging up on the upgrade: `reason="handshake"`.
        """
        async with tls_server(pki.server, client_ca=pki.ca) as server:
            h = await start_daemon(target("t", server.url, tls={"ca_file": str(pki.ca)}))
            await assert_fails(h, "handshake", "Server disconnected")
            assert server.http_requests == 0

    async def test_certificate_required_alert(self, pki: PKI, start_daemon: StartDaemon) -> None:
        """A server that sends the TLS 1.3 "certificate required" alert, as OpenSSL-based
        servers do, is a `reason="tls"` failure and the log names the alert."""
        with AlertingTLSServer(server_context(pki.server, client_ca=pki.ca)) as server:
            h = await start_daemon(target("t", server.url, tls={"ca_file": str(pki.ca)}))
            await h.wait_for(lambda: len(h.events("connect.failed")) >= 2)
            assert "peer did not return a certificate" in server.errors[0]
            assert "tlsv13 alert certificate required" in h.events("connect.failed")[0]["error"]
            await assert_fails(h, "tls", "certificate required")

    async def test_client_certificate(self, pki: PKI, start_daemon: StartDaemon) -> None:
        """`cert_file` and `key_file` of a CA-signed client certificate satisfy the server."""
        tls = {
            "ca_file": str(pki.ca),
            "cert_file": str(pki.client.cert),
            "key_file": str(pki.client.key),
        }
        async with tls_server(pki.server, client_ca=pki.ca) as server:
            h = await start_daemon(target("t", server.url, tls=tls))
            await assert_works(h, server)


class TestConfig:
    @staticmethod
    def problems(**entry: Any) -> list[str]:
        doc = {"targets": [{"name": "t", "url": "wss://127.0.0.1:1/ws", **entry}]}
        with pytest.raises(config.ConfigError) as caught:
            config.loads(yaml.safe_dump(doc), source="<test>")
        problems: list[str] = caught.value.problems
        return problems

    def test_missing_ca_file(self, tmp_path: Path) -> None:
        """A `ca_file` that cannot be read is reported at load time with its path."""
        missing = tmp_path / "nope.pem"
        assert self.problems(tls={"ca_file": str(missing)}) == [
            f"targets[0].tls.ca_file: cannot read file '{missing}'"
        ]

    def test_tls_needs_wss(self, pki: PKI) -> None:
        """`tls` options on a ws:// URL are an error, not silently ignored."""
        assert self.problems(url="ws://127.0.0.1:1/ws", tls={"ca_file": str(pki.ca)}) == [
            "targets[0]: `tls` options need a wss:// URL"
        ]

    def test_key_file_needs_cert_file(self, pki: PKI) -> None:
        """A client key without its certificate is an error."""
        assert self.problems(tls={"key_file": str(pki.client.key)}) == [
            "targets[0].tls: key_file needs cert_file"
        ]

    def test_not_a_certificate(self, tmp_path: Path) -> None:
        """A readable `ca_file` that holds no certificate fails at load time, not at connect."""
        garbage = tmp_path / "garbage.pem"
        garbage.write_text("not a certificate\n")
        (problem,) = self.problems(tls={"ca_file": str(garbage)})
        assert problem.startswith(f"targets[0].tls: cannot load ca_file '{garbage}': ")

    def test_valid_options_load(self, pki: PKI) -> None:
        """Every option together loads, and the context it builds presents the client cert."""
        tls = {
            "ca_file": str(pki.ca),
            "server_name": "wsmon.test",
            "cert_file": str(pki.client.cert),
            "key_file": str(pki.client.key),
        }
        doc = {"targets": [{"name": "t", "url": "wss://127.0.0.1:1/ws", "tls": tls}]}
        (t,) = config.loads(yaml.safe_dump(doc)).targets
        assert t.tls is not None
        assert t.tls.server_name == "wsmon.test"
        ctx = t.tls.context()
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.check_hostname
