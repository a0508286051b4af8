"""serf-handlers: turn Serf membership events into infrastructure changes."""

from .dispatch import Dispatcher, Handler, Reconciler
from .errors import (
    ConfigError,
    EventError,
    HandlerError,
    PluginError,
    ReplyTooLargeError,
    SerfHandlersError,
    SerfRPCError,
)
from .events import Event, Member, MemberEvent, Node, Query, UserEvent, parse_event

__version__ = "0.1.0"

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
