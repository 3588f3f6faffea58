"""Bounds on the HTTP side, so that slow, idle or too many clients can neither hold the
daemon's descriptors nor delay a scrape.

aiohttp's server bounds the size of request lines and headers and the idle time of a
kept-alive connection, but not how long a client may take to send its headers, nor how many
connections are open. `Guard` wraps aiohttp's protocol factory (any asyncio server takes
one): every connection must complete its request headers within `read_header_timeout` of
connecting (after the TLS handshake, with TLS), or of the first byte of its next request;
one idle for `idle_timeout` is closed; and at `max_connections` room is made fairly: a
connection without a request in progress goes first, the oldest of the client address
holding the most connections; when every one is serving a request, the oldest of an address
holding more than the newcomer's would is cut short; otherwise the newcomer is refused (503).
So a crowd from one place cannot keep a scrape from another out.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import cast

from aiohttp import web

from .config import HTTPConfig
from .families import Family

DROP_REASONS = ("header_timeout", "idle_timeout", "evicted", "refused")
REFUSAL_LINGER = 1.0  # seconds a refused connection may take to read the answer
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 21\r\n\r\ntoo many connections\n"
)


class Guard:
    """The protocol factory of the HTTP server, and the middleware that tells it when a
    connection has a request in progress."""

    def __init__(self, limits: HTTPConfig, open_gauge: Family, dropped: Family) -> None:
        # aiohttp's protocol factory (its `Server`), set once the app runner has one.
        self.factory: Callable[[], asyncio.Protocol] = asyncio.Protocol
        self.limits = limits
        self.open = open_gauge.labels()
        self.dropped = {reason: dropped.labels(reason) for reason in DROP_REASONS}
        # Admitted connections, oldest first; by transport, for the middleware; and how
        # many each client address holds.
        self.connections: dict[Connection, None] = {}
        self.by_transport: dict[asyncio.BaseTransport, Connection] = {}
        self.per_peer: collections.Counter[str] = collections.Counter()

    def __call__(self) -> asyncio.Protocol:
        """A protocol for a connection just accepted (its address is known once made)."""
        return Connection(self, self.factory)

    def admit(self, conn: Connection) -> bool:
        """Make room for `conn` if the limit is reached; False: refuse it."""
        if len(self.connections) >= self.limits.max_connections:
            victim = self._victim(conn.peer)
            if victim is None:
                self.dropped["refused"].inc()
                return False
            self.dropped["evicted"].inc()
            victim.drop()
        self.connections[conn] = None
        self.per_peer[conn.peer] += 1
        self.open.set(len(self.connections))
        return True

    def _victim(self, newcomer: str) -> Connection | None:
        """The connection to close for a newcomer from address `newcomer`: one without a
        request in progress (idle, or still sending its headers), the oldest of the address
        holding the most connections; when every one is serving a request, the oldest of an
        address holding more than the newcomer's would; else none (the newcomer is
        refused)."""
        victim: Connection | None = None
        most = 0
        for conn in self.connections:  # oldest first
            held = self.per_peer[conn.peer]
            if not conn.requests and held > most:
                victim, most = conn, held
        if victim is not None:
            return victim
        heaviest = max(self.per_peer, key=self.per_peer.__getitem__)
        if self.per_peer[heaviest] <= self.per_peer[newcomer] + 1:
            return None
        return next(conn for conn in self.connections if conn.peer == heaviest)

    def forget(self, conn: Connection) -> None:
        if conn not in self.connections:
            return
        del self.connections[conn]
        self.open.set(len(self.connections))
        self.per_peer[conn.peer] -= 1
        if self.per_peer[conn.peer] <= 0:
            del self.per_peer[conn.peer]
        if conn.transport is not None and self.by_transport.get(conn.transport) is conn:
            del self.by_transport[conn.transport]

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """A request whose headers have arrived: no timer runs on its connection until its
        response is done."""
        conn = self.by_transport.get(request.transport) if request.transport else None
        if conn is None:
            return await handler(request)
        conn.started()
        try:
            return await handler(request)
        finally:
            conn.finished()


def refuse(transport: asyncio.Transport) -> None:
    """Answer 503 and close: our side of the connection is shut at once, and the socket is
    closed when the client has read the answer and closed its own (or after a second), so
    that the request it sent meanwhile does not turn the answer into a reset."""
    transport.write(REFUSAL)
    if transport.can_write_eof():
        transport.write_eof()
    asyncio.get_running_loop().call_later(REFUSAL_LINGER, transport.close)


class Connection(asyncio.Protocol):
    """One HTTP connection: aiohttp's handler, wrapped to time it (or a refusal)."""

    __slots__ = (
        "factory", "guard", "inner", "peer", "requests", "timer", "transport", "waiting_for",
    )  # fmt: skip

    def __init__(self, guard: Guard, factory: Callable[[], asyncio.Protocol]) -> None:
        self.guard = guard
        self.inner: asyncio.Protocol | None = None  # aiohttp's handler, once admitted
        self.factory = factory
        self.transport: asyncio.Transport | None = None
        self.peer = ""  # the client's address
        self.requests = 0  # in progress
        self.timer: asyncio.TimerHandle | None = None
        self.waiting_for = ""  # "header_timeout" or "idle_timeout": what the timer ends

    # --- the timers -------------------------------------------------------------------------

    def _arm(self, reason: str, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.waiting_for = reason
        self.timer = asyncio.get_running_loop().call_later(seconds, self._expire)

    def _expire(self) -> None:
        self.timer = None
        if self.requests == 0 and self.transport is not None:
            self.guard.dropped[self.waiting_for].inc()
            self.drop()

    def drop(self) -> None:
        """Close it now (and forget it: the room is free at once)."""
        self.guard.forget(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.abort()
            self.transport = None

    def started(self) -> None:
        self.requests += 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def finished(self) -> None:
        self.requests -= 1
        if self.requests == 0 and self.transport is not None:
            self._arm("idle_timeout", self.guard.limits.idle_timeout)

    # --- asyncio.Protocol, passed on to aiohttp's handler -------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if isinstance(peername, tuple) and peername else ""
        guard = self.guard
        if not guard.admit(self):
            refuse(self.transport)
            return
        guard.by_transport[self.transport] = self
        self.inner = self.factory()
        self._arm("header_timeout", guard.limits.read_header_timeout)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return  # refused: what it sends is not read
        if self.waiting_for == "idle_timeout" and self.timer is not None:
            # The next request has begun: its headers have their own time.
            self._arm("header_timeout", self.guard.limits.read_header_timeout)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.inner is None:  # refused: the client has read the answer
            if self.transport is not None:
                self.transport.close()
            return None
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.guard.forget(self)
        self.transport = None
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()
