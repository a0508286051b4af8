"""The `log` handler: one line per event, and per member for member events."""

from __future__ import annotations

from .. import _log
from .._typing import TYPE_CHECKING
from ..events import MemberEvent

if TYPE_CHECKING:
    from ..events import Event


class LogHandler:
    """Logs what Serf delivered, through the configured log (text or JSON lines,
    stderr, a file or syslog). Takes no options. Idempotent: it only writes lines."""

    def __call__(self, event: Event) -> None:
        if isinstance(event, MemberEvent):
            for member in event.members:
                _log.info(
                    event.type,
                    event=event.type,
                    name=member.name,
                    addr=member.addr,
                    role=member.role,
                    tags=dict(member.tags),
                )
        else:
            _log.info(
                event.type,
                event=event.type,
                name=event.name,
                ltime=event.ltime,
                payload_bytes=len(event.payload),
            )
