"""Small helpers shared by the benchmark harness and its child processes.

The measuring helpers here read the process they run in (used by ``bench.wakeup`` and
``bench.promreg``): CPU from ``getrusage`` (all threads, in microseconds), memory from
``/proc/self/status``. Percentiles are by nearest rank. The measured clients are read from
outside instead (``bench.harness.ProcStat``).
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import resource
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

__all__ = [
    "DiscardingStream",
    "cpu_seconds",
    "emit",
    "percentile",
    "raise_nofile",
    "rss_kb",
    "summary",
    "usage",
]


class DiscardingStream(io.StringIO):
    """A text stream whose write() keeps nothing; it only counts the lines written."""

    def __init__(self) -> None:
        super().__init__()
        self.lines = 0

    def write(self, s: str) -> int:
        self.lines += s.count("\n")
        return len(s)

    def isatty(self) -> bool:
        return False


def raise_nofile() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the new soft limit.

    Used directly by the Python children and as the ``preexec_fn`` of the node server.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Usage(NamedTuple):
    """What this process (every thread) has used so far, from one ``getrusage`` call."""

    user: float  # CPU seconds in user mode
    system: float  # CPU seconds in the kernel
    # Voluntary context switches: how often it went to sleep (on the event loop, mostly:
    # one per wake-up from an idle wait).
    wakeups: int

    @property
    def cpu(self) -> float:
        return self.user + self.system


def usage() -> Usage:
    """This process's CPU time (user and system) and wake-ups so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return Usage(ru.ru_utime, ru.ru_stime, ru.ru_nvcsw)


def cpu_seconds() -> float:
    """User + system CPU time of this process (every thread) so far, in seconds."""
    return usage().cpu


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_kb() -> int:
    """Resident set size of this process in KiB (VmRSS)."""
    return _status_kb("VmRSS")


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, by nearest rank; NaN if empty."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def summary(values: Sequence[float], scale: float = 1.0) -> dict[str, float | int]:
    """n, mean, p50, p90, p99, max of `values` multiplied by `scale` (e.g. 1000: s -> ms)."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return {"n": 0}
    return {
        "n": n,
        "mean": math.fsum(ordered) / n * scale,
        "p50": percentile(ordered, 50) * scale,
        "p90": percentile(ordered, 90) * scale,
        "p99": percentile(ordered, 99) * scale,
        "max": ordered[-1] * scale,
    }


async def end_process(proc: asyncio.subprocess.Process | None, within: float) -> None:
    """SIGTERM a child, and SIGKILL it if it has not exited within `within` seconds."""
    if proc is None or proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def emit(obj: dict[str, Any]) -> None:
    """Write one JSON line on stdout (the child -> harness channel) and flush it."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()
