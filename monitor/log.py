"""structlog set-up: JSON lines or console output on stderr, with secrets redacted."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

from .config import looks_secret

REDACTED = "[REDACTED]"
LEVELS = ("debug", "info", "warning", "error")


def redact_url(url: str) -> str:
    """The URL with its password and credential-looking query values replaced."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", f":{REDACTED}@", 1)
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(looks_secret(k) for k, _ in pairs):
            query = urlencode(
                [(k, REDACTED if looks_secret(k) else v) for k, v in pairs], safe="[]"
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class Redactor:
    """Processor that replaces every known secret string wherever it appears in an event.

    Structural redaction (URLs, header values) happens where events are made; this is the
    net under it, catching secrets that reach a log line inside an exception message.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: set[str] = set(secrets)

    def __call__(self, _: WrappedLogger, __: str, event: EventDict) -> EventDict:
        if self.secrets:
            for key, value in event.items():
                event[key] = self._scrub(value)
        return event

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, MutableMapping):
            return {k: self._scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(v) for v in value]
        return value


class LevelFilter:
    """Processor that drops events below a level that a reload may change."""

    def __init__(self, level: str = "info") -> None:
        self.level = level

    @property
    def level(self) -> str:
        return self._name

    @level.setter
    def level(self, name: str) -> None:
        self._name = name.lower()
        self._min = logging.getLevelName(self._name.upper())

    def __call__(self, _: WrappedLogger, method: str, event: EventDict) -> EventDict:
        number = logging.getLevelName(method.upper())
        if isinstance(number, int) and number < self._min:
            raise structlog.DropEvent
        return event


def _event_first(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Put timestamp, level and event name first, so lines read well in a terminal or grep."""
    head = {k: event.pop(k) for k in ("timestamp", "level", "event") if k in event}
    head.update(event)
    return head


class Logging:
    """The daemon's logger plus the knobs a reload may turn (level, known secrets)."""

    def __init__(
        self,
        fmt: str = "auto",
        level: str = "info",
        stream: TextIO | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        self.stream = stream or sys.stderr
        self.level = LevelFilter(level)
        self.redactor = Redactor(secrets)
        if fmt == "auto":
            fmt = "console" if self.stream.isatty() else "json"
        renderer: structlog.typing.Processor
        if fmt == "console":
            renderer = structlog.dev.ConsoleRenderer(colors=self.stream.isatty())
        else:
            renderer = structlog.processors.JSONRenderer(sort_keys=False)
        processors: list[structlog.typing.Processor] = [
            self.level,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            self.redactor,
            _event_first,
            renderer,
        ]
        self.logger: FilteringBoundLogger = structlog.wrap_logger(
            structlog.WriteLogger(self.stream),
            processors=processors,
            wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
            cache_logger_on_first_use=True,
        )
