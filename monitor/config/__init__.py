"""Typed, validated configuration: load(path) -> Config, or ConfigError listing every problem.

`model` holds the targets' typed model, `daemon` the top-level blocks and `Config`, `values`
the value types they are written in (durations, names,
buckets, ...), `sources` reads values (YAML, `${VAR}`, files), `loading` merges `defaults`
into targets and reports problems by path.
"""

from .daemon import (
    DEFAULT_LISTEN,
    Config,
    HTTPConfig,
    LogConfig,
    MetricsConfig,
    ShardingConfig,
)
from .loading import ConfigError, load, loads
from .model import (
    AuthConfig,
    ProbeConfig,
    RateLimitsConfig,
    ReconnectConfig,
    TargetConfig,
    TargetSettings,
    TCPConfig,
    TLSConfig,
)
from .sources import MAX_CONFIG_BYTES, SECRET_WORDS, looks_secret
from .values import (
    DEFAULT_RTT_BUCKETS,
    MAX_SEND_ALIGNMENT,
    Duration,
    Name,
    parse_duration,
    parse_listen,
)

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_RTT_BUCKETS",
    "MAX_CONFIG_BYTES",
    "MAX_SEND_ALIGNMENT",
    "SECRET_WORDS",
    "AuthConfig",
    "Config",
    "ConfigError",
    "Duration",
    "HTTPConfig",
    "LogConfig",
    "MetricsConfig",
    "Name",
    "ProbeConfig",
    "RateLimitsConfig",
    "ReconnectConfig",
    "ShardingConfig",
    "TCPConfig",
    "TLSConfig",
    "TargetConfig",
    "TargetSettings",
    "load",
    "loads",
    "looks_secret",
    "parse_duration",
    "parse_listen",
]
