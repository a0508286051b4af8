"""The members a kept file is rendered from: updated by each member event, or replaced by a
reconcile. Everything here came from the network, so each member is checked before it is
kept: a name or a tag value outside `SAFE` is refused with one message naming it, and the
member is not kept (its old form, if any, stays). A template can then put any kept value
anywhere without it breaking out of its own field.
"""

from __future__ import annotations

from .._typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from ..events import Member

    Refuse = Callable[[Member], str | None]  # a handler's own check of a member

# Letters, digits and these: enough for host names, addresses, ports, paths and versions;
# never a space, quote, brace, semicolon, comment or shell character.
SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:/@+=,-")
MAX_NAME = 255
MAX_VALUE = 512  # Serf's limit for all of a node's tags together


class Known(NamedTuple):
    """A member as a kept file sees it."""

    name: str
    addr: str
    role: str
    tags: Mapping[str, str]
    status: str  # "alive" or "failed"

    @property
    def port(self) -> int | None:
        """Its `port` tag as a number, when it has a valid one."""
        text = self.tags.get("port", "")
        return int(text) if text.isdigit() and 0 < int(text) < 65536 else None


def refusal(member: Member, refuse: Refuse | None = None) -> str | None:
    """Why `member` cannot be kept, or None; `refuse` is the handler's own check."""
    if not member.name or len(member.name) > MAX_NAME or not SAFE.issuperset(member.name):
        return f"member {member.name!r}: its name must be 1-{MAX_NAME} of letters, digits and _.:/@+=,-"
    for key, value in sorted(member.tags.items()):
        if not key or not SAFE.issuperset(key) or len(value) > MAX_VALUE or not SAFE.issuperset(value):
            return f"member {member.name!r}: tag {key!r}={value!r}: only letters, digits and _.:/@+=,- are kept"
    return None if refuse is None else refuse(member)


def after_event(
    old: Mapping[str, Known], kind: str, members: Iterable[Member], refuse: Refuse | None = None
) -> tuple[dict[str, Known], list[str]]:
    """The members after a member event of `kind`, and one message per refused member."""
    known, refused = dict(old), []
    for member in members:
        if kind in ("member-join", "member-update"):
            why = refusal(member, refuse)
            if why is None:
                known[member.name] = Known(member.name, member.addr, member.role, dict(member.tags), "alive")
            else:
                refused.append(why)
        elif kind == "member-failed":
            if member.name in known:
                known[member.name] = known[member.name]._replace(status="failed")
        else:  # member-leave, member-reap
            known.pop(member.name, None)
    return known, refused


def from_members(
    alive: Iterable[Member], failed: Iterable[Member] = (), refuse: Refuse | None = None
) -> tuple[dict[str, Known], list[str]]:
    """Exactly these members (reconcile), and one message per refused member."""
    known, refused = {}, []
    for status, members in (("failed", failed), ("alive", alive)):
        for member in members:
            why = refusal(member, refuse)
            if why is None:
                known[member.name] = Known(member.name, member.addr, member.role, dict(member.tags), status)
            else:
                refused.append(why)
    return known, refused
