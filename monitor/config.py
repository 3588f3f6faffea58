"""Typed, validated configuration: load(path) -> Config, or ConfigError listing every problem."""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

DEFAULT_LISTEN = "127.0.0.1:9815"
# Config and header files are small; a larger file is a mistake, not something to read whole.
MAX_CONFIG_BYTES = 16 * 1024 * 1024

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_ENV_RE = re.compile(r"\$\{([^}]*)\}")
_NAME_RE = re.compile(r"^[a-zA-Z0-9_.-]+$")
# Query parameters and header names whose values are credentials and must never be logged.
SECRET_WORDS = ("token", "password", "passwd", "secret", "key", "authorization", "auth", "cookie")


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` holds one `path: reason` line each."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        super().__init__("\n".join(problems))


def parse_duration(value: Any, allow_zero: bool = False) -> float:
    """Turn `250ms`, `5s`, `2m`, `1h` or a bare number of seconds into seconds (greater
    than zero, or with `allow_zero` zero or more)."""
    if isinstance(value, bool):
        raise ValueError("invalid duration: expected e.g. 250ms, 5s, 2m, 1h")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(f"invalid duration: {value} is too large") from None
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"invalid duration {value!r}: expected e.g. 250ms, 5s, 2m, 1h")
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        least = "zero or more" if allow_zero else "greater than zero"
        raise ValueError(f"invalid duration {value!r}: must be {least}")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]

# The longest `send_alignment`: a coarser grid would bunch sends into a few instants.
MAX_SEND_ALIGNMENT = 1.0


def _alignment(value: Any) -> float:
    """A duration from 0 (off) to MAX_SEND_ALIGNMENT."""
    seconds = parse_duration(value, allow_zero=True)
    if seconds > MAX_SEND_ALIGNMENT:
        raise ValueError(
            f"{value!r} is too long: at most {MAX_SEND_ALIGNMENT:g}s (0 turns alignment off); "
            "a coarser grid would send most probes in a few bursts"
        )
    return seconds


def _check_name(v: str) -> str:
    """Target and probe names become label values: keep them plain."""
    if not _NAME_RE.match(v):
        raise ValueError(f"invalid name {v!r}: use letters, digits, '_', '.', '-'")
    return v


Name = Annotated[str, AfterValidator(_check_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReconnectConfig(_Strict):
    """Exponential backoff with full jitter between connection attempts."""

    initial_delay: Duration = 1.0
    max_delay: Duration = 60.0
    multiplier: float = Field(default=2.0, ge=1.0)
    # A connection must stay up this long before the backoff starts again from initial_delay.
    reset_after: Duration = 30.0


class ProbeConfig(_Strict):
    """One periodic probe on a target's connection."""

    name: Name
    kind: Literal["message", "ws-ping"] = "message"
    send: dict[str, Any] | None = Field(default=None, validate_default=True)
    expect: dict[str, Any] | None = None
    interval: Duration = 30.0
    timeout: Duration = 5.0

    @field_validator("send", "expect", mode="after")
    @classmethod
    def _json(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return _plain_json(v)

    @field_validator("send")
    @classmethod
    def _send(cls, v: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        kind = info.data.get("kind", "message")
        if kind == "message" and not v:
            raise ValueError("a message probe needs `send` (the JSON object to send)")
        if kind == "ws-ping" and v is not None:
            raise ValueError("a ws-ping probe sends a protocol ping frame and takes no `send`")
        return v

    @field_validator("expect")
    @classmethod
    def _expect(cls, v: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        if info.data.get("kind") == "ws-ping" and v is not None:
            raise ValueError("a ws-ping probe is answered by a pong frame and takes no `expect`")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float, info: ValidationInfo) -> float:
        interval = info.data.get("interval")
        if interval is not None and v >= interval:
            raise ValueError(f"timeout ({v:g}s) must be shorter than interval ({interval:g}s)")
        return v


class TLSConfig(_Strict):
    """TLS options of a wss:// target."""

    ca_file: str | None = None  # PEM bundle to trust instead of the system store
    insecure_skip_verify: bool = False  # no certificate or host name check (testing only)
    server_name: str | None = None  # SNI and the name the certificate must carry
    cert_file: str | None = None  # client certificate (PEM) for mutual TLS
    key_file: str | None = None  # its private key; may be omitted when in cert_file

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable(cls, v: str | None) -> str | None:
        if v is not None and not os.access(v, os.R_OK):
            raise ValueError(f"cannot read file {v!r}")
        return v

    @model_validator(mode="after")
    def _loads(self) -> TLSConfig:
        if self.key_file and not self.cert_file:
            raise ValueError("key_file needs cert_file")
        try:
            ssl.create_default_context(cafile=self.ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"cannot load ca_file {self.ca_file!r}: {exc}") from None
        try:
            self.context()
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                f"cannot load cert_file {self.cert_file!r} / key_file {self.key_file!r}: {exc}"
            ) from None
        return self

    def context(self) -> ssl.SSLContext:
        """The client SSL context these options describe."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


class TCPConfig(_Strict):
    """Socket options that find a vanished peer even when no probe is running."""

    keepalive_idle: Duration = 30.0  # idle time before the first keepalive probe
    keepalive_interval: Duration = 10.0  # between unanswered keepalive probes
    keepalive_count: int = Field(default=3, ge=1, le=127)  # unanswered probes before reset
    user_timeout: Duration = 60.0  # sent data unacknowledged this long fails the connection


def _plain_json(v: dict[str, Any] | None) -> dict[str, Any] | None:
    """Reject what JSON cannot carry (dates, binary, sets, NaN, infinities)."""
    if v is not None:
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not plain JSON: {exc}") from None
    return v


def _default_probes() -> list[ProbeConfig]:
    return [ProbeConfig(name="ping", send={"ping": 1}, expect={"msg_type": "ping"}, interval=30.0)]


class AuthConfig(_Strict):
    """A message sent right after connecting (Deriv: `{"authorize": TOKEN}`); its reply must
    not be an error, and must match `expect`, before any probe starts."""

    send: dict[str, Any]
    expect: dict[str, Any] | None = None
    timeout: Duration = 5.0

    @field_validator("send")
    @classmethod
    def _send(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not v:
            raise ValueError("the auth message must not be empty")
        _plain_json(v)
        return v

    @field_validator("expect")
    @classmethod
    def _expect(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return _plain_json(v)


class TargetSettings(_Strict):
    """Keys that may be set in `defaults` and overridden per target."""

    connect_timeout: Duration = 10.0
    # Closing handshake wait before the TCP connection is dropped anyway.
    close_timeout: Duration = 2.0
    correlation_field: str | None = "req_id"
    reconnect: ReconnectConfig = ReconnectConfig()
    probes: list[ProbeConfig] = Field(default_factory=_default_probes)
    headers: dict[str, str] = Field(default_factory=dict)
    # A YAML file of more headers (name: value), e.g. kept root-only; `headers` win.
    headers_file: str | None = None
    auth: AuthConfig | None = None
    # Consecutive probe timeouts after which the connection is declared dead and closed.
    dead_after_timeouts: int = Field(default=2, ge=1)
    max_msg_size: int = Field(default=4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    tls: TLSConfig | None = None

    @field_validator("probes")
    @classmethod
    def _unique_probes(cls, v: list[ProbeConfig]) -> list[ProbeConfig]:
        seen: set[str] = set()
        for p in v:
            if p.name in seen:
                raise ValueError(f"duplicate probe name {p.name!r}")
            seen.add(p.name)
        return v


class TargetConfig(TargetSettings):
    """One monitored WebSocket endpoint."""

    name: Name
    url: str

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"URL scheme must be ws or wss, not {parts.scheme or 'missing'!r}")
        if not parts.hostname:
            raise ValueError("URL has no host")
        try:
            parts.port  # noqa: B018 - raises for a port out of range
        except ValueError:
            raise ValueError("URL port must be a number from 1 to 65535") from None
        return v

    @model_validator(mode="after")
    def _tls_needs_wss(self) -> TargetConfig:
        if self.tls is not None and not self.url.startswith("wss:"):
            raise ValueError("`tls` options need a wss:// URL")
        return self


class LogConfig(_Strict):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class _RawConfig(_Strict):
    listen: str = DEFAULT_LISTEN
    log: LogConfig = LogConfig()
    # Handshakes in flight at once, across all targets (protects against reconnect storms).
    max_concurrent_handshakes: int = Field(default=50, ge=1)
    # Probe sends start on a grid of about this step (0: anywhere), so that one wake-up of
    # the daemon sends several; see `Clock.phase`.
    send_alignment: Annotated[float, BeforeValidator(_alignment)] = 0.0
    tcp: TCPConfig = TCPConfig()
    # Prometheus exporter-toolkit web config: TLS and basic auth for the HTTP endpoints.
    web_config_file: str | None = None
    # Serve /healthz without authentication (for liveness checks that cannot authenticate).
    public_healthz: bool = False
    defaults: TargetSettings = TargetSettings()

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(v)
        return v


@dataclass(frozen=True)
class Config:
    """A complete, valid configuration; targets carry their defaults already merged in."""

    listen: str
    log: LogConfig
    max_concurrent_handshakes: int
    tcp: TCPConfig
    targets: tuple[TargetConfig, ...]
    # Strings that must never appear in logs or output (header values, credential parameters,
    # values taken from the environment).
    # Values shorter than 4 characters are left out: they would redact ordinary words in
    # every log line (URLs and headers are still redacted structurally, see log.py).
    secrets: frozenset[str]
    source: str = ""
    web_config_file: str | None = None
    public_healthz: bool = False
    send_alignment: float = 0.0


def parse_listen(value: str) -> tuple[str, int]:
    """Split `HOST:PORT` (IPv6 as `[::1]:9815`)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid listen address {value!r}: expected HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


# --- YAML --------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of silently keeping the last."""


# libyaml's scanner and parser, when PyYAML was built with it (its usual wheels are): about
# five times faster than the pure-Python ones, which took 2.7 s of a 4 s load at 10,000
# targets. Objects are built by the same safe constructor. A document it rejects is read
# again by the pure-Python loader, whose messages say more (and which decides).
_FastUniqueKeyLoader: type[yaml.CSafeLoader] | None = None
if hasattr(yaml, "CSafeLoader"):

    class _FastUniqueKeyLoader(yaml.CSafeLoader):  # type: ignore[no-redef]
        """`_UniqueKeyLoader` on libyaml."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` keys may be overridden
            continue
        key = loader.construct_object(key_node)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
        seen.add(key)
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = loader.construct_mapping(node)
    return mapping


for _loader in (_UniqueKeyLoader, _FastUniqueKeyLoader):
    if _loader is not None:
        _loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(text: str, source: str) -> Any:
    if _FastUniqueKeyLoader is not None:
        try:
            return yaml.load(text, Loader=_FastUniqueKeyLoader)  # a CSafeLoader subclass
        except (yaml.YAMLError, RecursionError, ValueError, TypeError, KeyError, AttributeError):
            pass  # the pure-Python loader below reads it again and says why
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        what = exc.problem or exc.context or "invalid YAML"
        raise ConfigError([f"{where}: YAML syntax error: {what}"], source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"YAML syntax error: {exc}"], source) from None
    except RecursionError:
        raise ConfigError(["YAML nested too deeply"], source) from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # A tagged value the loader cannot build (`!!int abc`, an impossible date, ...).
        raise ConfigError([f"invalid YAML value: {exc}"], source) from None


# --- ${VAR} expansion ----------------------------------------------------------------------


def _read_secret_file(
    node: dict[str, Any], path: str, env: Mapping[str, str], problems: list[str], used: set[str]
) -> str | None:
    """`{file: PATH}` or `{credential: NAME}` (a systemd credential): the file's content."""
    ((kind, name),) = node.items()
    if not isinstance(name, str) or not name:
        problems.append(f"{path}: `{kind}` needs a non-empty string")
        return None
    if kind == "credential":
        directory = env.get("CREDENTIALS_DIRECTORY")
        if not directory:
            problems.append(
                f"{path}: credential {name!r} needs $CREDENTIALS_DIRECTORY "
                "(set by systemd's LoadCredential=)"
            )
            return None
        if "/" in name:
            problems.append(f"{path}: credential name {name!r} must not contain '/'")
            return None
        name = os.path.join(directory, name)
    try:
        with open(name, encoding="utf-8") as f:
            value = f.read(64 * 1024 + 1)
    except ValueError:  # e.g. a NUL byte in the path
        problems.append(f"{path}: {kind} {name!r} is not a valid path")
        return None
    except OSError as exc:
        problems.append(f"{path}: cannot read {kind} {name!r}: {exc.strerror or exc}")
        return None
    except UnicodeDecodeError:
        problems.append(f"{path}: {kind} {name!r} is not UTF-8 text")
        return None
    if len(value) > 64 * 1024:
        problems.append(f"{path}: {kind} {name!r} is larger than 64 KiB")
        return None
    value = value.rstrip("\r\n")
    used.add(value)
    return value


def _expand_env(
    node: Any, path: str, env: Mapping[str, str], problems: list[str], used: set[str]
) -> Any:
    if isinstance(node, dict) and len(node) == 1 and next(iter(node)) in ("file", "credential"):
        inner = _expand_env(next(iter(node.values())), path, env, problems, used)
        return _read_secret_file({next(iter(node)): inner}, path, env, problems, used)
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            var = m.group(1)
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
                problems.append(f"{path or '<root>'}: invalid variable reference ${{{var}}}")
                return m.group(0)
            if var not in env:
                problems.append(f"{path or '<root>'}: environment variable {var!r} is not set")
                return m.group(0)
            if env[var]:
                used.add(env[var])
            return env[var]

        return _ENV_RE.sub(sub, node)
    if isinstance(node, dict):
        return {
            _expand_env(k, path, env, problems, used): _expand_env(
                v, _join(path, str(k)), env, problems, used
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_expand_env(v, f"{path}[{i}]", env, problems, used) for i, v in enumerate(node)]
    return node


def _join(path: str, key: str) -> str:
    if key == "":
        return f'{path}[""]'
    return f"{path}.{key}" if path else key


# --- error formatting ----------------------------------------------------------------------


def _format_loc(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, part)
    return path


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class whose field set applies at `loc` (to suggest the right key names)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


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


# --- merging defaults into targets -----------------------------------------------------------


def _compact(target: TargetConfig, shared: dict[Any, Any]) -> TargetConfig:
    """The same target, sharing with the targets before it what is equal in all of them:
    the set of explicitly set fields (merging defaults sets them all: some 700 bytes) and
    the probe list (its probes come from `defaults`, already shared). Nothing changes a
    loaded config, so sharing is safe; at 10,000 targets it saves about 8 MB."""
    fields_set = shared.setdefault(frozenset(target.model_fields_set), target.model_fields_set)
    probes = shared.setdefault(tuple(map(id, target.probes)), target.probes)
    return TargetConfig.model_construct(fields_set, **{**target.__dict__, "probes": probes})


def _merge(primary: BaseModel, fallback: BaseModel) -> dict[str, Any]:
    """Field values of `primary` where it set them explicitly, else those of `fallback`."""
    out: dict[str, Any] = {}
    for name in type(fallback).model_fields:
        mine = getattr(primary, name)
        theirs = getattr(fallback, name)
        if name not in primary.model_fields_set:
            out[name] = theirs
        elif isinstance(mine, BaseModel) and isinstance(theirs, BaseModel):
            out[name] = type(theirs).model_validate(_merge(mine, theirs))
        else:
            out[name] = mine
    return out


# --- entry points ----------------------------------------------------------------------------


def loads(text: str, source: str = "<string>", env: Mapping[str, str] | None = None) -> Config:
    """Parse and validate configuration text; raise ConfigError with every problem found."""
    data = _parse_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            ["<root>: expected a mapping of keys (listen, defaults, targets)"], source
        )
    problems: list[str] = []
    used_env: set[str] = set()
    try:
        data = _expand_env(data, "", os.environ if env is None else env, problems, used_env)
    except RecursionError:  # a YAML alias that contains itself
        raise ConfigError(["<root>: a YAML alias refers to itself"], source) from None

    raw_targets = data.pop("targets", None)
    try:
        raw = _RawConfig.model_validate(data)
    except ValidationError as exc:
        problems.extend(_format_errors(exc, _RawConfig, ""))
        raw = _RawConfig()  # keep going: the targets' own problems are reported too
    if raw_targets is None:
        raw_targets = []
    if not isinstance(raw_targets, list):
        problems.append("targets: expected a list of targets")
        raw_targets = []

    targets: list[TargetConfig] = []
    names: dict[str, int] = {}
    shared: dict[Any, Any] = {}  # for _compact
    problems.extend(_check_reconnect(raw.defaults.reconnect, "defaults.reconnect"))
    if not raw_targets and not problems:
        problems.append("targets: at least one target is required")
    for i, item in enumerate(raw_targets):
        if not isinstance(item, dict):
            problems.append(f"targets[{i}]: expected a mapping with name, url and options")
            continue
        try:
            partial = TargetConfig.model_validate(item)
        except ValidationError as exc:
            problems.extend(_format_errors(exc, TargetConfig, f"targets[{i}]"))
            continue
        try:
            merged = _merge(partial, raw.defaults)
            target = TargetConfig.model_validate(
                {**merged, "name": partial.name, "url": partial.url}
            )
        except ValidationError as exc:  # a default that does not fit this target
            problems.extend(_format_errors(exc, TargetConfig, f"targets[{i}]"))
            continue
        if "reconnect" in partial.model_fields_set:
            problems.extend(_check_reconnect(target.reconnect, f"targets[{i}].reconnect"))
        if target.name in names:
            problems.append(
                f"targets[{i}].name: duplicate target name {target.name!r} "
                f"(first used by targets[{names[target.name]}])"
            )
        else:
            names[target.name] = i
        if target.headers_file is not None:
            from_file = _read_headers_file(target.headers_file, f"targets[{i}].headers_file")
            if isinstance(from_file, str):
                problems.append(from_file)
                continue
            target = target.model_copy(update={"headers": {**from_file, **target.headers}})
        targets.append(_compact(target, shared))

    if problems:
        raise ConfigError(_without_follow_ups(problems), source)
    return Config(
        listen=raw.listen,
        log=raw.log,
        max_concurrent_handshakes=raw.max_concurrent_handshakes,
        tcp=raw.tcp,
        web_config_file=raw.web_config_file,
        public_healthz=raw.public_healthz,
        send_alignment=raw.send_alignment,
        targets=tuple(targets),
        secrets=frozenset(s for s in used_env | _target_secrets(targets) if len(s) >= 4),
        source=source,
    )


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


def _check_reconnect(r: ReconnectConfig, path: str) -> list[str]:
    # Checked after defaults are merged: either bound may come from `defaults`.
    if r.max_delay < r.initial_delay:
        return [
            f"{path}.max_delay: must be >= initial_delay ({r.max_delay:g}s < {r.initial_delay:g}s)"
        ]
    return []


def load(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the YAML file at `path`."""
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
    return loads(text, source, env)


def looks_secret(name: str) -> bool:
    """True for header or parameter names that usually carry credentials."""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


def _read_headers_file(path: str, where: str) -> dict[str, str] | str:
    """The headers in a YAML file, or the problem with it."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f.read(MAX_CONFIG_BYTES))
    except OSError as exc:
        return f"{where}: cannot read {path!r}: {exc.strerror or exc}"
    except (
        yaml.YAMLError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError,
        RecursionError,
    ):  # fmt: skip
        return f"{where}: {path!r} is not a readable YAML file of headers"
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        return f"{where}: {path!r} must be a mapping of header names to string values"
    return data


def _strings(node: Any) -> set[str]:
    if isinstance(node, str):
        return {node}
    if isinstance(node, dict):
        return set().union(*(_strings(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_strings(v) for v in node)) if node else set()
    return set()


def _target_secrets(targets: list[TargetConfig]) -> set[str]:
    found: set[str] = set()
    for t in targets:
        found.update(v for v in t.headers.values() if v)
        if t.auth is not None:  # the authorize message is a credential as a whole
            found.update(_strings(t.auth.send))
        parts = urlsplit(t.url)
        if parts.password:
            found.add(parts.password)
        found.update(v for k, v in parse_qsl(parts.query) if v and looks_secret(k))
    return found
