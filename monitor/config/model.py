"""The typed configuration model: what each key means, its default and its checks.

Values arrive here already read (see `sources`) and are parsed by the types of `values`;
`loading` merges `defaults` into each target and turns validation errors into `path: reason`
lines.
"""

from __future__ import annotations

import os
import ssl
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .values import (
    Buckets,
    DottedPath,
    Duration,
    Name,
    Origin,
    ProxyURL,
    Subprotocol,
    plain_json,
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReconnectConfig(Strict):
    """Exponential backoff with full jitter between connection attempts."""

    initial_delay: Duration = 1.0
    max_delay: Duration = 60.0
    multiplier: float = Field(default=2.0, ge=1.0)
    # A connection must stay up this long before the backoff starts again from initial_delay.
    reset_after: Duration = 30.0


# Keys only a stream probe takes, and keys a stream probe does not take.
STREAM_KEYS = ("max_gap", "on_stale", "lag_field", "unsubscribe", "subscribe_timeout")
PERIODIC_KEYS = ("interval", "timeout")


class ProbeConfig(Strict):
    """One probe on a target's connection: a message or ws-ping sent periodically, or a
    subscription stream whose messages must keep coming (`kind: stream`)."""

    name: Name
    kind: Literal["message", "ws-ping", "stream"] = "message"
    send: dict[str, Any] | None = Field(default=None, validate_default=True)
    expect: dict[str, Any] | None = None
    interval: Duration = 30.0
    timeout: Duration = 5.0
    # Buckets of this probe's RTT histogram (a stream's: of its subscribe time and lag);
    # None: `metrics.rtt_buckets`.
    rtt_buckets: Buckets | None = None
    # --- stream probes -----------------------------------------------------------------
    # Stale when no stream message arrived for this long.
    max_gap: Duration | None = None
    on_stale: Literal["report", "resubscribe", "reconnect"] = "report"
    # Dotted path to a server timestamp (Unix seconds or milliseconds) in each message.
    lag_field: DottedPath | None = None
    # Sent to end the subscription; "{subscription_id}" is replaced by the id the first
    # reply carried. None: `{forget: "{subscription_id}"}` when a reply carried one (the
    # Deriv API's); false: never sent.
    unsubscribe: dict[str, Any] | Literal[False] | None = None
    # The first stream message must arrive this long after the subscribe; None: max_gap.
    subscribe_timeout: Duration | None = None

    @field_validator("send", "expect", mode="after")
    @classmethod
    def _json(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return plain_json(v)

    @field_validator("unsubscribe", mode="after")
    @classmethod
    def _unsubscribe(cls, v: dict[str, Any] | Literal[False] | None) -> Any:
        if v is False or v is None:
            return v
        if not v:
            raise ValueError("the unsubscribe message must not be empty (false: send none)")
        return plain_json(v)

    @field_validator("send")
    @classmethod
    def _send(cls, v: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        kind = info.data.get("kind", "message")
        if kind == "message" and not v:
            raise ValueError("a message probe needs `send` (the JSON object to send)")
        if kind == "stream" and not v:
            raise ValueError("a stream probe needs `send` (the subscribe request)")
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

    @model_validator(mode="after")
    def _stream_keys(self) -> ProbeConfig:
        # Keys set to other than their defaults (a dump of a valid probe validates again).
        defaults = type(self).model_fields
        given = {k for k in self.model_fields_set if getattr(self, k) != defaults[k].default}
        if self.kind == "stream":
            if self.max_gap is None:
                raise ValueError("a stream probe needs `max_gap` (stale after this long silent)")
            if wrong := [k for k in PERIODIC_KEYS if k in given]:
                raise ValueError(
                    f"a stream probe takes no `{wrong[0]}`: it subscribes once per "
                    "connection and is judged by `max_gap` and `subscribe_timeout`"
                )
        elif wrong := [k for k in STREAM_KEYS if k in given]:
            raise ValueError(f"`{wrong[0]}` applies to stream probes only (`kind: stream`)")
        return self

    @property
    def first_message_within(self) -> float:
        """A stream's `subscribe_timeout`, or its `max_gap` when not set."""
        assert self.max_gap is not None
        return self.subscribe_timeout if self.subscribe_timeout is not None else self.max_gap


class TLSConfig(Strict):
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


class TCPConfig(Strict):
    """Socket options that find a vanished peer even when no probe is running."""

    keepalive_idle: Duration = 30.0  # idle time before the first keepalive probe
    keepalive_interval: Duration = 10.0  # between unanswered keepalive probes
    keepalive_count: int = Field(default=3, ge=1, le=127)  # unanswered probes before reset
    user_timeout: Duration = 60.0  # sent data unacknowledged this long fails the connection


def _default_probes() -> list[ProbeConfig]:
    return [ProbeConfig(name="ping", send={"ping": 1}, expect={"msg_type": "ping"}, interval=30.0)]


class AuthConfig(Strict):
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
        plain_json(v)
        return v

    @field_validator("expect")
    @classmethod
    def _expect(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return plain_json(v)


class RateLimitsConfig(Strict):
    """The server's request limits, to compare with what the probes plan to send: read from
    the server once per connection (`source: website_status`, the Deriv API's
    `api_call_limits.max_requestes_general`), and/or known beforehand (`minutely`,
    `hourly`), which check-config can already compare."""

    source: Literal["website_status", "none"] = "website_status"
    minutely: int | None = Field(default=None, ge=1)
    hourly: int | None = Field(default=None, ge=1)


class TargetSettings(Strict):
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
    # Subprotocols offered in the upgrade (Sec-WebSocket-Protocol), most wanted first.
    subprotocols: list[Subprotocol] = Field(default_factory=list)
    # The upgrade's Origin header (APIs meant for browsers often check it).
    origin: Origin | None = None
    # An HTTP proxy the connection is tunnelled through (CONNECT, for ws:// and wss://).
    proxy: ProxyURL | None = None
    auth: AuthConfig | None = None
    rate_limits: RateLimitsConfig | None = None
    # Consecutive probe timeouts after which the connection is declared dead and closed.
    dead_after_timeouts: int = Field(default=2, ge=1)
    max_msg_size: int = Field(default=4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    # Messages a second the connection may deliver before its reading pauses (TCP
    # backpressure), so that one flooding server cannot take the event loop from the
    # others; 0: no cap.
    max_messages_per_second: float = Field(default=5000.0, ge=0)

    @field_validator("max_messages_per_second")
    @classmethod
    def _rate(cls, v: float) -> float:
        if 0 < v < 1:
            raise ValueError("must be 0 (no cap) or at least 1")
        return v

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


def check_origin_once(s: TargetSettings) -> None:
    if s.origin is not None and any(k.lower() == "origin" for k in s.headers):
        raise ValueError("set the Origin either as `origin` or in `headers`, not both")


def check_stream_ids(s: TargetSettings) -> None:
    if s.correlation_field is None and any(p.kind == "stream" for p in s.probes):
        raise ValueError(
            "stream probes need `correlation_field` (their messages are recognised by "
            "the subscribe's id echoed in them)"
        )


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
    def _one_origin(self) -> TargetConfig:
        check_origin_once(self)
        return self

    @model_validator(mode="after")
    def _streams_need_ids(self) -> TargetConfig:
        check_stream_ids(self)
        return self

    @model_validator(mode="after")
    def _tls_needs_wss(self) -> TargetConfig:
        if self.tls is not None and not self.url.startswith("wss:"):
            raise ValueError("`tls` options need a wss:// URL")
        return self
