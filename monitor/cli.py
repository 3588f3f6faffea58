"""Command line: parse arguments and hand over to the app; nothing else lives here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__, fdbudget, ratelimits, series, speedups
from . import config as config_mod
from .app import Daemon, serve
from .config import ConfigError
from .log import LEVELS, Logging
from .systemd import Notifier
from .web import WebConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wsmon",
        description="Keep WebSocket connections open, probe them, export Prometheus metrics.",
    )
    p.add_argument("--version", action="version", version=f"wsmon {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def daemon_flags(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("--listen", metavar="HOST:PORT", help="HTTP address for /metrics")
        cmd.add_argument("--log-format", choices=("auto", "json", "console"), default=None)
        cmd.add_argument("--log-level", choices=LEVELS, type=str.lower, default=None)
        cmd.add_argument(
            "--event-loop",
            choices=("auto", "asyncio", "uvloop"),
            default="auto",
            help="auto: uvloop when installed (pip install wsmon[speedups])",
        )
        cmd.add_argument(
            "--receive-path",
            choices=("auto", "portable"),
            default="auto",
            help="auto: aiohttp hooks that pass the start-up self-test; portable: none",
        )
        cmd.add_argument(
            "--web.config.file",
            dest="web_config_file",
            metavar="FILE",
            help="TLS and basic auth for the HTTP endpoints (Prometheus exporter-toolkit format)",
        )

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", required=True, metavar="FILE", help="YAML configuration")
    daemon_flags(run)

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", metavar="FILE")

    demo = sub.add_parser("demo", help="monitor an embedded simulated Deriv-style API")
    daemon_flags(demo)
    return p


def _check(path: str) -> int:
    try:
        cfg = config_mod.load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{path}: {problem}")
        return 1
    probes = sum(len(t.probes) for t in cfg.targets)
    at_start, with_native = series.census(cfg)
    native = with_native.total if cfg.metrics.histograms != "classic" else None
    print(
        f"{path}: OK: {len(cfg.targets)} targets, {probes} probes, listen {cfg.listen}; "
        f"series: {at_start.total} at start ({at_start.spread()}, {at_start.daemon} of the "
        f"daemon's own), at most {series.ceiling(cfg)} once every target has connected and every "
        "known reason and common close code has occurred"
        + (f"; {native} at start scraped with native histograms" if native else "")
    )
    if at_start.total > cfg.metrics.series_warning:
        print(
            f"{path}: warning: {at_start.total} series exceed metrics.series_warning "
            f"({cfg.metrics.series_warning}); each costs the Prometheus that scrapes it memory "
            "and disk. Fewer metrics.rtt_buckets, metrics.histograms: native (with Prometheus's "
            "native histograms), or fewer probes per target cut them (docs/metrics.md)"
        )
    for name, window, planned, limit in ratelimits.over_known_limits(cfg):
        print(
            f"{path}: warning: target {name!r} plans {planned:g} requests {window} and its "
            f"rate_limits.{window} is {limit}: longer probe intervals, or fewer probes"
        )
    budget = fdbudget.budget(cfg, fdbudget.hard_limit())
    if budget.short:
        print(
            f"{path}: warning: {budget.targets} targets need about {budget.needed} open files, "
            f"and the limit here is {budget.limit}: {budget.advice()}"
        )
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        cfg = config_mod.load(args.config)
    except ConfigError as exc:
        log = Logging(args.log_format or "auto", "info").logger
        log.error("config.invalid", source=exc.source, problems=exc.problems)
        return 1
    logging = Logging(
        args.log_format or cfg.log.format, args.log_level or cfg.log.level, secrets=cfg.secrets
    )
    daemon = Daemon(
        cfg,
        logging,
        config_path=args.config,
        listen=args.listen,
        log_level=args.log_level,
        notifier=Notifier(),
        web_config_file=args.web_config_file,
        receive_path=args.receive_path,
    )
    return _serve(daemon, None, args.event_loop)


def _serve(daemon: Daemon, announce: str | None, event_loop: str = "auto") -> int:
    try:
        return speedups.run(serve(daemon, announce), event_loop)
    except OSError as exc:  # e.g. the listen address is taken
        daemon.log.error("startup.failed", error=f"{type(exc).__name__}: {exc}")
        return 1
    except WebConfigError as exc:
        daemon.log.error("web_config.invalid", source=exc.source, problems=exc.problems)
        return 1
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return _check(args.file)
    if args.command == "run":
        return _run(args)
    from .demo import run_demo

    return run_demo(
        args.listen,
        args.log_format,
        args.log_level,
        args.web_config_file,
        args.event_loop,
        args.receive_path,
    )


if __name__ == "__main__":
    sys.exit(main())
