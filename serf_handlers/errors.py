"""The exceptions serf-handlers raises: one root, a few specific kinds."""


class SerfHandlersError(Exception):
    """Root of every error this package raises on purpose."""


class EventError(SerfHandlersError):
    """The event Serf handed us (environment or stdin) is malformed."""


class ConfigError(SerfHandlersError):
    """The configuration file, or a handler's options, are invalid."""


class PluginError(ConfigError):
    """A handler type could not be found or imported; the message names it."""


class HandlerError(SerfHandlersError):
    """A handler could not do its job (the message says which and why)."""


class ReplyTooLargeError(HandlerError):
    """A query reply is larger than Serf will carry back to the asker."""


class SerfRPCError(SerfHandlersError):
    """`serf members` could not be run or its output could not be read."""
