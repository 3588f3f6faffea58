"""The daemon's own settings and the whole configuration: the top-level blocks (`log`,
`http`, `metrics`, `sharding`, `probe_endpoint`), `RawConfig` (every top-level key but
`targets`) and `Config`, what `loading` returns. The targets' model is in `model`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from .model import (
    Strict,
    TargetConfig,
    TargetSettings,
    TCPConfig,
    check_origin_once,
    check_stream_ids,
)
from .probeurls import ProbeURL, TargetPattern, check_pattern, parse_target_pattern
from .values import DEFAULT_RTT_BUCKETS, Buckets, Duration, Name, alignment, parse_listen

DEFAULT_LISTEN = "127.0.0.1:9815"


# --- probe_endpoint: GET /probe?target=URL&module=NAME -----------------------------------------

# Keys of a target that mean nothing to one connection that runs each probe once.
PERIODIC_ONLY = ("reconnect", "dead_after_timeouts", "rate_limits", "max_messages_per_second")


class ProbeModule(TargetSettings):
    """A /probe module: any target key but `name` and `url` (headers, tls, auth, proxy,
    probes, ...), applied to the target a request names; each probe runs once."""

    @model_validator(mode="after")
    def _one_shot(self) -> ProbeModule:
        if wrong := [k for k in PERIODIC_ONLY if k in self.model_fields_set]:
            raise ValueError(
                f"`{wrong[0]}` does not apply to a /probe module (one connection, each probe "
                "sent once)"
            )
        check_origin_once(self)
        check_stream_ids(self)
        return self


class ProbeEndpointConfig(Strict):
    """`GET /probe?target=URL&module=NAME`: one-shot probes of targets a scraper names, as
    blackbox_exporter's multi-target pattern; only targets `allowed_targets` matches."""

    allowed_targets: list[Annotated[str, AfterValidator(check_pattern)]]
    max_concurrent: int = Field(default=20, ge=1, le=10_000)
    modules: dict[Name, ProbeModule]
    _patterns: tuple[TargetPattern, ...] = PrivateAttr(default=())

    @field_validator("allowed_targets")
    @classmethod
    def _some_targets(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(
                "list at least one pattern: /probe contacts only targets that match one"
            )
        return v

    @field_validator("modules")
    @classmethod
    def _some_modules(cls, v: dict[str, ProbeModule]) -> dict[str, ProbeModule]:
        if not v:
            raise ValueError("define at least one module (what /probe?module=NAME runs)")
        return v

    @model_validator(mode="after")
    def _parsed(self) -> ProbeEndpointConfig:
        # Parsed once here (each was checked by `check_pattern`), not on every GET /probe.
        self._patterns = tuple(parse_target_pattern(p) for p in self.allowed_targets)
        return self

    def allows(self, target: ProbeURL) -> bool:
        """True when an `allowed_targets` pattern matches the whole of `target`."""
        return any(pattern.matches(target) for pattern in self._patterns)


class LogConfig(Strict):
    """How the daemon's own log lines look and which are written."""

    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class HTTPConfig(Strict):
    """Bounds on the HTTP side (/metrics and the rest), so that slow, idle or too many
    clients can neither hold the daemon's descriptors nor delay a scrape."""

    # Complete request headers within this long of connecting (or of a request's first byte
    # on a kept-alive connection).
    read_header_timeout: Duration = 10.0
    # A kept-alive connection with no request in progress is closed after this long.
    idle_timeout: Duration = 60.0
    # Connections at once; at the limit room is made by client address (`monitor.httpguard`).
    max_connections: int = Field(default=64, ge=1, le=10_000)
    # The longest request line, and the longest header line.
    max_header_bytes: int = Field(default=8190, ge=1024, le=1 << 20)


class MetricsConfig(Strict):
    """How much detail the exposition carries: every series costs the Prometheus that
    scrapes it memory and disk, per target."""

    # Native histograms (one series each) when the scraper asks for the protobuf format;
    # `both` keeps the classic buckets there too. The text format is always classic.
    histograms: Literal["classic", "native", "both"] = "classic"
    rtt_buckets: Buckets = DEFAULT_RTT_BUCKETS
    # False: one handshake-time histogram for the whole daemon rather than one per target.
    per_target_connect_histogram: bool = False
    # Counters by reason or close code that exist at 0 before anything happened: `alerts`,
    # the ones the shipped alert rules name; `all`, every known reason and common code.
    precreate: Literal["alerts", "all"] = "alerts"
    # check-config warns when the config exports more series than this.
    series_warning: int = Field(default=200_000, ge=1)


class ShardingConfig(Strict):
    """This daemon's place in a fleet that shares the config (`monitor.sharding`); the
    command line's --shard flags win over it."""

    index: int = Field(default=0, ge=0)
    count: int = Field(default=1, ge=1, le=10_000)
    replicas: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _fits(self) -> ShardingConfig:
        if self.index >= self.count:
            raise ValueError(f"index {self.index} is not in 0..{self.count - 1}")
        if self.replicas > self.count:
            raise ValueError(f"replicas ({self.replicas}) cannot exceed count ({self.count})")
        return self


class RawConfig(Strict):
    """The top-level keys except `targets`, which are validated one by one after it."""

    listen: str = DEFAULT_LISTEN
    log: LogConfig = LogConfig()
    # Handshakes in flight at once, across all targets (protects against reconnect storms).
    max_concurrent_handshakes: int = Field(default=50, ge=1)
    # Probe sends start on a grid of about this step (0: anywhere), so that one wake-up of
    # the daemon sends several; see `Clock.phase`.
    send_alignment: Annotated[float, BeforeValidator(alignment)] = 0.0
    tcp: TCPConfig = TCPConfig()
    # Prometheus exporter-toolkit web config: TLS and basic auth for the HTTP endpoints.
    web_config_file: str | None = None
    # Serve /healthz without authentication (for liveness checks that cannot authenticate).
    public_healthz: bool = False
    http: HTTPConfig = HTTPConfig()
    metrics: MetricsConfig = MetricsConfig()
    # One-shot probes of the targets a scraper names (`GET /probe`); None: no /probe.
    probe_endpoint: ProbeEndpointConfig | None = None
    sharding: ShardingConfig = ShardingConfig()
    defaults: TargetSettings = TargetSettings()

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(v)
        return v


@dataclass(frozen=True)
class Config:
    """A complete, valid configuration; targets carry their defaults already merged in.
    Loaded for one shard of a fleet, `targets` holds (and validated) that shard's only."""

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
    http: HTTPConfig = field(default_factory=HTTPConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    probe_endpoint: ProbeEndpointConfig | None = None
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    # How many targets the file lists, other shards' included (None: as many as `targets`).
    listed: int | None = None
    # The shard whose targets `targets` holds, when it was loaded for one (the loader kept
    # that shard's only); None: every target the file lists.
    selected: object | None = None

    @property
    def listed_targets(self) -> int:
        return len(self.targets) if self.listed is None else self.listed
