"""What a stream's messages say and what ends its subscription: the subscription id a message
carries, a value at a dotted path, a timestamp in seconds or milliseconds, and the
unsubscribe message with the id filled in (for `monitor.streams` and one-shot probes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import ProbeConfig

SUBSCRIPTION_ID = "{subscription_id}"


def _fill(template: Any, subscription_id: str) -> Any:
    """`template` with every string "{subscription_id}" replaced by the id."""
    if template == SUBSCRIPTION_ID:
        return subscription_id
    if isinstance(template, dict):
        return {k: _fill(v, subscription_id) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, subscription_id) for v in template]
    return template


def _mentions_id(template: Any) -> bool:
    if template == SUBSCRIPTION_ID:
        return True
    if isinstance(template, dict):
        return any(_mentions_id(v) for v in template.values())
    if isinstance(template, list):
        return any(_mentions_id(v) for v in template)
    return False


def unsubscribe_message(probe: ProbeConfig, sid: str | None) -> dict[str, Any] | None:
    """What ends a stream's subscription `sid` (its `unsubscribe`, with the id filled in; by
    default the Deriv API's `forget`), or None: nothing to send, or the id it needs unknown."""
    template = probe.unsubscribe
    if template is False:
        return None
    if template is None:
        return {"forget": sid} if sid is not None else None
    if _mentions_id(template):
        return _fill(template, sid) if sid is not None else None
    return dict(template)


def dig(message: dict[str, Any], path: Sequence[str]) -> Any:
    """The value at a dotted path (already split) of nested objects, or None."""
    value: Any = message
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def epoch_seconds(value: Any) -> float | None:
    """A Unix timestamp in seconds or milliseconds, as seconds; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    seconds = float(value)
    if not 1e9 <= seconds < 1e14:  # not an epoch (1e11 and above: milliseconds)
        return None
    return seconds / 1000.0 if seconds >= 1e11 else seconds


def subscription_of(message: dict[str, Any]) -> str | None:
    """The `subscription.id` a message carries (the Deriv API's), if any."""
    sub = message.get("subscription")
    if isinstance(sub, dict):
        sid = sub.get("id")
        if isinstance(sid, str) and sid:
            return sid
    return None
