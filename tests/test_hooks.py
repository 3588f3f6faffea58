"""The guarded hooks into aiohttp: proven at start-up, off where they do not fit, and the
daemon's numbers true either way, including on a simulated future aiohttp."""

from __future__ import annotations

import asyncio
import gc
import platform
import re
import time
import tomllib
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.client
import aiohttp.connector
import pytest
from aiohttp import ClientWebSocketResponse, WSMessage, WSMsgType
from aiohttp._websocket import reader_py
from aiohttp.client_proto import ResponseHandler
from conftest import STOCK_QUEUE, Harness, StartDaemon, require_hooks, target
from wsserver import WSTestServer
from yarl import URL

from monitor import __version__, aiohooks, probes
from monitor.aiohooks import (
    TESTED_AIOHTTP_TEXT,
    Hooks,
    QueueHook,
    aiohttp_tested,
    direct_queue_class,
)

ROOT = Path(__file__).resolve().parent.parent
PING = {"name": "ping", "send": {"ping": 1}, "expect": {"msg_type": "ping"}}
BUILD = {"version": __version__, "python": platform.python_version()}
HOOKED_ONLY = pytest.mark.parametrize("receive_path", ["hooked"], indirect=True)
ALL_HOOKS = ("stamp", "inbox", "trim")


def only_off(h: Harness, hook: str, proven: Hooks) -> str:
    """Why the self-test left `hook` off, once every other hook it proved is on."""
    (disabled,) = [e for e in h.events("hooks.disabled") if e["hook"] == hook]
    (enabled,) = h.events("hooks.enabled")
    assert enabled["hooks"] == [n for n in proven.names() if n != hook]
    return str(disabled["reason"])


def receive_path_of(h: Harness) -> str:
    """The receive path `wsmon_build_info` reports (exactly one series must exist)."""
    paths = [
        p for p in ("hooked", "portable") if h.exists("wsmon_build_info", receive_path=p, **BUILD)
    ]
    assert len(paths) == 1, paths
    return paths[0]


async def measures_truthfully(h: Harness, server: WSTestServer) -> None:
    """Every probe answered with its true round trip, and close codes as the server sent."""
    await h.wait_for(
        lambda: h.value("wsmon_probe_rtt_seconds_count", target="t", probe="ping") >= 5
    )
    count = h.value("wsmon_probe_rtt_seconds_count", target="t", probe="ping")
    total = h.value("wsmon_probe_rtt_seconds_sum", target="t", probe="ping")
    assert server.reply_delay <= total / count <= server.reply_delay + 0.010
    assert h.value("wsmon_probe_timeouts_total", target="t", probe="ping") == 0
    assert h.value("wsmon_up", target="t") == 1
    await server.close_all(4001, b"bye")
    await server.wait_for(lambda: server.connections == 2 and server.open_connections == 1)
    await server.abort_all()
    await server.wait_for(lambda: server.connections == 3 and server.open_connections == 1)
    await h.wait_for(lambda: h.value("wsmon_reconnects_total", target="t") == 2)
    assert h.value("wsmon_disconnects_total", target="t", code="4001", origin="peer") == 1
    assert h.value("wsmon_disconnects_total", target="t", code="1006", origin="network") == 1
    await h.daemon.stop()
    sent = h.value("wsmon_probes_sent_total", target="t", probe="ping")
    assert sent == server.request_count("ping")
    assert h.value("wsmon_probe_timeouts_total", target="t", probe="ping") == 0


def ping_target(server: WSTestServer) -> dict[str, Any]:
    return target("t", server.url, probes=[{**PING, "interval": "100ms", "timeout": "90ms"}])


# --- a simulated future aiohttp -----------------------------------------------------------------


class FutureQueue(reader_py.WebSocketDataQueue):
    """aiohttp 4's queue API: `feed_data` takes the message alone."""

    def feed_data(self, data: Any) -> None:  # type: ignore[override]
        size = len(data.data) if isinstance(data.data, bytes | str) else 0
        super().feed_data(data, size)


class FutureCalls:
    """What aiohttp 4's parser does with its queue: `feed_data(message)`, no size."""

    def __init__(self, queue: Any) -> None:
        object.__setattr__(self, "queue", queue)

    def feed_data(self, msg: Any, size: int) -> None:
        self.queue.feed_data(msg)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.queue, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.queue, name, value)


class FutureReader(reader_py.WebSocketReader):
    """aiohttp's pure-Python parser, calling its queue as aiohttp 4 does."""

    def __init__(self, queue: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(FutureCalls(queue), *args, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def future_aiohttp(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client side of aiohttp's development branch as far as the hooks can tell: the
    queue class and the parser's call into it changed."""
    monkeypatch.setattr(aiohttp.client, "WebSocketDataQueue", FutureQueue)
    monkeypatch.setattr(aiohttp.client, "WebSocketReader", FutureReader)


class DeafCallback(ResponseHandler):
    """A protocol that still has the data-received callback but never calls it."""

    @property  # type: ignore[override]
    def _data_received_cb(self) -> None:
        return None

    @_data_received_cb.setter
    def _data_received_cb(self, _: Any) -> None:
        pass


# --- the self-test ------------------------------------------------------------------------------


class TestSelfTest:
    def test_the_locked_aiohttp_takes_every_hook(self, proven_hooks: Hooks) -> None:
        """On the aiohttp deploys get (deploy/requirements.lock), every hook passes its
        self-test: an upgrade of the lock that silently turns one off fails here."""
        lock = (ROOT / "deploy/requirements.lock").read_text()
        pinned = re.search(r"^aiohttp==(\S+)", lock, re.M)
        assert pinned is not None
        if aiohttp.__version__ != pinned.group(1):
            pytest.skip(f"aiohttp {aiohttp.__version__} is not the locked {pinned.group(1)}")
        assert proven_hooks == Hooks(stamp=True, inbox=True, trim=True)

    def test_pyproject_states_the_tested_range(self) -> None:
        """The aiohttp range in pyproject.toml is the one the hooks accept, with an upper
        bound, and the installed aiohttp is inside it."""
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        (spec,) = [d for d in project["dependencies"] if re.match(r"aiohttp\s*[<>=!~]", d)]
        stated = sorted(spec.removeprefix("aiohttp").replace(" ", "").split(","))
        assert stated == sorted(TESTED_AIOHTTP_TEXT.split(","))
        assert any(part.startswith("<") for part in stated)
        assert aiohttp_tested()

    @pytest.mark.parametrize(
        ("version", "tested"),
        [("3.12.0", True), ("3.14.5", True), ("3.14.99.dev0", True), ("3.11.18", False),
         ("3.15.0a1", False), ("4.0.0a2.dev0", False), ("garbage", False)],
    )  # fmt: skip
    def test_tested_range(self, version: str, tested: bool) -> None:
        """Pre-releases of the next minor release are outside the range, not in it."""
        assert aiohttp_tested(version) is tested

    @HOOKED_ONLY
    async def test_a_daemon_proves_its_hooks_at_start(
        self, server: WSTestServer, start_daemon: StartDaemon, proven_hooks: Hooks
    ) -> None:
        """A daemon left to decide runs the self-test, logs the hooks it took and, once
        each, those it left off, and reports its receive path."""
        h = await start_daemon(ping_target(server), self_test=True)
        (enabled,) = h.events("hooks.enabled")
        assert enabled["hooks"] == proven_hooks.names()
        off = {e["hook"] for e in h.events("hooks.disabled")}
        assert off == set(ALL_HOOKS) - set(proven_hooks.names())
        assert receive_path_of(h) == proven_hooks.receive_path
        await measures_truthfully(h, server)

    @HOOKED_ONLY
    async def test_the_portable_path_when_asked(
        self, server: WSTestServer, start_daemon: StartDaemon
    ) -> None:
        """`--receive-path portable` turns every hook off, says so once, and still measures."""
        h = await start_daemon(ping_target(server), self_test=True, receive_path="portable")
        (disabled,) = h.events("hooks.disabled")
        assert disabled["hook"] == "all"
        assert "portable" in disabled["reason"]
        assert receive_path_of(h) == "portable"
        await measures_truthfully(h, server)


@HOOKED_ONLY
class TestFutureAiohttp:
    @pytest.mark.usefixtures("future_aiohttp")
    async def test_a_release_outside_the_tested_range(
        self, server: WSTestServer, start_daemon: StartDaemon, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """aiohttp 4.0.0a2.dev0 (the development branch) is outside the tested range: every
        hook stays off, `hooks.disabled` says why once, and the daemon measures truly."""
        monkeypatch.setattr(aiohttp, "__version__", "4.0.0a2.dev0")
        server.reply_delay = 0.020
        h = await start_daemon(ping_target(server), self_test=True)
        (disabled,) = h.events("hooks.disabled")
        assert disabled["hook"] == "all"
        assert "4.0.0a2.dev0 is outside the tested range" in disabled["reason"]
        assert receive_path_of(h) == "portable"
        await measures_truthfully(h, server)

    @pytest.mark.usefixtures("future_aiohttp")
    async def test_a_changed_queue_api_fails_the_self_test(
        self,
        server: WSTestServer,
        start_daemon: StartDaemon,
        monkeypatch: pytest.MonkeyPatch,
        proven_hooks: Hooks,
    ) -> None:
        """The same changed queue API under a version inside the range: the self-test
        catches it, the receive hook stays off (the others still prove themselves), and the
        daemon measures truly instead of failing every connection as 1006."""
        monkeypatch.setattr(aiohttp, "__version__", "3.14.99")
        server.reply_delay = 0.020
        h = await start_daemon(ping_target(server), self_test=True)
        assert "TypeError" in only_off(h, "inbox", proven_hooks)
        assert receive_path_of(h) == "portable"
        assert aiohttp.client.WebSocketDataQueue is FutureQueue  # given back to aiohttp
        await measures_truthfully(h, server)

    async def test_a_changed_connection_fails_the_trim(
        self,
        server: WSTestServer,
        start_daemon: StartDaemon,
        monkeypatch: pytest.MonkeyPatch,
        proven_hooks: Hooks,
    ) -> None:
        """A release whose connection lacks a name `trim` lets go of: the self-test turns
        trim off and says which name, the other hooks stay on, and the daemon measures."""
        require_hooks(proven_hooks, "trim")
        renamed = (*aiohooks._TRIMMED, ("response", "_renamed_in_a_future_release"))
        monkeypatch.setattr(aiohooks, "_TRIMMED", renamed)
        server.reply_delay = 0.020
        h = await start_daemon(ping_target(server), self_test=True)
        assert "response._renamed_in_a_future_release" in only_off(h, "trim", proven_hooks)
        await measures_truthfully(h, server)

    async def test_a_read_callback_never_called_fails_the_stamp(
        self,
        server: WSTestServer,
        start_daemon: StartDaemon,
        monkeypatch: pytest.MonkeyPatch,
        proven_hooks: Hooks,
    ) -> None:
        """A protocol that no longer calls the callback `ReadStamp` wraps: the stamp stays
        off (round trips end when the reply is handled), the other hooks stay on."""
        require_hooks(proven_hooks, "stamp", "inbox")
        monkeypatch.setattr(aiohttp.connector, "ResponseHandler", DeafCallback)
        server.reply_delay = 0.020
        h = await start_daemon(ping_target(server), self_test=True)
        (disabled,) = h.events("hooks.disabled")
        assert disabled["hook"] == "stamp"
        assert disabled["reason"] == "the read stamp did not follow the reads"
        assert receive_path_of(h) == "hooked"
        await measures_truthfully(h, server)


# --- what each hook does ------------------------------------------------------------------------


class TestHookMechanics:
    async def test_a_message_queued_ahead_keeps_its_place(self) -> None:
        """What the receive loop must see (a ping) is queued; a reply parsed after it is
        queued behind it instead of going to the inbox, so the loop sees both in order."""

        class Protocol:
            _reading_paused = False

        queue = direct_queue_class(STOCK_QUEUE)(Protocol(), 2**16, loop=asyncio.get_running_loop())
        inbox: list[Any] = []

        def to_inbox(msg: WSMessage) -> bool:
            if msg.type is WSMsgType.TEXT:
                inbox.append(msg.data)
                return True
            return False

        queue.to_inbox = to_inbox
        queue.feed_data(WSMessage(WSMsgType.TEXT, "first", ""), 5)
        queue.feed_data(WSMessage(WSMsgType.PING, b"p", ""), 1)
        queue.feed_data(WSMessage(WSMsgType.TEXT, "second", ""), 6)
        assert inbox == ["first"]
        assert (await queue.read()).type is WSMsgType.PING
        assert (await queue.read()).data == "second"
        queue.feed_data(WSMessage(WSMsgType.TEXT, "third", ""), 5)  # nothing ahead again
        assert inbox == ["first", "third"]

    def test_a_queue_class_without_feed_data_is_left_alone(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Where aiohttp's client builds a queue the hook cannot wrap, it changes nothing
        and says why."""

        class Other:
            pass

        monkeypatch.setattr(aiohttp.client, "WebSocketDataQueue", Other)
        reason = QueueHook().install()
        assert reason is not None
        assert "feed_data" in reason
        assert aiohttp.client.WebSocketDataQueue is Other

    async def test_trim_lets_go_of_the_handshake_and_keeps_the_connection(
        self, server: WSTestServer, proven_hooks: Hooks
    ) -> None:
        """`trim` frees what an open connection keeps of its handshake (traced memory goes
        down by at least a header set per connection), and the connections still do their
        work: a request answered, a close frame read, a connection lost read as 1006."""
        require_hooks(proven_hooks, "trim")
        async with WSTestServer() as other, aiohttp.ClientSession() as http:
            tracemalloc.start()  # what the connections allocate is traced, and so its release
            try:
                closed = [await http.ws_connect(server.url, autoclose=False) for _ in range(10)]
                lost = [await http.ws_connect(other.url, autoclose=False) for _ in range(10)]
                gc.collect()
                before = tracemalloc.get_traced_memory()[0]
                assert all(aiohooks.trim(ws) is None for ws in closed + lost)
                gc.collect()
                freed = before - tracemalloc.get_traced_memory()[0]
            finally:
                tracemalloc.stop()
            assert freed >= 20 * 1024, freed
            ws = closed[0]
            assert not ws._response.headers
            assert not ws._response.request_info.headers
            assert ws._response.request_info.url == URL(server.url)
            await ws.send_json({"ping": 1, "req_id": 7})
            reply = await ws.receive_json(timeout=5)
            assert (reply["msg_type"], reply["req_id"]) == ("ping", 7)
            await server.close_all(4321, b"bye")
            for ws in closed:
                msg = await ws.receive(timeout=5)
                assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4321, "bye")
                await ws.close()
            await other.abort_all()
            for ws in lost:
                assert (await ws.receive(timeout=5)).type is WSMsgType.CLOSED
                assert ws.close_code == 1006
            assert server.stats()["connections"] == other.stats()["connections"] == 10

    def test_trim_leaves_a_connection_of_another_shape_alone(self) -> None:
        """What trim cannot find, it names; it touches nothing then."""

        class Response:
            _headers = "kept"
            connection = None

        class Socket:
            _response = Response()
            _writer = None

        reason = aiohooks.trim(Socket())  # type: ignore[arg-type]
        assert reason is not None
        assert "protocol._parser" in reason
        assert Response._headers == "kept"

    @HOOKED_ONLY
    async def test_replies_never_wake_the_receive_loop(
        self,
        server: WSTestServer,
        start_daemon: StartDaemon,
        monkeypatch: pytest.MonkeyPatch,
        proven_hooks: Hooks,
    ) -> None:
        """On the hooked path every reply goes to the inbox: aiohttp's `receive()` returns no
        text message, yet every request the server answered is a round trip."""
        returned: list[WSMsgType] = []
        receive = ClientWebSocketResponse.receive

        async def counting(self: ClientWebSocketResponse, timeout: float | None = None) -> Any:
            msg = await receive(self, timeout)
            returned.append(msg.type)
            return msg

        require_hooks(proven_hooks, "inbox")
        monkeypatch.setattr(ClientWebSocketResponse, "receive", counting)
        probes_ = [{**PING, "interval": "25ms", "timeout": "20ms"}]
        h = await start_daemon(target("t", server.url, probes=probes_))
        assert receive_path_of(h) == "hooked"
        await server.wait_for(lambda: server.request_count("ping") >= 20)
        await h.daemon.stop()
        answered = h.value("wsmon_probe_rtt_seconds_count", target="t", probe="ping")
        # Stopping may leave the last request unanswered.
        assert server.request_count("ping") - 1 <= answered <= server.request_count("ping")
        assert WSMsgType.TEXT not in returned, returned

    @HOOKED_ONLY
    async def test_replies_read_together_are_all_stamped_before_any_is_handled(
        self,
        server: WSTestServer,
        start_daemon: StartDaemon,
        monkeypatch: pytest.MonkeyPatch,
        proven_hooks: Hooks,
    ) -> None:
        """Five targets send on the same 200 ms grid point, so their replies (30 ms later)
        are read together. Judging a reply takes 10 ms here; had each been handled in its
        read, every read after the first would be stamped after a handling. Instead reads of
        different connections follow each other with nothing handled in between."""
        require_hooks(proven_hooks, "stamp", "inbox")
        server.reply_delay = 0.030
        events: list[str] = []
        stamp = aiohooks.ReadStamp.__call__
        judge = probes.judge

        def read(self: aiohooks.ReadStamp) -> None:
            events.append("read")
            stamp(self)

        def slow(*args: Any) -> Any:
            events.append("handle")
            time.sleep(0.010)
            return judge(*args)

        probe = [{**PING, "interval": "200ms", "timeout": "180ms"}]
        entries = [target(f"t{i}", server.url, probes=probe) for i in range(5)]
        h = await start_daemon(*entries, send_alignment="200ms")
        monkeypatch.setattr(aiohooks.ReadStamp, "__call__", read)
        monkeypatch.setattr(probes, "judge", slow)
        await h.wait_for(lambda: events.count("handle") >= 20, timeout=10)
        await h.daemon.stop()
        # Reads in a row, each run ended by a handling (what follows the last one is the
        # close); handled in its read, every run would be one read long.
        runs = "".join("r" if e == "read" else "h" for e in events).split("h")[:-1]
        assert max(len(run) for run in runs) >= 2, events
        timeouts = sum(
            h.value("wsmon_probe_timeouts_total", target=f"t{i}", probe="ping") for i in range(5)
        )
        assert timeouts == 0


async def test_a_failure_while_handling_a_reply_is_contained(
    server: WSTestServer, start_daemon: StartDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug while handling a reply (here: judging it raises) ends that connection as a
    local 1011 with a `session.failed` event, on either path, and the target connects again:
    never a silent stop, never a network failure (1006), never a probe timeout."""

    def broken(*_: Any) -> Any:
        raise RuntimeError("broken handler")

    monkeypatch.setattr(probes, "judge", broken)
    h = await start_daemon(
        target("t", server.url, probes=[{**PING, "interval": "200ms", "timeout": "150ms"}])
    )
    await server.wait_for(lambda: server.connections >= 2, timeout=5)
    await server.wait_for(lambda: 1011 in server.close_frames)
    await h.wait_for(
        lambda: h.value("wsmon_disconnects_total", target="t", code="1011", origin="local") >= 1
    )
    failed = h.events("session.failed")
    assert failed
    assert failed[0]["error"] == "RuntimeError: broken handler"
    assert h.value("wsmon_probe_timeouts_total", target="t", probe="ping") == 0
    assert h.value("wsmon_disconnects_total", target="t", code="1006", origin="network") == 0


async def test_a_failure_in_a_probes_send_is_contained(
    server: WSTestServer, start_daemon: StartDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the send path (run by the clock, not by the receive loop) is a fault of the
    session too: `session.failed`, a 1011 close the server receives, `wsmon_up` 0 while the
    fault lasts, and the target connects again."""

    def broken_eagerly(send: Any) -> Any:
        send.close()  # the send_frame coroutine it was given
        raise AttributeError("broken send")

    monkeypatch.setattr(probes, "start_eagerly", broken_eagerly)
    h = await start_daemon(
        target("t", server.url, probes=[{**PING, "interval": "100ms", "timeout": "90ms"}])
    )
    await server.wait_for(lambda: server.connections >= 2 and 1011 in server.close_frames)
    await h.wait_for(
        lambda: h.value("wsmon_disconnects_total", target="t", code="1011", origin="local") >= 1
    )
    assert h.events("session.failed")[0]["error"] == "AttributeError: broken send"
    assert h.value("wsmon_up", target="t") == 0
    assert server.request_count("ping") == 0


async def test_a_failure_while_a_session_starts_leaves_no_probe_behind(
    server: WSTestServer, start_daemon: StartDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session whose second probe cannot be set up closes with 1011 at once; the probe
    set up before it does not go on sending on the abandoned connection."""
    build = probes.message_template

    def second_fails(send: dict[str, Any], field: str | None) -> Any:
        if "time" in send:
            raise ValueError("broken probe")
        return build(send, field)

    monkeypatch.setattr(probes, "message_template", second_fails)
    both = [
        {**PING, "interval": "50ms", "timeout": "40ms"},
        {"name": "time", "send": {"time": 1}, "interval": "50ms", "timeout": "40ms"},
    ]
    h = await start_daemon(target("t", server.url, probes=both))
    await server.wait_for(lambda: server.connections >= 3 and server.open_connections <= 1)
    await h.wait_for(
        lambda: h.value("wsmon_disconnects_total", target="t", code="1011", origin="local") >= 2
    )
    await asyncio.sleep(0.2)  # four intervals of the probe that was set up
    assert server.request_count("ping") == 0
    assert {e["error"] for e in h.events("session.failed")} == {"ValueError: broken probe"}
