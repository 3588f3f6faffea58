"""The Prometheus text format's way of writing values and labels (as prometheus_client does)."""

from __future__ import annotations

import math
from collections.abc import Iterable

INF = math.inf


def go_float(d: float) -> str:
    """A float as the Prometheus text format writes it (prometheus_client's floatToGoString:
    Go switches to exponent notation sooner than Python's repr). Between -inf and 1e6 (not
    included) it is repr(d); callers on hot paths test that range inline."""
    if d == INF:
        return "+Inf"
    if d == -INF:
        return "-Inf"
    if d != d:  # NaN
        return "NaN"
    s = repr(float(d))
    dot = s.find(".")
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def count_text(n: int) -> str:
    # go_float(float(n)), without its cost in the common case.
    return f"{n}.0" if n < 1_000_000 else go_float(float(n))


def escape_value(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def labels_text(pairs: Iterable[tuple[str, str]]) -> str:
    body = ",".join(f'{k}="{escape_value(v)}"' for k, v in sorted(pairs))
    return f"{{{body}}}" if body else ""
