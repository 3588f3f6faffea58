"""File descriptors: the soft limit raised to the hard one, what a configuration needs, and
the room left for targets once the HTTP side has its reserve.

A daemon that runs out of descriptors must still answer /metrics, /healthz and /readyz, so
that Prometheus learns what is short instead of seeing the exporter down. The HTTP side is
bounded (`http.max_connections`), so its reserve is known; targets get what is left, and a
target that finds no room waits in backoff, counted as a `resource` connect failure,
without trying to open a socket.
"""

from __future__ import annotations

import errno
import os
import resource
from dataclasses import dataclass

from .config import Config

# A target's connection is one socket (TLS needs none of its own).
FDS_PER_TARGET = 1
# Kept free beyond the HTTP side's and the name lookups' share: what the daemon opens for a
# moment (a scrape's /proc reads, TLS connections still being torn down).
SLACK = 64
# What the daemon holds before its targets (listener, event loop, standard streams, log,
# the HTTP client), where it has not been measured: `wsmon check-config`.
HELD_ESTIMATE = 32
# Socket errors that mean the process or the system is out of something, not the peer.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True, slots=True)
class Budget:
    """What a configuration needs against the limit."""

    targets: int
    reserve: int  # the HTTP side, name lookups in flight, the daemon's own, slack
    limit: int

    @property
    def allowed(self) -> int:
        """Target connections that fit."""
        return max(0, (self.limit - self.reserve) // FDS_PER_TARGET)

    @property
    def needed(self) -> int:
        return self.targets * FDS_PER_TARGET + self.reserve

    @property
    def short(self) -> bool:
        return self.allowed < self.targets

    def advice(self) -> str:
        return (
            f"raise the limit of open files to at least {self.needed}: LimitNOFILE= in the "
            "systemd unit, or `ulimit -n` in the shell that starts wsmon"
        )


def budget(
    config: Config, limit: int, held: int = HELD_ESTIMATE, http_connections: int | None = None
) -> Budget:
    """The budget of `config` under `limit`, with `held` descriptors the daemon holds before
    its targets; `http_connections` is the running HTTP side's limit where it differs from
    the config's (it changes at restart only)."""
    http = config.http.max_connections if http_connections is None else http_connections
    reserve = held + http + config.max_concurrent_handshakes + SLACK
    return Budget(len(config.targets), reserve, limit)


def raise_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit, as the Go runtime does for Prometheus
    and its exporters; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else _nr_open()
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft if soft != resource.RLIM_INFINITY else wanted
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):  # not allowed here: keep what we have
        return soft
    return wanted


def hard_limit() -> int:
    """What `raise_limit` can reach in this environment (check-config's view)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return hard if hard != resource.RLIM_INFINITY else _nr_open()


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def open_fds() -> int:
    """Descriptors open now (one listing: called once, at start)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # the listing's own
    except OSError:
        return 0


class Gate:
    """How many target connections may be open or opening at once (`Budget.allowed`).
    Counted, not measured per handshake, so a check costs nothing."""

    __slots__ = ("allowed", "in_use")

    def __init__(self) -> None:
        self.allowed = 1 << 62  # until the daemon sets it from its budget
        self.in_use = 0

    def acquire(self) -> bool:
        """Room for one more connection's socket (then `release` it when it is closed)."""
        if self.in_use >= self.allowed:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1


def is_resource_error(exc: BaseException) -> bool:
    """True for an OS error (or one wrapped by aiohttp) that says resources ran out."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS:
            return True
        os_error = getattr(exc, "os_error", None)
        if isinstance(os_error, OSError) and os_error.errno in RESOURCE_ERRNOS:
            return True
        exc = exc.__cause__  # type: ignore[assignment]
    return False
