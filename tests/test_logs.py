"""Log events: dotted names with fields, JSON or console, and never a secret."""

from __future__ import annotations

import io
import json

from conftest import StartDaemon, target
from wsserver import WSTestServer

from monitor.log import REDACTED, Logging, redact_url


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_redact_url() -> None:
    """Passwords and credential-looking query values are replaced; the rest stays."""
    url = "wss://user:pw-123@h:443/ws?app_id=1089&token=abc&api_key=k&Secret=s"
    out = redact_url(url)
    assert "pw-123" not in out
    assert "abc" not in out
    assert "=k" not in out
    assert "=s" not in out
    assert "app_id=1089" in out
    assert out.startswith("wss://user:")


def test_redactor_scrubs_nested_values() -> None:
    """A known secret is replaced wherever it appears in an event, nested or not."""
    stream = io.StringIO()
    log = Logging("json", "info", stream=stream, secrets={"hunter2-secret"}).logger
    log.info(
        "x",
        error="failed with hunter2-secret",
        items=["a hunter2-secret"],
        d={"k": "hunter2-secret"},
    )
    line = stream.getvalue()
    assert "hunter2-secret" not in line
    event = json.loads(line)
    assert event["error"] == f"failed with {REDACTED}"
    assert event["items"] == [f"a {REDACTED}"]
    assert event["d"] == {"k": REDACTED}


def test_level_filter_and_json_shape() -> None:
    """Below-level events are dropped; JSON lines start with timestamp, level, event."""
    stream = io.StringIO()
    logging = Logging("json", "warning", stream=stream)
    logging.logger.info("quiet")
    logging.logger.warning("probe.timeout", target="t")
    (line,) = stream.getvalue().splitlines()
    assert list(json.loads(line))[:4] == ["timestamp", "level", "event", "target"]
    logging.level.level = "debug"
    logging.logger.debug("now.visible")
    assert "now.visible" in stream.getvalue()


def test_console_format_on_a_tty() -> None:
    """`auto` renders readable console lines on a terminal, JSON elsewhere."""
    tty = _Tty()
    Logging("auto", "info", stream=tty).logger.info("connect.ok", target="t", duration_ms=1.5)
    text = tty.getvalue()
    assert "connect.ok" in text
    assert "duration_ms" in text
    assert not text.lstrip().startswith("{")
    pipe = io.StringIO()
    Logging("auto", "info", stream=pipe).logger.info("connect.ok")
    assert json.loads(pipe.getvalue())["event"] == "connect.ok"


async def test_no_secret_reaches_the_logs(server: WSTestServer, start_daemon: StartDaemon) -> None:
    """Secrets in headers and query parameters never appear in any log line, through
    connects, handshake failures and disconnects."""
    query_secret = "q-SECRET-7f3a9"
    header_secret = "h-SECRET-52c1e"
    url = f"{server.url}?app_id=1089&token={query_secret}"
    h = await start_daemon(target("t", url, headers={"Authorization": f"Bearer {header_secret}"}))
    await server.wait_for(lambda: server.open_connections == 1)
    await server.close_all(4001)
    server.handshake_status = 403
    await server.wait_for(lambda: server.http_requests >= 4)
    await h.daemon.stop()
    text = h.stream.getvalue()
    assert h.events("connect.ok")
    assert h.events("connect.failed")
    assert query_secret not in text
    assert header_secret not in text
    assert "app_id=1089" in text  # the URL itself is still logged
