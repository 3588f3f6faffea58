"""wsmon performance workloads against baselines measured in the same run.

Run from the repository root::

    python -m bench.run [--quick] [--only 1,3] [--monitor-rev REV] [--profile] [--no-write]
                        [--json PATH] [--rounds N]
    python -m bench.run --only 6 [--quick] [--w6-variants classic,native]
    python -m bench.run --only 1 --hooks-ablation [--quick] [--rounds N]
    python -m bench.run --only 7 [--quick]
    python -m bench.run --only 8 [--quick]

Without ``--only``, workloads 1 to 5 and 7 run; workload 6 (a real Prometheus, the
``prometheus`` binary on PATH, a few minutes per variant) and workload 8 (a fleet of 10 shards
with 100,000 targets, about 10 minutes) run only when named in ``--only``.

The workloads are in ``bench/workloads.py``, how one client is measured in
``bench/measure.py``, the goals and their judging in ``bench/report.py``. Every figure printed
or written comes from this run's measurements. Results go to ``bench/RESULTS.md`` (the
section between the ``bench.run`` markers, or with ``--hooks-ablation`` the ablation's; the
other sections are kept) and ``bench/results.json`` (the workloads not run keep their
previous entries), unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from . import nodeserver, promserver, workloads
from .harness import ROOT, BenchError, loadavg, machine, monitor_digest, run_text, snapshot
from .measure import Launcher
from .render import render, render_ablation
from .report import ABLATION, MAIN, judge, table, write_section
from .workloads import FULL, QUICK, Run

RESULTS_MD = ROOT / "bench" / "RESULTS.md"
REQUIRED = {
    "websockets": "the websockets-library client (workload 1)",
    "uvloop": "wsmon with the speed-ups (workload 1, the ablation)",
    "prometheus_client": "the scrape baseline (workload 3)",
}
WORKLOADS = {1, 2, 3, 4, 5, 6, 7, 8}
DEFAULT = {1, 2, 3, 4, 5, 7}  # workloads 6 and 8 only when asked for


def preflight(only: set[int], ablation: bool) -> None:
    """Fail early, and clearly, when a package the chosen workloads need is missing."""
    needed = {"prometheus_client"} if 3 in only else set()
    if 1 in only:
        needed |= {"websockets", "uvloop"}
    if ablation:
        needed.add("uvloop")
    if 6 in only:
        promserver.binary()
    missing = sorted(n for n in needed if importlib.util.find_spec(n) is None)
    if missing:
        uses = "; ".join(f"{n}: {REQUIRED[n]}" for n in missing)
        raise BenchError(
            f"missing Python packages {', '.join(missing)} ({uses}); install them with "
            f"`{sys.executable} -m pip install {' '.join(missing)}`"
        )


async def run_all(run: Run, profile: bool, ablation: bool) -> None:
    preflight(run.only, ablation)
    nodeserver.setup()
    if ablation:
        await workloads.ablation(run)
    if 1 in run.only:
        await workloads.workload1(run)
    elif 3 in run.only:
        await workloads.workload3_small_alone(run)
    if run.only & {2, 3, 5}:
        await workloads.workload2(run)
    if 3 in run.only:
        await workloads.workload3_baselines(run)
    if 4 in run.only:
        await workloads.workload4(run)
    if 6 in run.only:
        await workloads.workload6(run)
    if 7 in run.only:
        await workloads.workload7(run)
    if 8 in run.only:
        await workloads.workload8(run)
    if profile:
        await workloads.profile_wsmon(run)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    p.add_argument("--only", default=None, help="workloads to run, e.g. 1,3 (default: all)")
    p.add_argument(
        "--hooks-ablation",
        action="store_true",
        help="workload 1 on uvloop with every hook, each left out, none (needs --only 1)",
    )
    p.add_argument("--no-write", action="store_true", help="write neither RESULTS.md nor JSON")
    p.add_argument("--out", type=Path, default=RESULTS_MD, help="markdown file to update")
    p.add_argument("--json", type=Path, default=None, help="also write this run's JSON here")
    p.add_argument("--profile", action="store_true", help="add a py-spy profile of wsmon")
    p.add_argument(
        "--rounds", type=int, default=None, help="rounds of workloads 1 and 7 / the ablation"
    )
    p.add_argument(
        "--w6-variants",
        default=",".join(workloads.W6_VARIANTS),
        metavar="LIST",
        help="workload 6's variants, in this order (default: %(default)s)",
    )
    p.add_argument(
        "--monitor-rev",
        metavar="REV",
        help="run monitor/ as committed at REV instead of a copy of the working tree's",
    )
    args = p.parse_args(argv)
    only = set(DEFAULT) if args.only is None else {
        int(x) for x in args.only.split(",") if x.strip()}  # fmt: skip
    if not only <= WORKLOADS:
        p.error("--only takes workload numbers 1 to 8")
    variants = tuple(v.strip() for v in args.w6_variants.split(",") if v.strip())
    unknown = sorted(set(variants) - set(workloads.W6_VARIANTS))
    if unknown or not variants or len(set(variants)) != len(variants):
        p.error(f"--w6-variants takes one or more of {', '.join(workloads.W6_VARIANTS)}, "
                "each once")  # fmt: skip
    args.w6_variants_tuple = variants
    if args.hooks_ablation:
        if only != {1} or args.only is None:
            p.error("--hooks-ablation is workload 1's: give it with --only 1")
        only = set()
    args.only_set = only
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.rounds is not None:
        sizes = replace(
            sizes, w1_rounds=args.rounds, ablation_rounds=args.rounds, w7_rounds=args.rounds
        )
    cmd = shlex.join([sys.executable, "-m", "bench.run", *(sys.argv[1:] if argv is None else argv)])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wsmon-bench-") as tmp:
        try:
            mach = machine(ROOT, args.monitor_rev)  # before the copy: what it is a copy of
            mach["worktree_digest_start"] = mach["monitor_digest"]
            src = snapshot(args.monitor_rev, Path(tmp) / "src")
            mach["monitor_digest"] = monitor_digest(src)
            run = Run(
                sizes, args.only_set, Path(tmp), Launcher(src), w6_variants=args.w6_variants_tuple
            )
            asyncio.run(run_all(run, args.profile, args.hooks_ablation))
        except (BenchError, nodeserver.NodeSetupError) as exc:
            print(f"bench.run failed: {exc}", file=sys.stderr)
            return 2
    wall = time.perf_counter() - started
    mach["loadavg_end"] = loadavg()
    if args.monitor_rev is None:
        mach["worktree_digest_end"] = monitor_digest(ROOT)
        mach["commit_end"] = run_text(["git", "rev-parse", "--short", "HEAD"])
    rows = judge(run.results)
    if rows:
        print(table(rows))
    if "ablation" in run.results:
        print(render_ablation({"results": run.results, "runs": {}}))
    print(f"\n{sizes.name} sizes, wall time {wall:.0f} s", file=sys.stderr)
    this: dict[str, Any] = {
        "command": cmd,
        "sizes": sizes.name,
        "machine": mach,
        "wall_s": wall,
        "child_commands": run.launcher.commands,
        "sizes_used": asdict(sizes),
        "results": run.results,
        "verdicts": [asdict(r) | {"verdict": r.verdict} for r in rows],
    }
    if args.json is not None:
        args.json.write_text(json.dumps(this, indent=1, default=str) + "\n", encoding="utf-8")
    if not args.no_write:
        write(args.out, this)
    return 0


def write(out: Path, this: dict[str, Any]) -> None:
    """Merge this run into results.json and rewrite the sections of RESULTS.md it touched."""
    json_path = out.with_name("results.json")
    merged: dict[str, Any] = {"results": {}, "runs": {}}
    if json_path.exists():
        with contextlib.suppress(ValueError):
            merged = json.loads(json_path.read_text(encoding="utf-8"))
    for key, value in this["results"].items():
        merged["results"][key] = value
        run_key = key[1:] if key.startswith("w") else key
        merged["runs"][run_key] = {k: this[k] for k in ("command", "sizes", "machine", "wall_s")}
    merged["machine"] = this["machine"]
    merged["last_run"] = {k: v for k, v in this.items() if k != "results"}
    json_path.write_text(json.dumps(merged, indent=1, default=str) + "\n", encoding="utf-8")
    if set(this["results"]) - {"ablation"}:
        write_section(out, MAIN, render(merged))
    if "ablation" in this["results"]:
        write_section(out, ABLATION, render_ablation(merged))


if __name__ == "__main__":
    sys.exit(main())
