"""Targets reached through an HTTP proxy: a tunnel by CONNECT for ws:// as for wss://, as RFC
6455 section 4.1 asks (aiohttp's own `proxy=` sends a plain `GET ws://...` for ws://, which
CONNECT-only proxies refuse).

The tunnel is `aiohttp_socks`'s connector (its HTTP proxy type always tunnels with CONNECT),
one `ClientSession` per proxy, made when a target first needs it. TLS to the target runs
inside the tunnel with the target's own context, so its handshake is timed as without a proxy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp_socks import ProxyConnectionError, ProxyConnector, ProxyError, ProxyTimeoutError

from .config import TCPConfig

# What a failed tunnel raises (the proxy refused CONNECT, could not be reached, timed out).
TUNNEL_ERRORS = (ProxyConnectionError, ProxyError, ProxyTimeoutError)


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
    return ProxyConnector.from_url(proxy, rdns=True, limit=0, limit_per_host=0, **connector)
