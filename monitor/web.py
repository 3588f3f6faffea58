"""TLS and basic auth for the HTTP endpoints, from a Prometheus exporter-toolkit web config.

The file format is the one every Prometheus exporter reads (`--web.config.file`), so
`promtool check web-config` validates it. The file and the certificates it names are
watched: a rotated certificate or a changed password hash applies to new connections and
requests without a restart; a broken file keeps the previous settings.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from structlog.typing import FilteringBoundLogger

ClientAuth = Literal[
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
]
TLSVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Python's ssl module can require a client certificate only together with verifying it, so
# the two "any certificate" modes verify too: stricter, never looser.
_VERIFY = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_BCRYPT_RE = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
REALM = "wsmon"
# bcrypt checks at once (threads), and per client address running or waiting.
BCRYPT_AT_ONCE = 4
PEER_CHECKS = 2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSServerConfig(_Strict):
    cert_file: str
    key_file: str
    client_auth_type: ClientAuth = "NoClientCert"
    client_ca_file: str | None = None
    client_allowed_sans: list[str] | None = None
    min_version: TLSVersionName = "TLS12"
    max_version: TLSVersionName = "TLS13"
    prefer_server_cipher_suites: bool = True
    cipher_suites: list[str] | None = None
    curve_preferences: list[str] | None = None

    @field_validator("cipher_suites", "curve_preferences")
    @classmethod
    def _unsupported(cls, v: list[str] | None) -> list[str] | None:
        if v:
            raise ValueError("not supported here: OpenSSL's defaults for the TLS version apply")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TLSServerConfig:
        needs_ca = self.client_auth_type in (
            "VerifyClientCertIfGiven",
            "RequireAndVerifyClientCert",
        )
        if needs_ca and not self.client_ca_file:
            raise ValueError(f"client_auth_type {self.client_auth_type} needs client_ca_file")
        if _VERSIONS[self.min_version] > _VERSIONS[self.max_version]:
            raise ValueError("min_version is above max_version")
        return self

    def context(self, base: Path) -> ssl.SSLContext:
        """A server context for these settings; file names are relative to the web config."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = _VERSIONS[self.min_version]
        ctx.maximum_version = _VERSIONS[self.max_version]
        if self.prefer_server_cipher_suites:
            ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        ctx.load_cert_chain(base / self.cert_file, base / self.key_file)
        ctx.verify_mode = _VERIFY[self.client_auth_type]
        if self.client_ca_file:
            ctx.load_verify_locations(base / self.client_ca_file)
        elif ctx.verify_mode != ssl.CERT_NONE:
            ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        return ctx


class HTTPServerConfig(_Strict):
    http2: bool = True  # accepted for compatibility; this server speaks HTTP/1.1
    headers: dict[str, str] = {}


class WebConfig(_Strict):
    """The exporter-toolkit web configuration."""

    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig | None = None
    basic_auth_users: dict[str, str] | None = None

    @field_validator("basic_auth_users")
    @classmethod
    def _hashes(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for user, hashed in (v or {}).items():
            if not _BCRYPT_RE.match(hashed):
                raise ValueError(f"user {user!r}: not a bcrypt hash ($2y$10$...)")
        return v


class WebConfigError(Exception):
    def __init__(self, problems: list[str], source: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.source = source


@dataclass(frozen=True)
class LoadedWeb:
    """A validated web config with what it needs at run time."""

    config: WebConfig
    ssl: ssl.SSLContext | None
    dummy_hash: bytes | None  # same cost as the real hashes: unknown users take as long
    files: tuple[Path, ...]  # what to watch for changes


def read_web_config(path: str | Path) -> WebConfig:
    """Read and validate the web config at `path`, opening none of the files it names (the
    daemon's `load_web_config`, and `wsmon status`, which only needs to know what it says);
    WebConfigError lists problems."""
    source = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise WebConfigError([f"cannot read web config: {exc.strerror or exc}"], source) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise WebConfigError([f"invalid YAML: {exc}"], source) from None
    try:
        return WebConfig.model_validate(raw or {})
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            where = ".".join(str(x) for x in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{where}: {msg.removeprefix('Value error, ')}" if where else msg)
        raise WebConfigError(problems, source) from None


def load_web_config(path: str | Path) -> LoadedWeb:
    """Read, validate and build the web config at `path`; WebConfigError lists problems."""
    cfg = read_web_config(path)
    source = str(path)
    p = Path(path)
    base = p.parent
    files = [p]
    ctx = None
    if cfg.tls_server_config is not None:
        tls = cfg.tls_server_config
        files += [base / tls.cert_file, base / tls.key_file]
        if tls.client_ca_file:
            files.append(base / tls.client_ca_file)
        try:
            ctx = tls.context(base)
        except (OSError, ssl.SSLError) as exc:
            problem = f"tls_server_config: cannot load certificates: {exc}"
            raise WebConfigError([problem], source) from None
    dummy = None
    if cfg.basic_auth_users:
        costs = [int(_BCRYPT_RE.match(h).group(1)) for h in cfg.basic_auth_users.values()]  # type: ignore[union-attr]
        import bcrypt  # only a web config with users loads it

        dummy = bcrypt.hashpw(b"wsmon-unknown-user", bcrypt.gensalt(rounds=max(costs)))
    return LoadedWeb(cfg, ctx, dummy, tuple(files))


def _stamp(files: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for f in files:
        try:
            st = f.stat()
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((0, 0, 0))
    return tuple(out)


class WebSecurity:
    """Holds the current web config and enforces it on the HTTP server."""

    def __init__(
        self,
        path: str | Path | None,
        log: FilteringBoundLogger,
        public_paths: frozenset[str] = frozenset(),
        poll_interval: float = 2.0,
    ) -> None:
        self.path = Path(path) if path else None
        self.log = log
        self.public_paths = public_paths
        self.poll_interval = poll_interval
        self.current: LoadedWeb | None = None
        self._outer: ssl.SSLContext | None = None
        self._stamp: tuple[tuple[int, int, int], ...] = ()
        self._good: dict[str, bytes] = {}  # user -> sha256(password + hash) of a verified login
        self._bcrypt_slots = asyncio.Semaphore(BCRYPT_AT_ONCE)
        self._checks_by_peer: dict[str, int] = {}  # password checks running or waiting

    def load(self) -> None:
        """Load at start-up; raises WebConfigError."""
        if self.path is None:
            return
        self._apply(load_web_config(self.path))

    @property
    def tls(self) -> bool:
        return self.current is not None and self.current.ssl is not None

    def server_ssl_context(self) -> ssl.SSLContext | None:
        """The context for the listener. New connections switch to the latest certificates
        through the SNI callback, which OpenSSL calls even when the client sends no name."""
        if not self.tls:
            return None
        assert self.current is not None
        assert self.current.ssl is not None
        outer = self.current.ssl

        def switch(sock: ssl.SSLObject, _: str | None, __: ssl.SSLContext) -> None:
            latest = self.current.ssl if self.current is not None else None
            if latest is not None and latest is not outer:
                sock.context = latest

        outer.sni_callback = switch
        self._outer = outer
        return outer

    def _apply(self, loaded: LoadedWeb) -> None:
        if self._outer is not None and loaded.ssl is not None:
            # Settings the handshake reads before the SNI callback come from the listener's
            # context: keep them in step.
            self._outer.verify_mode = loaded.ssl.verify_mode
            self._outer.minimum_version = loaded.ssl.minimum_version
            self._outer.maximum_version = loaded.ssl.maximum_version
        self.current = loaded
        self._stamp = _stamp(loaded.files)
        self._good.clear()

    def reload(self) -> bool:
        """Re-read the file now (config reload); a bad file keeps the current settings."""
        if self.path is None:
            return True
        try:
            loaded = load_web_config(self.path)
        except WebConfigError as exc:
            self.log.error("web_config.reload_failed", source=exc.source, problems=exc.problems)
            self._stamp = _stamp(self.current.files) if self.current else ()
            return False
        if (loaded.ssl is None) != (self.current is None or self.current.ssl is None):
            self.log.error(
                "web_config.reload_failed",
                source=str(self.path),
                problems=["turning TLS on or off needs a restart"],
            )
            return False
        self._apply(loaded)
        self.log.info("web_config.loaded", source=str(self.path))
        return True

    def changed(self) -> bool:
        """True when the file or a certificate it names changed since it was last read."""
        return self.current is not None and _stamp(self.current.files) != self._stamp

    # --- request checks -----------------------------------------------------------------

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        current = self.current
        if current is not None and request.path not in self.public_paths:
            denied = await self._check(request, current)
            if denied is not None:
                return denied
        return await handler(request)

    async def add_headers(self, _: web.Request, response: web.StreamResponse) -> None:
        """The web config's `http_server_config.headers`, on every response (also streamed
        ones, whose headers go out before the handler returns)."""
        current = self.current
        if current is not None and current.config.http_server_config is not None:
            response.headers.update(current.config.http_server_config.headers)

    async def _check(self, request: web.Request, current: LoadedWeb) -> web.Response | None:
        tls = current.config.tls_server_config
        if tls is not None and tls.client_allowed_sans:
            peer = request.transport.get_extra_info("peercert") if request.transport else None
            sans = {v for _, v in (peer or {}).get("subjectAltName", ())}
            if not sans & set(tls.client_allowed_sans):
                return web.Response(status=403, text="client certificate not allowed\n")
        users = current.config.basic_auth_users
        if not users:
            return None
        creds = _basic_credentials(request.headers.get("Authorization", ""))
        peer = request.remote or ""
        verified: bool | None = False
        if creds is not None:
            verified = await self._verify(creds[0], creds[1], users, current, peer)
        if verified is None:
            return web.Response(
                status=503,
                text="too many password checks from this address; retry\n",
                headers={"Retry-After": "1"},
            )
        if verified:
            return None
        return web.Response(
            status=401,
            text="unauthorized\n",
            headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
        )

    async def _verify(
        self, user: str, password: str, users: dict[str, Any], current: LoadedWeb, peer: str
    ) -> bool | None:
        """True for the right password, False for a wrong one, None when this address has
        too many checks under way to take another (answered 503, not 401: it may be right)."""
        hashed = users.get(user)
        target = hashed.encode() if hashed is not None else current.dummy_hash
        assert target is not None
        key = hashlib.sha256(password.encode() + b"\0" + target).digest()
        if hashed is not None and self._good.get(user) == key:
            return True  # a login verified before: no bcrypt, whatever else is queued
        # bcrypt is slow on purpose, so a flood of wrong passwords must not queue ahead of
        # everyone: each client address has at most PEER_CHECKS checks running or waiting,
        # and one beyond them is turned away at once.
        checks = self._checks_by_peer.get(peer, 0)
        if checks >= PEER_CHECKS:
            return None
        self._checks_by_peer[peer] = checks + 1
        try:
            async with self._bcrypt_slots:
                # bcrypt runs for an unknown user too, against a hash of the same cost, so
                # the answer's timing does not tell which user names exist.
                import bcrypt  # loaded already, with the users

                ok = await asyncio.to_thread(bcrypt.checkpw, password.encode(), target)
        finally:
            left = self._checks_by_peer[peer] - 1
            if left:
                self._checks_by_peer[peer] = left
            else:
                del self._checks_by_peer[peer]
        if ok and hashed is not None:
            self._good[user] = key
            return True
        return False


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def web_config_path(flag: str | None, key: str | None) -> str | None:
    """The command line flag wins over the config key."""
    return flag or key or os.environ.get("WSMON_WEB_CONFIG_FILE") or None
