"""The standard `process_*` families, as every Prometheus exporter writes them, read from
/proc at each scrape without walking the daemon's thousands of descriptors."""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class ProcessCollector(Collector):
    """The `process_*` families of this process, as prometheus_client's ProcessCollector
    writes them (same names, help and types), read from /proc on every collect.

    prometheus_client counts open descriptors by listing /proc/self/fd, which walks every
    one of them, and a daemon holds a socket per target: that listing would hold the event
    loop on every scrape. Linux 6.2 and later give the same count as the directory's size;
    it is used when a check at construction agrees with a listing, else (older kernels
    report 0, other systems may not agree) every count lists. Without /proc: no families.
    """

    def __init__(self, proc: str = "/proc") -> None:
        self._stat = os.path.join(proc, "self", "stat")
        self._fd = os.path.join(proc, "self", "fd")
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._pagesize = resource.getpagesize()
        self._btime: float | None = None
        try:
            with open(os.path.join(proc, "stat"), "rb") as stat:
                for line in stat:
                    if line.startswith(b"btime "):
                        self._btime = float(line.split()[1])
                        break
            self.sized = self._size_counts()
        except OSError:
            self.sized = False

    def _size_counts(self) -> bool:
        """True when the fd directory's size is the number of open descriptors: a listing
        (which holds one more, its own) agrees with the size read before and after it."""
        for _ in range(3):  # another thread may open or close a file meanwhile
            before = os.stat(self._fd).st_size
            listed = len(os.listdir(self._fd))
            if before > 0 and before == os.stat(self._fd).st_size == listed - 1:
                return True
        return False

    def open_fds(self) -> int:
        """Open file descriptors now, not counting one opened to count them."""
        if self.sized:
            size = os.stat(self._fd).st_size
            if size > 0:
                return size
        return len(os.listdir(self._fd)) - 1  # the listing's own descriptor

    def collect(self) -> Iterator[Metric]:
        if self._btime is None:
            return
        try:
            with open(self._stat, "rb") as stat:
                # after the command name, which may hold spaces and parentheses
                parts = stat.read().rsplit(b")", 1)[-1].split()
            open_fds = self.open_fds()
        except OSError:
            return
        ticks = self._ticks
        yield GaugeMetricFamily(
            "process_virtual_memory_bytes", "Virtual memory size in bytes.", value=float(parts[20])
        )
        yield GaugeMetricFamily(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            value=float(parts[21]) * self._pagesize,
        )
        yield GaugeMetricFamily(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            value=float(parts[19]) / ticks + self._btime,
        )
        yield CounterMetricFamily(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            value=(float(parts[11]) + float(parts[12])) / ticks,
        )
        yield GaugeMetricFamily(
            "process_open_fds", "Number of open file descriptors.", value=float(open_fds)
        )
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        yield GaugeMetricFamily(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            value=math.inf if soft == resource.RLIM_INFINITY else float(soft),
        )
