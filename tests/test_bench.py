"""The performance harness runs end to end at smoke-test size and produces figures.

``python -m bench.run --quick`` runs workloads 1 to 5 and 7 with a few targets for a second or
two each (the real node server from ``bench/node``; the floor, websockets-library and wsmon
clients in their own processes, wsmon on both receive paths; the scrape baseline; the stream
floor and ``wsmon run`` against the server's tick streams), and
``--only 1 --hooks-ablation --quick`` the hooks ablation, ``--only 8 --quick`` the fleet (three
``wsmon run --shard I/3`` processes, three node servers). This asserts that they run and
that every figure is present, parsable and positive, not how fast anything is: the goals are
judged by the full-size run whose figures are in ``bench/RESULTS.md``, which these tests
must not touch (``--no-write``). Node.js and npm are part of the machine image: without
them the harness, and so this test, fails and says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS_MD = ROOT / "bench" / "RESULTS.md"
RESULTS_JSON = ROOT / "bench" / "results.json"
HOOKS = ["inbox", "stamp", "trim"]


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def _positive(value: Any, what: str) -> None:
    assert isinstance(value, int | float), f"{what}: {value!r} is not a number"
    assert math.isfinite(value), f"{what}: {value!r}"
    assert value > 0, f"{what}: {value!r} is not positive"


def _bench(tmp_path: Path, *args: str, timeout: float) -> dict[str, Any]:
    """Run bench.run with `args` (never writing results); its JSON report."""
    out = tmp_path / "report.json"
    before = (_digest(RESULTS_MD), _digest(RESULTS_JSON))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", *args, "--no-write", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"bench.run {args} failed:\n{proc.stdout}\n{proc.stderr}"
    assert (_digest(RESULTS_MD), _digest(RESULTS_JSON)) == before, "--no-write wrote results"
    report: dict[str, Any] = json.loads(out.read_text())
    report["stdout"] = proc.stdout
    return report


def _client(r: dict[str, Any], what: str) -> None:
    """A measured window: CPU from /proc, round trips and their RTT."""
    assert r["targets"] > 0, what
    for key in ("window_s", "cpu_s", "round_trips", "cpu_us_per_round_trip", "rss_kb"):
        _positive(r[key], f"{what}.{key}")
    _positive(r["rtt_mean_ms"], f"{what}.rtt_mean_ms")
    if r["kind"] == "wsmon":  # from the daemon's own metrics
        assert r["connected"] == r["targets"], f"{what}: {r['connected']} connected"
        _positive(r["probes_sent"], f"{what}.probes_sent")
    else:  # the baseline's own samples
        assert r["rtt_ms"]["n"] == r["round_trips"], what
        for key in ("p50", "p99", "max"):
            _positive(r["rtt_ms"][key], f"{what}.rtt_ms.{key}")


def _path(r: dict[str, Any], path: str, what: str) -> None:
    """The daemon said (wsmon_build_info) it ran the receive path it was meant to."""
    assert r["receive_path"] == path, f"{what}: receive_path {r['receive_path']!r}"
    if path == "portable":
        assert "inbox" not in r["hooks"], f"{what}: hooks {r['hooks']}"


@pytest.mark.timeout(180)
def test_quick_run_produces_every_figure(tmp_path: Path) -> None:
    report = _bench(tmp_path, "--quick", timeout=150)
    res = report["results"]

    # Kept apart from bench/workloads.py's W1_CLIENTS on purpose: a client dropped there
    # must fail here.
    w1 = res["w1"]
    clients = {
        "floor": ("asyncio", None),
        "floor_uvloop": ("uvloop", None),
        "websockets": ("asyncio", None),
        "wsmon_asyncio": ("asyncio", "hooked"),
        "wsmon_uvloop": ("uvloop", "hooked"),
        "wsmon_asyncio_portable": ("asyncio", "portable"),
        "wsmon_uvloop_portable": ("uvloop", "portable"),
        "wsmon_uvloop_aligned": ("uvloop", "hooked"),
    }
    for key, (loop, path) in clients.items():
        _client(w1[key], f"w1.{key}")
        assert w1[key]["loop"].startswith(loop), f"w1.{key}: {w1[key]['loop']}"
        if path is not None:
            _path(w1[key], path, f"w1.{key}")
        if key != "floor":
            _positive(w1["ratio"][key], f"w1.ratio.{key}")
    assert w1["wsmon_uvloop"]["send_alignment"] == "0"
    assert w1["wsmon_uvloop_aligned"]["send_alignment"] == "50ms"
    assert sorted(w1["wsmon_asyncio"]["hooks"]) == HOOKS, "the self-test left a hook off"

    w2 = res["w2"]
    _client(w2["wsmon"], "w2.wsmon")
    _path(w2["wsmon"], "hooked", "w2.wsmon")
    _positive(w2["wsmon"]["cpu_pct_of_core"], "w2.cpu_pct_of_core")
    _positive(w2["empty"]["rss_before_scrape_kb"], "w2.empty.rss_before_scrape_kb")
    assert isinstance(w2["rss_kib_per_target"], float)
    lag = w2["wsmon"]["send_lag"]
    _positive(lag["count"], "w2.send_lag.count")
    _positive(lag["p99_ms"], "w2.send_lag.p99_ms")
    assert 0 < lag["share_within_20ms"] <= 1

    w3 = res["w3"]
    for key in ("small", "large"):
        ph = w3[key]
        _positive(ph["scrape_s"]["mean"], f"w3.{key}.scrape_s")
        _positive(ph["exposition"]["samples"], f"w3.{key}.samples")
        _positive(ph["sensor_samples"], f"w3.{key}.sensor_samples")
        assert ph["exposition"]["targets_with_answered_probes"] == ph["targets"]
        assert ph["exposition"]["disconnects_total"] >= ph["dropped"] > 0
    for key in ("baseline_small", "baseline_large"):
        _positive(w3[key]["generate_latest_s"]["mean"], f"w3.{key}")
        _positive(w3[key]["series"], f"w3.{key}.series")

    w4 = res["w4"]
    for key, path in (("floor", None), ("wsmon", "hooked"), ("wsmon_portable", "portable")):
        _client(w4[key], f"w4.{key}")
        if path is not None:
            _path(w4[key], path, f"w4.{key}")
            _positive(w4[key]["rtt_excess_ms"]["n"], f"w4.{key}.samples")  # from the scrapes
        _positive(w4[key]["rtt_excess_ms"]["p99"], f"w4.{key}.rtt_excess_ms.p99")

    w5 = res["w5"]
    _positive(w5["startup_s"], "w5.startup_s")
    assert w5["server_open"] == w5["connected"] == w5["targets"]
    _positive(w5["max_upgrades_in_progress"], "w5.max_upgrades_in_progress")

    w7 = res["w7"]
    for key in ("floor", "wsmon"):
        r = w7[key]
        for name in ("window_s", "cpu_ticks_s", "messages", "cpu_us_per_message", "rss_kb"):
            _positive(r[name], f"w7.{key}.{name}")
        assert w7["loop"] in r["loop"], f"w7.{key} ran on {r['loop']}, not {w7['loop']}"
    assert w7["wsmon"]["receive_path"] == "hooked"
    _positive(w7["ratio"], "w7.ratio")
    assert w7["counts"]["match"], f"the daemon counted other than the server sent: {w7['counts']}"
    stale = w7["staleness"]
    assert stale["stalled"] > 0, stale
    assert stale["missed"] == 0, stale
    assert stale["delay_ms"]["n"] == stale["stalled"]
    assert stale["log_timestamp_digits"] >= 3, "log timestamps too coarse to time a delay"

    judged = {v["goal"] for v in report["verdicts"] if v["verdict"] in ("PASS", "FAIL")}
    assert judged == {"1a", "1b", "2a", "2b", "2c", "2d", "2e", "3a", "3b", "4a", "4b", "5a", "5b",
                      "7a", "7b", "(check)"}  # fmt: skip
    assert "| goal | # | measure | figure | threshold | result |" in report["stdout"]


@pytest.mark.timeout(120)
def test_hooks_ablation_runs_each_configuration(tmp_path: Path) -> None:
    """Every hook, each one left out, none: each client ran with exactly its hooks."""
    report = _bench(tmp_path, "--only", "1", "--hooks-ablation", "--quick", timeout=100)
    a = report["results"]["ablation"]
    expected = {
        "all": HOOKS,
        **{f"no_{h}": [x for x in HOOKS if x != h] for h in HOOKS},
        "none": [],
    }
    _client(a["floor"], "ablation.floor")
    for key, hooks in expected.items():
        _client(a[key], f"ablation.{key}")
        assert sorted(a[key]["hooks"]) == hooks, f"ablation.{key}: {a[key]['hooks']}"
        assert a[key]["loop"].startswith("uvloop"), key
        _path(a[key], "hooked" if "inbox" in hooks else "portable", f"ablation.{key}")
        _positive(a["ratio"][key], f"ablation.ratio.{key}")
    assert set(a["vs_all"]) == set(expected) - {"all"}
    assert "What each hook buys" in report["stdout"]


@pytest.mark.timeout(120)
def test_fleet_runs_shards_and_a_single_daemon(tmp_path: Path) -> None:
    """Workload 8 at a few hundred targets: every target connected exactly once over the
    shards and the servers, and memory and CPU per target measured for the fleet, the single
    daemon and the one-target daemon."""
    report = _bench(tmp_path, "--only", "8", "--quick", timeout=100)
    w8 = report["results"]["w8"]
    first = w8["attempts"][0]
    c, own = first["connect"], first["ownership"]
    assert c["all_connected"], c
    assert c["servers"]["servers"] > 1, "the plan should spread the targets over servers"
    _positive(c["connect_s"], "w8.connect_s")
    _positive(c["metrics_connected_s"], "w8.metrics_connected_s")
    assert own["violations"] == 0, own
    assert own["servers_exactly_once"] == own["metrics_exactly_once"] == w8["goal_targets"]
    assert sum(p["wsmon_targets"] for p in own["per_shard"]) == w8["goal_targets"]
    assert {p["wsmon_config_targets"] for p in own["per_shard"]} == {w8["goal_targets"]}
    assert len(own["per_shard"]) == w8["shards"]
    for key in ("fleet", "single", "one"):
        st = w8[key]["steady"]
        for name in ("rss_kib_per_target", "cpu_s_per_s", "window_s"):
            _positive(st[name], f"w8.{key}.{name}")
        assert st["receive_paths"] == ["hooked"], st["receive_paths"]
    _positive(w8["fleet"]["steady"]["round_trips"], "w8.fleet.round_trips")
    assert w8["largest_held"] == w8["goal_targets"]
    judged = {v["goal"] for v in report["verdicts"] if v["verdict"] in ("PASS", "FAIL")}
    assert judged == {"8a", "8b", "8c", "8d"}


def test_same_run_comparison_of_two_revisions() -> None:
    """`python -m bench.ab` runs two revisions' daemons in alternating rounds and reports a
    CPU per round trip for each and their ratio (HEAD against the working tree here)."""
    before = _digest(RESULTS_MD)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.ab", "--before", "HEAD", "--rounds", "1",
         "--targets", "5", "--window", "1", "--no-write"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (row,) = [line for line in proc.stdout.splitlines() if line.startswith("| 1 |")]
    before_us, after_us, ratio = (float(cell) for cell in row.strip("|").split("|")[1:])
    _positive(before_us, "before")
    _positive(after_us, "after")
    assert math.isclose(ratio, after_us / before_us, rel_tol=0.01)
    assert _digest(RESULTS_MD) == before
