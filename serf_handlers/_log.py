"""A small line logger: text or JSON lines to stderr, a file, or syslog.

Not the stdlib `logging`: Serf starts a process per event, and importing `logging` costs
a noticeable share of that start-up. Each record is one line whatever its data holds,
because member names and tags can contain newlines.

During a query, stderr is part of Serf's reply, so `quiet()` drops stderr output.
"""

from __future__ import annotations

import os
import sys
import time

from ._typing import TYPE_CHECKING
from .errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import IO

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
FORMATS = ("text", "json")
SYSLOG = "syslog"

_SYSLOG_PRIORITIES = {10: 7, 20: 6, 30: 4, 40: 3}  # LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERR
_ESCAPES = {ord("\\"): "\\\\", ord('"'): '\\"', ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"}
_ESCAPES.update({c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F) if c not in _ESCAPES})


class _State:
    level = LEVELS["info"]
    format = "text"
    file: str | None = None  # None: stderr; "syslog"; or a path
    debug = False
    quiet = 0
    stream: IO[str] | None = None


_state = _State()


def configure(level: str = "info", format: str = "text", file: str | None = None, debug: bool = False) -> None:
    if level not in LEVELS:
        raise ConfigError(f"log.level: expected one of {', '.join(LEVELS)}, got {level!r}")
    if format not in FORMATS:
        raise ConfigError(f"log.format: expected one of {', '.join(FORMATS)}, got {format!r}")
    _state.level = LEVELS["debug"] if debug else LEVELS[level]
    _state.format = format
    _state.file = file
    _state.debug = debug
    _state.stream = None
    if file not in (None, SYSLOG):
        try:
            _stream()
        except OSError as exc:
            raise ConfigError(f"log.file: cannot open {file!r}: {exc.strerror}") from None


class quiet:
    """While active, records bound for stderr are dropped (files and syslog still get them)."""

    def __enter__(self) -> None:
        _state.quiet += 1

    def __exit__(self, *exc_info: object) -> None:
        _state.quiet -= 1


def record(level: str, message: str, fields: Mapping[str, object] | None = None) -> None:
    """Write one record, if `level` passes the configured threshold."""
    number = LEVELS[level]
    if number < _state.level:
        return
    if _state.file is None and _state.quiet:
        return
    line = _format(level, message, fields or {})
    if _state.file == SYSLOG:
        import syslog

        syslog.openlog("serf-handle", syslog.LOG_PID, syslog.LOG_DAEMON)
        syslog.syslog(_SYSLOG_PRIORITIES[number], line)
        return
    stream = _stream()
    stream.write(line + "\n")
    stream.flush()


def debug(message: str, **fields: object) -> None:
    record("debug", message, fields)


def info(message: str, **fields: object) -> None:
    record("info", message, fields)


def warning(message: str, **fields: object) -> None:
    record("warning", message, fields)


def error(message: str, **fields: object) -> None:
    record("error", message, fields)


def exception(message: str, exc: BaseException, **fields: object) -> None:
    """Log an error; with --debug, its traceback follows as escaped lines."""
    if _state.debug:
        import traceback

        fields = {**fields, "traceback": "".join(traceback.format_exception(exc))}
    record("error", message, fields)


def error_line(message: str) -> None:
    """The one line a failed run leaves on stderr, whatever the message holds."""
    sys.stderr.write(f"serf-handle: error: {escape(message)}\n")
    sys.stderr.flush()


def is_debug() -> bool:
    return _state.debug


def _stream() -> IO[str]:
    if _state.stream is None:
        if _state.file is None:
            _state.stream = sys.stderr
        else:
            # O_APPEND: concurrent handler processes each add whole lines.
            _state.stream = open(_state.file, "a", encoding="utf-8")  # noqa: SIM115 - open for the process's life
    return _state.stream


def _format(level: str, message: str, fields: Mapping[str, object]) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if _state.format == "json":
        import json

        return json.dumps({"time": stamp, "level": level, "pid": os.getpid(), "message": message, **fields})
    parts = [stamp, level.upper(), escape(message)]
    parts.extend(f"{key}={_text_value(value)}" for key, value in fields.items())
    return " ".join(parts)


def escape(text: str) -> str:
    """Escape control characters, backslashes and quotes so `text` stays on one line."""
    return text.translate(_ESCAPES)


def _text_value(value: object) -> str:
    if isinstance(value, dict):
        value = ",".join(f"{k}={v}" for k, v in value.items())
    text = escape(str(value))
    return f'"{text}"' if (not text or " " in text or '"' in text or "=" in text) else text
