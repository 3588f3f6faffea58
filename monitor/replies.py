"""What a reply says: its JSON object, whether it is the answer a probe expects, the server's
clock."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, Literal

from .config import ProbeConfig

# orjson (the `speedups` extra, in the locked install) parses a message several times faster
# than the json module; what it refuses (NaN, Infinity, lone surrogates, deep nesting) the
# json module reads as before. One difference stays: an integer outside the 64-bit range is
# the nearest float to orjson, exact to the json module (docs/configuration.md, `expect`).
fast_loads: Callable[[str], Any] | None
try:
    from orjson import JSONDecodeError as _FastError
    from orjson import loads as fast_loads
except ImportError:  # the portable path: the json module alone
    fast_loads = None

    class _FastError(Exception):  # type: ignore[no-redef]
        """Never raised: there is no fast parser."""


Outcome = Literal["ok", "api_error", "rate_limited", "unexpected_reply", "invalid_json"]
# Error codes that say "too many requests" rather than "wrong": the probe slows down.
RATE_LIMIT_CODES = frozenset({"RateLimit"})


def parse(text: str) -> dict[str, Any] | None:
    """The JSON object in a text frame, or None when it is not one (other JSON values,
    garbage, absurdly deep nesting)."""
    try:
        if fast_loads is not None:
            try:
                value = fast_loads(text)
            except _FastError:
                value = json.loads(text)
        else:
            value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


_SCALARS = (str, int, float)


def subset(expected: Any, actual: Any) -> bool:
    """True when every key of `expected` is in `actual` with a matching value, recursively."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return False
        for k, v in expected.items():
            if k not in actual:
                return False
            a = actual[k]
            # Plain strings and numbers, the usual `{msg_type: ping}` (bool has its own
            # type, so `true` never equals 1 here).
            if type(v) in _SCALARS and type(a) in _SCALARS:
                if v != a:
                    return False
            elif not subset(v, a):
                return False
        return True
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(subset(e, a) for e, a in zip(expected, actual, strict=True))
        )
    # 1 and 1.0 are the same JSON number, but `true` is not the number 1.
    return bool(expected == actual) and isinstance(expected, bool) == isinstance(actual, bool)


def judge(probe: ProbeConfig, message: dict[str, Any] | None) -> tuple[Outcome, str]:
    """Classify a matched reply: ok, or the error reason and a short detail for the log."""
    if message is None:
        return "invalid_json", "reply is not a JSON object"
    error = message.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        if isinstance(code, str) and code in RATE_LIMIT_CODES:
            return "rate_limited", code
        return "api_error", str(code or error.get("message") or "error")
    if probe.expect is not None and not subset(probe.expect, message):
        return "unexpected_reply", "reply does not match `expect`"
    return "ok", ""


def judge_auth(expect: dict[str, Any] | None, msg: dict[str, Any] | None) -> tuple[str, str]:
    """Classify the reply to an auth message; the detail never repeats what was sent."""
    if msg is None:
        return "invalid_json", "reply is not a JSON object"
    error = msg.get("error")
    if isinstance(error, dict):
        return "api_error", str(error.get("code") or "error")
    if expect is not None and not subset(expect, msg):
        return "unexpected_reply", "reply does not match `expect`"
    return "ok", ""


def server_time_offset(msg: dict[str, Any], sent_wall: float, rtt: float) -> float | None:
    """Server clock minus ours, if the reply carries a `time` epoch (seconds).

    The server read its clock somewhere in the round trip; the midpoint is the best guess.
    """
    raw = msg.get("time")
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    try:
        value = float(raw)
    except OverflowError:  # an integer beyond any float
        return None
    if not math.isfinite(value) or value < 1e9:  # not an epoch (e.g. the `{"time": 1}` echo)
        return None
    if value >= 1e11:  # milliseconds: seconds will not reach 1e11 before the year 5000
        value = value / 1000.0
    return float(value) - (sent_wall + rtt / 2)
