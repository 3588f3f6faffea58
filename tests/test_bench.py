"""The performance harness runs end to end at smoke-test size and produces figures.

``python -m bench.run --quick`` runs all five workloads with a few targets for a few
seconds each (the real node server from ``bench/node``, the floor, websockets-library and
wsmon clients in their own processes, the scrape baseline).  This asserts that it runs and
that every figure is present, parsable and positive, not how fast anything is: the goals
are judged by the full-size run whose figures are in ``bench/RESULTS.md``, which this test
must not touch (``--no-write``).  Node.js and npm are part of the machine image: without
them the harness, and so this test, fails and says so.
"""

from __future__ import annotations

import hashlib
import importlib.util
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


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def _positive(value: Any, what: str) -> None:
    assert isinstance(value, int | float), f"{what}: {value!r} is not a number"
    assert math.isfinite(value), f"{what}: {value!r}"
    assert value > 0, f"{what}: {value!r} is not positive"


def _client(r: dict[str, Any], what: str) -> None:
    assert r["event"] == "result", what
    assert r["open"] == r["targets"], f"{what}: {r['open']} of {r['targets']} open"
    for key in ("window_s", "cpu_s", "round_trips", "cpu_us_per_round_trip", "rss_kb"):
        _positive(r[key], f"{what}.{key}")
    _positive(r["rtt_ms"]["n"], f"{what}.rtt_ms.n")
    for key in ("mean", "p50", "p99", "max"):
        _positive(r["rtt_ms"][key], f"{what}.rtt_ms.{key}")


@pytest.mark.timeout(90)
def test_quick_run_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    before = (_digest(RESULTS_MD), _digest(RESULTS_JSON))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--no-write", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"bench.run --quick failed:\n{proc.stdout}\n{proc.stderr}"
    assert (_digest(RESULTS_MD), _digest(RESULTS_JSON)) == before, "--no-write wrote results"
    report = json.loads(out.read_text())
    res = report["results"]

    w1 = res["w1"]
    for key in (
        "floor",
        "floor_uvloop",
        "websockets",
        "wsmon_asyncio",
        "wsmon_uvloop_orjson",
        "wsmon_uvloop_aligned",
    ):
        _client(w1[key], f"w1.{key}")
    for key in ("floor_uvloop", "wsmon_uvloop_orjson", "wsmon_uvloop_aligned"):
        assert w1[key]["loop"] == "uvloop.Loop", key
    assert w1["floor"]["loop"].startswith("asyncio")
    assert w1["wsmon_uvloop_orjson"]["send_alignment"] == "0"
    assert w1["wsmon_uvloop_aligned"]["send_alignment"] == "50ms"
    # orjson is optional (used when installed); the stock run never uses it
    assert w1["wsmon_uvloop_orjson"]["orjson"] is (importlib.util.find_spec("orjson") is not None)
    assert w1["wsmon_asyncio"]["loop"].startswith("asyncio")
    assert w1["wsmon_asyncio"]["orjson"] is False
    for key in (
        "ratio_wsmon_asyncio",
        "ratio_wsmon_uvloop_orjson",
        "ratio_wsmon_uvloop_aligned",
        "ratio_websockets",
        "ratio_floor_uvloop",
    ):
        _positive(w1[key], f"w1.{key}")

    w2 = res["w2"]
    _client(w2["wsmon"], "w2.wsmon")
    _positive(w2["empty"]["rss_kb"], "w2.empty.rss_kb")
    assert isinstance(w2["rss_kib_per_target"], float)
    _positive(w2["wsmon"]["send_lag_ms"]["n"], "w2.send_lag_ms.n")
    assert isinstance(w2["wsmon"]["send_lag_ms"]["p99"], float)

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
    for key in ("floor", "wsmon"):
        _client(w4[key], f"w4.{key}")
        assert w4[key]["rtt_excess_ms"]["n"] == w4[key]["rtt_ms"]["n"]
    _positive(w4["wsmon"]["scraping"]["scrapes"], "w4.wsmon.scrapes")

    w5 = res["w5"]
    _positive(w5["startup_s"], "w5.startup_s")
    assert w5["server_open"] == w5["targets"]
    _positive(w5["max_upgrades_in_progress"], "w5.max_upgrades_in_progress")

    judged = {v["workload"] for v in report["verdicts"] if v["verdict"] in ("PASS", "FAIL")}
    assert judged == {1, 2, 3, 4, 5}
    assert "| # | measure | figure | goal | result |" in proc.stdout
