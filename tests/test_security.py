"""Secrets: the authorize message, and proof that no secret leaks anywhere the daemon writes."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from conftest import Harness, StartDaemon, target
from wsserver import WSTestServer

from monitor import config
from monitor.app import Daemon
from monitor.cli import main
from monitor.log import Logging


def deriv_authorize(good_token: str) -> Any:
    """A responder that answers `authorize` like the Deriv API does."""

    def respond(req: dict[str, Any]) -> list[str | bytes] | None:
        if "authorize" not in req:
            return None
        reply: dict[str, Any] = {"echo_req": req, "msg_type": "authorize", "req_id": req["req_id"]}
        if req["authorize"] == good_token:
            reply["authorize"] = {"loginid": "CR90000000", "currency": "USD"}
        else:
            reply["error"] = {"code": "InvalidToken", "message": "The token is invalid."}
        return [json.dumps(reply)]

    return respond


AUTH = {"send": {"authorize": "tok-GOOD-1234"}, "expect": {"msg_type": "authorize"}}


class TestAuthorize:
    async def test_auth_before_probes(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """The authorize message is the first thing sent on each connection; probes start
        only after its good reply."""
        server.responder = deriv_authorize("tok-GOOD-1234")
        h = await start_daemon(target("t", server.url, auth=AUTH))
        await h.wait_for(lambda: h.value("wsmon_up", target="t") == 1)
        assert "authorize" in server.requests[0]
        assert all("ping" in r for r in server.requests[1:])
        assert h.value("wsmon_connect_failures_total", target="t", reason="auth") == 0
        await server.close_all(1001)
        await server.wait_for(lambda: server.connections == 2)
        await server.wait_for(lambda: server.request_count("authorize") == 2)

    async def test_auth_failure_is_a_connect_failure(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """An error reply to authorize counts `reason="auth"`, closes the connection, is
        retried with backoff, and no probe is ever sent; the log has the API's error code
        and not the token."""
        server.responder = deriv_authorize("another-token")
        h = await start_daemon(target("t", server.url, auth=AUTH))
        await h.wait_for(
            lambda: h.value("wsmon_connect_failures_total", target="t", reason="auth") >= 3
        )
        assert server.request_count("ping") == 0
        assert h.value("wsmon_connected", target="t") == 0
        assert h.value("wsmon_connect_duration_seconds_count", target="t") == 0
        event = h.events("connect.failed")[0]
        assert event["reason"] == "auth"
        assert "InvalidToken" in event["error"]
        assert "tok-GOOD-1234" not in h.stream.getvalue()
        assert 1000 in server.close_frames

    async def test_auth_timeout(self, server: WSTestServer, start_daemon: StartDaemon) -> None:
        """No reply to authorize within its timeout is an auth failure too."""
        server.silent = True
        auth = {**AUTH, "timeout": "100ms"}
        h = await start_daemon(target("t", server.url, auth=auth))
        await h.wait_for(
            lambda: h.value("wsmon_connect_failures_total", target="t", reason="auth") >= 2
        )
        assert "no auth reply within 0.1s" in h.events("connect.failed")[0]["error"]


SECRETS = {
    "env": "ENV-SECRET-a81f3c",
    "header": "HDR-SECRET-5d2e71",
    "query": "QRY-SECRET-9b4c06",
    "auth": "AUTH-SECRET-37e0aa",
    "file": "FILE-SECRET-c3b9d5",
}


def leaked(text: str) -> list[str]:
    return [name for name, value in SECRETS.items() if value in text]


async def test_no_secret_leaks_anywhere(
    server: WSTestServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Distinctive secrets in an environment variable, a header, a query parameter, the
    authorize message and a header file never appear in logs, /metrics, /readyz,
    check-config output or error messages, through connects, auth and handshake failures,
    reloads (good and bad) and shutdown."""
    env = {"WSMON_TEST_TOKEN": SECRETS["env"]}
    headers_file = tmp_path / "headers.yaml"
    headers_file.write_text(yaml.safe_dump({"X-Api-Key": SECRETS["file"]}))
    doc = {
        "listen": "127.0.0.1:0",
        "targets": [
            target(
                "t",
                f"{server.url}?app_id=1089&token={SECRETS['query']}",
                headers={
                    "Authorization": "Bearer ${WSMON_TEST_TOKEN}",
                    "X-Other": SECRETS["header"],
                },
                headers_file=str(headers_file),
                auth={"send": {"authorize": SECRETS["auth"]}, "timeout": "200ms"},
            )
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    cfg = config.load(path, env=env)
    assert set(SECRETS.values()) <= cfg.secrets
    stream = io.StringIO()
    logging = Logging("json", "debug", stream=stream, secrets=cfg.secrets)
    daemon = Daemon(cfg, logging, config_path=path, rng=random.Random(1), stop_timeout=1.0)
    h = Harness(daemon, stream)
    server.responder = deriv_authorize(SECRETS["auth"])
    outputs: list[str] = []
    await daemon.start()
    try:
        await h.wait_for(lambda: h.value("wsmon_up", target="t") == 1)
        assert server.requests[0]["authorize"] == SECRETS["auth"]  # it was really used
        await server.close_all(4001, SECRETS["query"].encode())  # a reason echoing a secret
        server.responder = deriv_authorize("something-else")  # auth now fails
        await h.wait_for(
            lambda: h.value("wsmon_connect_failures_total", target="t", reason="auth") >= 1
        )
        server.handshake_status = 403
        await h.wait_for(
            lambda: h.value("wsmon_connect_failures_total", target="t", reason="handshake") >= 1
        )
        # A bad reload (keeps running), then a good one.
        path.write_text(path.read_text().replace("connect_timeout: 1s", "connect_timeout: soon"))
        assert not await daemon.reload(None)
        path.write_text(yaml.safe_dump(doc))
        async with aiohttp.ClientSession() as http:
            for endpoint in ("/metrics", "/readyz", "/healthz", "/"):
                async with http.get(h.base_url + endpoint) as r:
                    outputs.append(await r.text())
    finally:
        await daemon.stop()
    outputs.append(stream.getvalue())
    assert h.events("connect.ok")
    assert h.events("connect.failed")
    assert h.events("config.reload_failed")
    assert h.events("shutdown.complete")
    # check-config on a file holding the same secrets and a problem
    bad = tmp_path / "bad.yaml"
    broken = {**doc, "targets": [{**doc["targets"][0], "probes": [{"name": "p", "intervl": 1}]}]}
    bad.write_text(yaml.safe_dump(broken))
    assert main(["check-config", str(bad)]) == 1
    assert main(["check-config", str(path)]) == 1  # ${WSMON_TEST_TOKEN} unset here
    outputs.append(capsys.readouterr().out)
    with pytest.raises(config.ConfigError) as err:
        config.loads(yaml.safe_dump(broken), env=env)
    outputs.append(str(err.value))
    for text in outputs:
        assert leaked(text) == [], text[:2000]


async def test_unbounded_reply_is_refused(server: WSTestServer, start_daemon: StartDaemon) -> None:
    """A 64 MiB reply is never read whole: the frame is refused at max_msg_size (1009)."""
    server.responder = lambda req: [json.dumps({"req_id": req["req_id"], "pad": "x" * (64 << 20)})]
    h = await start_daemon(target("t", server.url, max_msg_size=65536))
    await h.wait_for(
        lambda: h.value("wsmon_disconnects_total", target="t", code="1009", origin="local") >= 1,
        timeout=20,
    )


def test_oversized_config_file_is_refused(tmp_path: Path) -> None:
    """A config file over 16 MiB is a clear error, not a read of the whole thing."""
    big = tmp_path / "big.yaml"
    with big.open("w") as f:
        f.write("# " + "x" * (17 << 20) + "\n")
    with pytest.raises(config.ConfigError) as err:
        config.load(big)
    assert err.value.problems == ["config file larger than 16777216 bytes"]


def test_default_listen_is_loopback() -> None:
    """Without `listen`, the HTTP endpoints bind 127.0.0.1:9815 only."""
    cfg = config.loads('targets: [{name: a, url: "ws://127.0.0.1:1/"}]')
    assert cfg.listen == "127.0.0.1:9815"
