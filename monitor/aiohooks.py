"""Where wsmon reaches into aiohttp's WebSocket client: when a connection's bytes were read,
replies taken from the connection as they are parsed, without waking its receive task, and
requests written without a coroutine per send.

Every hook is optional. Where an aiohttp release no longer has what they attach to, the
daemon receives through `ClientWebSocketResponse.receive()` and sends through `send_frame()`
alone, with the same results; `tests/test_connection.py` runs the tests of round trips,
replies and close codes both ways and checks that the installed aiohttp takes the hooks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp.client
from aiohttp import ClientWebSocketResponse
from aiohttp._websocket.reader import WebSocketDataQueue

# Called with each message the connection's parser produces while the receive loop waits
# on an empty queue; True means it was handled and is not queued.
Take = Callable[[Any], bool]


class ReadStamp:
    """When bytes of one connection were last read from its socket (`time.perf_counter`).

    A reply's round trip ends when its bytes are read, not when the receive loop's task
    gets its turn: after a burst of readable sockets, or a slice of work such as a scrape,
    the task may run a while later, and that wait is the monitor's, not the peer's.
    aiohttp's protocol calls its data-received callback just before it parses what it
    read; the stamp wraps that callback. A message is read no later than this stamp, and
    the receive loop sees it no earlier, so the round trip it ends is never shortened.
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
        """Wrap the connection's data-received callback; None where aiohttp has none (the
        receive loop then takes the time itself)."""
        conn = getattr(ws, "_conn", None)
        proto = getattr(conn, "protocol", None)
        if proto is None or not hasattr(proto, "_data_received_cb"):
            return None
        stamp = cls(proto._data_received_cb)
        proto._data_received_cb = stamp
        return stamp


# The largest header of a client frame: 2 bytes, 8 of extended length and a 4-byte mask.
MAX_HEADER = 14


def frame_writer(ws: ClientWebSocketResponse) -> Any | None:
    """aiohttp's frame writer of the connection, where `write_frame` can use it; else None
    (every send then goes through `send_frame`)."""
    writer = getattr(ws, "_writer", None)
    needs = ("_write_websocket_frame", "_closing", "_output_size", "_limit", "compress")
    if writer is None or not all(hasattr(writer, name) for name in needs):
        return None
    return writer


def write_frame(writer: Any, payload: bytes, opcode: int) -> bool:
    """Write a frame at once, where aiohttp's own `send_frame` would too; True if written.

    `send_frame` is a coroutine (an awaitable per send, driven by the caller) around a
    plain method that builds, masks and writes the frame. For an uncompressed frame it
    only awaits when its count of bytes written passes its limit and the socket buffer is
    full. This calls that method directly whenever the frame leaves the count within the
    limit, so nothing would have been awaited. Otherwise (and where `send_frame` would
    compress the frame or refuse it while closing) it writes nothing and returns False:
    the caller goes through `send_frame`, which also resets the count, as for every frame.
    Raises what `send_frame` raises when the transport is closing.
    """
    if (
        writer.compress
        or writer._closing
        or writer._output_size + len(payload) + MAX_HEADER > writer._limit
    ):
        return False
    writer._write_websocket_frame(payload, opcode, 0)
    return True


class DirectQueue(WebSocketDataQueue):
    """aiohttp's queue of parsed messages for one connection, with a way around it.

    Every message the parser produces goes through `feed_data`. The stock queue stores it
    and resolves the future that the receive task awaits: one task wake-up per message,
    the largest cost per round trip that the receive path has left, and one that every
    reply pays. While `take` is set (the receive loop sets it only while it waits, so the
    loop is not in the middle of another message) and nothing is queued ahead (so order is
    kept), `take` is offered the message first, right where it was parsed, at the moment
    of the read (the session puts what it takes in its inbox, handled after the reads of
    that turn). What it declines (close frames, the server's pings, errors) is queued as
    before, for the loop.

    aiohttp's parser calls `feed_data` as a cpdef method, which a subclass overrides (its
    Cython build looks the override up; the pure-Python build calls it plainly).
    """

    __slots__ = ("take",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.take: Take | None = None

    def feed_data(self, data: Any, size: int) -> None:
        take = self.take
        if take is not None and not self._buffer and take(data):
            return
        WebSocketDataQueue.feed_data(self, data, size)

    def feed_loop(self, data: Any) -> None:
        """Queue a message for the receive loop, past `take`."""
        WebSocketDataQueue.feed_data(self, data, 0)


def use_direct_queue() -> bool:
    """Make aiohttp's client give every new WebSocket a `DirectQueue`; idempotent. With no
    `take` set, a `DirectQueue` behaves exactly as aiohttp's own, so other clients in the
    process are not changed. False (and nothing changed) when the client module does not
    build the queue this hook expects."""
    built = getattr(aiohttp.client, "WebSocketDataQueue", None)
    if built is DirectQueue:
        return True
    if built is not WebSocketDataQueue:
        return False
    setattr(aiohttp.client, "WebSocketDataQueue", DirectQueue)  # noqa: B010 - not exported
    return True


def direct_queue(ws: ClientWebSocketResponse) -> DirectQueue | None:
    """The connection's `DirectQueue`, or None when aiohttp built its own."""
    queue = getattr(ws, "_reader", None)
    return queue if isinstance(queue, DirectQueue) else None
