"""`wsmon probe` on a terminal: one run of `monitor.oneshot`, printed as it goes like `ping`
(the phases, the certificate, a line per round trip, a summary), or as one JSON object."""

from __future__ import annotations

import json
import time
from typing import Any

from .anatomy import PHASES
from .config import TargetConfig, TCPConfig
from .oneshot import ProbeResult, RoundTrip, probe_once
from .proxy import client_sessions


async def run_command(
    target: TargetConfig, within: float, count: int, interval: float, as_json: bool
) -> int:
    """`wsmon probe`: run, print as it goes (or one JSON object at the end); 0 when every
    round trip succeeded, else 1."""
    sessions = client_sessions(TCPConfig())
    lines = _Printer(enabled=not as_json)
    try:
        result = await probe_once(
            sessions,
            target,
            within,
            count=count,
            interval=interval,
            on_open=lines.opened,
            on_round_trip=lines.round_trip,
        )
    finally:
        await sessions.close()
    if as_json:
        print(json.dumps(as_document(result)))
    else:
        lines.summary(result)
    return 0 if result.success else 1


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


class _Printer:
    """Human output, like `ping`: the handshake, a line per round trip, a summary."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def say(self, line: str) -> None:
        if self.enabled:
            print(line, flush=True)

    def opened(self, result: ProbeResult) -> None:
        self.say(f"connected to {result.url} (HTTP {result.status})")
        for phase in PHASES:
            if phase in result.phases:
                self.say(f"  {phase:<8} {_ms(result.phases[phase]):>10}")
        tls = result.tls
        if tls is not None:
            self.say(f"  version  {tls.version}, {tls.cipher}")
            if tls.not_after is not None:
                days = (tls.not_after - time.time()) / 86400
                expiry = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(tls.not_after))
                self.say(f"  subject  {tls.subject or '-'}")
                self.say(f"  issuer   {tls.issuer or '-'}")
                unit = "day" if round(days) == 1 else "days"
                self.say(f"  expires  {expiry} (in {days:.0f} {unit})")
            else:
                self.say("  certificate not read (not verified)")

    def round_trip(self, trip: RoundTrip) -> None:
        head = f"{trip.probe} seq={trip.seq}"
        if trip.outcome == "ok" and trip.rtt is not None:
            self.say(f"reply: {head} time={_ms(trip.rtt)}")
        elif trip.rtt is not None:
            self.say(f"bad reply: {head} time={_ms(trip.rtt)} {trip.outcome}: {trip.detail}")
        else:
            self.say(f"no reply: {head} {trip.outcome}: {trip.detail}")

    def summary(self, result: ProbeResult) -> None:
        sent = len(result.round_trips)
        good = sum(1 for t in result.round_trips if t.outcome == "ok")
        if result.upgraded or sent:
            self.say(f"--- {result.url} ---")
            lost = 100.0 * (sent - good) / sent if sent else 0.0
            close = (
                f", close code {result.close_code} ({result.close_origin})"
                if result.close_code is not None
                else ""
            )
            trips = "round trip" if sent == 1 else "round trips"
            self.say(f"{sent} {trips}, {good} good, {lost:.0f}% failed{close}")
            rtts = result.rtts
            if rtts:
                avg = sum(rtts) / len(rtts)
                self.say(
                    f"rtt min/avg/max = {min(rtts) * 1000:.1f}/{avg * 1000:.1f}/"
                    f"{max(rtts) * 1000:.1f} ms"
                )
        if result.error is not None:
            status = f" (HTTP {result.status})" if result.status and not result.upgraded else ""
            self.say(f"FAILED: {result.error}{status}")


def as_document(result: ProbeResult) -> dict[str, Any]:
    """`wsmon probe --json`: one object."""
    tls = result.tls
    return {
        "url": result.url,
        "success": result.success,
        "duration_seconds": result.duration,
        "status_code": result.status,
        "upgraded": result.upgraded,
        "phases": result.phases,
        "tls": None
        if tls is None
        else {
            "version": tls.version,
            "cipher": tls.cipher,
            "not_after": tls.not_after,
            "subject": tls.subject,
            "issuer": tls.issuer,
        },
        "rtt_seconds": result.rtts,
        "round_trips": [
            {
                "probe": t.probe,
                "seq": t.seq,
                "outcome": t.outcome,
                "rtt_seconds": t.rtt,
                "detail": t.detail,
            }
            for t in result.round_trips
        ],
        "planned": result.planned,
        "close_code": result.close_code,
        "close_origin": result.close_origin,
        "error": result.error,
    }
