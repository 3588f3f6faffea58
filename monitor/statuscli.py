"""`wsmon status`: a running daemon's targets as a table in a terminal, read from its
`GET /api/v1/targets` (every page); exit 0 when every target is connected, 1 when one is not,
2 when the daemon cannot be asked."""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import ssl
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import aiohttp

from .config import DEFAULT_LISTEN
from .web import WebConfig, WebConfigError, read_web_config

ALL_CONNECTED, NOT_ALL_CONNECTED, CANNOT_ASK = 0, 1, 2
PAGE = 1000  # targets per request: the API's largest `limit`
ATTEMPTS = 3  # reads of every page, until no target was missed between two of them
TIMEOUT = 10.0  # seconds for each request
COLOURS = {"connected": "32", "connecting": "36", "backoff": "33", "failed": "31"}
WARN = "33"
CLEAR = "\x1b[H\x1b[2J"


class StatusError(Exception):
    """The daemon could not be asked: unreachable, refused the credentials, or answered
    something that is not the status API."""


@dataclass(frozen=True)
class Daemon:
    """Where the daemon's status API is and how to talk to it."""

    api: str
    headers: Mapping[str, str]
    ssl: ssl.SSLContext | None


def daemon(
    url: str | None,
    web_config_file: str | None = None,
    user: str | None = None,
    password_file: str | None = None,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> Daemon:
    """The daemon to ask, from the command line's flags. ValueError names the flag at fault.

    The web config (the daemon's own, exporter-toolkit format) holds no password, only
    bcrypt hashes: it gives https when it has TLS, its certificate as the one to trust
    (unless --ca-file), and its user name when it has exactly one; the password still
    comes from --password-file."""
    web = _web_config(web_config_file) if web_config_file else None
    tls = web.tls_server_config if web is not None else None
    if url is None:
        url = f"{'https' if tls is not None else 'http'}://{DEFAULT_LISTEN}/"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--url: expected http://HOST:PORT/ or https://HOST:PORT/, not {url!r}")
    base = url if url.endswith("/") else url + "/"
    api = base if base.endswith("api/v1/targets/") else base + "api/v1/targets"
    api = api.rstrip("/")
    users = (web.basic_auth_users or {}) if web is not None else {}
    if user is None and len(users) == 1:
        user = next(iter(users))
    headers = {"Accept": "application/json"}
    if password_file is not None:
        if user is None:
            raise ValueError("--password-file: give --user too")
        headers["Authorization"] = aiohttp.BasicAuth(user, _password(password_file)).encode()
    elif users:
        raise ValueError("the web config asks for basic auth: give --password-file (and --user)")
    elif user is not None:
        raise ValueError("--user: give --password-file too")
    context = None
    if parts.scheme == "https":
        trust = ca_file
        if trust is None and tls is not None and web_config_file is not None:
            trust = str(Path(web_config_file).parent / tls.cert_file)
        context = _client_context(trust, ca_file is None and trust is not None)
        if cert_file is not None or key_file is not None:
            if cert_file is None:
                raise ValueError("--key-file: give --cert-file too")
            try:
                context.load_cert_chain(cert_file, key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"--cert-file/--key-file: {exc}") from None
    elif ca_file or cert_file or key_file:
        raise ValueError("--ca-file, --cert-file and --key-file need an https:// URL")
    return Daemon(api, headers, context)


def _web_config(path: str) -> WebConfig:
    try:
        return read_web_config(path)
    except WebConfigError as exc:
        raise ValueError(f"--web.config.file: {path}: {'; '.join(exc.problems)}") from None


def _password(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"--password-file: cannot read {path}: {exc.strerror}") from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise ValueError(f"--password-file: {path} is empty")
    return password


def _client_context(trust: str | None, pinned: bool) -> ssl.SSLContext:
    """A client context trusting `trust` (a PEM file) or the system's store. `pinned`: the
    file is the daemon's own certificate (from its web config), a trust anchor by itself."""
    try:
        context = ssl.create_default_context(cafile=trust)
    except (OSError, ssl.SSLError) as exc:
        flag = "--web.config.file (its tls_server_config.cert_file)" if pinned else "--ca-file"
        raise ValueError(f"{flag}: cannot load {trust}: {exc}") from None
    if pinned:
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


# --- asking -------------------------------------------------------------------------------


async def fetch(http: aiohttp.ClientSession, d: Daemon) -> dict[str, Any]:
    """Every target, page by page, with the summary of the latest page and the daemon's
    clock (`now`, from its Date header). Raises StatusError."""
    for _ in range(ATTEMPTS):
        targets: list[dict[str, Any]] = []
        seen: set[str] = set()
        offset = 0
        while True:
            body, date = await _get(http, d, offset)
            # A target whose state changed between two pages moves in the order: it may
            # come twice (kept once) or not at all (then the pages are read again).
            targets += [t for t in body["targets"] if t["name"] not in seen]
            seen.update(t["name"] for t in body["targets"])
            offset += len(body["targets"])
            if not body["targets"] or offset >= body["total"]:
                break
        if len(targets) >= body["total"]:
            break
    now = time.time()
    if date is not None and abs(date - now) > 2:  # the Date header has whole seconds
        now = date
    return {"summary": body["summary"], "targets": targets, "now": now}


async def _get(
    http: aiohttp.ClientSession, d: Daemon, offset: int
) -> tuple[dict[str, Any], float | None]:
    params = {"limit": str(PAGE), "offset": str(offset)}
    try:
        async with http.get(d.api, params=params, headers=d.headers, ssl=d.ssl or True) as r:
            if r.status == 401:
                raise StatusError(
                    f"{d.api}: 401 Unauthorized: "
                    + (
                        "the credentials were refused"
                        if "Authorization" in d.headers
                        else "give --user and --password-file"
                    )
                )
            if r.status != 200:
                text = (await r.text(errors="replace"))[:200].strip()
                raise StatusError(f"{d.api}: HTTP {r.status}: {text}")
            raw = await r.read()
            header = r.headers.get("Date")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise StatusError(f"cannot reach {d.api}: {_reason(exc)}") from None
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict) or not {"summary", "targets", "total"} <= body.keys():
        raise StatusError(f"{d.api}: not the status API of wsmon")
    date = None
    if header:
        try:
            date = email.utils.parsedate_to_datetime(header).timestamp()
        except (TypeError, ValueError):
            date = None
    return body, date


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"certificate not trusted ({exc.certificate_error}); --ca-file trusts another"
    if isinstance(exc, TimeoutError):
        return f"no answer within {TIMEOUT:g} s"
    return str(exc) or type(exc).__name__


# --- drawing ------------------------------------------------------------------------------


def age(seconds: float) -> str:
    """A duration as people say it: 12 s, 3 min, 2 h 5 min, 3 d 4 h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def ms(seconds: float) -> str:
    v = seconds * 1000
    if v < 1:
        return f"{v:.2f} ms"
    if v < 100:
        return f"{v:.1f} ms"
    if v < 10000:
        return f"{v:.0f} ms"
    return f"{seconds:.1f} s"


Cell = tuple[str, str | None]  # text, and its colour (an SGR code) when coloured


def _row(t: Mapping[str, Any], now: float) -> list[Cell]:
    notes = []
    if t["state"] == "connected" and not t["up"]:
        notes.append("not up: latest probe unanswered or wrong")
    notes += [f"stream {n} stale" for n, s in (t.get("streams") or {}).items() if s["stale"]]
    tls = t.get("tls")
    if tls and tls["not_after"] - now < 14 * 86400:
        notes.append(f"certificate expires in {age(tls['not_after'] - now)}")
    rtts = "  ".join(
        f"{name} {'-' if rtt is None else ms(rtt)}" for name, rtt in t["last_rtt_seconds"].items()
    )
    close = t.get("last_close")
    closed = f"{close['code']} {close['origin']}, {age(now - close['at'])} ago" if close else "-"
    return [
        (t["name"], None),
        (t["state"], COLOURS.get(t["state"])),
        (", ".join(notes), WARN if notes else None),
        (age(now - t["since"]), None),
        (rtts or "-", None),
        (closed, None),
        (f"{t['reconnects_last_hour']}", None),
    ]


HEADER = ["TARGET", "STATE", "", "FOR", "ROUND TRIPS", "LAST CLOSE", "RECONNECTS 1H"]


def render(listing: Mapping[str, Any], colour: bool) -> str:
    """The summary line and the table, problems first (the API's order)."""
    s = listing["summary"]
    now = listing["now"]
    worst = s.get("worst_rtt")
    problems = f"{s['problems']} problem{'' if s['problems'] == 1 else 's'}"
    lines = [
        f"{s['connected']} connected of {s['targets']} targets, "
        + (problems if s["problems"] else "no problems")
        + (
            f"; worst round trip {ms(worst['seconds'])} ({worst['target']}, {worst['probe']})"
            if worst
            else ""
        )
    ]
    rows = [_row(t, now) for t in listing["targets"]]
    if rows:
        table: list[list[Cell]] = [[(h, None) for h in HEADER], *rows]
        widths = [max(len(r[i][0]) for r in table) for i in range(len(HEADER))]
        lines.append("")
        for n, r in enumerate(table):
            cells = []
            for (text, code), width in zip(r, widths, strict=True):
                if not width:
                    continue
                padded = text.ljust(width)
                if colour and (code or n == 0) and text:
                    padded = f"\x1b[{code or '1'}m{text}\x1b[0m" + " " * (width - len(text))
                cells.append(padded)
            lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def wants_colour(out: TextIO, env: Mapping[str, str]) -> bool:
    """Colours on a terminal, unless NO_COLOR is set (no-color.org)."""
    return out.isatty() and not env.get("NO_COLOR")


# --- the command --------------------------------------------------------------------------


def exit_status(listing: Mapping[str, Any]) -> int:
    s = listing["summary"]
    return ALL_CONNECTED if s["connected"] == s["targets"] else NOT_ALL_CONNECTED


@dataclass
class Outcome:
    """The exit status the command has come to so far (--watch: of its latest table)."""

    status: int = CANNOT_ASK


async def run(
    d: Daemon,
    outcome: Outcome,
    watch: bool = False,
    interval: float = 2.0,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Print the table once, or with `watch` again every `interval` seconds until cancelled
    (Ctrl-C); `outcome` holds the exit status of the latest try."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    colour = wants_colour(out, os.environ)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while True:
            try:
                listing = await fetch(http, d)
            except StatusError as exc:
                outcome.status = CANNOT_ASK
                if not watch:
                    print(f"wsmon status: error: {exc}", file=err)
                    return outcome.status
                text = f"wsmon status: {exc} (trying again every {interval:g} s)\n"
            else:
                outcome.status = exit_status(listing)
                text = render(listing, colour)
                if not watch:
                    out.write(text)
                    return outcome.status
            stamp = time.strftime("%H:%M:%S")
            if out.isatty():
                out.write(f"{CLEAR}{text}\nevery {interval:g} s, {stamp}; Ctrl-C to stop\n")
            else:
                out.write(f"--- {stamp}\n{text}")
            out.flush()
            await asyncio.sleep(interval)


def run_command(d: Daemon, watch: bool, interval: float) -> int:
    """`wsmon status`: the exit status (with --watch: of the latest table when stopped)."""
    outcome = Outcome()
    try:
        return asyncio.run(run(d, outcome, watch, interval))
    except KeyboardInterrupt:
        return outcome.status
