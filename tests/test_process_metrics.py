"""The standard exporter families (process_*, python_*) and wsmon_build_info, read through
the daemon's registry as Prometheus would see them."""

from __future__ import annotations

import os
import platform
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import ProcessCollector as ClientProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from monitor import __version__
from monitor.metrics import Metrics
from monitor.process import ProcessCollector
from monitor.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
STANDARD = [
    "process_virtual_memory_bytes", "process_resident_memory_bytes",
    "process_start_time_seconds", "process_cpu_seconds", "process_open_fds", "process_max_fds",
    "python_info", "python_gc_objects_collected", "python_gc_objects_uncollectable",
    "python_gc_collections",
]  # fmt: skip


def daemon_registry() -> tuple[Registry, Metrics]:
    registry = Registry()
    return registry, Metrics(registry)


def value(registry: Registry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    assert found is not None, name
    return found


def listed_fds() -> int:
    """Open descriptors by a listing, less the listing's own."""
    return len(os.listdir("/proc/self/fd")) - 1


@pytest.fixture
def hundred_sockets() -> Iterator[list[socket.socket]]:
    pairs = [socket.socketpair() for _ in range(50)]
    yield [s for pair in pairs for s in pair]
    for a, b in pairs:
        a.close()
        b.close()


def test_open_fds_is_the_number_of_open_descriptors(
    hundred_sockets: list[socket.socket],
) -> None:
    """process_open_fds equals the entries of /proc/self/fd now, and follows descriptors
    as they are closed."""
    registry, _ = daemon_registry()
    assert abs(value(registry, "process_open_fds") - listed_fds()) <= 1
    with_sockets = value(registry, "process_open_fds")
    for s in hundred_sockets:
        s.close()
    assert value(registry, "process_open_fds") == with_sockets - 100
    assert abs(value(registry, "process_open_fds") - listed_fds()) <= 1


def test_open_fds_without_the_directory_size_lists_them(
    hundred_sockets: list[socket.socket],
) -> None:
    """Where the fd directory's size is not the count (kernels before 6.2), the collector
    lists the directory and gives the same number."""
    collector = ProcessCollector()
    collector.sized = False
    assert abs(collector.open_fds() - listed_fds()) <= 1
    fast = ProcessCollector()
    if fast.sized:
        assert collector.open_fds() == fast.open_fds()


@pytest.mark.skipif(
    tuple(int(p) for p in platform.release().split(".")[:2]) < (6, 2),
    reason="the fd directory's size is the count from Linux 6.2",
)
def test_a_scrape_does_not_list_the_descriptors(monkeypatch: pytest.MonkeyPatch) -> None:
    """On Linux 6.2+ the count is the fd directory's size, checked once at start: a
    scrape does not walk one entry per socket."""
    registry, _ = daemon_registry()

    def no_listing(path: str) -> list[str]:
        raise AssertionError(f"listed {path}")

    monkeypatch.setattr(os, "listdir", no_listing)
    assert value(registry, "process_open_fds") == os.stat("/proc/self/fd").st_size
    assert b"process_open_fds " in registry.render()


def test_max_fds_is_the_soft_limit() -> None:
    """process_max_fds is the soft RLIMIT_NOFILE, and follows it when it changes."""
    registry, _ = daemon_registry()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert value(registry, "process_max_fds") == soft
    lower = max(listed_fds() + 64, soft // 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))
    try:
        assert value(registry, "process_max_fds") == lower
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_start_time_is_when_the_process_started() -> None:
    """process_start_time_seconds of a fresh interpreter lies before the first thing it did
    (by less than the kernel's whole-second boot time), even when read a while later."""
    code = (
        "import time; t0 = time.time()\n"
        "from monitor.metrics import Metrics; from monitor.registry import Registry\n"
        "r = Registry(); Metrics(r); time.sleep(0.3)\n"
        "print(t0, r.get_sample_value('process_start_time_seconds'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    t0, started = map(float, out.stdout.split())
    assert t0 - 3.0 < started <= t0 + 0.05


def test_python_info_names_the_running_interpreter() -> None:
    """python_info carries the running interpreter's implementation and version."""
    registry, _ = daemon_registry()
    major, minor, patch = platform.python_version_tuple()
    labels = {
        "implementation": platform.python_implementation(),
        "major": major,
        "minor": minor,
        "patchlevel": patch,
        "version": platform.python_version(),
    }
    assert value(registry, "python_info", **labels) == 1


def test_process_families_are_prometheus_clients() -> None:
    """Our process_* families have prometheus_client's ProcessCollector's names, help and
    types, in its order, and the same values where they do not move between two reads."""
    ours = list(ProcessCollector().collect())
    theirs = list(ClientProcessCollector(registry=None).collect())
    assert [(m.name, m.documentation, m.type) for m in ours] == [
        (m.name, m.documentation, m.type) for m in theirs
    ]
    got = {m.name: m.samples[0].value for m in ours}
    reference = {m.name: m.samples[0].value for m in theirs}
    assert got["process_start_time_seconds"] == reference["process_start_time_seconds"]
    assert got["process_max_fds"] == reference["process_max_fds"]
    # prometheus_client's listing counts its own descriptor
    assert abs(got["process_open_fds"] - (reference["process_open_fds"] - 1)) <= 1


def test_exposition_writes_each_family_once_ours_first() -> None:
    """/metrics' text has every wsmon family, then the standard ones, each HELP and TYPE
    once, laid out line for line as prometheus_client's generate_latest writes them."""
    registry, m = daemon_registry()
    m.for_target("t", [("ping", "message")]).probes["ping"].rtt.observe(0.01)
    text = registry.render().decode()
    names = [f.name for f in text_string_to_metric_families(text)]
    assert len(names) == len(set(names))
    first_standard = names.index(STANDARD[0])
    assert all(n.startswith("wsmon_") for n in names[:first_standard])
    assert names[first_standard:] == STANDARD
    for kind in ("HELP", "TYPE"):
        lines = [x.split()[2] for x in text.splitlines() if x.startswith(f"# {kind} ")]
        assert len(lines) == len(set(lines))
    reference = CollectorRegistry()
    reference.register(registry)  # type: ignore[arg-type]

    def heads(body: str) -> list[str]:  # values (CPU time, memory) move between the two
        return [x.rsplit(" ", 1)[0] for x in body.splitlines()]

    assert heads(text) == heads(generate_latest(reference).decode())


def test_build_info_has_one_series_and_names_the_receive_path() -> None:
    """wsmon_build_info starts as the portable receive path; set_receive_path("hooked")
    replaces that series rather than adding one."""
    registry, m = daemon_registry()

    def series() -> list[dict[str, str]]:
        family = next(f for f in registry.collect() if f.name == "wsmon_build_info")
        assert all(s.value == 1 for s in family.samples)
        return [s.labels for s in family.samples]

    build = {"python": platform.python_version(), "version": __version__}
    assert series() == [{**build, "receive_path": "portable"}]
    m.set_receive_path("hooked")
    assert series() == [{**build, "receive_path": "hooked"}]
    assert registry.render().count(b"\nwsmon_build_info{") == 1
    m.set_receive_path("portable")
    assert series() == [{**build, "receive_path": "portable"}]
    with pytest.raises(ValueError, match="receive_path"):
        m.set_receive_path("fast")
