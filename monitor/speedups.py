"""Optional speed-ups (`pip install wsmon[speedups]`): uvloop's event loop, chosen here, and
orjson, which reads replies when installed (`monitor.replies`). The daemon works the same
without them; bench/RESULTS.md shows what they buy."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop to run on: `asyncio`, `uvloop`, or `auto` (uvloop when installed)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit(
                "wsmon: --event-loop uvloop needs `pip install wsmon[speedups]`"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """asyncio.run on the chosen event loop."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)
