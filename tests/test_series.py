"""The series budget: what a configuration exports, counted before a deploy."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor import config, series
from monitor.cli import main
from monitor.metrics import Metrics
from monitor.registry import Registry

PING = {"name": "ping", "send": {"ping": 1}, "expect": {"msg_type": "ping"}}


def generated(targets: int, seed: int, **metrics: Any) -> dict[str, Any]:
    """Targets with the default probe, or a random mix of probes (message and ws-ping, some
    with their own buckets)."""
    rng = random.Random(seed)
    out = []
    for i in range(targets):
        t: dict[str, Any] = {"name": f"t{i}", "url": f"ws://127.0.0.1:{1000 + i}/ws"}
        if i % 3:
            probes = []
            for j in range(rng.randrange(1, 4)):
                p: dict[str, Any] = (
                    {**PING, "name": f"m{j}"} if rng.random() < 0.6
                    else {"name": f"f{j}", "kind": "ws-ping"}
                )  # fmt: skip
                if rng.random() < 0.3:
                    p["rtt_buckets"] = sorted(rng.sample([0.001, 0.01, 0.1, 1, 10], 3))
                probes.append(p)
            t["probes"] = probes
        out.append(t)
    return {"targets": out, **({"metrics": metrics} if metrics else {})}


def loaded(doc: dict[str, Any]) -> config.Config:
    return config.loads(yaml.safe_dump(doc), source="<test>")


def text_lines(cfg: config.Config) -> tuple[int, dict[str, int]]:
    """Series in a rendered exposition: sample lines without a target, and by target."""
    registry = Registry()
    m = Metrics(registry, options=cfg.metrics)
    for t in cfg.targets:
        m.for_target(t.name, [(p.name, p.kind, p.rtt_buckets) for p in t.probes])
    m.targets.set(len(cfg.targets))
    other = 0
    by_target: dict[str, int] = {}
    for line in registry.render().decode().splitlines():
        if line.startswith("#"):
            continue
        if 'target="' in line:
            name = line.split('target="', 1)[1].split('"', 1)[0]
            by_target[name] = by_target.get(name, 0) + 1
        else:
            other += 1
    return other, by_target


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_budget_on_a_generated_config(seed: int) -> None:
    """A target with the default probe costs 25 series at most (exactly 25); every target
    costs 10 plus 3 + its buckets + 4 per probe; and the count check-config prints is the
    number of sample lines a scrape of that config writes for each target."""
    cfg = loaded(generated(60, seed))
    counted = series.count(cfg)
    other, by_target = text_lines(cfg)
    assert counted.per_target == by_target
    assert counted.daemon > other  # and the HTTP side's: compared with a daemon in test_http
    for t in cfg.targets:
        expected = 10 + sum(
            len(p.rtt_buckets or cfg.metrics.rtt_buckets) + 1 + 2 + 4 for p in t.probes
        )
        assert counted.per_target[t.name] == expected, t.name
        if [p.name for p in t.probes] == ["ping"] and t.probes[0].rtt_buckets is None:
            assert counted.per_target[t.name] == 25


def test_switches_move_the_count_as_documented() -> None:
    """precreate: all adds 21 to a target with one message probe; a per-target handshake
    histogram 15; native histograms make each histogram one series."""
    doc = {"targets": [{"name": "a", "url": "ws://127.0.0.1:1/ws"}]}
    base = series.count(loaded(doc)).per_target["a"]
    assert base == 25
    assert series.count(loaded({**doc, "metrics": {"precreate": "all"}})).per_target["a"] == 46
    per_target = loaded({**doc, "metrics": {"per_target_connect_histogram": True}})
    assert series.count(per_target).per_target["a"] == 40
    native = loaded({**doc, "metrics": {"histograms": "native"}})
    assert series.count(native).per_target["a"] == 25  # the text format: classic
    assert series.count(native, native=True).per_target["a"] == 15
    assert series.ceiling(loaded(doc)) > series.count(loaded(doc)).total


def test_check_config_prints_the_count_and_warns_past_the_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The summary line carries the series at start; past `metrics.series_warning` a
    warning line says how many and what cuts them, and the exit status stays 0."""
    path = tmp_path / "w.yaml"
    doc = generated(40, 7)
    path.write_text(yaml.safe_dump(doc))
    total = series.count(loaded(doc)).total
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"series: {total} at start" in out
    assert "warning" not in out
    path.write_text(yaml.safe_dump({**doc, "metrics": {"series_warning": total - 1}}))
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"warning: {total} series exceed metrics.series_warning ({total - 1})" in out


BUCKETS = "metrics.rtt_buckets: "


@pytest.mark.parametrize(
    ("metrics", "problem"),
    [
        ({"rtt_buckets": [0.1, 0.05]}, BUCKETS + "bucket 1 (0.05) must be greater than the one"),
        ({"rtt_buckets": []}, BUCKETS + "expected a list of bucket bounds in seconds"),
        ({"rtt_buckets": [0, 1]}, BUCKETS + "bucket 0 (0) must be greater than 0"),
        ({"rtt_buckets": [1, float("inf")]}, BUCKETS + "bucket 1 (inf) is not a finite number"),
        ({"rtt_buckets": [1, "2"]}, BUCKETS + "bucket 1 ('2') is not a finite number"),
        ({"histograms": "sparse"}, "metrics.histograms: Input should be 'classic', 'native'"),
        ({"precreate": "some"}, "metrics.precreate: Input should be 'alerts' or 'all'"),
        ({"rtt_bucket": [1]}, "metrics.rtt_bucket: unknown key (did you mean 'rtt_buckets'?)"),
    ],
)  # fmt: skip
def test_bad_metrics_block_names_the_key(metrics: dict[str, Any], problem: str) -> None:
    """A bad `metrics` value is reported with its path and why."""
    doc = {"metrics": metrics, "targets": [{"name": "a", "url": "ws://127.0.0.1:1/ws"}]}
    with pytest.raises(config.ConfigError) as err:
        loaded(doc)
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_counting_by_shape_counts_what_every_target_would(monkeypatch: pytest.MonkeyPatch) -> None:
    """check-config builds the series of one target per shape (probes, rate limits, the
    handshake's phases) and gives each target its shape's count: the same counts, start and
    ceiling, as building every target."""
    doc = generated(45, 7)
    for i, t in enumerate(doc["targets"]):
        if i % 4 == 1:
            t["url"] = f"wss://host{i}.example:443/ws"
        if i % 5 == 2:
            t["rate_limits"] = {"source": "none", **({"hourly": 3600} if i % 2 else {})}
        if i % 7 == 3:
            t["correlation_field"] = "req_id"
            stream = {"name": "ticks", "kind": "stream", "send": {"ticks": "R_50"}, "max_gap": "3s"}
            t["probes"] = [stream, PING]
    cfg = loaded(doc)
    by_shape = series.count(cfg), series.count(cfg, native=True), series.ceiling(cfg)
    assert len(series._representatives(cfg, wire=True)[0]) < len(cfg.targets)

    def each_its_own(cfg: config.Config, wire: bool) -> tuple[list[Any], dict[str, str]]:
        return list(cfg.targets), {t.name: t.name for t in cfg.targets}

    monkeypatch.setattr(series, "_representatives", each_its_own)
    assert by_shape == (series.count(cfg), series.count(cfg, native=True), series.ceiling(cfg))
