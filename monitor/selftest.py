"""The start-up self-test that decides which of `monitor.aiohooks` the daemon may use.

Each hook is proven on a real WebSocket over loopback before any target uses it: the same
exchange (text, binary, ping and pong both ways, a close frame with a code and a reason) runs
once on the portable path, once per hook and once with every hook that passed, and a hook
is kept only if what both ends saw is exactly what the portable path saw. An aiohttp outside
the tested range, or a self-test that cannot run at all, leaves every hook off. Each hook
left off is logged once (`hooks.disabled`) with its reason.
"""

from __future__ import annotations

import asyncio
import json
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
    frame_writer,
    json_scanner,
    write_frame,
)
from .replies import make_parser

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
# Kinds the session hands to its inbox (the rest wake the receive loop).
INBOX_KINDS = frozenset({WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PONG})
# A bound on the whole self-test: a hook that hangs a connection must not hang start-up.
TIMEOUT = 5.0

# Texts whose parse must equal json.loads's: one object, spacing, nesting, big numbers,
# and what is not one object.
JSON_SAMPLES = (
    '{"msg_type":"ping","ping":"pong","echo_req":{"ping":1,"req_id":7},"req_id":7}',
    '{"a": [1, 2.5, -3e10, true, false, null], "b": {"c": "\\u00e9\\n"}}',
    '{"n": 123456789012345678901234567890, "f": 1e400}',
    ' {"padded": 1} ',
    '{"a":1}{"b":2}',
    '{"unterminated": ',
    "[1, 2]",
    '"text"',
    "",
    "{}",
    '{"nan": NaN}',
)


@dataclass
class Transcript:
    """What each end saw: messages in order, as (kind, data, extra)."""

    client: list[tuple[Any, ...]] = field(default_factory=list)
    server: list[tuple[Any, ...]] = field(default_factory=list)
    to_inbox: int = 0  # messages the client's DirectQueue handed over
    stamped: bool = True  # every message was read after the exchange began, by the stamp


async def decide(log: FilteringBoundLogger, portable: bool = False) -> Hooks:
    """The hooks this process may use; logs each one left off, and why, once."""
    if portable:
        return _off(log, "all", "the portable receive path was asked for")
    if not aiohttp_tested():
        reason = f"aiohttp {aiohttp.__version__} is outside the tested range {TESTED_AIOHTTP_TEXT}"
        return _off(log, "all", reason)
    queue = QueueHook()
    try:
        async with asyncio.timeout(TIMEOUT):
            hooks, reasons = await _prove(queue)
    except Exception as exc:  # any failure of the self-test itself: stay portable
        queue.uninstall()
        return _off(log, "all", f"self-test could not run: {type(exc).__name__}: {exc}")
    scan_problem = _check_scan()
    if scan_problem is None:
        hooks = replace(hooks, scan=True)
    else:
        reasons["scan"] = scan_problem
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
        for name in ("stamp", "writer", "inbox"):
            if name == "inbox" and (problem := queue.install()) is not None:
                reasons[name] = problem
                continue
            problem = await _differs(http, server, replace(PORTABLE, **{name: True}), baseline)
            if problem is None:
                passed[name] = True
            else:
                reasons[name] = problem
                if name == "inbox":
                    queue.uninstall()
        together = Hooks(**passed)
        if passed:
            problem = await _differs(http, server, together, baseline)
            if problem is not None:
                reasons.update(dict.fromkeys(passed, f"fails with the others: {problem}"))
                together = PORTABLE
    if not together.inbox:
        queue.uninstall()
    return together, reasons


async def _differs(
    http: aiohttp.ClientSession, server: _Server, hooks: Hooks, baseline: Transcript
) -> str | None:
    """Why this path's exchange is not the portable one's; None when it is the same."""
    try:
        seen = await _exchange(http, server, hooks)
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
    server.transcript = seen
    server.done.clear()
    ws = await http.ws_connect(
        server.url,
        autoping=False,
        autoclose=False,
        timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=1.0),
    )
    try:
        stamp = ReadStamp.install(ws) if hooks.stamp else None
        if hooks.stamp and stamp is None:
            raise RuntimeError("no data-received callback to wrap")
        writer = frame_writer(ws) if hooks.writer else None
        if hooks.writer and writer is None:
            raise RuntimeError("no frame writer")
        queue = direct_queue(ws) if hooks.inbox else None
        if hooks.inbox and queue is None:
            raise RuntimeError("the connection's queue is not a DirectQueue")
        began = time.perf_counter()
        await _send(ws, writer, HELLO.encode(), WSMsgType.TEXT)
        await _send(ws, writer, CLIENT_PING, WSMsgType.PING)
        await _receive(ws, queue, stamp, began, seen)
    finally:
        await ws.close()
    await server.done.wait()
    return seen


async def _send(ws: Any, writer: Any | None, payload: bytes, opcode: WSMsgType) -> None:
    if writer is None or not write_frame(writer, payload, opcode):
        await ws.send_frame(payload, opcode)


async def _receive(
    ws: Any, queue: Any | None, stamp: ReadStamp | None, began: float, seen: Transcript
) -> None:
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
        if stamp is not None:
            seen.stamped = seen.stamped and began <= stamp.at <= time.perf_counter()
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
    """A loopback WebSocket server that plays the script to every client."""

    def __init__(self) -> None:
        self.transcript = Transcript()
        self.url = ""
        self.done = asyncio.Event()  # the server's side of the latest exchange has ended
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> _Server:
        app = web.Application()
        app.router.add_get("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/"
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        try:
            return await self._play(request)
        finally:
            self.done.set()

    async def _play(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False, autoclose=False)
        await ws.prepare(request)
        seen = self.transcript.server
        async for msg in ws:
            seen.append((msg.type, msg.data, msg.extra or None))
            if msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
                for kind, data in SCRIPT:
                    await ws.send_frame(data.encode() if isinstance(data, str) else data, kind)
            elif msg.type is WSMsgType.PONG:  # the answer to the script's ping: close
                await ws.close(code=CLOSE_CODE, message=CLOSE_REASON.encode())
                seen.append(("client's close code", ws.close_code))
                break
        return ws


def _check_scan() -> str | None:
    """Why the JSON scan cannot be used; None when it parses every sample as json.loads."""
    scan = json_scanner()
    if scan is None:
        return "json.JSONDecoder has no scan_once"
    fast, plain = make_parser(scan), make_parser(None)
    for text in JSON_SAMPLES:
        try:
            got, want = fast(text), plain(text)
        except Exception as exc:
            return f"parsing {text!r} raised {type(exc).__name__}: {exc}"
        if json.dumps(got, sort_keys=True) != json.dumps(want, sort_keys=True):
            return f"parsed {text!r} as {got!r}, json.loads as {want!r}"
    return None
