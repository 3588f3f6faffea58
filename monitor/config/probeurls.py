"""The URLs of `GET /probe` and the `allowed_targets` patterns they are matched against, each
taken apart and checked part by part: what was matched is what is contacted."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"ws": 80, "wss": 443}
_HOST_RE = re.compile(r"^[a-z0-9_.-]+$")
_HOST_GLOB_RE = re.compile(r"^[a-z0-9_.*-]+$")
_PATTERN_RE = re.compile(r"^(?P<scheme>[a-zA-Z]+)://(?P<authority>[^/?#]*)(?P<rest>[^#]*)$")


@dataclass(frozen=True)
class ProbeURL:
    """A /probe target taken apart, each part checked: `allowed_targets` patterns are
    matched against these parts, and the URL connected to is made from them again, so
    what was matched is what is contacted."""

    scheme: str
    host: str  # lower case; an IPv6 address in brackets
    port: int
    rest: str  # the path (at least "/") and "?query"; no fragment

    @property
    def url(self) -> str:
        """The URL to connect to (the scheme's default port left out)."""
        port = "" if DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        return f"{self.scheme}://{self.host}{port}{self.rest}"

    @property
    def normalised(self) -> str:
        """`scheme://host:port/path?query`, the port always written."""
        return f"{self.scheme}://{self.host}:{self.port}{self.rest}"


def parse_probe_url(text: str) -> ProbeURL:
    """A /probe target as its parts; ValueError says what is wrong with it."""
    if any(c <= " " or c == "\x7f" for c in text) or "\\" in text:
        raise ValueError("a target URL has no spaces, control characters or backslashes")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"URL scheme must be ws or wss, not {parts.scheme or 'missing'!r}")
    if "@" in parts.netloc:
        raise ValueError("a probe target must not carry user:password@")
    host = parts.hostname or ""
    if not host:
        raise ValueError("URL has no host")
    if ":" in host:  # an IPv6 literal (urlsplit took the brackets off)
        try:
            host = f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            raise ValueError(f"invalid IPv6 address {host!r}") from None
    elif not _HOST_RE.match(host):
        raise ValueError(f"invalid host {host!r}: letters, digits, '.', '-' and '_' only")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("URL port must be a number from 1 to 65535") from None
    if port == 0:
        raise ValueError("URL port must be a number from 1 to 65535")
    rest = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return ProbeURL(scheme, host, port or DEFAULT_PORTS[scheme], rest)


def _glob(text: str) -> re.Pattern[str]:
    """`*` matches any run of characters (none included); everything else itself."""
    return re.compile("".join(".*" if c == "*" else re.escape(c) for c in text), re.DOTALL)


@dataclass(frozen=True)
class TargetPattern:
    """One `allowed_targets` entry, matched part by part against a `ProbeURL`: a `*` in the
    host can only stand for host characters, never reach into the port or path."""

    text: str
    scheme: str
    host: re.Pattern[str]
    port: re.Pattern[str]
    rest: re.Pattern[str] | None  # None: no path written, any path and query

    def matches(self, u: ProbeURL) -> bool:
        return (
            u.scheme == self.scheme
            and self.host.fullmatch(u.host) is not None
            and self.port.fullmatch(str(u.port)) is not None
            and (self.rest is None or self.rest.fullmatch(u.rest) is not None)
        )


def parse_target_pattern(text: str) -> TargetPattern:
    """`wss://*.example.com/*`, `ws://127.0.0.1:*`; ValueError says what is wrong."""
    m = _PATTERN_RE.match(text)
    if m is None or any(c <= " " or c == "\x7f" for c in text) or "\\" in text:
        raise ValueError(
            f"invalid target pattern {text!r}: expected ws://HOST[:PORT][/PATH] or wss://..., "
            "with * for any run of characters (no fragment, spaces or backslashes)"
        )
    scheme, authority, rest = m["scheme"].lower(), m["authority"].lower(), m["rest"]
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"invalid target pattern {text!r}: the scheme must be ws or wss")
    if "@" in authority:
        raise ValueError(f"invalid target pattern {text!r}: targets carry no user:password@")
    if authority.startswith("["):  # [IPv6] or [IPv6]:port
        host, _, port = authority[1:].partition("]")
        if port and not port.startswith(":"):
            raise ValueError(f"invalid target pattern {text!r}: expected [IPv6]:PORT")
        try:
            host = f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            raise ValueError(f"invalid target pattern {text!r}: bad IPv6 address") from None
        host_re = re.compile(re.escape(host))
        port = port[1:]
    else:
        host, _, port = authority.partition(":")
        if not host or not _HOST_GLOB_RE.match(host):
            raise ValueError(
                f"invalid target pattern {text!r}: the host is letters, digits, '.', '-', '_' and *"
            )
        host_re = _glob(host)
    if port and not re.fullmatch(r"[0-9*]+", port):
        raise ValueError(f"invalid target pattern {text!r}: the port is digits or *")
    if rest and not rest.startswith(("/", "?")):
        raise ValueError(f"invalid target pattern {text!r}: the path starts with /")
    port_re = _glob(port) if port else re.compile(str(DEFAULT_PORTS[scheme]))
    return TargetPattern(text, scheme, host_re, port_re, _glob(rest) if rest else None)


def check_pattern(v: str) -> str:
    """A config value that must be a valid pattern (ValueError says why)."""
    parse_target_pattern(v)
    return v
