"""Coalescing member changes: pure functions of the membership the handlers were last
told about, the changes since, and the time. No clock, socket or thread here.

`wait: {min, max}` has consul-template's meaning: after a change, wait until `min` passes
with no new change, but never hold the first change longer than `max`; then run the
handlers once with the merged result. Without `wait` (both 0) a change is due at once, and
the loop merges whatever is already queued with it.

`merge` turns the changes of one window into at most one `MemberEvent` per type, each
member in the one its net change calls for, compared with the membership before the
window: a member that joined and left inside the window appears in none, one that left and
came back with the same data neither, and one whose data changed is a join (it was not
alive before) or an update (it was). So a handler sees the same events as from Serf, fewer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..events import Member

if TYPE_CHECKING:
    from ..events import MemberEventType

    Events = tuple[tuple[MemberEventType, tuple[Member, ...]], ...]

# Serf's member status after each event; a reaped member is forgotten.
STATUS: Mapping[str, str | None] = {
    "member-join": "alive",
    "member-update": "alive",
    "member-leave": "left",
    "member-failed": "failed",
    "member-reap": None,
}
# The order the merged events run in: capacity arrives before any leaves, and the partition
# rule (haproxy's min_alive) counts failures against the members alive after the joins.
ORDER: tuple[MemberEventType, ...] = ("member-join", "member-update", "member-leave", "member-failed", "member-reap")


@dataclass(frozen=True, slots=True)
class Known:
    """What the handlers were last told about one member."""

    status: str  # alive, failed, or left (every other Serf status: it is not served)
    member: Member


Model = Mapping[str, Known]  # node name -> Known


@dataclass(frozen=True, slots=True)
class Change:
    """One member of one member-event record, in the order received."""

    type: MemberEventType
    member: Member


@dataclass(frozen=True, slots=True)
class Wait:
    """`wait:` in seconds (min 0, max 0: at once)."""

    min: float = 0.0
    max: float = 0.0


@dataclass(frozen=True, slots=True)
class Window:
    """Changes not yet applied: since `first`, the last one at `last` (monotonic seconds)."""

    changes: tuple[Change, ...]
    first: float
    last: float


def extend(window: Window | None, changes: Sequence[Change], now: float) -> Window | None:
    """The window with `changes` (received at `now`) added."""
    if not changes:
        return window
    if window is None:
        return Window(tuple(changes), now, now)
    return Window((*window.changes, *changes), window.first, now)


def due(window: Window, wait: Wait) -> float:
    """When the window must be applied: `min` after its last change, at most `max` after its first."""
    return min(window.last + wait.min, window.first + max(wait.max, wait.min))


def merge(before: Model, changes: Iterable[Change]) -> tuple[Events, dict[str, Known]]:
    """(the events to run, in ORDER, each with its members; the membership after `changes`)."""
    latest: dict[str, Change] = {}
    for change in changes:
        latest.pop(change.member.name, None)  # keep the order of each member's last change
        latest[change.member.name] = change
    after = dict(before)
    events: dict[MemberEventType, list[Member]] = {}
    for name, change in latest.items():
        status = STATUS[change.type]
        if status is None:
            after.pop(name, None)
        else:
            after[name] = Known(status, change.member)
        kind = net_type(before.get(name), change, status)
        if kind is not None:
            events.setdefault(kind, []).append(change.member)
    return tuple((kind, tuple(events[kind])) for kind in ORDER if kind in events), after


def net_type(old: Known | None, change: Change, status: str | None) -> MemberEventType | None:
    """The event that takes a handler from `old` to the member's state after `change`; None: none."""
    was = old.status if old is not None else None
    if status == "alive":
        if was != "alive":
            return "member-join"
        if old is not None and old.member == change.member:
            return None  # it left or failed and came back as it was
        return "member-join" if change.type == "member-join" else "member-update"
    if status == "failed":
        return None if old is not None and was == "failed" and old.member == change.member else "member-failed"
    if was in (None, "left"):
        return None  # never applied (it joined and left inside the window), or already gone
    return change.type  # member-leave or member-reap of a member that was alive or failed
