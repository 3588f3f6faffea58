"""The harness's machinery: child processes, reading them from outside (``/proc/<pid>``,
``/metrics``), and what is recorded about the machine and the run.

Nothing here reaches into a measured process: CPU and memory come from ``/proc/<pid>``, the
daemon's figures from its own ``/metrics`` as Prometheus would scrape it, and a baseline
client's round trips from what it reports itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gzip
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from . import nodeserver

ROOT = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """A workload could not be measured (a child failed, a server did not come up, the
    daemon did not run the receive path it was meant to)."""


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- child processes ----------------------------------------------------------------------


class Child:
    """One ``python -m bench.<module>`` child: JSON lines in, commands out."""

    def __init__(self, name: str, module: str, argv: list[str], cwd: Path = ROOT) -> None:
        self.name = name
        self.module = module
        self.cwd = cwd  # `python -m` imports bench and monitor from here
        self.argv = argv
        self.stderr = bytearray()  # the last 64 KiB the child wrote on stderr
        self.proc: asyncio.subprocess.Process | None = None
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._readers: list[asyncio.Task[None]] = []

    @property
    def command(self) -> str:
        return shlex.join(["python", "-m", self.module, *self.argv])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self.module,
            *self.argv,
            cwd=self.cwd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,  # the lag sensor's report is one long line
        )
        self._readers = [
            asyncio.create_task(self._read()),
            asyncio.create_task(self._read_stderr()),
        ]

    async def _read_stderr(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self.stderr += chunk
            del self.stderr[:-65536]

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    await self._events.put(obj)
        await self._events.put(None)

    def _stderr_tail(self) -> str:
        return self.stderr[-3000:].decode(errors="replace")

    async def expect(self, event: str, within: float) -> dict[str, Any]:
        """The next event called `event` (earlier events of other names are skipped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            try:
                obj = await asyncio.wait_for(self._events.get(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                await self.kill()
                raise BenchError(
                    f"{self.name}: no {event!r} within {within:.0f}s\n{self._stderr_tail()}"
                ) from None
            if obj is None:
                raise BenchError(f"{self.name} exited before {event!r}:\n{self._stderr_tail()}")
            if obj.get("event") == "error":
                raise BenchError(f"{self.name}: {obj.get('error')}")
            if obj.get("event") == event:
                return obj

    async def ask(self, command: str, answer: str, within: float = 60.0) -> dict[str, Any]:
        """Send a command and wait for its answer."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.expect(answer, within)

    async def finish(self, within: float = 30.0) -> None:
        """Tell the child to stop (it exits at once, without closing its connections)."""
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ConnectionError, AssertionError, RuntimeError):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"stop\n")
            await self.proc.stdin.drain()
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            await self.kill()
        await asyncio.gather(*self._readers, return_exceptions=True)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def client_argv(kind: str, url: str, targets: int, interval: float, *extra: str) -> list[str]:
    return [kind, "--url", url, "--targets", str(targets), "--interval", f"{interval:g}", *extra]


# --- /proc ------------------------------------------------------------------------------


class ProcStat:
    """Another process's CPU and memory, read from ``/proc/<pid>``.

    CPU is the sum over its threads of the time they ran (``task/*/schedstat``, in
    nanoseconds); ``stat``'s utime and stime count whole clock ticks of 10 ms, too coarse for
    a window of seconds, but they keep the time of threads that have ended, which the sum
    loses: both are recorded. Memory and wake-ups from ``status``: VmRSS, VmHWM, and the
    voluntary context switches of the main thread (the event loop's: about one per wake-up
    from an idle wait).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.base = Path(f"/proc/{pid}")
        self._ticks = os.sysconf("SC_CLK_TCK")

    def cpu_s(self) -> float:
        total = 0
        for task in (self.base / "task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += int((task / "schedstat").read_text().split()[0])
        if total == 0:  # no schedstat on this kernel
            user, system = self.user_system_s()
            return user + system
        return total / 1e9

    def user_system_s(self) -> tuple[float, float]:
        fields = (self.base / "stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) / self._ticks, int(fields[12]) / self._ticks

    def status(self) -> dict[str, int]:
        """VmRSS and VmHWM in KiB, voluntary_ctxt_switches."""
        out: dict[str, int] = {}
        for line in (self.base / "status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "voluntary_ctxt_switches"):
                out[key] = int(value.split()[0])
        return out


def machine_cpu() -> dict[str, float]:
    """CPU seconds all processors spent since boot (/proc/stat): in processes (user, nice,
    system), in interrupts (irq, softirq: much of it the loopback traffic) and stolen by the
    hypervisor (steal)."""
    with open("/proc/stat", encoding="ascii") as f:
        v = [int(x) / os.sysconf("SC_CLK_TCK") for x in f.readline().split()[1:9]]
    return {"processes": v[0] + v[1] + v[2], "interrupts": v[5] + v[6], "steal": v[7]}


# --- /metrics ---------------------------------------------------------------------------


@dataclass
class Scrape:
    """One GET /metrics. The daemon renders what changed before it sends the headers, so
    the values stand for the middle of [`started`, `headers`]."""

    started: float  # CLOCK_MONOTONIC, comparable with the child's lag sensor
    headers: float
    ended: float
    status: int
    wire_bytes: int
    body: bytes  # decompressed

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def at(self) -> float:
        return (self.started + self.headers) / 2


async def scrape(http: aiohttp.ClientSession, port: int, gzip_ok: bool = True) -> Scrape:
    """GET /metrics as Prometheus does (gzip accepted, unless not `gzip_ok`: then the plain
    body); timed to the last byte received."""
    url = f"http://127.0.0.1:{port}/metrics"
    headers = {
        "Accept-Encoding": "gzip" if gzip_ok else "identity",  # else aiohttp offers gzip
        "Accept": "text/plain;version=0.0.4",
    }
    started = time.monotonic()
    async with http.get(url, headers=headers) as resp:
        got_headers = time.monotonic()
        raw = await resp.read()
        ended = time.monotonic()
        gz = resp.headers.get("Content-Encoding") == "gzip"
        status = resp.status
    body = gzip.decompress(raw) if gz else raw
    return Scrape(started, got_headers, ended, status, len(raw), body)


_LABEL = re.compile(rb'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"')
_TARGETED = re.compile(rb'^[^{ ]*\{(?:[^}]*,)?target="')
Labels = dict[str, str]


class Exposition:
    """Samples of one scraped text, looked up by sample name within its family's block."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def _block(self, name: bytes) -> bytes:
        for family in (name, re.sub(rb"_(bucket|count|sum)$", b"", name)):
            at = self.body.find(b"# TYPE " + family + b" ")
            if at >= 0:
                end = self.body.find(b"\n# ", at)
                return self.body[at : end if end >= 0 else len(self.body)]
        return b""

    def samples(self, name: str) -> list[tuple[Labels, float]]:
        raw = name.encode()
        pattern = re.compile(rb"^" + re.escape(raw) + rb"(?:\{([^}]*)\})? (\S+)$", re.M)
        return [
            ({k.decode(): v.decode() for k, v in _LABEL.findall(m.group(1) or b"")},
             float(m.group(2)))
            for m in pattern.finditer(self._block(raw))
        ]  # fmt: skip

    def total(self, name: str) -> float:
        return math.fsum(v for _, v in self.samples(name))

    def by(self, name: str, *labels: str) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = {}
        for lab, v in self.samples(name):
            key = tuple(lab.get(x, "") for x in labels)
            out[key] = out.get(key, 0.0) + v
        return out

    def families(self) -> int:
        return len(re.findall(rb"^# TYPE ", self.body, re.M))

    def sample_count(self) -> int:
        return sum(1 for line in self.body.split(b"\n") if line and not line.startswith(b"#"))

    def untargeted_count(self) -> int:
        """Sample lines without a `target` label (the process's and the daemon's own)."""
        return sum(
            1
            for line in self.body.split(b"\n")
            if line and not line.startswith(b"#") and not _TARGETED.search(line)
        )

    def buckets(self, name: str) -> list[tuple[float, float]]:
        """A histogram's cumulative buckets summed over its series: [(le, count)], by le."""
        acc: dict[float, float] = {}
        for lab, v in self.samples(name + "_bucket"):
            le = math.inf if lab["le"] == "+Inf" else float(lab["le"])
            acc[le] = acc.get(le, 0.0) + v
        return sorted(acc.items())


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's histogram_quantile on cumulative buckets [(le, count)]: linear
    interpolation inside the bucket the rank falls in (from 0 in the first bucket); in the
    +Inf bucket, the largest finite bound."""
    if len(buckets) < 2 or not math.isinf(buckets[-1][0]) or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    b = next(i for i, (_, c) in enumerate(buckets) if c >= rank)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    start, below = (0.0, 0.0) if b == 0 else buckets[b - 1]
    end, count = buckets[b]
    if count - below <= 0:
        return end
    return start + (end - start) * (rank - below) / (count - below)


def bucket_delta(
    a: list[tuple[float, float]], b: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """Buckets of `b` minus those of `a` (a histogram's increase between two scrapes)."""
    before = dict(a)
    return [(le, c - before.get(le, 0.0)) for le, c in b]


def promtool_check(body: bytes) -> dict[str, Any]:
    """`promtool check metrics` on one scraped text, when promtool is installed."""
    tool = shutil.which("promtool")
    if tool is None:
        return {"available": False}
    proc = subprocess.run(
        [tool, "check", "metrics"], input=body, capture_output=True, timeout=300, check=False
    )
    text = (proc.stdout + proc.stderr).decode(errors="replace").strip()
    return {"available": True, "exit": proc.returncode, "output": text[:2000]}


# --- the run's record ---------------------------------------------------------------------


def run_text(cmd: list[str]) -> str:
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, check=False, cwd=ROOT, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def monitor_digest(src: Path = ROOT) -> str:
    """A digest of monitor/'s sources, to tell whether they changed during a run."""
    h = hashlib.sha256()
    for path in sorted((src / "monitor").rglob("*.py")):
        h.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def snapshot(rev: str | None, into: Path) -> Path:
    """monitor/ as committed at `rev` (git archive), or as the working tree holds it now
    (`rev` None), plus this working tree's bench/ code, in `into`: the children run that,
    so edits others make to monitor/ meanwhile do not leak into a run."""
    into.mkdir()
    if rev is None:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(ROOT / "monitor", into / "monitor", ignore=ignore)
    else:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", rev, "monitor"],
            cwd=ROOT,
            capture_output=True,
            check=False,
        )
        if archive.returncode != 0:
            err = archive.stderr.decode(errors="replace")
            raise BenchError(f"git archive {rev} monitor: {err}")
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    (into / "bench").mkdir()
    for path in (ROOT / "bench").glob("*.py"):
        shutil.copy2(path, into / "bench" / path.name)
    return into


def loadavg() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


def machine(src: Path, rev: str | None) -> dict[str, Any]:
    """The machine, the versions and the code a run measures."""
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {}
    for dist in ("aiohttp", "websockets", "uvloop", "prometheus_client"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    with contextlib.suppress(Exception):
        versions.update(nodeserver.versions())
    dirty = "" if rev else run_text(["git", "status", "--porcelain", "--", "monitor"])
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "commit": run_text(["git", "rev-parse", "--short", rev or "HEAD"]),
        "monitor_rev": rev,  # None: the working tree, copied at the start of the run
        "monitor_dirty": dirty.splitlines(),
        "monitor_digest": monitor_digest(src),
        "loadavg_start": loadavg(),
        "nofile": run_text(["sh", "-c", "ulimit -Hn"]),
    }
