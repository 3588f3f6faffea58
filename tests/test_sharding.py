"""Rendezvous sharding of targets over a fleet: exactly `replicas` owners each, little and
one-way movement when the fleet grows, balance, and the ways a shard learns its place."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.cli import main
from monitor.config.sources import parse_yaml
from monitor.sharding import (
    Shard,
    from_hostname,
    ordinal,
    owners,
    parse_shard,
    spread,
    weight,
)

NAMES = [f"target-{i}" for i in range(3000)]


@pytest.mark.parametrize(("count", "replicas"), [(1, 1), (4, 1), (5, 2), (8, 3)])
def test_every_target_has_exactly_its_replicas(count: int, replicas: int) -> None:
    shards = [Shard(i, count, replicas) for i in range(count)]
    for name in NAMES[:500]:
        assert sum(s.owns(name) for s in shards) == replicas


@pytest.mark.parametrize(("count", "replicas"), [(3, 1), (7, 1), (4, 2)])
def test_growing_moves_few_targets_and_only_onto_the_new_shard(count: int, replicas: int) -> None:
    moved = 0
    for name in NAMES:
        before, after = set(owners(name, count, replicas)), set(owners(name, count + 1, replicas))
        if before != after:
            moved += 1
            assert after - before == {count}  # the only new owner is the new shard
            assert len(before - after) == 1
    expected = len(NAMES) * replicas / (count + 1)
    assert 0.85 * expected <= moved <= 1.15 * expected


def test_the_spread_is_balanced() -> None:
    per_shard = spread(NAMES, 6)
    assert sum(per_shard) == len(NAMES)
    assert max(per_shard) <= 1.15 * len(NAMES) / 6
    assert min(per_shard) >= 0.85 * len(NAMES) / 6
    assert sum(spread(NAMES, 6, replicas=2)) == 2 * len(NAMES)


@pytest.mark.parametrize(("count", "replicas"), [(2, 1), (3, 2), (7, 1), (7, 3), (10, 1)])
def test_owners_are_the_shards_that_weigh_highest(count: int, replicas: int) -> None:
    """`owners` and each shard's own (early-stopping) answer are `weight`'s ranking."""
    for name in NAMES[:400]:
        ranked = sorted(range(count), key=lambda s: (weight(name, s), s), reverse=True)
        assert owners(name, count, replicas) == sorted(ranked[:replicas])
        assert [s for s in range(count) if Shard(s, count, replicas).owns(name)] == sorted(
            ranked[:replicas]
        )


def test_the_assignment_stays_what_it_was() -> None:
    """Shards of a fleet upgraded one at a time must agree on owners: these are the owners
    releases so far computed, and a change of hash would move every target."""
    names = ["t0", "t1", "api-eu", "ws://x", "\u00e9"]
    assert [owners(n, 7, 2) for n in names] == [[0, 5], [1, 3], [1, 6], [2, 6], [0, 4]]
    assert [owners(n, 10) for n in names] == [[5], [9], [1], [6], [0]]


def test_the_answer_does_not_depend_on_the_process() -> None:
    """Another process, with another string hash seed, computes the same owners: every
    shard of a fleet agrees."""
    code = "from monitor.sharding import owners; print([owners(f't{i}', 5, 2) for i in range(50)])"
    other = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONHASHSEED": "4242"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert other.stdout.strip() == str([owners(f"t{i}", 5, 2) for i in range(50)])


@pytest.mark.parametrize(
    ("shard", "problem"),
    [
        ((4, 4, 1), "shard index 4 is not in 0..3"),
        ((0, 0, 1), "shard count must be at least 1, not 0"),
        ((0, 2, 3), "replicas must be from 1 to the shard count (2), not 3"),
    ],
)
def test_impossible_shards_are_named(shard: tuple[int, int, int], problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        Shard(*shard)


def test_places_from_flags_and_host_names() -> None:
    assert parse_shard("3/8") == (3, 8)
    with pytest.raises(ValueError, match="expected INDEX/COUNT"):
        parse_shard("3-8")
    assert ordinal("wsmon-12") == 12
    assert from_hostname({"HOSTNAME": "wsmon-shard-2"}) == 2
    with pytest.raises(ValueError, match="does not end in -ORDINAL"):
        ordinal("wsmon")


def test_check_config_shows_the_spread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`check-config --shards N` prints what each shard would monitor; the counts are the
    ones the shards themselves compute."""
    doc = {"targets": [{"name": n, "url": "ws://127.0.0.1:1/ws", "probes": []} for n in NAMES[:90]]}
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["check-config", str(path), "--shards", "3"]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    counts = spread(NAMES[:90], 3)
    assert line.startswith(f"{path}: 3 shards: 0: {counts[0]}, 1: {counts[1]}, 2: {counts[2]}")
    assert main(["check-config", str(path), "--shards", "2", "--shard-replicas", "3"]) == 2


@pytest.mark.parametrize(
    ("argv", "env", "problem"),
    [
        (["--shard", "3/3"], {}, "shard: shard index 3 is not in 0..2"),
        (["--shard", "0/2", "--shard-from-hostname"], {}, "exclude each other"),
        (["--shard-from-hostname"], {"HOSTNAME": "box"}, "does not end in -ORDINAL"),
        (["--shard-from-hostname"], {"HOSTNAME": "wsmon-1", "WSMON_SHARD_COUNT": "x"}, "whole"),
    ],
)
def test_bad_shard_flags_exit_2(
    tmp_path: Path, argv: list[str], env: dict[str, str], problem: str
) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump({"targets": [{"name": "a", "url": "ws://127.0.0.1:1/ws"}]}))
    proc = subprocess.run(
        [sys.executable, "-m", "monitor", "run", "--config", str(path), *argv],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert problem in proc.stderr


def test_a_shard_validates_its_own_targets_only(tmp_path: Path) -> None:
    """Loaded for a shard, a config keeps (and validates) that shard's targets; a problem in
    another shard's target is its owner's to report, and `check-config` (every target)
    reports it. Names are checked by every shard: a duplicate is refused by all."""
    from monitor import config as config_mod
    from monitor.sharding import Fixed

    names = NAMES[:60]
    bad = names[7]
    (owner,) = owners(bad, 3)
    other = (owner + 1) % 3
    targets = [
        {"name": n, "url": "ws://127.0.0.1:1/ws", **({"interval": "soon"} if n == bad else {})}
        for n in names
    ]
    text = yaml.safe_dump({"defaults": {"probes": []}, "targets": targets})
    loaded = config_mod.loads(text, shard=Fixed(other, 3))
    assert [t.name for t in loaded.targets] == [n for n in names if Shard(other, 3).owns(n)]
    assert loaded.listed_targets == 60
    assert Shard(other, 3).owned(loaded).targets == loaded.targets
    with pytest.raises(config_mod.ConfigError) as refused:
        config_mod.loads(text, shard=Fixed(owner, 3))
    (problem,) = refused.value.problems
    assert problem == "targets[7].interval: unknown key"
    with pytest.raises(config_mod.ConfigError):
        config_mod.loads(text)  # one daemon, or check-config: every target
    # The config's own `sharding` block places the shard when no flag does.
    placed = yaml.safe_dump({"sharding": {"index": other, "count": 3}, "targets": targets[8:]})
    assert config_mod.loads(placed, shard=Fixed()).listed_targets == 52
    twice = yaml.safe_dump({"targets": [*targets[8:], {**targets[9], "url": "ws://x/"}]})
    for index in range(3):
        with pytest.raises(config_mod.ConfigError, match=r"targets\[52\].name: duplicate"):
            config_mod.loads(twice, shard=Fixed(index, 3))


def test_a_name_that_is_none_is_refused_by_every_shard() -> None:
    """A target whose name is not a valid name (a lone surrogate, a trailing newline) has no
    owner to report it: every shard validates it, and refuses the config by its path."""
    from monitor import config as config_mod
    from monitor.sharding import Fixed

    for bad in ("bad\\ud800", "t1\\n"):
        text = f'{{"targets": [{{"name": "{bad}", "url": "ws://127.0.0.1:1/"}}]}}'
        for index in range(3):
            with pytest.raises(config_mod.ConfigError, match=r"targets\[0\].name: invalid name"):
                config_mod.loads(text, shard=Fixed(index, 3))


def test_a_name_made_by_a_variable_is_kept_by_its_owner_only() -> None:
    """A name written as `${VAR}` is validated by every shard (only expanded is it a name),
    and kept by the shards that own the name it expands to."""
    from monitor import config as config_mod
    from monitor.sharding import Fixed

    text = yaml.safe_dump(
        {
            "targets": [{"name": "${NAME}", "url": "ws://127.0.0.1:1/ws"}]
            + [{"name": n, "url": "ws://127.0.0.1:1/ws"} for n in NAMES[:30]]
        }
    )
    env = {"NAME": "from-the-environment"}
    kept = []
    for index in range(3):
        loaded = config_mod.loads(text, env=env, shard=Fixed(index, 3))
        assert Shard(index, 3).owned(loaded) is loaded  # loaded for this shard: its own only
        kept.append([t.name for t in loaded.targets])
        assert kept[-1] == [
            n for n in ["from-the-environment", *NAMES[:30]] if Shard(index, 3).owns(n)
        ]
    assert sum("from-the-environment" in names for names in kept) == 1


def test_what_a_shard_keeps_shares_nothing_with_the_parsed_document(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shard's targets hold copies of their strings, not the parsed document's: those sit
    among every other target's values, and would keep that memory after the document is
    dropped (the most of it: a shard keeps a fraction of the targets, spread through it)."""
    from monitor import config as config_mod
    from monitor.config import loading
    from monitor.sharding import Fixed

    parsed: list[Any] = []

    def keep(text: str, problems: list[str]) -> Any:
        parsed.append(parse_yaml(text, problems))
        return parsed[-1]

    monkeypatch.setattr(loading, "parse_yaml", keep)
    targets = [
        {"name": n, "url": f"ws://127.0.0.1:1/{n}", "headers": {"X-Name": n}} for n in NAMES[:30]
    ]
    loaded = config_mod.loads(json.dumps({"targets": targets}), shard=Fixed(1, 3))
    assert loaded.targets  # a third of them, or so
    strings = {id(s) for t in parsed[0]["targets"] for s in (t["name"], t["url"])}
    strings |= {id(s) for t in parsed[0]["targets"] for kv in t["headers"].items() for s in kv}
    for t in loaded.targets:
        kept = [t.name, t.url, *(s for kv in t.headers.items() for s in kv)]
        assert not {id(s) for s in kept} & strings, t.name
        assert t.headers == {"X-Name": t.name}
        assert t.url == f"ws://127.0.0.1:1/{t.name}"
