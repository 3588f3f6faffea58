"""The values a configuration is written in: durations, names, bucket lists, origins and
the like, each parsed and checked with a message that says what is wrong."""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_NAME_RE = re.compile(r"^[a-zA-Z0-9_.-]+$")


def parse_duration(value: Any, allow_zero: bool = False) -> float:
    """Turn `250ms`, `5s`, `2m`, `1h` or a bare number of seconds into seconds (greater
    than zero, or with `allow_zero` zero or more)."""
    if isinstance(value, bool):
        raise ValueError("invalid duration: expected e.g. 250ms, 5s, 2m, 1h")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(f"invalid duration: {value} is too large") from None
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"invalid duration {value!r}: expected e.g. 250ms, 5s, 2m, 1h")
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        least = "zero or more" if allow_zero else "greater than zero"
        raise ValueError(f"invalid duration {value!r}: must be {least}")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]

# The longest `send_alignment`: a coarser grid would bunch sends into a few instants.
MAX_SEND_ALIGNMENT = 1.0
# The shortest: uvloop keeps time in whole milliseconds.
MIN_SEND_ALIGNMENT = 0.001


def alignment(value: Any) -> float:
    """0 (off), or a duration from MIN_SEND_ALIGNMENT to MAX_SEND_ALIGNMENT."""
    seconds = parse_duration(value, allow_zero=True)
    if 0 < seconds < MIN_SEND_ALIGNMENT:
        raise ValueError(
            f"{value!r} is too short: at least {MIN_SEND_ALIGNMENT * 1000:g}ms (0 turns "
            "alignment off); a finer grid than the event loop's clock aligns nothing"
        )
    if seconds > MAX_SEND_ALIGNMENT:
        raise ValueError(
            f"{value!r} is too long: at most {MAX_SEND_ALIGNMENT:g}s (0 turns alignment off); "
            "a coarser grid would send most probes in a few bursts"
        )
    return seconds


def is_name(v: str) -> bool:
    """True when `v` is a valid target or probe name (letters, digits, '_', '.', '-')."""
    return _NAME_RE.fullmatch(v) is not None


def _check_name(v: str) -> str:
    """Target and probe names become label values: keep them plain."""
    if not is_name(v):
        raise ValueError(f"invalid name {v!r}: use letters, digits, '_', '.', '-'")
    return v


Name = Annotated[str, AfterValidator(_check_name)]

# RFC 7230 token characters: what a WebSocket subprotocol name may hold (RFC 6455, 4.1).
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _check_token(v: str) -> str:
    if not _TOKEN_RE.match(v):
        raise ValueError(f"invalid subprotocol {v!r}: letters, digits and !#$%&'*+-.^_`|~ only")
    return v


def _check_origin(v: str) -> str:
    """An Origin header value: scheme://host[:port], as a browser sends it."""
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid origin {v!r}: expected http(s)://host[:port]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"invalid origin {v!r}: an origin has no path, query or user")
    try:
        parts.port  # noqa: B018 - raises for a port out of range
    except ValueError:
        raise ValueError(f"invalid origin {v!r}: port must be a number from 1 to 65535") from None
    return v.rstrip("/")


_PATH_RE = re.compile(r"^[^.\s]+(\.[^.\s]+)*$")


def _check_path(v: str) -> str:
    """`tick.epoch`: keys of nested JSON objects, joined by dots."""
    if not _PATH_RE.match(v):
        raise ValueError(f"invalid field path {v!r}: keys joined by dots, e.g. tick.epoch")
    return v


DottedPath = Annotated[str, AfterValidator(_check_path)]


def _check_proxy(v: str) -> str:
    """An HTTP proxy that tunnels with CONNECT: http://[user:password@]host:port."""
    parts = urlsplit(v)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError("expected http://[user:password@]host:port (an HTTP CONNECT proxy)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("a proxy URL has no path or query")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("proxy port must be a number from 1 to 65535") from None
    if port is None:
        raise ValueError("the proxy URL needs a port (http://host:port)")
    return v


ProxyURL = Annotated[str, AfterValidator(_check_proxy)]
Subprotocol = Annotated[str, AfterValidator(_check_token)]
Origin = Annotated[str, AfterValidator(_check_origin)]


# The RTT histogram's buckets when a probe names none: fine where WebSocket round trips sit
# (milliseconds to a second), few enough that a target with one probe costs at most 25
# series with the other defaults (docs/metrics.md counts them).
DEFAULT_RTT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
MAX_BUCKETS = 40


def _buckets(v: Any) -> tuple[float, ...]:
    """Upper bounds of histogram buckets: 1 to MAX_BUCKETS finite numbers greater than 0, in
    increasing order (+Inf is always added)."""
    if not isinstance(v, list | tuple) or not v:
        raise ValueError("expected a list of bucket bounds in seconds, e.g. [0.01, 0.1, 1]")
    if len(v) > MAX_BUCKETS:
        raise ValueError(f"{len(v)} buckets: at most {MAX_BUCKETS} (each is a series)")
    bounds: list[float] = []
    for i, b in enumerate(v):
        if isinstance(b, bool) or not isinstance(b, int | float) or not math.isfinite(b):
            raise ValueError(f"bucket {i} ({b!r}) is not a finite number (+Inf is implied)")
        if b <= 0:
            raise ValueError(f"bucket {i} ({b!r}) must be greater than 0")
        if bounds and b <= bounds[-1]:
            raise ValueError(f"bucket {i} ({b!r}) must be greater than the one before")
        bounds.append(float(b))
    return tuple(bounds)


Buckets = Annotated[tuple[float, ...], BeforeValidator(_buckets)]


def plain_json(v: dict[str, Any] | None) -> dict[str, Any] | None:
    """Reject what JSON cannot carry (dates, binary, sets, NaN, infinities)."""
    if v is not None:
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not plain JSON: {exc}") from None
    return v


def parse_listen(value: str) -> tuple[str, int]:
    """Split `HOST:PORT` (IPv6 as `[::1]:9815`)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid listen address {value!r}: expected HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)
