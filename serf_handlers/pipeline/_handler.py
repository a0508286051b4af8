"""`KeptFileHandler`: the handler contract (protocols.py) for a handler that keeps one file
(`KeptFile`): member events, reconcile, status, render and check. A subclass sets `kept` and
`selected_role` in its `__init__`; everything else is here, once.
"""

from __future__ import annotations

from .._typing import TYPE_CHECKING
from ..events import MEMBER_EVENTS, MemberEvent

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..dispatch import OwedReload
    from ..events import Event, Member
    from ..protocols import Reply
    from ._kept import KeptFile, Sharing


class KeptFileHandler:
    # It filters members by role itself (and by default takes every role), so that it also
    # sees a member whose role changed away, and drops it.
    takes_role = True
    default_events: tuple[str, ...] = MEMBER_EVENTS
    kept: KeptFile
    selected_role: str | None = None  # None: every role

    @property
    def role(self) -> str | None:
        return self.selected_role

    def __call__(self, event: Event) -> Reply:  # a subclass may answer a query (nginx)
        if isinstance(event, MemberEvent):
            self.kept.event(event)
        return None

    def reconcile(self, members: Sequence[Member]) -> None:
        from ..members import Membership

        # Read under the lock (a Membership reads Serf when first used): never older than an event.
        self.kept.reconcile(members, lambda: members.failed if isinstance(members, Membership) else ())

    def status(self) -> str:
        from ..dispatch import Drift

        text, drift = self.kept.status()
        return Drift(text) if drift else text

    def render(self, write: bool = False, diff: bool = False) -> str:
        if diff:
            return self.kept.diff()
        return self.kept.write() if write else self.kept.text()

    def self_check(self) -> tuple[list[str], list[str]]:
        return self.kept.self_check(), []

    def sharing_reloads(self, owed: list[OwedReload]) -> Sharing:
        return self.kept.sharing(owed)
