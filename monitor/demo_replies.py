"""What the simulated Deriv-style API answers (`monitor.demo_api` serves it): the reply to
each request in the API's shapes, its errors, the ticks of a subscription, `forget`."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, NamedTuple

if TYPE_CHECKING:
    import asyncio

#: Symbols ``ticks`` serves: the synthetic indices, each with (opening quote, annual volatility).
SYMBOLS: Final[Mapping[str, tuple[float, float]]] = MappingProxyType(
    {
        "R_10": (6250.0, 0.10),
        "R_25": (2800.0, 0.25),
        "R_50": (180.0, 0.50),
        "R_75": (40000.0, 0.75),
        "R_100": (1250.0, 1.00),
        "1HZ100V": (700.0, 1.00),
    }
)
PIP_SIZE: Final = 4
# One random-walk step is one second of the index's volatility, whatever tick_interval is.
STEP_SCALE: Final = 1.0 / math.sqrt(365 * 24 * 3600)
# The stream types forget_all accepts (the v3 API's list).
_STREAM_TYPES: Final = frozenset(
    {
        "balance",
        "candles",
        "cashier_payments",
        "crypto_estimations",
        "p2p_advert",
        "p2p_advertiser",
        "p2p_order",
        "p2p_settings",
        "proposal",
        "proposal_open_contract",
        "ticks",
        "trading_platform_asset_listing",
        "transaction",
        "website_status",
    }
)


class Rejected(Exception):
    """A client message that is not a valid request; ``reply`` is the error to send."""

    def __init__(self, echo_req: Any, message: str) -> None:
        super().__init__(message)
        self.reply = error_reply(echo_req, "InputValidationFailed", message)


class Stream(NamedTuple):
    """One subscription of a connection: its symbol and the task sending its ticks."""

    symbol: str
    task: asyncio.Task[None]


def error_reply(echo_req: Any, code: str, message: str) -> dict[str, Any]:
    """Build a Deriv API error reply, echoing ``req_id`` when the request had one."""
    reply: dict[str, Any] = {
        "echo_req": echo_req,
        "error": {"code": code, "message": message},
        "msg_type": "error",
    }
    if isinstance(echo_req, dict) and "req_id" in echo_req:
        reply["req_id"] = echo_req["req_id"]
    return reply


def _ok(req: dict[str, Any], msg_type: str, **fields: Any) -> dict[str, Any]:
    """Build a Deriv API reply, echoing ``req_id`` when the request had one."""
    reply: dict[str, Any] = {"echo_req": req, "msg_type": msg_type, **fields}
    if "req_id" in req:
        reply["req_id"] = req["req_id"]
    return reply


def decode(data: str | bytes) -> dict[str, Any]:
    """Parse one client frame into a request object, or raise :class:`Rejected`."""
    if isinstance(data, bytes):
        raise Rejected({}, "Input validation failed: binary frame")
    try:
        req = json.loads(data)
    except ValueError:
        raise Rejected({}, "Input validation failed: invalid JSON") from None
    if not isinstance(req, dict):
        raise Rejected(req, "Input validation failed: expected object")
    return req


def _website_status() -> dict[str, Any]:
    return {
        "api_call_limits": {
            "max_proposal_subscription": {
                "applies_to": "subscribing to proposal concurrently",
                "max": 5,
            },
            # "requestes" is how the real API spells these keys.
            "max_requestes_general": {"applies_to": "rates", "hourly": 14400, "minutely": 180},
            "max_requestes_outcome": {
                "applies_to": "portfolio, statement and proposal",
                "hourly": 1500,
                "minutely": 25,
            },
            "max_requestes_pricing": {
                "applies_to": "proposal and proposal_open_contract",
                "hourly": 3600,
                "minutely": 80,
            },
        },
        "clients_country": "",
        "site_status": "up",
        "supported_languages": ["EN"],
    }


def stateless_reply(req: dict[str, Any]) -> dict[str, Any]:
    if "ping" in req:
        return _ok(req, "ping", ping="pong")
    if "time" in req:
        return _ok(req, "time", time=int(time.time()))
    if "website_status" in req:
        return _ok(req, "website_status", website_status=_website_status())
    return error_reply(req, "UnrecognisedRequest", "Unrecognised request")


def build_reply(data: str | bytes) -> dict[str, Any]:
    """Return the Deriv-style reply for one client message that needs no connection state.

    That is ping, time and website_status, and the errors for anything else; the
    stream requests (ticks, forget, forget_all) are answered by the connection.
    """
    try:
        req = decode(data)
    except Rejected as exc:
        return exc.reply
    return stateless_reply(req)


def tick_message(
    req: dict[str, Any], symbol: str, quote: float, subscription: str | None
) -> dict[str, Any]:
    """Build a tick message; ``subscription`` is the stream's id, None for a one-off tick."""
    tick = {
        "ask": quote,
        "bid": quote,
        "epoch": int(time.time()),
        "pip_size": PIP_SIZE,
        "quote": quote,
        "symbol": symbol,
    }
    if subscription is None:
        return _ok(req, "tick", tick=tick)
    return _ok(req, "tick", subscription={"id": subscription}, tick={"id": subscription, **tick})


def forget(req: dict[str, Any], streams: dict[str, Stream]) -> dict[str, Any]:
    sub_id = req["forget"]
    if not isinstance(sub_id, str):
        return error_reply(req, "InputValidationFailed", "Input validation failed: forget")
    stream = streams.pop(sub_id, None)
    if stream is not None:
        # The reply goes out after this; a cancelled task sends nothing more.
        stream.task.cancel()
    return _ok(req, "forget", forget=int(stream is not None))


def forget_all(req: dict[str, Any], streams: dict[str, Stream]) -> dict[str, Any]:
    kinds = req["forget_all"]
    if isinstance(kinds, str):
        kinds = [kinds]
    if not (
        isinstance(kinds, list)
        and kinds
        and all(isinstance(kind, str) and kind in _STREAM_TYPES for kind in kinds)
    ):
        return error_reply(req, "InputValidationFailed", "Input validation failed: forget_all")
    # Ticks are the only streams this API serves.
    forgotten = list(streams) if "ticks" in kinds else []
    for sub_id in forgotten:
        streams.pop(sub_id).task.cancel()
    return _ok(req, "forget_all", forget_all=forgotten)
