"""Where a connected target's memory goes: tracemalloc growth per target, by file and line.

``python -m bench.memory [--targets 2000] [--top 12] [--scrape]`` starts the node server
(bench/node) and, in this process, a wsmon Daemon with that many targets (one 30 s ``ping``
probe each, logs discarded); once every target is connected (and, with ``--scrape``, after
one ``/metrics`` scrape, which fills the exposition's text cache) it compares a tracemalloc
snapshot with one taken before the daemon was built.  Prints the traced bytes and objects
per target by file and by line.  tracemalloc itself inflates RSS, so RSS is not reported
here: workload 2 of ``bench.run`` measures it without tracing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sys
import tracemalloc

import aiohttp

from . import nodeserver
from .clients import wsmon_config_doc
from .common import DiscardingStream, raise_nofile


def _where(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename.rsplit("/main/", 1)[-1]


async def _scrape(url: str) -> int:
    """GET /metrics; only the size is kept (the body must not count as daemon memory)."""
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return len(await resp.read())


async def breakdown(targets: int, top: int, scrape: bool) -> None:
    from monitor import config as config_mod
    from monitor.app import Daemon
    from monitor.log import Logging

    raise_nofile()
    nodeserver.setup()
    async with nodeserver.NodeServer() as node:
        doc = wsmon_config_doc(node.url, targets, 30.0)
        cfg = config_mod.loads(json.dumps(doc), source="<bench.memory>")
        gc.collect()
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
        logging = Logging("json", "info", stream=DiscardingStream(), secrets=cfg.secrets)
        daemon = Daemon(cfg, logging, rng=random.Random(1))
        await daemon.start()
        try:
            await node.wait_open(targets, 300.0)
            await asyncio.sleep(1.0)
            if scrape:
                await _scrape(daemon.metrics_url)
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            await daemon.stop()
    tracemalloc.stop()
    by_file = after.compare_to(before, "filename")
    total = sum(s.size_diff for s in by_file)
    objects = sum(s.count_diff for s in by_file)
    print(
        f"{targets} targets{' after one scrape' if scrape else ''}: traced growth "
        f"{total / targets / 1024:.1f} KiB and {objects / targets:.0f} objects per target "
        "(config objects excluded: loaded before the first snapshot)"
    )
    print("\nby file (bytes / objects per target):")
    for s in by_file[:top]:
        where = _where(s.traceback[0].filename)
        print(f"{s.size_diff / targets:9.0f} B {s.count_diff / targets:7.1f}  {where}")
    print("\nby line:")
    for s in after.compare_to(before, "lineno")[:top]:
        f = s.traceback[0]
        where = f"{_where(f.filename)}:{f.lineno}"
        print(f"{s.size_diff / targets:9.0f} B {s.count_diff / targets:7.1f}  {where}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    p.add_argument("--targets", type=int, default=2000)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--scrape", action="store_true", help="scrape /metrics once first")
    args = p.parse_args(argv)
    asyncio.run(breakdown(args.targets, args.top, args.scrape))
    return 0


if __name__ == "__main__":
    sys.exit(main())
