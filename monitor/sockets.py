"""The options every socket to a target gets: TCP keepalive and TCP_USER_TIMEOUT, so that a
peer that vanished without a FIN or RST (a black hole) fails the connection even when no
probe runs."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from aiohttp.connector import AddrInfoType

from .config import TCPConfig


def socket_factory(tcp: TCPConfig) -> Callable[[AddrInfoType], socket.socket]:
    """Sockets with TCP keepalive and TCP_USER_TIMEOUT, so that a peer that vanished
    without a FIN or RST (a black hole) fails the connection even when no probe runs."""

    def make(addr_info: AddrInfoType) -> socket.socket:
        family, type_, proto, _, _ = addr_info
        sock = socket.socket(family, type_, proto)
        tune(sock, tcp)
        return sock

    return make


def tune(sock: Any, tcp: TCPConfig) -> None:
    """Set the keepalive options on a socket (also on a connected one: a proxy's tunnel)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; other systems keep their defaults
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(tcp.keepalive_idle)))
        sock.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(tcp.keepalive_interval))
        )
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, tcp.keepalive_count)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, int(tcp.user_timeout * 1000))
        )
