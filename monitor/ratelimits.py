"""The server's request limits beside what the probes plan to send (`rate_limits`): asked once
per connection with the Deriv API's `website_status`, and said in metrics and the log."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType

from .clock import start_eagerly
from .correlation import Pending, Reply
from .handles import planned_requests
from .metrics import RATE_WINDOWS
from .probes import SEND_ERRORS

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from .config import Config
    from .session import Session


def limits_in(message: dict[str, Any]) -> dict[str, int]:
    """{"minutely": n, "hourly": n} from a `website_status` reply's general request limits
    (`api_call_limits.max_requestes_general`, as the API spells it); what is absent or not
    a positive number is left out."""
    status = message.get("website_status")
    calls = status.get("api_call_limits") if isinstance(status, dict) else None
    general = calls.get("max_requestes_general") if isinstance(calls, dict) else None
    if not isinstance(general, dict):
        return {}
    found: dict[str, int] = {}
    for window, _ in RATE_WINDOWS:
        value = general.get(window)
        if type(value) is int and value > 0:
            found[window] = value
    return found


def query(session: Session) -> None:
    """Ask the server for its limits (`source: website_status`) and record the answer."""
    target = session.target
    assert target.rate_limits is not None
    if target.rate_limits.source != "website_status":
        return
    body: dict[str, Any] = {"website_status": 1}
    field = target.correlation_field
    clock = session.runtime.clock
    # No answer within the handshake's bound: the limits stay unknown on this connection.
    timeout = target.connect_timeout

    def answered(p: Pending, reply: Reply) -> None:
        if p.timer is not None:
            clock.cancel(p.timer)
        record(session, reply.message)

    def unanswered(p: Pending) -> None:
        session.correlator.forget(p)
        session.log.warning(
            "rate_limit.unknown", target=target.name, error=f"no reply within {timeout:g}s"
        )

    if field is not None:
        req_id = session.correlator.next_id()
        body[field] = req_id
        pending = Pending(req_id, answered, unanswered)
    else:
        pending = Pending(None, answered, unanswered)
    session.correlator.register(pending)
    pending.timer = clock.call_at(clock.time() + timeout, pending)
    pending.sent_at = time.perf_counter()
    try:
        task = start_eagerly(
            session.ws.send_frame(json.dumps(body, separators=(",", ":")).encode(), WSMsgType.TEXT)
        )
    except SEND_ERRORS:
        return  # the connection is going away; its receive loop says how
    if task is not None:
        task.add_done_callback(lambda t: t.cancelled() or t.exception())


def record(session: Session, message: dict[str, Any] | None) -> None:
    """Export the limits a reply states, and warn when the probes plan more than they allow."""
    target = session.target
    limits = limits_in(message) if message is not None else {}
    if not limits:
        error = message.get("error") if message is not None else None
        session.log.warning(
            "rate_limit.unknown",
            target=target.name,
            error=str(error.get("code")) if isinstance(error, dict) else "no limits in the reply",
        )
        return
    planned = {w: planned_requests(target, s) for w, s in RATE_WINDOWS}
    for window, limit in limits.items():
        session.m.set_rate_limit(window, limit)
    over = {w: (planned[w], n) for w, n in limits.items() if planned[w] > n}
    session.log.info(
        "rate_limit.limits",
        target=target.name,
        **{f"{w}_limit": n for w, n in limits.items()},
        **{f"{w}_planned": round(planned[w], 1) for w in limits},
    )
    for window, (plan, limit) in over.items():
        session.log.warning(
            "rate_limit.plan_exceeds",
            target=target.name,
            window=window,
            planned=round(plan, 1),
            limit=limit,
            source="server",
        )


def over_known_limits(config: Config) -> list[tuple[str, str, float, int]]:
    """(target, window, planned, limit) wherever the probes plan more requests than a limit
    the config states (`rate_limits.minutely` / `hourly`): what check-config and the start
    can tell before the server does."""
    over = []
    for target in config.targets:
        limits = target.rate_limits
        if limits is None:
            continue
        for window, seconds in RATE_WINDOWS:
            limit = getattr(limits, window)
            planned = planned_requests(target, seconds)
            if limit is not None and planned > limit:
                over.append((target.name, window, planned, limit))
    return over


def warn_over_known_limits(config: Config, log: FilteringBoundLogger) -> None:
    """Warn (`rate_limit.plan_exceeds`) where the probes plan more requests than a limit the
    config states; the server's own limits are compared when it states them."""
    for name, window, planned, limit in over_known_limits(config):
        log.warning(
            "rate_limit.plan_exceeds",
            target=name,
            window=window,
            planned=round(planned, 1),
            limit=limit,
            source="config",
        )
