"""The HTTP endpoints: /metrics, /healthz, /readyz."""

from __future__ import annotations

import gzip
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

ReadyCheck = Callable[[], tuple[bool, str]]
READY_KEY: web.AppKey[ReadyCheck] = web.AppKey("ready")
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY_KEY])
    headers = {"Content-Type": CONTENT_TYPE_PLAIN_0_0_4}
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        body = gzip.compress(body, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)


async def healthz(_: web.Request) -> web.Response:
    # Answering at all proves the event loop is turning.
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    ok, detail = request.app[READY_KEY]()
    return web.Response(status=200 if ok else 503, text=detail + "\n")


async def index(_: web.Request) -> web.Response:
    return web.Response(
        text="wsmon\n\n/metrics  Prometheus metrics\n/healthz  liveness\n/readyz   readiness\n"
    )


def build_app(
    registry: CollectorRegistry, ready: Callable[[], tuple[bool, str]]
) -> web.Application:
    """The aiohttp application serving the daemon's HTTP endpoints."""
    app = web.Application()
    app[REGISTRY_KEY] = registry
    app[READY_KEY] = ready
    app.router.add_get("/", index)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
