"""What a deploy installs is what the suite ran: the lock, the stated ranges, the metadata."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "deploy/requirements.lock"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def locked() -> dict[str, tuple[str, list[str]]]:
    """Each pinned package of the lock: (version, its hashes)."""
    pins: dict[str, tuple[str, list[str]]] = {}
    name = ""
    for line in LOCK.read_text().splitlines():
        if pinned := re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line):
            name = canonicalize_name(pinned.group(1))
            pins[name] = (pinned.group(2), [])
        elif hashed := re.match(r"^\s+--hash=sha256:([0-9a-f]{64})", line):
            pins[name][1].append(hashed.group(1))
    return pins


def runtime_requirements() -> list[Requirement]:
    """The daemon's dependencies and its speed-ups, as pyproject.toml states them."""
    wanted = [*PROJECT["dependencies"], *PROJECT["optional-dependencies"]["speedups"]]
    return [Requirement(r) for r in wanted]


def test_the_lock_pins_every_dependency_within_its_range() -> None:
    """Every runtime requirement (and the speed-ups) is pinned, within the stated range."""
    pins = locked()
    for req in runtime_requirements():
        version, _ = pins[canonicalize_name(req.name)]
        assert req.specifier.contains(version, prereleases=True), (req, version)


def test_every_pin_carries_hashes_and_the_lock_names_its_tool() -> None:
    """`pip install --require-hashes` can check every file; the header says how to remake it."""
    pins = locked()
    assert pins
    assert all(hashes for _, hashes in pins.values()), [n for n, (_, h) in pins.items() if not h]
    assert "uv pip compile pyproject.toml" in LOCK.read_text().splitlines()[1]


def test_the_suite_runs_the_locked_versions() -> None:
    """This environment (made by `make test` from the lock, dev tools added after) has every
    locked package at its locked version: the tests ran what a deploy installs."""
    drift = {
        name: (version, importlib.metadata.version(name))
        for name, (version, _) in locked().items()
        if importlib.metadata.version(name) != version
    }
    assert drift == {}


def test_deploy_instructions_install_from_the_lock() -> None:
    """The service install and the operations guide both install with the lock's hashes."""
    for doc in ("deploy/systemd/README.md", "docs/operations.md"):
        text = (ROOT / doc).read_text()
        assert "--require-hashes -r" in text, doc
        assert "requirements.lock" in text, doc
        assert "--no-deps" in text, doc


def test_aiohttp_has_an_upper_bound_and_the_license_is_spdx() -> None:
    """aiohttp is bounded above (a new minor release is tested before it is allowed) and the
    license is an SPDX expression (no deprecated table)."""
    (aiohttp,) = [r for r in runtime_requirements() if r.name == "aiohttp"]
    assert any(spec.operator == "<" for spec in aiohttp.specifier)
    assert PROJECT["license"] == "Apache-2.0"
