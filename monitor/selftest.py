"""The start-up self-test that decides which of `monitor.aiohooks` the daemon may use.

Each hook is proven on a real WebSocket over loopback before any target uses it: the same
exchange (text, binary, ping and pong both ways, a close frame with a code and a reason) runs
once on the portable path, once per hook and once with every hook that passed, and a hook is
kept only if what both ends saw is exactly what the portable path saw (and the hook did its
part). An aiohttp outside the tested range, or a self-test that cannot run at all, leaves
every hook off. Each hook left off is logged once (`hooks.disabled`) with its reason.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from structlog.typing import FilteringBoundLogger

from .aiohooks import (
    PORTABLE,
    TESTED_AIOHTTP_TEXT,
    Hooks,
    QueueHook,
    ReadStamp,
    aiohttp_tested,
    direct_queue,
    trim,
)
from .session import INBOX_KINDS

# What the client sends; the server answers every ping and then plays SCRIPT.
HELLO = "wsmon self-test"
CLIENT_PING = b"wsmon-ping"
SCRIPT: tuple[tuple[WSMsgType, Any], ...] = (
    (WSMsgType.TEXT, '{"msg_type":"ping","ping":"pong","req_id":1}'),
    (WSMsgType.BINARY, b"\x00\x01binary"),
    (WSMsgType.PONG, b"unsolicited"),
    (WSMsgType.PING, b"server-ping"),
    (WSMsgType.TEXT, '{"msg_type":"time","time":1700000000}'),
)
CLOSE_CODE = 4321
CLOSE_REASON = "self-test done"
# A bound on one exchange (a hook that hangs it fails), and on the whole self-test.
EXCHANGE_TIMEOUT = 1.0
TIMEOUT = 5.0


@dataclass
class Transcript:
    """What each end saw: messages in order, as (kind, data, extra)."""

    client: list[tuple[Any, ...]] = field(default_factory=list)
    server: list[tuple[Any, ...]] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)  # the server's sends, perf_counter()
    to_inbox: int = 0  # messages the client's DirectQueue handed over
    stamped: bool = True  # every message's read stamp came after the server sent it
    done: asyncio.Event = field(default_factory=asyncio.Event)  # the server's side ended


async def decide(log: FilteringBoundLogger, portable: bool = False) -> Hooks:
    """The hooks this process may use; logs each one left off, and why, once."""
    if portable:
        return _off(log, "all", "the portable receive path was asked for")
    if not aiohttp_tested():
        reason = f"aiohttp {aiohttp.__version__} is outside the tested range {TESTED_AIOHTTP_TEXT}"
        return _off(log, "all", reason)
    queue = QueueHook()
    hooks = PORTABLE
    try:
        async with asyncio.timeout(TIMEOUT):
            hooks, reasons = await _prove(queue)
    except Exception as exc:  # any failure of the self-test itself: stay portable
        return _off(log, "all", f"self-test could not run: {type(exc).__name__}: {exc}")
    finally:
        if not hooks.inbox:  # also when cancelled: aiohttp gets its own queue class back
            queue.uninstall()
    for hook, reason in reasons.items():
        log.warning("hooks.disabled", hook=hook, reason=reason)
    log.info("hooks.enabled", hooks=hooks.names(), receive_path=hooks.receive_path)
    return hooks


def _off(log: FilteringBoundLogger, hook: str, reason: str) -> Hooks:
    log.warning("hooks.disabled", hook=hook, reason=reason)
    return PORTABLE


async def _prove(queue: QueueHook) -> tuple[Hooks, dict[str, str]]:
    """Run the exchange on each path against one loopback server."""
    reasons: dict[str, str] = {}
    passed: dict[str, bool] = {}
    async with _Server() as server, aiohttp.ClientSession() as http:
        baseline = await _exchange(http, server, PORTABLE)
        # The queue hook changes every connection made after it: it goes last, alone.
        for name in ("trim", "stamp", "inbox"):
            if name == "inbox" and (problem := queue.install()) is not None:
                reasons[name] = problem
                continue
            problem = await _difference(http, server, replace(PORTABLE, **{name: True}), baseline)
            if problem is None:
                passed[name] = True
            else:
                reasons[name] = problem
                if name == "inbox":
                    queue.uninstall()
        together = Hooks(**passed)
        if passed:
            problem = await _difference(http, server, together, baseline)
            if problem is not None:
                reasons.update(dict.fromkeys(passed, f"fails with the others: {problem}"))
                together = PORTABLE
    return together, reasons


async def _difference(
    http: aiohttp.ClientSession, server: _Server, hooks: Hooks, baseline: Transcript
) -> str | None:
    """Why this path's exchange is not the portable one's; None when it is the same."""
    try:
        async with asyncio.timeout(EXCHANGE_TIMEOUT):
            seen = await _exchange(http, server, hooks)
    except TimeoutError:
        return f"the exchange did not finish within {EXCHANGE_TIMEOUT:g}s"
    except Exception as exc:  # a hook that raises fails, it does not stop the daemon
        return f"{type(exc).__name__}: {exc}"
    for end, got, want in (
        ("client", seen.client, baseline.client),
        ("server", seen.server, baseline.server),
    ):
        if got != want:
            pairs = zip([*got, None], [*want, None], strict=False)
            at = next(i for i, (a, b) in enumerate(pairs) if a != b)
            found = got[at] if at < len(got) else "nothing"
            expected = want[at] if at < len(want) else "nothing"
            return f"the {end}'s message {at + 1} was {found!r}, not {expected!r}"
    if hooks.inbox and not seen.to_inbox:
        return "the queue handed no message to the inbox"
    if hooks.stamp and not seen.stamped:
        return "the read stamp did not follow the reads"
    return None


async def _exchange(http: aiohttp.ClientSession, server: _Server, hooks: Hooks) -> Transcript:
    """One connection through the given hooks, as the session drives it."""
    seen = Transcript()
    ws = await http.ws_connect(
        server.url_for(seen),
        autoping=False,
        autoclose=False,
        timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=1.0),
    )
    try:
        if hooks.trim and (problem := trim(ws)) is not None:
            raise RuntimeError(problem)
        stamp = ReadStamp.install(ws) if hooks.stamp else None
        if hooks.stamp and stamp is None:
            raise RuntimeError("no data-received callback to wrap")
        queue = direct_queue(ws) if hooks.inbox else None
        if hooks.inbox and queue is None:
            raise RuntimeError("the connection's queue is not a DirectQueue")
        await ws.send_frame(HELLO.encode(), WSMsgType.TEXT)
        await ws.send_frame(CLIENT_PING, WSMsgType.PING)
        await _receive(ws, queue, stamp, seen)
    finally:
        await ws.close()
    await seen.done.wait()
    return seen


async def _receive(ws: Any, queue: Any | None, stamp: ReadStamp | None, seen: Transcript) -> None:
    """Record every message until the close frame; answer pings, echo the close."""
    inbox: list[Any] = []

    def to_inbox(msg: Any) -> bool:
        if msg.type not in INBOX_KINDS:
            return False
        inbox.append(msg)
        seen.to_inbox += 1
        asyncio.get_running_loop().call_soon(drain)
        return True

    def drain() -> None:
        while inbox:
            record(inbox.pop(0))

    def record(msg: Any) -> None:
        if stamp is not None:  # read no earlier than the server sent it, no later than now
            k = len(seen.client)
            sent = seen.sent_at[k] if k < len(seen.sent_at) else math.inf
            seen.stamped = seen.stamped and sent <= stamp.at <= time.perf_counter()
        seen.client.append((msg.type, msg.data, msg.extra or None))

    while True:
        if queue is not None:
            queue.to_inbox = to_inbox
        try:
            msg = await ws.receive()
        finally:
            if queue is not None:
                queue.to_inbox = None
        drain()
        record(msg)
        if msg.type is WSMsgType.PING:
            await ws.pong(msg.data)
        elif msg.type not in INBOX_KINDS:
            break
    if msg.type is WSMsgType.CLOSE:
        await ws.close(code=msg.data, message=b"")


class _Server:
    """A loopback WebSocket server that plays the script to every client, each connection
    recording into the transcript its path names."""

    def __init__(self) -> None:
        self.url = ""
        self._exchanges: list[Transcript] = []
        self._runner: web.AppRunner | None = None

    def url_for(self, seen: Transcript) -> str:
        self._exchanges.append(seen)
        return f"{self.url}{len(self._exchanges) - 1}"

    async def __aenter__(self) -> _Server:
        app = web.Application()
        app.router.add_get("/{exchange:[0-9]+}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        try:
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/"
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        seen = self._exchanges[int(request.match_info["exchange"])]
        try:
            return await self._play(request, seen)
        finally:
            seen.done.set()

    async def _play(self, request: web.Request, seen: Transcript) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False, autoclose=False)
        await ws.prepare(request)
        clock = time.perf_counter
        async for msg in ws:
            seen.server.append((msg.type, msg.data, msg.extra or None))
            if msg.type is WSMsgType.PING:
                seen.sent_at.append(clock())
                await ws.pong(msg.data)
                for kind, data in SCRIPT:
                    seen.sent_at.append(clock())
                    await ws.send_frame(data.encode() if isinstance(data, str) else data, kind)
            elif msg.type is WSMsgType.PONG:  # the answer to the script's ping: close
                seen.sent_at.append(clock())
                await ws.close(code=CLOSE_CODE, message=CLOSE_REASON.encode())
                seen.server.append(("client's close code", ws.close_code))
                break
        return ws
