"""The HTTP endpoints: /metrics, /healthz, /readyz."""

from __future__ import annotations

import gzip
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

ReadyCheck = Callable[[], tuple[bool, str]]
Reload = Callable[[], Awaitable[tuple[bool, list[str]]]]
READY_KEY: web.AppKey[ReadyCheck] = web.AppKey("ready")
RELOAD_KEY: web.AppKey[Reload] = web.AppKey("reload")
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
    registry: CollectorRegistry,
    ready: ReadyCheck,
    reload_config: Reload,
    middlewares: Iterable[Middleware] = (),
) -> web.Application:
    """The aiohttp application serving the daemon's HTTP endpoints."""
    app = web.Application(middlewares=list(middlewares))
    app[REGISTRY_KEY] = registry
    app[READY_KEY] = ready
    app[RELOAD_KEY] = reload_config
    app.router.add_get("/", index)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/-/reload", reload)
    return app
