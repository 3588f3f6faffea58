"""The HTTP endpoints: /metrics (text, or protobuf when asked for), /healthz, /readyz,
/-/reload, /probe, the status page at / and its API, /endpoints."""

from __future__ import annotations

import asyncio
import math
import zlib
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from structlog.typing import FilteringBoundLogger

from . import page, status
from .anatomy import PHASES
from .config import TargetConfig, TCPConfig
from .config.daemon import ProbeEndpointConfig, ProbeModule
from .config.probeurls import ProbeURL, parse_probe_url
from .log import redact_url
from .oneshot import ProbeResult, probe_once
from .proxy import client_sessions
from .registry import Registry

if TYPE_CHECKING:
    from .supervisor import TargetRunner

ReadyCheck = Callable[[], tuple[bool, str]]
Reload = Callable[[], Awaitable[tuple[bool, list[str]]]]
READY_KEY: web.AppKey[ReadyCheck] = web.AppKey("ready")
RELOAD_KEY: web.AppKey[Reload] = web.AppKey("reload")
REGISTRY_KEY = web.AppKey("registry", Registry)
HISTOGRAMS_KEY = web.AppKey("histograms", str)  # metrics.histograms: for the protobuf format
# Pieces of the exposition made, streamed and compressed at a time: small enough that making
# one holds the event loop well under a millisecond, so probes keep their timing.
PIECE_BYTES = 64 * 1024


async def metrics(request: web.Request) -> web.StreamResponse:
    """Write the exposition a piece at a time, compressing each (when gzip is asked for)
    and yielding to the loop before the next is made."""
    registry = request.app[REGISTRY_KEY]
    pieces: Iterable[bytes]
    if wants_protobuf(request.headers.get("Accept", "")):
        from . import protoexpo  # protobuf is loaded when a scraper first asks for it

        histograms = request.app[HISTOGRAMS_KEY]
        encoder = protoexpo.Encoder(
            registry, native=histograms != "classic", classic=histograms != "native"
        )
        content_type, pieces = protoexpo.CONTENT_TYPE, encoder.pieces()
    else:
        content_type, pieces = CONTENT_TYPE_PLAIN_0_0_4, registry.pieces(PIECE_BYTES)
    response = web.StreamResponse(headers={"Content-Type": content_type})
    compressor = None
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        response.headers["Content-Encoding"] = "gzip"
        compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    await response.prepare(request)
    # Compressed here, piece by piece, rather than in a worker thread: waiting for a thread
    # made scrapes slower and round trips measured during them worse (docs/performance.md).
    for piece in pieces:
        data = piece if compressor is None or not piece else compressor.compress(piece)
        if data:  # zlib returns nothing until it has a block's worth
            await response.write(data)
        await asyncio.sleep(0)  # the write above may not have yielded
    if compressor is not None:
        await response.write(compressor.flush())
    await response.write_eof()
    return response


def wants_protobuf(accept: str) -> bool:
    """True when the Accept header ranks the delimited MetricFamily protobuf above text
    (Prometheus sends it first when its native histograms are on)."""
    best_proto = best_text = 0.0
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        args = {}
        for p in params:
            k, _, v = p.partition("=")
            args[k.strip().lower()] = v.strip().strip('"')
        try:
            q = float(args.get("q", "1"))
        except ValueError:
            q = 0.0
        media = media.lower()
        if (
            media == "application/vnd.google.protobuf"
            and args.get("proto") == "io.prometheus.client.MetricFamily"
            and args.get("encoding") == "delimited"
        ):
            best_proto = max(best_proto, q)
        elif media in ("text/plain", "text/*", "*/*", "application/openmetrics-text"):
            best_text = max(best_text, q)
    return best_proto > 0 and best_proto >= best_text


async def healthz(_: web.Request) -> web.Response:
    # Answering at all proves the event loop is turning.
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    ok, detail = request.app[READY_KEY]()
    return web.Response(status=200 if ok else 503, text=detail + "\n")


async def reload(request: web.Request) -> web.Response:
    """POST /-/reload: re-read the config file, like SIGHUP; 400 with the problems if bad."""
    ok, problems = await request.app[RELOAD_KEY]()
    if ok:
        return web.Response(text="reloaded\n")
    return web.Response(status=400, text="".join(f"{p}\n" for p in problems))


# --- GET /probe -----------------------------------------------------------------------------

# The run's deadline: the scraper's timeout header less a margin, as blackbox_exporter does;
# without the header, Prometheus's default scrape timeout; never more than blackbox's.
SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
SCRAPE_MARGIN = 0.5
DEFAULT_PROBE_DEADLINE = 10.0
MAX_PROBE_DEADLINE = 120.0


def scrape_deadline(header: str | None) -> float:
    """Seconds a /probe run may take, from the scraper's timeout header: less SCRAPE_MARGIN,
    or half of it when that is shorter; ValueError for a header that is not a number."""
    if header is None or not header.strip():
        return DEFAULT_PROBE_DEADLINE
    seconds = float(header)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("expected a positive number of seconds")
    return min(max(seconds - SCRAPE_MARGIN, seconds / 2), MAX_PROBE_DEADLINE)


class ProbeEndpoint:
    """What `GET /probe` works with: the `probe_endpoint` settings in force (a reload swaps
    them), the slots that bound runs at once, and HTTP client sessions of its own."""

    def __init__(self, tcp: TCPConfig, log: FilteringBoundLogger) -> None:
        # Sessions of their own: they follow no redirect (see `proxy.no_redirects`).
        self.sessions = client_sessions(tcp)
        self.log = log
        self.settings: ProbeEndpointConfig | None = None
        self.slots = asyncio.Semaphore(1)

    async def close(self) -> None:
        await self.sessions.close()

    def configure(self, settings: ProbeEndpointConfig | None) -> None:
        """At start and on every reload; runs in flight finish with their settings."""
        old = self.settings
        if settings is not None and (old is None or old.max_concurrent != settings.max_concurrent):
            self.slots = asyncio.Semaphore(settings.max_concurrent)
        self.settings = settings

    async def run(self, name: str, module: ProbeModule, target: ProbeURL, within: float) -> bytes:
        """Probe `target` with the module, holding a slot: the text exposition of the result."""
        settings = module.__dict__
        if target.scheme != "wss":  # TLS options apply to wss:// targets only
            settings = {**settings, "tls": None}
        config = TargetConfig.model_construct(**settings, name=name, url=target.url)
        async with self.slots:
            result = await probe_once(self.sessions, config, within)
        self.log.debug(
            "probe_endpoint.probed",
            target=result.url,
            module=name,
            success=result.success,
            duration_s=round(result.duration, 4),
            error=result.error,
        )
        return probe_metrics(result, [p.name for p in module.probes])


PROBE_KEY = web.AppKey("probe", ProbeEndpoint)


def probe_metrics(result: ProbeResult, probes: list[str]) -> bytes:
    """A run's result as blackbox_exporter answers a probe: gauges on a fresh registry, with
    blackbox's names where the meaning is the same."""
    registry = CollectorRegistry(auto_describe=False)

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=registry)

    gauge("probe_success", "Whether the probe succeeded").set(int(result.success))
    gauge("probe_duration_seconds", "How long the probe took, in seconds").set(result.duration)
    gauge(
        "probe_websocket_status_code",
        "HTTP status of the upgrade: 101 when upgraded, 0 when no HTTP answer came",
    ).set(result.status or 0)
    gauge("probe_websocket_connection_upgraded", "Whether the connection became a WebSocket").set(
        int(result.upgraded)
    )
    phases = gauge(
        "probe_websocket_duration_seconds",
        "Seconds taken by each phase of the handshake (0: not reached or not applicable)",
        ("phase",),
    )
    for phase in PHASES:
        phases.labels(phase).set(result.phases.get(phase, 0.0))
    rtt = gauge("probe_websocket_rtt_seconds", "Round trip of each answered probe", ("probe",))
    good = gauge(
        "probe_websocket_probe_success", "Whether each probe was answered as expected", ("probe",)
    )
    trips = {t.probe: t for t in result.round_trips}
    for name in probes:
        trip = trips.get(name)
        good.labels(name).set(int(trip is not None and trip.outcome == "ok"))
        if trip is not None and trip.rtt is not None:
            rtt.labels(name).set(trip.rtt)
    if result.close_code is not None:
        gauge(
            "probe_websocket_close_code",
            "Close code the connection ended with (1000: closed by the probe as planned)",
        ).set(result.close_code)
    tls = result.tls
    if tls is not None:
        version = gauge("probe_tls_version_info", "The TLS version used", ("version",))
        version.labels(tls.version).set(1)
        if tls.not_after is not None:
            gauge(
                "probe_ssl_earliest_cert_expiry",
                "Earliest expiry of the certificates, as Unix time",
            ).set(tls.not_after)
    return generate_latest(registry)


async def probe(request: web.Request) -> web.Response:
    """GET /probe?target=URL&module=NAME: probe the target once with the module and answer
    the result's metrics (blackbox_exporter's multi-target pattern). A failed probe is a
    200 with `probe_success 0`; the request's own faults are 4xx, a full house is 503."""
    endpoint = request.app[PROBE_KEY]
    settings = endpoint.settings
    if settings is None:
        return _plain(404, "no probe_endpoint in the configuration")
    name = request.query.get("module", "")
    module = settings.modules.get(name)
    if module is None:
        known = ", ".join(sorted(settings.modules))
        what = f"unknown module {name!r}" if name else "the module parameter is missing"
        return _plain(400, f"{what} (modules: {known})")
    given = request.query.get("target", "")
    if not given:
        return _plain(400, "the target parameter is missing")
    try:
        target = parse_probe_url(given)
    except ValueError as exc:
        return _plain(400, f"bad target: {exc}")
    if not settings.allows(target):
        # Never contacted: /probe must not let anyone make the daemon connect anywhere.
        endpoint.log.warning(
            "probe_endpoint.denied", target=redact_url(target.url), module=name,
            peer=request.remote,
        )  # fmt: skip
        return _plain(403, "target not allowed by probe_endpoint.allowed_targets")
    try:
        deadline = scrape_deadline(request.headers.get(SCRAPE_TIMEOUT_HEADER))
    except ValueError as exc:
        return _plain(400, f"bad {SCRAPE_TIMEOUT_HEADER}: {exc}")
    if endpoint.slots.locked():  # at once: a scraper must not queue behind slow probes
        return _plain(
            503, f"{settings.max_concurrent} probes in flight (probe_endpoint.max_concurrent)",
            headers={"Retry-After": "1"},
        )  # fmt: skip
    body = await endpoint.run(name, module, target, deadline)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


def _plain(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers=headers)


async def index(_: web.Request) -> web.Response:
    """`GET /`: the status page (monitor/page.py)."""
    response = web.Response(body=page.DOCUMENT, headers=page.HEADERS)
    response.enable_compression()
    return response


async def endpoints(_: web.Request) -> web.Response:
    """`GET /endpoints`: what this server answers, as plain text."""
    return web.Response(
        text="wsmon\n\n"
        "/                 status page\n"
        "/api/v1/targets   the targets' state as JSON\n"
        "/metrics          Prometheus metrics\n"
        "/healthz          liveness\n"
        "/readyz           readiness\n"
        "/-/reload         POST: re-read the configuration file\n"
        "/probe            ?target=URL&module=NAME: one-shot probe (probe_endpoint)\n"
    )


Targets = Callable[[], Iterable["TargetRunner"]]
TARGETS_KEY: web.AppKey[Targets] = web.AppKey("targets")


async def api_targets(request: web.Request) -> web.Response:
    """`GET /api/v1/targets` (docs/api.md)."""
    try:
        body = await status.listing(request.app[TARGETS_KEY](), request.query)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def build_app(
    registry: Registry,
    ready: ReadyCheck,
    reload_config: Reload,
    middlewares: Iterable[Middleware] = (),
    on_prepare: Iterable[Callable[[web.Request, web.StreamResponse], Awaitable[None]]] = (),
    histograms: str = "classic",
    probes: ProbeEndpoint | None = None,
    targets: Targets | None = None,
) -> web.Application:
    """The aiohttp application serving the daemon's HTTP endpoints."""
    app = web.Application(middlewares=list(middlewares))
    app.on_response_prepare.extend(on_prepare)
    app[REGISTRY_KEY] = registry
    app[HISTOGRAMS_KEY] = histograms
    app[READY_KEY] = ready
    app[RELOAD_KEY] = reload_config
    app.router.add_get("/", index)
    app.router.add_get("/endpoints", endpoints)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/-/reload", reload)
    if probes is not None:
        app[PROBE_KEY] = probes
        app.router.add_get("/probe", probe)
    if targets is not None:
        app[TARGETS_KEY] = targets
        app.router.add_get("/api/v1/targets", api_targets)
    return app
