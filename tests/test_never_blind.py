"""Never blind: wsmon stays scrapable and truthful when descriptors run out, when HTTP clients
misbehave, and beside a target that floods it. Real processes on loopback, checked against
what the servers saw."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import random
import resource
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import yaml
from conftest import Harness, StartDaemon, target
from wsprocess import ServerProcess
from wsserver import WSTestServer

from monitor import config as config_mod
from monitor.aiohooks import Hooks
from monitor.app import Daemon
from monitor.log import Logging

PING = {"name": "ping", "send": {"ping": 1}, "expect": {"msg_type": "ping"}}
ROOT = Path(__file__).resolve().parent.parent


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The samples of an exposition: (name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict[Any, float], name: str, **labels: str) -> float:
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and all((k, w) in ls for k, w in labels.items())
    )


@pytest.fixture(autouse=True)
def many_files() -> None:
    """The test process holds the servers' side of hundreds of connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- file descriptors ---------------------------------------------------------------------------


class Child:
    """`wsmon run` in a process of its own, started under a given open files limit."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.port = 0
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, path: Path, nofile: tuple[int, int]) -> Child:
        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "monitor", "run", "--config", str(path),
            "--listen", "127.0.0.1:0", "--log-format", "json",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=limit,
        )  # fmt: skip
        child = cls(proc)
        loaded = await child.wait_event("config.loaded")
        child.port = int(loaded["listen"].rsplit(":", 1)[1])
        return child

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))

    async def wait_event(self, name: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if event.get("event") == name:
                    return event
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {name} event: {self.events[-5:]}")

    async def get(self, path: str) -> tuple[int, str, float]:
        started = time.perf_counter()
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"http://127.0.0.1:{self.port}{path}", timeout=aiohttp.ClientTimeout(total=10)
            ) as r,
        ):
            return r.status, await r.text(), time.perf_counter() - started

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 20)
        await self._reader


def many_targets(url: str, n: int, path: Path) -> Path:
    doc = {
        "listen": "127.0.0.1:0",
        "defaults": {
            "connect_timeout": "2s",
            "reconnect": {"initial_delay": "50ms", "max_delay": "200ms"},
            "probes": [{**PING, "interval": "1s", "timeout": "800ms"}],
        },
        "targets": [{"name": f"t{i}", "url": url} for i in range(n)],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


class TestFileDescriptors:
    async def test_a_low_soft_limit_is_raised_to_the_hard_one(
        self, server: WSTestServer, tmp_path: Path
    ) -> None:
        """Started under `ulimit -Sn 200` with a high hard limit, 300 targets all connect:
        the daemon raised its soft limit to the hard one, and no budget problem is logged."""
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        child = await Child.start(many_targets(server.url, 300, tmp_path / "c.yaml"), (200, hard))
        try:
            await server.wait_for(lambda: server.open_connections == 300, timeout=20)
            _, text, _ = await child.get("/metrics")
            samples = parse_metrics(text)
            assert total(samples, "process_max_fds") == hard
            assert total(samples, "wsmon_connected") == 300
            assert total(samples, "wsmon_connect_failures_total", reason="resource") == 0
            assert not [e for e in child.events if e["event"] == "fd_budget.short"]
        finally:
            await child.stop()

    async def test_a_hard_limit_keeps_scrapes_answering_and_targets_out_truthfully(
        self, server: WSTestServer, tmp_path: Path
    ) -> None:
        """Under a hard limit of 200 open files, 300 targets do not fit. The daemon says so
        once, with the numbers; /metrics, /healthz and /readyz answer; the targets that fit
        connect (exactly the connections the server holds), the others wait in backoff as
        `resource` failures, never `other`, without a socket: the server saw one handshake
        per connected target and no more."""
        path = many_targets(server.url, 300, tmp_path / "c.yaml")
        child = await Child.start(path, (200, 200))
        try:
            short = await child.wait_event("fd_budget.short")
            assert short["limit"] == 200
            assert short["needed"] > 300
            assert "LimitNOFILE=" in short["advice"]
            allowed = short["connections_allowed"]
            assert 0 < allowed < 200
            await server.wait_for(lambda: server.open_connections == allowed, timeout=20)
            for path_ in ("/healthz", "/readyz", "/metrics"):
                status, _, _ = await child.get(path_)
                assert status == 200, path_
            await asyncio.sleep(0.5)  # more rounds of backoff for the targets left out
            _, text, _ = await child.get("/metrics")
            samples = parse_metrics(text)
            assert total(samples, "wsmon_connected") == allowed == server.open_connections
            assert total(samples, "wsmon_connect_failures_total", reason="resource") > 300
            assert total(samples, "wsmon_connect_failures_total", reason="other") == 0
            # No socket for the targets left out: one handshake per connection the server got.
            reconnects = total(samples, "wsmon_reconnects_total")
            assert server.http_requests == allowed + reconnects
            assert [e["event"] for e in child.events].count("fd_budget.short") == 1
        finally:
            await child.stop()
        # check-config run under the same limit warns, and still accepts the file.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "monitor", "check-config", str(path),
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200)),
        )  # fmt: skip
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        assert "warning: 300 targets need about" in out.decode()
        assert "LimitNOFILE=" in out.decode()


# --- hostile HTTP clients ---------------------------------------------------------------------


async def scrape(url: str, **kw: Any) -> tuple[int, float]:
    """One scrape on a connection of its own: status and seconds."""
    started = time.perf_counter()
    connector = aiohttp.TCPConnector(force_close=True, **kw.pop("connector", {}))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.get(url, timeout=aiohttp.ClientTimeout(total=10), **kw) as r,
    ):
        await r.read()
        return r.status, time.perf_counter() - started


async def test_a_crowd_of_slow_clients_neither_delays_scrapes_nor_outlives_the_header_timeout(
    server: WSTestServer, start_daemon: StartDaemon
) -> None:
    """1,500 clients from one address that send half a request and wait: every one is
    closed by the daemon (to make room, or at the 1 s header timeout), never more than 16 are
    left open, and scrapes from another address answer during the crowd; every dropped
    connection is counted."""
    h = await start_daemon(
        target("t", server.url),
        http={"read_header_timeout": "1s", "max_connections": 16},
    )
    base = f"http://127.0.0.1:{h.daemon.port}"
    crowd: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    most_open = 0

    async def join() -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", h.daemon.port, local_addr=("127.0.0.2", 0)
        )
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: wsmon\r\nX-Slow: ")  # and nothing more
        crowd.append((reader, writer))

    def still_open() -> int:
        """Crowd connections the daemon has not closed, as their clients see it."""
        return sum(1 for r, _ in crowd if not r.at_eof() and r.exception() is None)

    started = time.monotonic()
    scrapes: list[tuple[int, float]] = []
    for _ in range(15):
        await asyncio.gather(*(join() for _ in range(100)))
        await asyncio.sleep(0.05)  # the daemon accepts what is queued, and makes room
        most_open = max(most_open, still_open())
        scrapes.append(await scrape(f"{base}/metrics"))
    # Every crowd connection ends, by the daemon's hand, within the header timeout.
    ended = await asyncio.wait_for(
        asyncio.gather(
            *(r.read() for r, _ in crowd if r.exception() is None), return_exceptions=True
        ),
        5,
    )
    assert time.monotonic() - started < 15 * 0.5 + 1.0 + 2.0
    assert still_open() == 0
    assert ended
    for _, writer in crowd:
        writer.close()
    assert all(status == 200 for status, _ in scrapes), scrapes
    assert max(seconds for _, seconds in scrapes) < 1.0, scrapes
    assert most_open <= 16  # (the scrapes' own connections come from 127.0.0.1)
    dropped = sum(
        h.value("wsmon_http_connections_dropped_total", reason=r)
        for r in ("header_timeout", "evicted", "refused")
    )
    assert dropped == 1500
    assert h.value("wsmon_http_connections_dropped_total", reason="header_timeout") >= 1
    assert h.value("wsmon_http_connections_dropped_total", reason="evicted") >= 1000


async def test_an_idle_kept_alive_connection_is_closed(
    server: WSTestServer, start_daemon: StartDaemon
) -> None:
    """A client that scrapes, keeps the connection and goes quiet is closed at the idle
    timeout; one that sends a request line too long is answered with an error."""
    h = await start_daemon(
        target("t", server.url), http={"idle_timeout": "300ms", "max_header_bytes": 1024}
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", h.daemon.port)
    started = time.monotonic()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: wsmon\r\n\r\n")
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    rest = await asyncio.wait_for(reader.read(), 3)  # until the daemon closes it
    assert b"ok" in rest
    assert 0.3 <= time.monotonic() - started < 2.0
    writer.close()
    assert h.value("wsmon_http_connections_dropped_total", reason="idle_timeout") == 1
    status, _ = await scrape(f"http://127.0.0.1:{h.daemon.port}/healthz?" + "x" * 2000)
    assert status == 400


PASSWORD = "right horse battery staple"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


GUESSER = """
import asyncio, base64, json, random, sys
import aiohttp

async def main(url, seconds, clients):
    statuses = {}
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def guess(http):
        while loop.time() < end:
            auth = "Basic " + base64.b64encode(f"prom:guess-{random.random()}".encode()).decode()
            try:
                async with http.get(url, headers={"Authorization": auth}) as r:
                    statuses[r.status] = statuses.get(r.status, 0) + 1
            except aiohttp.ClientError:
                statuses["error"] = statuses.get("error", 0) + 1

    connector = aiohttp.TCPConnector(limit=0, local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        print("ready", flush=True)
        await asyncio.gather(*(guess(http) for _ in range(clients)))
    print(json.dumps(statuses), flush=True)

asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3])))
"""


async def test_a_flood_of_wrong_passwords_does_not_starve_the_right_one(
    server: WSTestServer, tmp_path: Path, proven_hooks: Hooks
) -> None:
    """200 clients in another process, from another address, guess passwords as fast as
    they can; a scrape with the right password, never verified before, is answered within a
    couple of checks' time, and once verified every later scrape skips bcrypt."""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {"prom": hashed}}))
    doc = {"listen": "127.0.0.1:0", "targets": [target("t", server.url)]}
    cfg = config_mod.loads(yaml.safe_dump(doc))
    daemon = Daemon(
        cfg, Logging("json", "info", stream=io.StringIO()),
        rng=random.Random(1), web_config_file=str(web), hooks=proven_hooks,
    )  # fmt: skip
    await daemon.start()
    url = f"http://127.0.0.1:{daemon.port}/metrics"
    flood = await asyncio.create_subprocess_exec(
        sys.executable, "-c", GUESSER, url, "4", "200", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert flood.stdout is not None
        assert await flood.stdout.readline() == b"ready\n"
        await asyncio.sleep(1.0)  # the flood is on
        right = {"Authorization": basic("prom", PASSWORD)}
        first = await scrape(url, headers=right)
        later = [await scrape(url, headers=right) for _ in range(5)]
        out, _ = await asyncio.wait_for(flood.communicate(), 20)
    finally:
        if flood.returncode is None:
            flood.kill()
        await daemon.stop()
    statuses = json.loads(out.decode().splitlines()[-1])
    assert first[0] == 200
    assert first[1] < 2.0, first  # a couple of bcrypt checks, not the flood's queue
    assert all(status == 200 and seconds < 0.5 for status, seconds in later), later
    # The flood was answered meanwhile: 401, or 503 beyond two checks under way at once.
    assert statuses.get("401", 0) + statuses.get("503", 0) > 200
    assert statuses.get("401", 0) > 0
    assert "200" not in statuses


# --- noisy neighbours ---------------------------------------------------------------------------


@pytest.fixture
async def processes() -> AsyncIterator[Callable[[], ServerProcess]]:
    started: list[ServerProcess] = []

    def start() -> ServerProcess:
        started.append(ServerProcess())
        return started[-1]

    yield start
    for p in started:
        p.stop()


async def rtt_against_holds(h: Harness, calm: ServerProcess, samples: int = 20) -> None:
    """The calm target's round trips, against how long its server held each reply."""
    rtts: list[float] = []

    def collect() -> bool:
        count = h.value("wsmon_probe_rtt_seconds_count", target="calm", probe="ping")
        if count > len(rtts):
            rtts.append(h.value("wsmon_probe_last_rtt_seconds", target="calm", probe="ping"))
        return len(rtts) >= samples

    await h.wait_for(collect, timeout=15)
    holds = (await calm.stats())["reply_holds"]
    count = h.value("wsmon_probe_rtt_seconds_count", target="calm", probe="ping")
    mean = h.value("wsmon_probe_rtt_seconds_sum", target="calm", probe="ping") / count
    answered = holds[: int(count)]
    assert sum(answered) / len(answered) <= mean <= sum(answered) / len(answered) + 0.005
    assert all(r <= max(holds) + 0.020 for r in rtts), (rtts, max(holds))
    assert h.value("wsmon_probe_timeouts_total", target="calm", probe="ping") == 0


async def test_a_flooding_neighbour_changes_nothing_for_the_calm_target(
    start_daemon: StartDaemon, processes: Callable[[], ServerProcess]
) -> None:
    """A server streaming 12,000 messages a second to one target is held at that target's
    `max_messages_per_second` (its reading pauses, counted in `wsmon_throttled_seconds`):
    the calm target beside it keeps round trips within a few ms of its server's delay, and
    once the stream stops, every message the flood sent has been counted."""
    noisy, calm = processes(), processes()
    await calm.control(reply_delay=0.02)
    await noisy.control(stream_rate=12000)
    h = await start_daemon(
        target("noisy", noisy.url, probes=[], max_messages_per_second=3000),
        target("calm", calm.url, probes=[{**PING, "interval": "100ms", "timeout": "90ms"}]),
    )
    before = rss_bytes()
    await rtt_against_holds(h, calm)
    # Read at the cap: its burst (up to two seconds' worth) is spent by now.
    received = h.value("wsmon_messages_received_total", target="noisy")
    await asyncio.sleep(2.0)
    rate = (h.value("wsmon_messages_received_total", target="noisy") - received) / 2.0
    assert 3000 * 0.7 <= rate <= 3000 * 1.15, rate
    assert h.value("wsmon_throttled_seconds_total", target="noisy") > 0.5
    assert rss_bytes() - before < 64 << 20
    streamed = (await noisy.control(stream_rate=0))["streamed"]
    await h.wait_for(
        lambda: h.value("wsmon_messages_received_total", target="noisy") >= streamed, timeout=20
    )
    assert h.value("wsmon_messages_received_total", target="noisy") == streamed
    assert h.value("wsmon_disconnects_total", target="noisy", code="1006", origin="network") == 0
    assert h.value("wsmon_event_loop_lag_seconds_count") >= 1


async def test_a_message_of_100_mib_closes_its_connection_with_1009_and_nothing_more(
    start_daemon: StartDaemon, processes: Callable[[], ServerProcess]
) -> None:
    """A 100 MiB message on one target (its limit: 4 MiB) ends that connection with 1009
    (origin local, counted), the daemon's memory grows by no more than a few times the
    limit, and the calm target beside it is undisturbed."""
    big, calm = processes(), processes()
    await calm.control(reply_delay=0.02)
    h = await start_daemon(
        # no probes: the server process is busy building the message, and a probe timing
        # out meanwhile would close the connection (1011) before the message arrives
        target("big", big.url, probes=[]),
        target("calm", calm.url, probes=[{**PING, "interval": "100ms", "timeout": "90ms"}]),
    )
    await h.wait_for(lambda: h.value("wsmon_connected", target="big") == 1)
    before = rss_bytes()
    peak = before
    sent = asyncio.create_task(big.control(action="send_big", size=100 << 20))
    while not sent.done():
        peak = max(peak, rss_bytes())
        await asyncio.sleep(0.01)
    assert (await sent)["big_sent"] == 1
    await h.wait_for(
        lambda: h.value("wsmon_disconnects_total", target="big", code="1009", origin="local") == 1
    )
    assert peak - before < 32 << 20, (peak - before) >> 20
    await rtt_against_holds(h, calm, samples=10)
    assert h.value("wsmon_disconnects_total", target="calm", code="1006", origin="network") == 0
