"""The interfaces a handler implements. Imported lazily: only type checkers and
plugin authors need them, and creating Protocol classes costs start-up time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence

if TYPE_CHECKING:
    from .dispatch import Reply
    from .events import Event, Member


class Handler(Protocol):
    """A handler: any callable taking an event. A query handler's return value is the reply.

    Serf re-delivers stale `member-update` events, so a handler must be idempotent:
    applying the same event twice must change nothing the second time.
    """

    def __call__(self, event: Event, /) -> Reply: ...


class Reconciler(Protocol):
    """A handler that can also rebuild its whole state from the alive members."""

    def __call__(self, event: Event, /) -> Reply: ...

    def reconcile(self, members: Sequence[Member], /) -> None: ...
