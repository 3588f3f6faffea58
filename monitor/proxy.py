"""The HTTP client sessions connections are opened on: direct, or through an HTTP proxy by a
CONNECT tunnel, for ws:// as for wss://, as RFC 6455 section 4.1 asks (aiohttp's own `proxy=`
sends a plain `GET ws://...` for ws://, which CONNECT-only proxies refuse).

The tunnel is `aiohttp_socks`'s connector (its HTTP proxy type always tunnels with CONNECT),
one `ClientSession` per proxy, made when a target first needs it. TLS to the target runs
inside the tunnel with the target's own context, so its handshake is timed as without a proxy.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from .anatomy import trace_config
from .config import TCPConfig
from .log import redact_url
from .sockets import socket_factory

if TYPE_CHECKING:
    from aiohttp_socks import ProxyConnector


def tunnel_errors() -> tuple[type[BaseException], ...]:
    """What a failed tunnel raises (the proxy refused CONNECT, could not be reached, timed
    out). aiohttp_socks is imported with the first tunnel (`tunnel`), so a daemon without
    proxies never loads it; before that none of its errors can be raised, and this is ()."""
    socks = sys.modules.get("aiohttp_socks")
    if socks is None:
        return ()
    return (socks.ProxyConnectionError, socks.ProxyError, socks.ProxyTimeoutError)


class Sessions:
    """The daemon's HTTP client sessions: the direct one, and one per proxy URL; and the
    socket options a tunnel's socket gets once connected (`handshake.tune`)."""

    def __init__(
        self,
        make: Callable[[aiohttp.BaseConnector | None], aiohttp.ClientSession],
        tcp: TCPConfig,
    ) -> None:
        self._make = make  # a session with the daemon's settings, on this connector
        self.tcp = tcp
        self.direct = make(None)
        self._proxied: dict[str, aiohttp.ClientSession] = {}

    def for_proxy(self, proxy: str | None) -> aiohttp.ClientSession:
        """The session whose connections go through `proxy` (None: direct)."""
        if proxy is None:
            return self.direct
        session = self._proxied.get(proxy)
        if session is None:
            session = self._proxied[proxy] = self._make(tunnel(proxy))
        return session

    async def close(self) -> None:
        for session in (self.direct, *self._proxied.values()):
            await session.close()


def tunnel(proxy: str, **connector: Any) -> ProxyConnector:
    """A connector that opens every connection as a CONNECT tunnel through `proxy`
    (http://[user:password@]host:port); the target's name is resolved by the proxy."""
    from aiohttp_socks import ProxyConnector  # only a daemon with proxies loads it

    return ProxyConnector.from_url(proxy, rdns=True, limit=0, limit_per_host=0, **connector)


def client_sessions(tcp: TCPConfig) -> Sessions:
    """Sessions with the settings every WebSocket of wsmon is opened with: no connection
    limit (the default of 100 would silently stall the 101st WebSocket), sockets with the
    `tcp` keepalive options, the handshake's phases traced, no cookies, no decompression,
    and redirects not followed."""

    def make(connector: aiohttp.BaseConnector | None) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=connector
            or aiohttp.TCPConnector(
                limit=0,
                limit_per_host=0,
                enable_cleanup_closed=True,
                socket_factory=socket_factory(tcp),
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            trace_configs=[trace_config(), no_redirects()],
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
        )

    return Sessions(make, tcp)


def no_redirects() -> aiohttp.TraceConfig:
    """An upgrade answered with a redirect fails, as in browsers, rather than being
    followed: a connection goes to the URL configured (or allowed, for GET /probe), and its
    headers and auth message to no other host."""

    async def redirected(_: Any, __: Any, params: aiohttp.TraceRequestRedirectParams) -> None:
        response = params.response
        response.close()
        where = redact_url(response.headers.get("Location", ""))
        raise aiohttp.ClientResponseError(
            response.request_info,
            response.history,
            status=response.status,
            message=f"redirect to {where} not followed",
        )

    trace = aiohttp.TraceConfig()
    trace.on_request_redirect.append(redirected)
    trace.freeze()
    return trace
