"""wsmon's reaches into names aiohttp does not export, each behind a guard.

None is needed for correct results: without them the daemon receives through
`ClientWebSocketResponse.receive()` (the portable path) and keeps what aiohttp keeps. They
exist for truth of measurement (`ReadStamp`: a round trip ends when its reply is read, not
when a task gets its turn), for the CPU goals of docs/performance.md (`DirectQueue`) and for
its memory goal (`trim`); it says what each buys. Each is looked up with `getattr`, so a
release that renamed or dropped a name cannot stop start-up, and each is switched on only
by `monitor.selftest`, which proves it on a loopback connection first.
"""

from __future__ import annotations

import functools
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import aiohttp.client
from aiohttp import ClientWebSocketResponse
from multidict import CIMultiDict, CIMultiDictProxy

# The aiohttp releases the suite runs against (pyproject.toml states the same range); outside
# it every hook stays off, whatever the self-test would say.
TESTED_AIOHTTP = ((3, 12), (3, 15))
TESTED_AIOHTTP_TEXT = ">=3.12,<3.15"


@dataclass(frozen=True, slots=True)
class Hooks:
    """Which hooks the daemon's connections use (all off: the portable path)."""

    stamp: bool = False  # ReadStamp: round trips end at the read
    inbox: bool = False  # DirectQueue: replies handled without waking the receive task
    trim: bool = False  # trim: an open connection lets go of its spent handshake

    @property
    def receive_path(self) -> str:
        """`wsmon_build_info{receive_path}`: how replies reach their probe."""
        return "hooked" if self.inbox else "portable"

    def names(self) -> list[str]:
        return [name for name in NAMES if getattr(self, name)]


PORTABLE = Hooks()
NAMES = ("stamp", "inbox", "trim")  # the fields of Hooks


def version_tuple(text: str) -> tuple[int, ...]:
    """The leading release numbers of a version string (`4.0.0a2.dev0` -> (4, 0, 0))."""
    match = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(p) for p in match.group(0).split(".")) if match else ()


def aiohttp_tested(version: str | None = None) -> bool:
    """True when the installed (or given) aiohttp is within TESTED_AIOHTTP."""
    found = version_tuple(version if version is not None else aiohttp.__version__)
    low, high = TESTED_AIOHTTP
    return bool(found) and low <= found < high


# --- ReadStamp -------------------------------------------------------------------------------


class ReadStamp:
    """When bytes of one connection were last read from its socket (`time.perf_counter`).

    aiohttp's protocol calls its data-received callback just before it parses what it read;
    the stamp wraps that callback. A message is read no later than this stamp and the
    receive loop sees it no earlier, so the round trip it ends is never shortened, and the
    wait for the loop's turn (after a burst of readable sockets, or a scrape) is not counted.
    """

    __slots__ = ("at", "then")

    def __init__(self, then: Callable[[], None] | None) -> None:
        self.at = 0.0
        self.then = then

    def __call__(self) -> None:
        self.at = time.perf_counter()
        if self.then is not None:
            self.then()

    @classmethod
    def install(cls, ws: ClientWebSocketResponse) -> ReadStamp | None:
        """Wrap the connection's data-received callback; None where aiohttp has none."""
        proto = getattr(getattr(ws, "_conn", None), "protocol", None)
        if proto is None or not hasattr(proto, "_data_received_cb"):
            return None
        stamp = cls(proto._data_received_cb)
        proto._data_received_cb = stamp
        return stamp


# --- DirectQueue -----------------------------------------------------------------------------


def direct_queue_class(base: Any) -> type:
    """A subclass of aiohttp's queue of parsed messages, with a way around it.

    Every message the parser produces goes through `feed_data`; the stock queue stores it
    and wakes the receive task, once per message. While `to_inbox` is set (only while the
    receive loop waits) and nothing is queued ahead (so order is kept), it is offered the
    message first, where it was parsed. What it declines (close frames, the server's pings,
    errors) is queued for the loop as before. aiohttp's Cython parser calls `feed_data` as a
    cpdef method, which honours a subclass's override.
    """

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        base.__init__(self, *args, **kwargs)
        self.to_inbox = None

    def feed_data(self: Any, data: Any, size: int) -> None:
        to_inbox = self.to_inbox
        if to_inbox is not None and not self._buffer and to_inbox(data):
            return
        base.feed_data(self, data, size)

    namespace = {
        "__slots__": ("to_inbox",),
        "__init__": __init__,
        "feed_data": feed_data,
        "__doc__": direct_queue_class.__doc__,
        "__module__": __name__,
        "wsmon_direct": True,  # how `direct_queue` and `QueueHook` recognise it
    }
    return type("DirectQueue", (base,), namespace)


@dataclass(slots=True)
class QueueHook:
    """aiohttp's client module builds each connection's queue from a module-level name;
    `install` points that name at a `DirectQueue` subclass of the class it found there.
    Without `to_inbox` set, a `DirectQueue` behaves exactly as aiohttp's own, so other
    clients in the process are not changed."""

    original: type | None = None
    direct: type | None = None

    def install(self) -> str | None:
        """Install the subclass; the reason it cannot be, or None."""
        built = getattr(aiohttp.client, "WebSocketDataQueue", None)
        if built is not None and getattr(built, "wsmon_direct", False):
            self.original, self.direct = built.__mro__[1], built
            return None
        if not isinstance(built, type):
            return "aiohttp.client builds no WebSocketDataQueue"
        if not callable(getattr(built, "feed_data", None)) or not hasattr(built, "read"):
            return "aiohttp's WebSocketDataQueue has no feed_data/read"
        try:
            direct = direct_queue_class(built)
        except TypeError as exc:  # a final extension type, say
            return f"cannot subclass aiohttp's WebSocketDataQueue: {exc}"
        self.original, self.direct = built, direct
        setattr(aiohttp.client, "WebSocketDataQueue", direct)  # noqa: B010 - not exported
        return None

    def uninstall(self) -> None:
        """Give aiohttp its own class back (after a failed self-test)."""
        if (
            self.direct is not None
            and getattr(aiohttp.client, "WebSocketDataQueue", None) is self.direct
        ):
            setattr(aiohttp.client, "WebSocketDataQueue", self.original)  # noqa: B010
        self.direct = None


def direct_queue(ws: ClientWebSocketResponse) -> Any | None:
    """The connection's `DirectQueue`, or None when aiohttp built its own."""
    queue = getattr(ws, "_reader", None)
    return queue if getattr(type(queue), "wsmon_direct", False) else None


# --- trim ------------------------------------------------------------------------------------

_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
_MASK_BITS = functools.partial(random.getrandbits, 32)  # what every writer builds for itself
_TRIMMED = (
    ("response", "_headers"),
    ("response", "_raw_headers"),
    ("response", "_request_info"),
    ("response", "_traces"),
    ("response", "_cache"),  # what its properties returned (headers among them), kept
    ("protocol", "_parser"),
    ("protocol", "_payload_parser"),
    ("protocol", "_buffer"),
    ("writer", "get_random_bits"),
)


def trim(ws: ClientWebSocketResponse) -> str | None:
    """Let go of what an upgraded connection keeps of its HTTP handshake and never reads again.

    aiohttp keeps, for the life of a WebSocket, the upgrade response's headers (parsed and
    raw), the request's headers (in its `request_info`), the trace contexts, the spent HTTP
    parser and the protocol's empty queue of HTTP messages, and gives each writer a mask-bit
    function of its own. The headers go (`request_info` keeps its URL and method), the
    parser and the queue go as aiohttp itself drops them when a connection is lost, and
    every writer shares one function. Nothing of it is read once the WebSocket is open: the
    close handshake and a lost connection go through the WebSocket parser and queue.
    Returns why it cannot (the connection changed shape), or None once done.
    """
    held: Any = getattr(ws, "_response", None)
    connection = getattr(held, "connection", None)  # public; None once released
    parts: dict[str, Any] = {
        "response": held,
        "protocol": getattr(connection, "protocol", None),
        "writer": getattr(ws, "_writer", None),
    }
    missing = [f"{part}.{name}" for part, name in _TRIMMED if not hasattr(parts[part], name)]
    if missing:
        return f"aiohttp's connection has no {', '.join(missing)}"
    response: Any = parts["response"]
    protocol: Any = parts["protocol"]
    writer: Any = parts["writer"]
    if not isinstance(response._cache, dict):
        return "aiohttp's response keeps its properties in no dict"
    if protocol._payload_parser is None or protocol._buffer:
        return "the connection is not an upgraded one at rest"
    info = response._request_info
    try:
        slim = type(info)(info.url, info.method, _NO_HEADERS, info.real_url)
    except (TypeError, AttributeError, ValueError) as exc:
        return f"cannot rebuild aiohttp's RequestInfo: {exc}"
    response._headers = _NO_HEADERS
    response._raw_headers = ()
    response._request_info = slim
    response._traces = []
    for name in ("headers", "raw_headers", "request_info"):
        response._cache.pop(name, None)
    protocol._parser = None
    protocol._buffer = ()
    writer.get_random_bits = _MASK_BITS
    return None
