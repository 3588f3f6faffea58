"""TLS and basic auth on the HTTP endpoints, from an exporter-toolkit web config."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import shutil
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
from certs import PKI, make_pki
from conftest import Harness, target
from wsserver import WSTestServer

from monitor import config
from monitor.aiohooks import Hooks
from monitor.app import Daemon
from monitor.log import Logging
from monitor.web import WebConfigError, load_web_config

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("web-pki"))


def basic(user: str, password: str) -> dict[str, str]:
    """An Authorization header for HTTP basic auth."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def hashed(password: str, rounds: int = 4) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()


def web_config(path: Path, **doc: Any) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
async def web_daemon(server: WSTestServer, proven_hooks: Hooks) -> AsyncIterator[Any]:
    """Start a daemon with a given web config file (polled every 50 ms for changes)."""
    daemons: list[Daemon] = []

    async def start(web_file: Path, **top: Any) -> Harness:
        doc = {"listen": "127.0.0.1:0", "targets": [target("t", server.url)], **top}
        cfg = config.loads(yaml.safe_dump(doc))
        stream = io.StringIO()
        d = Daemon(
            cfg,
            Logging("json", "info", stream=stream),
            rng=random.Random(1),
            web_config_file=str(web_file),
            web_poll_interval=0.05,
            hooks=proven_hooks,
        )
        daemons.append(d)
        await d.start()
        return Harness(d, stream)

    yield start
    for d in daemons:
        await d.stop()


async def status(url: str, **kw: Any) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.get(url, **kw) as r:
        await r.read()
        return r.status, dict(r.headers)


class TestBasicAuth:
    async def test_credentials_required_everywhere(self, tmp_path: Path, web_daemon: Any) -> None:
        """Without or with wrong credentials every endpoint answers 401 with
        `WWW-Authenticate: Basic`; with the right ones, 200."""
        web = web_config(tmp_path / "web.yml", basic_auth_users={"prom": hashed(PASSWORD)})
        h = await web_daemon(web)
        good = basic("prom", PASSWORD)
        for path in ("/metrics", "/readyz", "/healthz", "/"):
            code, headers = await status(h.base_url + path)
            assert code == 401, path
            assert headers["WWW-Authenticate"].startswith('Basic realm="wsmon"')
            wrong = basic("prom", "nope")
            assert (await status(h.base_url + path, headers=wrong))[0] == 401
            unknown = basic("nobody", PASSWORD)
            assert (await status(h.base_url + path, headers=unknown))[0] == 401
        await h.wait_for(lambda: h.value("wsmon_connected", target="t") == 1)
        for path in ("/metrics", "/readyz", "/healthz"):
            assert (await status(h.base_url + path, headers=good))[0] == 200, path
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{h.base_url}/-/reload") as r:
                assert r.status == 401
            garbage = {"Authorization": "Basic !!!not-base64"}
            async with http.get(f"{h.base_url}/metrics", headers=garbage) as r:
                assert r.status == 401

    async def test_public_healthz_when_chosen(self, tmp_path: Path, web_daemon: Any) -> None:
        """With `public_healthz: true`, /healthz answers without credentials; nothing else."""
        web = web_config(tmp_path / "web.yml", basic_auth_users={"prom": hashed(PASSWORD)})
        h = await web_daemon(web, public_healthz=True)
        assert (await status(f"{h.base_url}/healthz"))[0] == 200
        assert (await status(f"{h.base_url}/metrics"))[0] == 401

    async def test_unknown_user_costs_as_much_as_a_known_one(
        self, tmp_path: Path, web_daemon: Any
    ) -> None:
        """A wrong password for an unknown user takes as long as for a known user (both run
        bcrypt at the same cost), so timing does not reveal which users exist."""
        web = web_config(tmp_path / "web.yml", basic_auth_users={"prom": hashed(PASSWORD, 10)})
        h = await web_daemon(web)
        url = f"{h.base_url}/metrics"

        async def timed(user: str) -> float:
            started = time.perf_counter()
            for _ in range(4):
                assert (await status(url, headers=basic(user, "wrong")))[0] == 401
            return time.perf_counter() - started

        known, unknown = await timed("prom"), await timed("nobody")
        known, unknown = min(known, await timed("prom")), min(unknown, await timed("nobody"))
        assert known > 0.02  # bcrypt at cost 10 really ran
        assert 0.6 <= unknown / known <= 1.6, (known, unknown)


class TestTLS:
    async def test_https_with_the_configured_certificate(
        self, tmp_path: Path, pki: PKI, web_daemon: Any
    ) -> None:
        """With tls_server_config the endpoints speak HTTPS only, with that certificate."""
        web = web_config(
            tmp_path / "web.yml",
            tls_server_config={"cert_file": str(pki.server.cert), "key_file": str(pki.server.key)},
            http_server_config={"headers": {"X-Frame-Options": "deny"}},
        )
        h = await web_daemon(web)
        trust = ssl.create_default_context(cafile=pki.ca)
        url = f"https://127.0.0.1:{h.daemon.port}/metrics"
        code, headers = await status(url, ssl=trust)
        assert code == 200
        assert headers["X-Frame-Options"] == "deny"
        assert h.daemon.metrics_url.startswith("https://")
        with pytest.raises(aiohttp.ClientError):
            await status(f"http://127.0.0.1:{h.daemon.port}/metrics")
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await status(url, ssl=ssl.create_default_context())  # CA not trusted

    async def test_client_certificate_required(
        self, tmp_path: Path, pki: PKI, web_daemon: Any
    ) -> None:
        """RequireAndVerifyClientCert refuses a client without a certificate from the CA."""
        web = web_config(
            tmp_path / "web.yml",
            tls_server_config={
                "cert_file": str(pki.server.cert), "key_file": str(pki.server.key),
                "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": str(pki.ca),
            },
        )  # fmt: skip
        h = await web_daemon(web)
        url = f"https://127.0.0.1:{h.daemon.port}/metrics"
        anonymous = ssl.create_default_context(cafile=pki.ca)
        with pytest.raises(aiohttp.ClientError):
            await status(url, ssl=anonymous)
        with_cert = ssl.create_default_context(cafile=pki.ca)
        with_cert.load_cert_chain(pki.client.cert, pki.client.key)
        assert (await status(url, ssl=with_cert))[0] == 200

    async def test_rotated_certificate_picked_up_without_restart(
        self, tmp_path: Path, pki: PKI, web_daemon: Any
    ) -> None:
        """Replacing the certificate files changes what new connections are served, with no
        restart; the connection to the monitored target is untouched."""
        cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
        shutil.copy(pki.server.cert, cert)
        shutil.copy(pki.server.key, key)
        web = web_config(
            tmp_path / "web.yml", tls_server_config={"cert_file": "tls.crt", "key_file": "tls.key"}
        )
        h = await web_daemon(web)
        first = await served_certificate(h.daemon.port)
        renewed = pki.issue("renewed", [LOCALHOST_SAN()])
        shutil.copy(renewed.cert, cert)
        shutil.copy(renewed.key, key)
        await asyncio.sleep(0.3)
        second = await served_certificate(h.daemon.port)
        assert first != second
        assert second == renewed.cert.read_bytes().decode().strip()
        trust = ssl.create_default_context(cafile=pki.ca)
        assert (await status(f"https://127.0.0.1:{h.daemon.port}/healthz", ssl=trust))[0] == 200
        assert h.value("wsmon_web_config_last_reload_successful") == 1


def LOCALHOST_SAN() -> Any:
    from certs import LOCALHOST

    return LOCALHOST


async def served_certificate(port: int) -> str:
    """The PEM certificate the server presents right now."""
    pem = await asyncio.to_thread(ssl.get_server_certificate, ("127.0.0.1", port))
    return pem.strip()


class TestBadWebConfig:
    def test_promtool_accepts_our_web_config(self, tmp_path: Path, pki: PKI) -> None:
        """`promtool check web-config` validates a web config that wsmon accepts."""
        promtool = shutil.which("promtool")
        assert promtool, "promtool is needed (Debian package `prometheus`)"
        web = web_config(
            tmp_path / "web.yml",
            tls_server_config={
                "cert_file": str(pki.server.cert), "key_file": str(pki.server.key),
                "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": str(pki.ca),
                "min_version": "TLS12",
            },
            basic_auth_users={"prom": hashed(PASSWORD)},
        )  # fmt: skip
        load_web_config(web)
        proc = subprocess.run(
            [promtool, "check", "web-config", str(web)], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr

    @pytest.mark.parametrize(
        ("doc", "problem"),
        [
            ({"basic_auth_users": {"a": "plain"}}, "user 'a': not a bcrypt hash"),
            ({"bogus": 1}, "bogus: unknown key"),
            ({"tls_server_config": {"cert_file": "/nonexistent.crt", "key_file": "/x.key"}},
             "tls_server_config: cannot load certificates"),
            ({"tls_server_config": {"cert_file": "a", "key_file": "b",
                                    "client_auth_type": "RequireAndVerifyClientCert"}},
             "needs client_ca_file"),
        ],
    )  # fmt: skip
    def test_problems_are_named(self, tmp_path: Path, doc: dict[str, Any], problem: str) -> None:
        """A bad web config names the key and why."""
        path = web_config(tmp_path / "web.yml", **doc)
        with pytest.raises(WebConfigError) as err:
            load_web_config(path)
        assert any(problem in p for p in err.value.problems), err.value.problems

    def test_bad_web_config_at_start_exits_1(self, tmp_path: Path, server: WSTestServer) -> None:
        """`wsmon run` with a bad web config says what is wrong and exits 1."""
        web = web_config(tmp_path / "web.yml", basic_auth_users={"prom": "not-a-hash"})
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            yaml.safe_dump({"listen": "127.0.0.1:0", "targets": [target("t", server.url)]})
        )
        proc = subprocess.run(
            [sys.executable, "-m", "monitor", "run", "--config", str(cfg),
             "--web.config.file", str(web)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert proc.returncode == 1
        event = json.loads(proc.stderr.strip().splitlines()[-1])
        assert event["event"] == "web_config.invalid"
        assert "not a bcrypt hash" in event["problems"][0]

    async def test_bad_change_keeps_the_old_settings(self, tmp_path: Path, web_daemon: Any) -> None:
        """A web config edited into something invalid is ignored: the old users still work,
        the gauge reads 0, the log names the problem; fixing it applies the new users."""
        web = web_config(tmp_path / "web.yml", basic_auth_users={"prom": hashed(PASSWORD)})
        h = await web_daemon(web)
        good = basic("prom", PASSWORD)
        web_config(web, basic_auth_users={"prom": "broken"})
        await h.wait_for(lambda: h.value("wsmon_web_config_last_reload_successful") == 0)
        assert (await status(f"{h.base_url}/metrics", headers=good))[0] == 200
        assert h.events("web_config.reload_failed")
        web_config(web, basic_auth_users={"other": hashed("pw2")})
        await h.wait_for(lambda: h.value("wsmon_web_config_last_reload_successful") == 1)
        assert (await status(f"{h.base_url}/metrics", headers=good))[0] == 401
        other = basic("other", "pw2")
        assert (await status(f"{h.base_url}/metrics", headers=other))[0] == 200
