"""serf-handlers: turn Serf membership events into infrastructure changes."""

from ._typing import TYPE_CHECKING
from .dispatch import Dispatcher
from .errors import (
    ConfigError,
    EventError,
    HandlerError,
    PluginError,
    ReplyTooLargeError,
    SerfHandlersError,
    SerfRPCError,
)
from .events import Member, MemberEvent, Node, Query, UserEvent, parse_event

if TYPE_CHECKING:
    from .events import Event
    from .protocols import Handler, Reconciler

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # These need `typing`, which costs a third of a Python start; Serf starts a process
    # per event, so they are only created when someone asks for them.
    if name in ("Handler", "Reconciler"):
        from . import protocols

        return getattr(protocols, name)
    if name == "Event":
        from . import events

        return events.Event
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ConfigError",
    "Dispatcher",
    "Event",
    "EventError",
    "Handler",
    "HandlerError",
    "Member",
    "MemberEvent",
    "Node",
    "PluginError",
    "Query",
    "Reconciler",
    "ReplyTooLargeError",
    "SerfHandlersError",
    "SerfRPCError",
    "UserEvent",
    "__version__",
    "parse_event",
]
