"""The HTTP endpoints: /metrics (text, or protobuf when asked for), /healthz, /readyz."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from .registry import Registry

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


async def index(_: web.Request) -> web.Response:
    return web.Response(
        text="wsmon\n\n/metrics    Prometheus metrics\n/healthz    liveness\n"
        "/readyz     readiness\n/-/reload   POST: re-read the configuration file\n"
    )


def build_app(
    registry: Registry,
    ready: ReadyCheck,
    reload_config: Reload,
    middlewares: Iterable[Middleware] = (),
    on_prepare: Iterable[Callable[[web.Request, web.StreamResponse], Awaitable[None]]] = (),
    histograms: str = "classic",
) -> web.Application:
    """The aiohttp application serving the daemon's HTTP endpoints."""
    app = web.Application(middlewares=list(middlewares))
    app.on_response_prepare.extend(on_prepare)
    app[REGISTRY_KEY] = registry
    app[HISTOGRAMS_KEY] = histograms
    app[READY_KEY] = ready
    app[RELOAD_KEY] = reload_config
    app.router.add_get("/", index)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/-/reload", reload)
    return app
