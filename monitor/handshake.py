"""Opening a target's WebSocket: socket options, the bounded handshake, its failure reason,
and the optional auth exchange before any probe runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
import traceback
from dataclasses import dataclass

import aiohttp
from aiohttp import ClientWebSocketResponse, WSMsgType

from .anatomy import Timed, TLSFacts, client_context, tls_facts
from .config import TargetConfig
from .correlation import Correlator
from .fdbudget import is_resource_error
from .handles import TargetMetrics
from .log import redact_url
from .proxy import tunnel_errors
from .replies import judge_auth, parse


class ConnectFailed(Exception):
    """A handshake that did not produce an open WebSocket."""

    def __init__(
        self,
        reason: str,
        error: str,
        duration: float = 0.0,
        tried: bool = True,
        status: int | None = None,
    ) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error
        self.duration = duration  # seconds from the start of the handshake to the failure
        self.tried = tried  # False: not even tried (no file descriptor to spare)
        self.status = status  # the HTTP status of a refused upgrade


def let_go(exc: BaseException) -> None:
    """Clear the locals of every finished frame `exc`, and each exception it chains, passed
    through. aiohttp and aiohappyeyeballs keep a failed connect's error in a local of a frame
    on that error's own traceback (and a connection whose close failed keeps its error on
    the WebSocket, in another): reference cycles that reference counting cannot free, and
    that the daemon's frozen collector schedule (`monitor.collector`) finds late. Targets
    that keep failing would make memory climb; cleared, the objects go when the error does."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        e = pending.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)  # a frame still running is skipped
        pending += (e.__cause__, e.__context__)
        if isinstance(e, BaseExceptionGroup):
            pending += e.exceptions


def classify(exc: BaseException) -> str:
    """The `reason` label of a failed handshake."""
    if is_resource_error(exc):  # out of descriptors or buffers: ours, not the peer's
        return "resource"
    if isinstance(exc, tunnel_errors()):  # the proxy: unreachable, refused CONNECT, timed out
        return "proxy"
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns"
    # aiohttp wraps a TLS alert read after the handshake (e.g. "certificate required")
    # in a plain OS error; the SSL error is its cause.
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return "tls"
        cause = cause.__cause__
    if isinstance(
        exc,
        aiohttp.ClientConnectorCertificateError
        | aiohttp.ClientConnectorSSLError
        | aiohttp.ClientSSLError
        | aiohttp.ServerFingerprintMismatch
        | ssl.SSLError,
    ):
        return "tls"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "refused" if isinstance(exc.os_error, ConnectionRefusedError) else "other"
    if isinstance(exc, aiohttp.WSServerHandshakeError | aiohttp.ClientResponseError):
        return "handshake"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return "handshake"
    return "other"


def describe(exc: BaseException) -> str:
    """A one-line description of a handshake error, without the URL's secrets."""
    if isinstance(exc, aiohttp.WSServerHandshakeError | aiohttp.ClientResponseError):
        return f"HTTP {exc.status}: {exc.message}"
    if isinstance(exc, TimeoutError):
        return "handshake timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def tls_context(target: TargetConfig) -> ssl.SSLContext | bool:
    """What aiohttp's `ssl` argument gets for this target: for wss://, a context that times
    the TLS handshake (`anatomy.TimedContext`) with the target's `tls` options."""
    if not target.url.startswith("wss:"):
        return True  # (unused: no TLS)
    t = target.tls
    if t is None:
        return client_context()
    cert = (t.cert_file, t.key_file) if t.cert_file else None
    return client_context(t.ca_file, t.insecure_skip_verify, cert)


# What a failed handshake raises, besides a tunnel's errors (`proxy.tunnel_errors`).
HANDSHAKE_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError, ValueError
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Opened:
    """An open WebSocket and how its handshake went."""

    ws: ClientWebSocketResponse
    duration: float  # TCP + TLS + upgrade, seconds: the handshake without name resolution
    phases: dict[str, float]  # see anatomy.Timeline.phases
    tls: TLSFacts | None


async def connect(
    http: aiohttp.ClientSession,
    target: TargetConfig,
    slots: asyncio.Semaphore,
    tls: ssl.SSLContext | bool = True,
) -> Opened:
    """Open the target's WebSocket, timing each phase of the handshake.

    The whole handshake (DNS, TCP, TLS, HTTP upgrade) is bounded by `connect_timeout`;
    waiting for a handshake slot is not part of it, and the returned duration leaves out
    name resolution (its own phase).
    """
    caught = HANDSHAKE_ERRORS + tunnel_errors()  # (a proxy's session has loaded its errors)
    async with slots:
        with Timed() as timeline:
            try:
                async with asyncio.timeout(target.connect_timeout):
                    ws = await http.ws_connect(
                        target.url,
                        headers=target.headers,
                        protocols=tuple(target.subprotocols),
                        origin=target.origin,
                        # Pings and pongs pass through the receive loop: pongs are timed by
                        # ws-ping probes, and the server's pings are answered there.
                        autoping=False,
                        # Close frames too: the peer's close is recorded the moment it
                        # arrives, before our reply, which can wait on a peer that never
                        # finishes.
                        autoclose=False,
                        max_msg_size=target.max_msg_size,
                        ssl=tls,
                        server_hostname=target.tls.server_name if target.tls else None,
                        timeout=aiohttp.ClientWSTimeout(
                            ws_receive=None, ws_close=target.close_timeout
                        ),
                    )
            except caught as exc:
                spent = time.perf_counter() - timeline.started
                status = getattr(exc, "status", None)  # a refused upgrade's HTTP status
                reason, error = classify(exc), describe(exc)
                let_go(exc)
                raise ConnectFailed(
                    reason, error, spent, status=status if type(status) is int else None
                ) from exc
            ended = time.perf_counter()
    duration = max(0.0, ended - timeline.started - timeline.resolving)
    facts = tls_facts(ws.get_extra_info("ssl_object")) if target.url.startswith("wss:") else None
    return Opened(ws, duration, timeline.phases(ended), facts)


async def authenticate(
    ws: ClientWebSocketResponse, target: TargetConfig, m: TargetMetrics | None = None
) -> None:
    """Send the target's auth message and wait for a good reply, before any probe runs.

    Raises ConnectFailed("auth", ...) after closing the connection; the message itself
    (a credential) is never part of the error. The messages read count in `m`, if given.
    """
    auth = target.auth
    assert auth is not None
    correlator = Correlator(target.correlation_field)
    req_id = correlator.next_id()
    body = dict(auth.send)
    if target.correlation_field is not None:
        body[target.correlation_field] = req_id
    started = time.perf_counter()
    problem: str | None = None
    try:
        async with asyncio.timeout(auth.timeout):
            await ws.send_str(json.dumps(body, separators=(",", ":")))
            while problem is None:
                msg = await ws.receive()
                if msg.type is WSMsgType.PING:
                    await ws.pong(msg.data)
                    continue
                if msg.type is WSMsgType.BINARY:
                    if m is not None:
                        m.messages_received.inc()
                    continue
                if msg.type is not WSMsgType.TEXT:
                    problem = "connection closed before the auth reply"
                    break
                if m is not None:
                    m.messages_received.inc()
                message = parse(msg.data)
                if target.correlation_field is not None:
                    key = None if message is None else message.get(target.correlation_field)
                    if type(key) is not int or key != req_id:
                        continue  # not the reply (yet); `true` and 1.0 are not ids
                outcome, detail = judge_auth(auth.expect, message)
                if outcome == "ok":
                    return
                problem = f"{outcome}: {detail}"
    except TimeoutError:
        problem = f"no auth reply within {auth.timeout:g}s"
    except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
        problem = f"{type(exc).__name__} during auth"
    with contextlib.suppress(TimeoutError, ConnectionError, aiohttp.ClientError, RuntimeError):
        async with asyncio.timeout(target.close_timeout):
            await ws.close(code=1000, message=b"auth failed")
    raise ConnectFailed("auth", problem, time.perf_counter() - started)


def safe_url(target: TargetConfig) -> str:
    """The target's URL as it may appear in logs."""
    return redact_url(target.url)
