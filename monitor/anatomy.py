"""Where a handshake's time goes (name resolution, TCP, TLS, the HTTP upgrade) and what the
TLS session tells (protocol version, cipher, when the certificate expires).

The phases are taken from aiohttp's public trace hooks and one public seam of the ssl
module: the moment asyncio asks the `SSLContext` for a TLS object (`wrap_bio`) is the end
of TCP and the start of TLS, so a subclass of `SSLContext` notes it. A context variable,
set around each handshake, tells the hooks whose timeline to write.
"""

from __future__ import annotations

import contextvars
import ssl
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp

PHASES = ("resolve", "connect", "tls", "upgrade")


@dataclass(slots=True)
class Timeline:
    """The moments (time.perf_counter()) of one handshake."""

    started: float = 0.0
    resolving: float = 0.0  # spent resolving names (several lookups add up)
    resolve_started: float = 0.0  # the lookup under way
    tls_started: float | None = None  # asyncio asked for the TLS object: TCP is up
    connected: float | None = None  # TCP (and TLS) up: aiohttp has its connection

    def phases(self, ended: float) -> dict[str, float]:
        """Seconds per phase; `resolve` only when a name was resolved, `tls` only for TLS.
        connect + tls + upgrade is the handshake time without name resolution."""
        out: dict[str, float] = {}
        if self.resolving > 0.0:
            out["resolve"] = self.resolving
        connected = self.connected if self.connected is not None else ended
        tcp_end = self.tls_started if self.tls_started is not None else connected
        out["connect"] = max(0.0, tcp_end - self.started - self.resolving)
        if self.tls_started is not None:
            out["tls"] = max(0.0, connected - self.tls_started)
        out["upgrade"] = max(0.0, ended - connected)
        return out


_current: contextvars.ContextVar[Timeline | None] = contextvars.ContextVar(
    "wsmon_timeline", default=None
)


class Timed:
    """`with Timed() as timeline:` around a handshake: the trace hooks and the TLS context
    of that task write into `timeline`."""

    __slots__ = ("timeline", "token")

    def __init__(self) -> None:
        self.timeline = Timeline(started=time.perf_counter())

    def __enter__(self) -> Timeline:
        self.token = _current.set(self.timeline)
        return self.timeline

    def __exit__(self, *_: object) -> None:
        _current.reset(self.token)  # the task's context would keep the timeline otherwise


_NO_CONTEXT = SimpleNamespace()  # the hooks keep nothing in aiohttp's per-request context


class _SharedContext(SimpleNamespace):
    """aiohttp's trace context class, as every request sees it: one shared empty context (a
    connection keeps its trace contexts for its whole life; the timeline holds what the
    hooks note)."""

    def __new__(cls, **_: Any) -> SimpleNamespace:  # type: ignore[misc]
        return _NO_CONTEXT


def trace_config() -> aiohttp.TraceConfig:
    """aiohttp trace hooks that time name resolution and the end of the connection's set-up.

    They run in the task that called ws_connect, so the context variable `Timed` sets tells
    them where to write.
    """

    async def dns_start(_: Any, __: Any, ___: Any) -> None:
        timeline = _current.get()
        if timeline is not None:
            timeline.resolve_started = time.perf_counter()

    async def dns_end(_: Any, __: Any, ___: Any) -> None:
        timeline = _current.get()
        if timeline is not None and timeline.resolve_started:
            timeline.resolving += time.perf_counter() - timeline.resolve_started
            timeline.resolve_started = 0.0

    async def connection_end(_: Any, __: Any, ___: Any) -> None:
        timeline = _current.get()
        if timeline is not None:
            timeline.connected = time.perf_counter()

    trace = aiohttp.TraceConfig(trace_config_ctx_factory=_SharedContext)
    trace.on_dns_resolvehost_start.append(dns_start)
    trace.on_dns_resolvehost_end.append(dns_end)
    trace.on_connection_create_end.append(connection_end)
    trace.freeze()
    return trace


class TimedContext(ssl.SSLContext):
    """An `SSLContext` that notes when asyncio wraps a new connection in TLS (the start of
    the TLS handshake) in the current handshake's timeline."""

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        timeline = _current.get()
        if timeline is not None:
            timeline.tls_started = time.perf_counter()
        return super().wrap_bio(*args, **kwargs)


def client_context(
    ca_file: str | None = None, insecure: bool = False, cert: tuple[str, str | None] | None = None
) -> TimedContext:
    """A client context like `ssl.create_default_context()` (certificate and host name
    checked against the system store, or `ca_file`), timed."""
    ctx = TimedContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file is not None:
        ctx.load_verify_locations(cafile=ca_file)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(cert[0], cert[1])
    return ctx


@dataclass(frozen=True, slots=True)
class TLSFacts:
    """What a TLS connection tells: version, cipher, and the earliest certificate expiry
    (Unix seconds) among the certificates that can be read (None: none could)."""

    version: str
    cipher: str
    not_after: float | None
    subject: str = ""
    issuer: str = ""


def _name(rdns: Any) -> str:
    """'CN=wsmon.test, O=Example' from the ssl module's tuple of tuples."""
    parts = [f"{k}={v}" for rdn in rdns or () for k, v in rdn]
    return ", ".join(parts)


def tls_facts(ssl_object: Any) -> TLSFacts | None:
    """The facts of an open TLS connection (`get_extra_info("ssl_object")`), or None.

    The expiry is the earliest `notAfter` of the verified chain where Python offers it
    (3.13 and later), else of the server's own certificate; a connection that does not verify
    certificates (`insecure_skip_verify`) has none to read.
    """
    if ssl_object is None:
        return None
    version = ssl_object.version() or "unknown"
    cipher = (ssl_object.cipher() or ("unknown",))[0]
    infos: list[dict[str, Any]] = []
    chain = getattr(ssl_object, "get_verified_chain", None)
    if chain is not None:
        try:
            infos = [c.get_info() for c in chain()]
        except (ssl.SSLError, ValueError, AttributeError):
            infos = []
    if not infos:
        leaf = ssl_object.getpeercert()
        infos = [leaf] if leaf else []
    expiries = [
        ssl.cert_time_to_seconds(info["notAfter"]) for info in infos if info.get("notAfter")
    ]
    leaf_info = infos[0] if infos else {}
    return TLSFacts(
        version=version,
        cipher=cipher,
        not_after=float(min(expiries)) if expiries else None,
        subject=_name(leaf_info.get("subject")),
        issuer=_name(leaf_info.get("issuer")),
    )
