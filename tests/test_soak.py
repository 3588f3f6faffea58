"""Soak in reduced form: hundreds of connect/drop cycles leave no task, fd or count behind.

The full soak (10,000 cycles, with the 5 % memory bound) is ``python -m bench.soak``; its
figures are in ``bench/RESULTS.md``.  This runs the same core for 600 cycles, which is too
short for a meaningful memory bound, so memory is only measured here, not judged.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

_ROOT = Path(__file__).resolve().parent.parent


def _load_soak() -> ModuleType:
    """bench/soak.py as ``bench.soak``, as ``python -m bench.soak`` runs it (it imports
    its siblings relatively); the repository root goes on sys.path if it is not there."""
    if str(_ROOT) not in sys.path:
        sys.path.insert(0, str(_ROOT))
    return importlib.import_module("bench.soak")


soak = _load_soak()


@pytest.mark.timeout(60)
async def test_reduced_soak_returns_to_baseline_and_counts_truly() -> None:
    """600 connections accepted by the server, each dropped by RST, FIN or a 1001 close frame
    in turn, with probes running: afterwards the number of asyncio tasks and of open fds is
    exactly what it was before the first drop; `reconnects_total` equals the server's
    accepted connections minus one per target, `disconnects_total` equals the drops (1001/peer
    for close frames, 1006/network for RST and FIN); every handshake succeeded; stopping the
    daemon and the server hands back every task and fd; nothing went to the loop's exception
    handler and nothing raised a ResourceWarning."""
    r = await soak.run_soak(600, 3, max_rss_growth_pct=None)

    assert r.failures == []
    assert r.connections >= 600
    assert r.tasks_end == r.tasks_baseline
    assert r.fds_end == r.fds_baseline
    assert r.reconnects_total == r.connections - r.targets
    assert r.disconnects_total == r.drops == r.connections - r.targets
    assert all(n > 0 for n in r.drops_by_kind.values()), r.drops_by_kind
    assert r.disconnects_by == {
        "1001/peer": r.drops_by_kind["close_1001"],
        "1006/network": r.drops_by_kind["abort"] + r.drops_by_kind["fin"],
    }
    assert r.connect_attempts_total == r.server_http_requests == r.connections
    assert (r.tasks_after_stop, r.fds_after_stop) == (r.tasks_before_start, r.fds_before_start)
    assert sum(r.probes_sent.values()) > 0  # drops also hit connections with probes running
    # Measured, not judged: a run this short is dominated by start-up allocations.
    assert r.rss_warmup_kb > 0
    assert r.rss_end_kb > 0
    assert r.cycles_per_s > 0
    assert r.log_lines > 0


def test_cli_prints_json_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m bench.soak --json` prints one JSON object with the figures and `ok`, and
    exits 0 when every check holds (a tiny run; the memory bound is switched off)."""
    status = soak.main(["--cycles", "60", "--targets", "2", "--json", "--max-rss-growth", "1e9"])
    out = json.loads(capsys.readouterr().out)
    assert status == 0, out["failures"]
    assert out["ok"] is True
    assert out["connections"] >= 60
    for key in ("rss_warmup_kb", "rss_end_kb", "rss_growth_pct", "tasks_baseline", "tasks_end",
                "fds_baseline", "fds_end", "wall_s", "cycles_per_s"):  # fmt: skip
        assert key in out


def test_checks_flag_growth_leaks_and_miscounts() -> None:
    """The judge is not vacuous: 5 % RSS growth, one task or fd more than at baseline, and
    counters that disagree with the server each produce a failure line."""
    r = soak.SoakResult(cycles_requested=10, targets=1, connections=10, drops=9)
    r.drops_by_kind = {"abort": 3, "fin": 3, "close_1001": 3}
    r.reconnects_total = r.disconnects_total = 9
    r.disconnects_by = {"1001/peer": 3, "1006/network": 6}
    r.server_close_frames = {"1001": 3}
    r.rss_warmup_kb, r.rss_end_kb, r.rss_growth_pct = 1000, 1050, 5.0
    r.tasks_baseline, r.tasks_end = 5, 6
    r.fds_baseline, r.fds_end = 9, 10
    failures = list(soak._judge(r, 5.0))
    assert len(failures) == 3, failures
    assert failures[0].startswith("RSS grew 5.00%")
    assert failures[1].startswith("tasks 5 -> 6")
    assert failures[2].startswith("fds 9 -> 10")

    r.rss_growth_pct, r.tasks_end, r.fds_end = 4.99, 5, 9
    assert list(soak._judge(r, 5.0)) == []
    r.reconnects_total = 8
    r.disconnects_by = {"1001/peer": 3, "1006/network": 5, "1011/local": 1}
    assert len(list(soak._judge(r, 5.0))) == 2
