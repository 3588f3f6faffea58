"""Loading: read, merge `defaults` into each target, validate, report every problem by path.

A target's document is completed from `defaults` before it is validated, so that each target
is validated once; the `defaults` themselves are validated once, and their values (already
models) are taken as they are.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from .daemon import Config, ProbeEndpointConfig, RawConfig, ShardingConfig
from .model import ReconnectConfig, TargetConfig, TargetSettings
from .sources import (
    MAX_CONFIG_BYTES,
    expand_env,
    join_path,
    parse_yaml,
    read_headers_file,
    target_secrets,
)
from .values import is_name

# Collections a target inherits from `defaults` equal in every target that does not set them.
_SHARED = ("probes", "headers")


class Owner(Protocol):
    """A shard of a fleet (`monitor.sharding.Shard`): whether it owns a target."""

    def owns(self, target: str, /) -> bool: ...


class Selection(Protocol):
    """Which shard of a fleet loads a config (`monitor.sharding.Fixed`)."""

    def selects(self, s: ShardingConfig, /) -> Owner | None: ...


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` holds one `path: reason` line each."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        super().__init__("\n".join(problems))


def load(
    path: str | Path, env: Mapping[str, str] | None = None, shard: Selection | None = None
) -> Config:
    """Read and validate the YAML file at `path` (for `shard`: see `loads`)."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError([f"config file larger than {MAX_CONFIG_BYTES} bytes"], source)
        text = data.decode("utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read config: {exc.strerror or exc}"], source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"cannot read config: not UTF-8 ({exc.reason})"], source) from None
    return loads(text, source, env, shard)


def loads(
    text: str,
    source: str = "<string>",
    env: Mapping[str, str] | None = None,
    shard: Selection | None = None,
) -> Config:
    """Parse and validate configuration text; raise ConfigError with every problem found.

    With `shard`, one shard's config: every target's name is checked (ownership, duplicates)
    but only the shard's own targets are validated and kept, so that the cost of a fleet's
    config is paid once across the fleet, not once per shard. The other targets' problems
    are their owners' to report (and `wsmon check-config`'s).
    """
    problems: list[str] = []
    data = parse_yaml(text, problems)
    if problems:
        raise ConfigError(problems, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            ["<root>: expected a mapping of keys (listen, defaults, targets)"], source
        )
    used_env: set[str] = set()
    environ = os.environ if env is None else env

    def expand(node: Any, path: str) -> Any:
        try:
            return expand_env(node, path, environ, problems, used_env)
        except RecursionError:  # a YAML alias that contains itself
            raise ConfigError(["<root>: a YAML alias refers to itself"], source) from None

    # The targets are expanded one at a time, each only if it is validated here.
    raw_targets = data.get("targets")
    data = expand({k: v for k, v in data.items() if k != "targets"}, "")
    if "targets" in data:  # a key that `${VAR}` made "targets"
        problems.append("targets: the key `targets` must be written out, not made by ${VAR}")
        data.pop("targets")
    try:
        raw = RawConfig.model_validate(data)
    except ValidationError as exc:
        problems.extend(_format_errors(exc, RawConfig, ""))
        raw = RawConfig()  # keep going: the targets' own problems are reported too
    if raw_targets is None:
        raw_targets = []
    if not isinstance(raw_targets, list):
        problems.append("targets: expected a list of targets")
        raw_targets = []

    targets: list[TargetConfig] = []
    names: dict[str, int] = {}
    problems.extend(_check_reconnect(raw.defaults.reconnect, "defaults.reconnect"))
    if not raw_targets and not problems and raw.probe_endpoint is None:
        problems.append("targets: at least one target is required")
    owner = None if shard is None else shard.selects(raw.sharding)
    for i, item in enumerate(raw_targets):
        where = f"targets[{i}]"
        name = item.get("name") if isinstance(item, dict) else None
        # A name that is not one as written (`${VAR}` included: expanded, it may be) is
        # validated here by every shard; the target is then kept by its owners only.
        plain = name if isinstance(name, str) and is_name(name) else None
        if owner is not None and plain is not None and not owner.owns(plain):
            if plain in names:
                problems.append(_duplicate(where, plain, names[plain]))
            else:
                names[plain] = i
            continue
        item = expand(item, where)
        if not isinstance(item, dict):
            problems.append(f"{where}: expected a mapping with name, url and options")
            continue
        item = _detached(item)
        try:
            target = TargetConfig.model_validate(_with_defaults(item, raw.defaults))
        except ValidationError as exc:
            problems.extend(_target_problems(item, exc, where))
            continue
        if "reconnect" in item:  # either bound may come from `defaults`
            problems.extend(_check_reconnect(target.reconnect, f"{where}.reconnect"))
        if target.name in names:
            problems.append(_duplicate(where, target.name, names[target.name]))
        else:
            names[target.name] = i
        if owner is not None and plain is None and not owner.owns(target.name):
            continue
        if target.headers_file is not None:
            from_file = read_headers_file(target.headers_file, f"{where}.headers_file")
            if isinstance(from_file, str):
                problems.append(from_file)
                continue
            target = target.model_copy(update={"headers": {**from_file, **target.headers}})
        _share(target, raw.defaults, targets[0] if targets else target)
        targets.append(target)

    probe_endpoint = _probe_endpoint(raw.probe_endpoint, problems)
    if problems:
        raise ConfigError(_without_follow_ups(problems), source)
    module_secrets = _module_secrets(probe_endpoint)
    return Config(
        listen=raw.listen,
        log=raw.log,
        max_concurrent_handshakes=raw.max_concurrent_handshakes,
        tcp=raw.tcp,
        web_config_file=raw.web_config_file,
        public_healthz=raw.public_healthz,
        send_alignment=raw.send_alignment,
        http=raw.http,
        metrics=raw.metrics,
        targets=tuple(targets),
        secrets=frozenset(
            s for s in used_env | target_secrets(targets) | module_secrets if len(s) >= 4
        ),
        source=source,
        probe_endpoint=probe_endpoint,
        sharding=raw.sharding,
        listed=len(raw_targets),
        selected=owner,
    )


def _duplicate(where: str, name: str, first: int) -> str:
    return f"{where}.name: duplicate target name {name!r} (first used by targets[{first}])"


def _probe_endpoint(
    endpoint: ProbeEndpointConfig | None, problems: list[str]
) -> ProbeEndpointConfig | None:
    """The /probe block with each module's `headers_file` read into its headers."""
    if endpoint is None:
        return None
    modules = dict(endpoint.modules)
    for name, module in endpoint.modules.items():
        if module.headers_file is None:
            continue
        where = f"probe_endpoint.modules.{name}.headers_file"
        from_file = read_headers_file(module.headers_file, where)
        if isinstance(from_file, str):
            problems.append(from_file)
            continue
        modules[name] = module.model_copy(update={"headers": {**from_file, **module.headers}})
    return endpoint.model_copy(update={"modules": modules})


def _module_secrets(endpoint: ProbeEndpointConfig | None) -> set[str]:
    """The credentials the /probe modules carry, found as a target's are (a module is a
    target without its name and URL)."""
    if endpoint is None:
        return set()
    return target_secrets(
        [
            TargetConfig.model_construct(**module.__dict__, name=name, url="")
            for name, module in endpoint.modules.items()
        ]
    )


def _detached(node: Any) -> Any:
    """A copy of a parsed target that shares no object with the parsed document, strings
    included. What a target keeps (its name, URL, headers) would otherwise stay where the
    parser put it, among the values of the targets around it, and hold that memory after the
    document is dropped; a shard keeps only its own targets, scattered through the document."""
    if isinstance(node, str):
        return node.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")
    if isinstance(node, dict):
        return {_detached(k): _detached(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_detached(v) for v in node]
    return node


# --- merging defaults into targets -----------------------------------------------------------


def _with_defaults(item: dict[Any, Any], defaults: TargetSettings) -> dict[Any, Any]:
    """The target's document completed from `defaults`: a key the target sets wins, and a
    section it sets (`reconnect`, `tls`, `auth`) is completed key by key from the defaults'
    section, provided it is valid on its own (else it stays as written, to be reported so)."""
    merged = {**defaults.__dict__, **item}
    for key, section in defaults.__dict__.items():
        mine = item.get(key)
        if isinstance(section, BaseModel) and isinstance(mine, dict) and _valid(section, mine):
            merged[key] = {**section.__dict__, **mine}
    return merged


def _valid(like: BaseModel, data: dict[Any, Any]) -> bool:
    """True if `data` makes a valid model of the kind `like` is."""
    try:
        type(like).model_validate(data)
    except ValidationError:
        return False
    return True


def _share(target: TargetConfig, defaults: TargetSettings, first: TargetConfig) -> None:
    """Make `target` hold the very objects `defaults` and `first` hold where they are equal.

    Validation copies every list and dict and records the fields set (all of them: defaults
    are merged in) afresh; at thousands of targets those copies cost more than the rest of a
    target's configuration. A loaded configuration never changes, so sharing them is safe.
    """
    for key in _SHARED:
        if target.__dict__[key] == defaults.__dict__[key]:
            target.__dict__[key] = defaults.__dict__[key]
    object.__setattr__(target, "__pydantic_fields_set__", first.model_fields_set)


def _check_reconnect(r: ReconnectConfig, path: str) -> list[str]:
    """Checked on the merged section: either bound may come from `defaults`."""
    if r.max_delay < r.initial_delay:
        return [
            f"{path}.max_delay: must be >= initial_delay ({r.max_delay:g}s < {r.initial_delay:g}s)"
        ]
    return []


# --- error formatting ----------------------------------------------------------------------


def _target_problems(item: dict[Any, Any], merged: ValidationError, where: str) -> list[str]:
    """The target's own problems (as if there were no `defaults`) when it has any; else those
    of the merged target, i.e. a default that does not fit it. Only invalid targets get here."""
    try:
        TargetConfig.model_validate(item)
    except ValidationError as exc:
        return _format_errors(exc, TargetConfig, where)
    return _format_errors(merged, TargetConfig, where)


def _format_errors(exc: ValidationError, model: type[BaseModel], prefix: str) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        # Union members add their own name to the location; drop those for a readable path.
        loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
        path = _format_loc(prefix, loc)
        if err["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            names = list(parent.model_fields) if parent else []
            hint = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
            msg = "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = err["msg"]
            for lead in ("Value error, ", "Assertion failed, "):
                msg = msg.removeprefix(lead)
        problems.append(f"{path}: {msg}" if path else msg)
    return problems


def _format_loc(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        if part == "[key]":  # a mapping's key (a module's name): the path names it already
            continue
        path = f"{path}[{part}]" if isinstance(part, int) else join_path(path, part)
    return path


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class whose field set applies at `loc` (to suggest the right key names)."""
    current: Any = model
    keyed = False  # the previous part was a mapping of models (`modules`): this is its key
    for part in loc:
        if isinstance(part, int) or keyed:
            keyed = False
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        keyed = getattr(field.annotation, "__origin__", None) is dict
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def _without_follow_ups(problems: list[str]) -> list[str]:
    """Drop validation errors at paths whose value could not be read in the first place
    (an unset variable, an unreadable file): one cause, one message."""
    unread = [
        p.split(": ", 1)[0]
        for p in problems
        if "environment variable" in p
        or ": cannot read " in p
        or "credential" in p
        or "needs a non-empty string" in p
        or "is not a valid path" in p
    ]
    kept = []
    for problem in problems:
        path, _, msg = problem.partition(": ")
        if path in unread and msg == "Input should be a valid string":
            continue
        kept.append(problem)
    return kept
