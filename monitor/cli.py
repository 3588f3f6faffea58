"""Command line: parse arguments and hand over to the app; nothing else lives here."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from . import __version__, fdbudget, probecli, ratelimits, series, sharding, speedups
from . import config as config_mod
from .app import Daemon
from .config import ConfigError, TargetConfig
from .log import LEVELS, Logging
from .sharding import Shard
from .systemd import Notifier, serve
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
    shards = run.add_argument_group(
        "sharding", "one daemon of a fleet sharing the config (wins over its `sharding` key)"
    )
    shards.add_argument("--shard", metavar="INDEX/COUNT", help="this daemon's shard, e.g. 0/4")
    shards.add_argument(
        "--shard-from-hostname",
        action="store_true",
        help="the index from the host name's ordinal (a StatefulSet's wsmon-3: 3), "
        "with --shard-count",
    )
    shards.add_argument(
        "--shard-count", type=int, metavar="N", help="shards in the fleet ($WSMON_SHARD_COUNT)"
    )
    shards.add_argument(
        "--shard-replicas",
        type=int,
        metavar="R",
        help="shards monitoring each target, default 1 ($WSMON_SHARD_REPLICAS)",
    )

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", metavar="FILE")
    check.add_argument(
        "--shards", type=int, metavar="N", help="also print how N shards would split the targets"
    )
    check.add_argument(
        "--shard-replicas", type=int, default=1, metavar="R", help="with --shards: replicas"
    )

    demo = sub.add_parser("demo", help="monitor an embedded simulated Deriv-style API")
    daemon_flags(demo)

    probe = sub.add_parser(
        "probe",
        help="connect once, time the handshake and round trips, close (exit 0: all good)",
        description="Connect to URL once, time each phase of the handshake, send the probe "
        "COUNT times, close with 1000. Exit 0 when every round trip succeeded, 1 otherwise, "
        "2 for usage errors.",
    )
    probe.add_argument("url", metavar="URL", help="ws:// or wss:// URL")
    what = probe.add_mutually_exclusive_group()
    what.add_argument("--send", metavar="JSON", help='JSON object to send (default {"ping": 1})')
    what.add_argument("--ws-ping", action="store_true", help="send protocol ping frames instead")
    probe.add_argument(
        "--expect", metavar="JSON", help="subset the reply must contain (default with the "
        'default --send: {"msg_type": "ping"})',
    )  # fmt: skip
    probe.add_argument("--count", type=int, default=1, metavar="N", help="round trips (1)")
    probe.add_argument("--interval", default="1s", metavar="DUR", help="between rounds (1s)")
    probe.add_argument(
        "--timeout", default="10s", metavar="DUR",
        help="deadline of the run and of each reply (10s); with --count N the run may take "
        "(N-1) intervals more",
    )  # fmt: skip
    probe.add_argument(
        "--header", action="append", default=[], metavar="NAME:VALUE", help="upgrade header"
    )
    probe.add_argument("--ca-file", metavar="FILE", help="PEM bundle to trust (wss)")
    probe.add_argument("--insecure", action="store_true", help="no certificate check (wss)")
    probe.add_argument("--proxy", metavar="URL", help="HTTP CONNECT proxy, http://host:port")
    probe.add_argument("--json", action="store_true", help="print one JSON object")
    probe.set_defaults(usage=probe)

    status = sub.add_parser(
        "status",
        help="print a running daemon's targets (exit 0: all connected)",
        description="Ask a running daemon (GET /api/v1/targets, every page) and print its "
        "targets, problems first. Exit 0 when every target is connected, 1 when one is not, "
        "2 for usage errors or when the daemon cannot be reached or refuses the credentials.",
    )
    status.add_argument(
        "--url", metavar="URL", help="the daemon's address (default http://127.0.0.1:9815/, "
        "https:// when the web config has TLS)",
    )  # fmt: skip
    status.add_argument(
        "--web.config.file", dest="web_config_file", metavar="FILE",
        help="the daemon's web config: https when it has TLS, with its certificate trusted; "
        "its user when it has only one (it holds no password: use --password-file)",
    )  # fmt: skip
    status.add_argument("--user", metavar="USER", help="basic auth user")
    status.add_argument(
        "--password-file", metavar="FILE", help="basic auth password: the file's first line"
    )
    status.add_argument("--ca-file", metavar="FILE", help="PEM bundle to trust (https)")
    status.add_argument("--cert-file", metavar="FILE", help="client certificate (https)")
    status.add_argument("--key-file", metavar="FILE", help="its key, if not in --cert-file")
    status.add_argument(
        "--watch", action="store_true", help="draw the table again every --interval until "
        "Ctrl-C, then exit as the latest table says",
    )  # fmt: skip
    status.add_argument("--interval", default="2s", metavar="DUR", help="with --watch (2s)")
    status.set_defaults(usage=status)
    return p


def _spread(path: str, cfg: config_mod.Config, count: int, replicas: int) -> None:
    """How `count` shards would split the targets, one line."""
    Shard(0, count, replicas)  # raises ValueError for an impossible fleet
    per_shard = sharding.spread((t.name for t in cfg.targets), count, replicas)
    mean = sum(per_shard) / count
    worst = max(abs(n - mean) for n in per_shard) / mean * 100 if mean else 0.0
    shards = ", ".join(f"{i}: {n}" for i, n in enumerate(per_shard))
    print(
        f"{path}: {count} shards"
        + (f", each target on {replicas}" if replicas > 1 else "")
        + f": {shards} targets (mean {mean:.1f}, the farthest {worst:.0f}% from it)"
    )


def _check(path: str, shards: int | None = None, replicas: int = 1) -> int:
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
    if shards is not None:
        try:
            _spread(path, cfg, shards, replicas)
        except ValueError as exc:
            print(f"{path}: --shards: {exc}")
            return 2
    budget = fdbudget.budget(cfg, fdbudget.hard_limit())
    if budget.short:
        print(
            f"{path}: warning: {budget.targets} targets need about {budget.needed} open files, "
            f"and the limit here is {budget.limit}: {budget.advice()}"
        )
    return 0


def shard_from(args: argparse.Namespace, env: Mapping[str, str]) -> sharding.Fixed:
    """What the command line (and its environment) fixes of this daemon's shard; the rest
    comes from the config's `sharding`. Raises ValueError with what is wrong."""
    count = args.shard_count or _number(env, "WSMON_SHARD_COUNT")
    replicas = args.shard_replicas or _number(env, "WSMON_SHARD_REPLICAS")
    index = None
    if args.shard is not None:
        if args.shard_from_hostname:
            raise ValueError("--shard and --shard-from-hostname exclude each other")
        index, count = sharding.parse_shard(args.shard)
    elif args.shard_from_hostname:
        index = sharding.from_hostname(env)
    return sharding.Fixed(index, count, replicas)


def _number(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if not value:
        return None
    if not value.isdigit():
        raise ValueError(f"${name} must be a whole number, not {value!r}")
    return int(value)


def _run(args: argparse.Namespace) -> int:
    try:
        shard = shard_from(args, os.environ)
    except ValueError as exc:
        print(f"wsmon run: error: {exc}", file=sys.stderr)
        return 2
    try:
        cfg = config_mod.load(args.config, shard=shard)
    except ConfigError as exc:
        log = Logging(args.log_format or "auto", "info").logger
        log.error("config.invalid", source=exc.source, problems=exc.problems)
        return 1
    try:
        shard.resolve(cfg)
    except ValueError as exc:
        print(f"wsmon run: error: shard: {exc}", file=sys.stderr)
        return 2
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
        shard=shard,
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


def _probe(args: argparse.Namespace) -> int:
    try:
        target = _probe_target(args)
    except ValueError as exc:
        args.usage.error(str(exc))  # exits 2
    timeout = target.connect_timeout
    interval = config_mod.parse_duration(args.interval)
    return asyncio.run(probecli.run_command(target, timeout, args.count, interval, args.json))


# Where a problem of the target `wsmon probe` builds came from on its command line.
_FLAGS = {"url": "URL", "headers": "--header", "proxy": "--proxy", "tls": "--ca-file/--insecure"}


def _probe_target(args: argparse.Namespace) -> TargetConfig:
    """The target `wsmon probe` runs, from its flags; ValueError names the flag at fault."""

    def duration(flag: str, value: str) -> float:
        try:
            return config_mod.parse_duration(value)
        except ValueError as exc:
            raise ValueError(f"{flag}: {exc}") from None

    def json_object(flag: str, text: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{flag}: not JSON ({exc})") from None
        if not isinstance(value, dict):
            raise ValueError(f"{flag}: expected a JSON object, like '{{\"ping\": 1}}'")
        return value

    timeout = duration("--timeout", args.timeout)
    duration("--interval", args.interval)
    if args.count < 1:
        raise ValueError("--count: must be at least 1")
    headers: dict[str, str] = {}
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header {header!r}: expected NAME:VALUE")
        headers[name.strip()] = value.strip()
    probe: dict[str, Any]
    if args.ws_ping:
        if args.expect is not None:
            raise ValueError("--expect: a ws-ping probe is answered by a pong frame")
        probe = {"name": "ws-ping", "kind": "ws-ping"}
    else:
        send = {"ping": 1} if args.send is None else json_object("--send", args.send)
        expect = None if args.expect is None else json_object("--expect", args.expect)
        if args.send is None and expect is None:
            expect = {"msg_type": "ping"}
        first = next(iter(send), "")
        name = first if re.fullmatch(r"[a-zA-Z0-9_.-]+", first) else "message"
        probe = {"name": name, "send": send, "expect": expect}
    # (`interval` is not used: rounds are --interval apart; a probe's must exceed its timeout)
    probe.update(timeout=timeout, interval=2 * timeout)
    doc: dict[str, Any] = {
        "name": "probe", "url": args.url, "headers": headers, "probes": [probe],
        "connect_timeout": timeout, "proxy": args.proxy,
    }  # fmt: skip
    if args.ca_file is not None or args.insecure:
        doc["tls"] = {"ca_file": args.ca_file, "insecure_skip_verify": args.insecure}
    try:
        return TargetConfig.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = err["loc"]
        flag = _FLAGS.get(str(loc[0]), "URL") if loc else "--ca-file/--insecure"
        if loc and loc[0] == "probes":
            flag = "--expect" if "expect" in loc else "--send"
        message = str(err["msg"]).removeprefix("Value error, ")
        raise ValueError(f"{flag}: {message}") from None


def _status(args: argparse.Namespace) -> int:
    from . import statuscli  # the client's terminal view: not loaded into every daemon

    try:
        interval = config_mod.parse_duration(args.interval)
    except ValueError as exc:
        args.usage.error(f"--interval: {exc}")  # exits 2
    try:
        daemon = statuscli.daemon(
            args.url, args.web_config_file, args.user, args.password_file,
            args.ca_file, args.cert_file, args.key_file,
        )  # fmt: skip
    except ValueError as exc:
        args.usage.error(str(exc))
    return statuscli.run_command(daemon, args.watch, interval)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "status":
        return _status(args)
    if args.command == "check-config":
        return _check(args.file, args.shards, args.shard_replicas)
    if args.command == "probe":
        return _probe(args)
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
