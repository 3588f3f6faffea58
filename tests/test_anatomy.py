"""Where the handshake time goes (resolve, connect, tls, upgrade) and what TLS tells
(version, cipher, certificate expiry), against real servers and a certificate made here."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl

import aiohttp
import pytest
from certs import PKI, make_pki
from conftest import Harness, StartDaemon, target
from cryptography import x509
from wsserver import WSTestServer

from monitor.anatomy import PHASES


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def phases_logged(h: Harness) -> tuple[dict[str, float], float]:
    (ok,) = h.events("connect.ok")[:1]
    return ok["phases_ms"], ok["duration_ms"]


async def test_phases_add_up_to_the_handshake(
    server: WSTestServer, start_daemon: StartDaemon
) -> None:
    """ws:// to an IP literal: connect and upgrade only, adding up to the handshake time
    (within a millisecond); the server's 60 ms stall before its 101 is in `upgrade`."""
    server.handshake_delay = 0.06
    h = await start_daemon(target("a", server.url), metrics={"per_target_connect_histogram": True})
    await h.wait_for(lambda: h.value("wsmon_connected", target="a") == 1)
    phases, duration = phases_logged(h)
    assert set(phases) == {"connect", "upgrade"}
    assert abs(sum(phases.values()) - duration) <= 1.0
    assert phases["upgrade"] >= 60.0
    assert phases["connect"] < 60.0
    for phase in ("connect", "upgrade"):
        count = h.value("wsmon_connect_phase_seconds_count", target="a", phase=phase)
        assert count == 1
    total = sum(h.value("wsmon_connect_phase_seconds_sum", target="a", phase=p) for p in PHASES)
    assert abs(total - h.value("wsmon_connect_duration_seconds_sum", target="a")) <= 0.001


async def test_a_name_is_resolved_in_its_own_phase(
    server: WSTestServer, start_daemon: StartDaemon
) -> None:
    """A host name adds `resolve`; the handshake time leaves it out, as before."""
    url = server.url.replace("127.0.0.1", "localhost")
    h = await start_daemon(target("a", url))
    await h.wait_for(lambda: h.value("wsmon_connected", target="a") == 1)
    phases, duration = phases_logged(h)
    assert set(phases) == {"resolve", "connect", "upgrade"}
    assert phases["resolve"] > 0
    assert abs(phases["connect"] + phases["upgrade"] - duration) <= 1.0
    # daemon-wide by default: no target label
    assert h.value("wsmon_connect_phase_seconds_count", phase="resolve") == 1


async def test_tls_phase_and_certificate_expiry(pki: PKI, start_daemon: StartDaemon) -> None:
    """wss://: `tls` is measured on its own; the certificate gauge is the notAfter of the
    37-day certificate made here (the CA's, when Python reads the chain and it expires
    first); `wsmon_tls_info` names the version and cipher."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    not_after = now + dt.timedelta(days=37)
    pair = pki.issue(
        "short",
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        not_before=now - dt.timedelta(days=1),
        not_after=not_after,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pair.cert, pair.key)
    async with WSTestServer(ssl_context=ctx) as server:
        h = await start_daemon(target("s", server.url, tls={"ca_file": str(pki.ca)}))
        await h.wait_for(lambda: h.value("wsmon_connected", target="s") == 1)
        phases, duration = phases_logged(h)
        assert set(phases) == {"connect", "tls", "upgrade"}
        assert phases["tls"] > 0
        assert abs(sum(phases.values()) - duration) <= 1.0
        expected = not_after.timestamp()
        if hasattr(ssl.SSLObject, "get_verified_chain"):
            ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
            expected = min(expected, ca.not_valid_after_utc.timestamp())
        got = h.value("wsmon_tls_cert_not_after_timestamp_seconds", target="s")
        assert got == expected
        api = f"{h.base_url}/api/v1/targets"  # the status API says the same
        async with aiohttp.ClientSession() as http, http.get(api) as r:
            (listed,) = (await r.json())["targets"]
        assert listed["tls"] == {"not_after": expected}
        info = [s for m in h.registry.collect() if m.name == "wsmon_tls_info" for s in m.samples]
        assert len(info) == 1
        assert info[0].labels["version"] in ("TLSv1.2", "TLSv1.3")
        assert info[0].labels["cipher"]
        assert h.events("connect.ok")[0]["tls_version"] == info[0].labels["version"]


async def test_no_tls_series_for_plain_websockets(
    server: WSTestServer, start_daemon: StartDaemon
) -> None:
    h = await start_daemon(target("a", server.url))
    await h.wait_for(lambda: h.value("wsmon_connected", target="a") == 1)
    assert not h.exists("wsmon_tls_cert_not_after_timestamp_seconds", target="a")
    assert h.value("wsmon_connect_phase_seconds_count", phase="tls") == 0
