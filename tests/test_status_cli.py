"""`wsmon status`: a running daemon's targets in a terminal, and its exit status."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import pytest
import yaml
from certs import PKI, make_pki
from conftest import StartDaemon, closed_port, refused, target
from wsserver import WSTestServer

from monitor import statuscli
from monitor.aiohooks import Hooks

WSMON = [sys.executable, "-m", "monitor"]
PASSWORD = "correct horse battery staple"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def receive_path(proven_hooks: Hooks) -> Hooks:
    """The command reads the API, not the wire: one receive path is enough here."""
    return proven_hooks


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("status-pki"))


async def wsmon(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `wsmon ARGS` (without blocking the daemon in this event loop): exit, out, err."""
    proc = await asyncio.create_subprocess_exec(
        *WSMON, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def wsmon_on_a_terminal(*args: str, env: dict[str, str] | None = None) -> str:
    """Run `wsmon ARGS` with stdout on a pseudo-terminal; what it printed there."""
    master, slave = pty.openpty()

    def drain() -> bytes:
        data = b""
        with contextlib.suppress(OSError):  # EIO once the child has gone
            while chunk := os.read(master, 65536):
                data += chunk
        return data

    try:
        proc = await asyncio.create_subprocess_exec(
            *WSMON, *args, stdout=slave, stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        os.close(slave)
        reader = asyncio.ensure_future(asyncio.to_thread(drain))
        await asyncio.wait_for(proc.wait(), 30)
        return (await reader).decode()
    finally:
        os.close(master)


def table(out: str) -> list[list[str]]:
    """The rows of the printed table (after the summary and a blank line), split on runs of
    two or more spaces."""
    lines = out.splitlines()
    return [re.split(r" {2,}", line.strip()) for line in lines[2:] if line.strip()]


class TestExitStatus:
    async def test_all_connected_is_0(
        self, start_daemon: StartDaemon, server: WSTestServer
    ) -> None:
        """Every target connected: exit 0, the summary, a row per target; no colour when
        stdout is not a terminal."""
        h = await start_daemon(target("alpha", server.url), target("bravo", server.url))
        await h.wait_for(lambda: h.value("wsmon_connected", target="alpha") == 1)
        await h.wait_for(lambda: h.value("wsmon_connected", target="bravo") == 1)
        await h.wait_for(lambda: h.value("wsmon_probe_rtt_seconds_count", target="bravo",
                                          probe="ping") >= 1)  # fmt: skip
        code, out, err = await wsmon("status", "--url", h.base_url)
        assert (code, err) == (0, "")
        assert out.startswith("2 connected of 2 targets, no problems; worst round trip ")
        assert not ANSI.search(out)
        rows = table(out)
        assert rows[0] == ["TARGET", "STATE", "FOR", "ROUND TRIPS", "LAST CLOSE", "RECONNECTS 1H"]
        assert [r[:2] for r in rows[1:]] == [["alpha", "connected"], ["bravo", "connected"]]
        assert re.fullmatch(r"ping \d+\.\d+ ms", rows[2][3])

    async def test_one_not_connected_is_1(
        self, start_daemon: StartDaemon, server: WSTestServer
    ) -> None:
        """A target that is not connected: exit 1, and it comes first."""
        h = await start_daemon(target("alpha", server.url), refused("zulu"))
        await h.wait_for(lambda: h.value("wsmon_connected", target="alpha") == 1)
        await h.wait_for(lambda: h.value("wsmon_connect_failures_total", target="zulu",
                                          reason="refused") >= 1)  # fmt: skip
        code, out, _ = await wsmon("status", "--url", f"{h.base_url}/")
        assert code == 1
        assert out.startswith("1 connected of 2 targets, 1 problem")
        assert [r[:2] for r in table(out)[1:]] == [["zulu", "failed"], ["alpha", "connected"]]

    async def test_the_daemon_unreachable_is_2(self) -> None:
        """Nothing listening: exit 2, saying so on stderr."""
        code, out, err = await wsmon("status", "--url", f"http://127.0.0.1:{closed_port()}/")
        assert (code, out) == (2, "")
        assert err.startswith("wsmon status: error: cannot reach http://127.0.0.1:")

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--url", "ftp://host/"], "--url: expected http://HOST:PORT/"),
            (["--password-file", "/dev/null"], "--password-file: give --user too"),
            (["--user", "ops"], "--user: give --password-file too"),
            (["--ca-file", "ca.pem"], "need an https:// URL"),
            (["--watch", "--interval", "soon"], "--interval: invalid duration 'soon'"),
        ],
    )
    async def test_usage_errors_are_2(self, args: list[str], message: str) -> None:
        code, _, err = await wsmon("status", *args)
        assert code == 2
        assert message in err

    async def test_a_bad_web_config_is_2_naming_the_problems(self, tmp_path: Path) -> None:
        """The web config is read as the daemon reads it: a file that is not UTF-8, or keys
        it does not know, are usage errors that name the file and every problem."""
        binary = tmp_path / "binary.yml"
        binary.write_bytes(b"basic_auth_users: {ops: \xff\xfe}\n")
        code, _, err = await wsmon("status", "--web.config.file", str(binary))
        assert code == 2
        assert f"--web.config.file: {binary}: invalid YAML:" in err
        unknown = tmp_path / "unknown.yml"
        unknown.write_text("basic_auth_user: {}\ntls_server_config: {cert_file: c.pem}\n")
        code, _, err = await wsmon("status", "--web.config.file", str(unknown))
        assert code == 2
        assert "basic_auth_user: unknown key" in err
        assert "tls_server_config.key_file: Field required" in err

    async def test_every_page_is_read(
        self, start_daemon: StartDaemon, server: WSTestServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """More targets than one answer holds: the command pages through all of them."""
        monkeypatch.setattr(statuscli, "PAGE", 2)
        names = [f"t{i}" for i in range(5)]
        h = await start_daemon(*(target(n, server.url) for n in names))
        for n in names:  # up: no target moves in the order between two pages
            await h.wait_for(lambda n=n: h.value("wsmon_up", target=n) == 1)
        out = io.StringIO()
        outcome = statuscli.Outcome()
        assert await statuscli.run(statuscli.daemon(h.base_url), outcome, out=out) == 0
        assert [r[0] for r in table(out.getvalue())[1:]] == names


class TestTerminal:
    async def test_colours_only_on_a_terminal(
        self, start_daemon: StartDaemon, server: WSTestServer
    ) -> None:
        """On a terminal the states are coloured (and still written out); NO_COLOR turns
        colours off."""
        h = await start_daemon(target("alpha", server.url), refused("zulu"))
        await h.wait_for(lambda: h.value("wsmon_connected", target="alpha") == 1)
        await h.wait_for(lambda: h.value("wsmon_connect_attempts_total", target="zulu") >= 1)
        out = await wsmon_on_a_terminal("status", "--url", h.base_url)
        assert "\x1b[32mconnected\x1b[0m" in out
        assert re.search(r"\x1b\[3[16]m(failed|connecting)\x1b\[0m", out)
        plain = await wsmon_on_a_terminal("status", "--url", h.base_url, env={"NO_COLOR": "1"})
        assert not ANSI.search(plain)
        assert "alpha" in plain

    async def test_watch_redraws_until_ctrl_c(
        self, start_daemon: StartDaemon, server: WSTestServer
    ) -> None:
        """--watch prints the table again every --interval; Ctrl-C ends it with the exit
        status of the latest table."""
        h = await start_daemon(target("alpha", server.url))
        await h.wait_for(lambda: h.value("wsmon_connected", target="alpha") == 1)
        proc = await asyncio.create_subprocess_exec(
            *WSMON, "status", "--url", h.base_url, "--watch", "--interval", "200ms",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        stamps = 0
        deadline = time.monotonic() + 10
        while stamps < 3 and time.monotonic() < deadline:
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            stamps += line.startswith(b"--- ")
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
        assert stamps == 3
        assert (proc.returncode, err) == (0, b"")


class TestAuth:
    async def test_basic_auth_from_the_web_config_and_a_password_file(
        self, start_daemon: StartDaemon, server: WSTestServer, tmp_path: Path
    ) -> None:
        """With the daemon's web config the user is its only one and the password comes
        from --password-file; without credentials, or with wrong ones, exit 2."""
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
        web = tmp_path / "web.yml"
        web.write_text(yaml.safe_dump({"basic_auth_users": {"ops": hashed}}))
        good, wrong = tmp_path / "password", tmp_path / "wrong"
        good.write_text(PASSWORD + "\n")
        wrong.write_text("guess\n")
        h = await start_daemon(target("alpha", server.url), web_config_file=str(web))
        await h.wait_for(lambda: h.value("wsmon_connected", target="alpha") == 1)
        url = ["--url", h.base_url]
        code, out, _ = await wsmon("status", *url, "--web.config.file", str(web),
                                   "--password-file", str(good))  # fmt: skip
        assert code == 0
        assert "alpha" in out
        assert (await wsmon("status", *url, "--user", "ops", "--password-file", str(good)))[0] == 0
        code, _, err = await wsmon("status", *url, "--user", "ops", "--password-file", str(wrong))
        assert code == 2
        assert "401 Unauthorized: the credentials were refused" in err
        code, _, err = await wsmon("status", *url)
        assert code == 2
        assert "401 Unauthorized: give --user and --password-file" in err
        code, _, err = await wsmon("status", *url, "--web.config.file", str(web))
        assert code == 2
        assert "the web config asks for basic auth: give --password-file" in err

    async def test_https_trusting_the_web_configs_certificate(
        self, start_daemon: StartDaemon, server: WSTestServer, tmp_path: Path, pki: PKI
    ) -> None:
        """Over TLS the daemon's own certificate (named in its web config) is trusted, or
        the CA given with --ca-file; the system's store alone does not know it."""
        web = tmp_path / "web.yml"
        tls = {"cert_file": str(pki.server.cert), "key_file": str(pki.server.key)}
        web.write_text(yaml.safe_dump({"tls_server_config": tls}))
        h = await start_daemon(target("alpha", server.url), web_config_file=str(web))
        await h.wait_for(lambda: h.value("wsmon_connected", target="alpha") == 1)
        url = ["--url", f"https://127.0.0.1:{h.daemon.port}/"]
        assert (await wsmon("status", *url, "--web.config.file", str(web)))[0] == 0
        assert (await wsmon("status", *url, "--ca-file", str(pki.ca)))[0] == 0
        code, _, err = await wsmon("status", *url)
        assert code == 2
        assert "certificate not trusted" in err


def test_the_demo_announces_its_status_page_first() -> None:
    """`wsmon demo` prints the status page's URL on its first line; `wsmon status` there
    lists the demo's three targets."""
    proc = subprocess.Popen(
        [*WSMON, "demo", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.fullmatch(r"wsmon demo: status page at (http://127\.0\.0\.1:\d+/)\n", first)
        assert match, first
        assert "metrics at " + match.group(1) + "metrics" in proc.stdout.readline() + (
            proc.stdout.readline()
        )
        done = subprocess.run(
            [*WSMON, "status", "--url", match.group(1)], capture_output=True, text=True,
            timeout=30,
        )  # fmt: skip
        assert done.returncode in (0, 1), done.stderr
        names = {r[0] for r in table(done.stdout)[1:]}
        assert names == {"demo-api", "demo-api-eu", "demo-api-asia"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
