"""serf-handlers: turn Serf membership events into infrastructure changes."""

from ._typing import TYPE_CHECKING
from .dispatch import Dispatcher, reply_budget
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

if TYPE_CHECKING:
    from .protocols import (
        CertificateKeeper,
        ClusterView,
        ConfigRenderer,
        DefaultEvents,
        Handler,
        Reconciler,
        Reply,
        RoleFilter,
        SelfChecker,
        StatusReporter,
    )

__version__ = "0.1.0"

# The handler contract (protocols.py). It needs `typing`, which costs a third of a Python
# start; Serf starts a process per event, so it is only imported when someone asks for it.
_PROTOCOLS = (
    "CertificateKeeper", "ClusterView", "ConfigRenderer", "DefaultEvents", "Handler", "Reconciler", "Reply",
    "RoleFilter", "SelfChecker", "StatusReporter",
)


def __getattr__(name: str) -> object:
    if name in _PROTOCOLS:
        from . import protocols

        return getattr(protocols, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CertificateKeeper",
    "ClusterView",
    "ConfigError",
    "ConfigRenderer",
    "DefaultEvents",
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
    "Reply",
    "ReplyTooLargeError",
    "RoleFilter",
    "SelfChecker",
    "SerfHandlersError",
    "SerfRPCError",
    "StatusReporter",
    "UserEvent",
    "__version__",
    "parse_event",
    "reply_budget",
]
