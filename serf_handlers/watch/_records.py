"""Serf RPC records to the package's events: pure, and as strict as events.py.

Everything here comes from the network (a member's name, address and tags are whatever
that member said), through the agent, decoded with `unicode_errors="surrogateescape"` so
that a bad string cannot break the connection: it is refused here instead, as events.py
refuses a member line that is not UTF-8. Addresses are raw IP bytes (4, or 16 when the
agent picked its own address, IPv4-mapped in older agents): turned into text and then
through events.py's own `parse_addr`. A bad member is skipped with a message naming it;
the other members of its record still count (Serf puts many members in one record).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from ..errors import EventError, SerfRPCError
from ..events import MEMBER_EVENTS, Member, Node, Query, UserEvent, parse_addr
from ..members import Snapshot
from ._coalesce import Known

if TYPE_CHECKING:
    from ..events import MemberEventType


@dataclass(frozen=True, slots=True)
class MemberRecord:
    type: MemberEventType
    members: tuple[Member, ...]
    skipped: tuple[str, ...]  # one message per member whose data is invalid


@dataclass(frozen=True, slots=True)
class QueryRecord:
    id: int  # the agent's ID for `respond`: valid on this connection only, until the deadline
    query: Query


Converted = MemberRecord | UserEvent | QueryRecord


def convert(record: object, node: Node) -> Converted:
    """One stream record as an event; raises EventError when the record itself is malformed."""
    if not isinstance(record, dict):
        raise EventError(f"stream record: expected a map, got {type(record).__name__}")
    kind = record.get("Event")
    if kind in MEMBER_EVENTS:
        raw = record.get("Members")
        if not isinstance(raw, list):
            raise EventError(f"stream record {kind}: Members is not a list")
        members: list[Member] = []
        skipped: list[str] = []
        for index, item in enumerate(raw):
            try:
                members.append(member(item, f"{kind} record, Members[{index}]")[1])
            except EventError as exc:
                skipped.append(str(exc))
        return MemberRecord(kind, tuple(members), tuple(skipped))
    if kind == "user":
        name, ltime, payload = _named(record, "user event")
        return UserEvent(name, ltime, payload, node)
    if kind == "query":
        name, ltime, payload = _named(record, "query")
        query_id = record.get("ID")
        if not _uint(query_id):
            raise EventError(f"query {name!r}: ID: expected a non-negative integer, got {_show(query_id)}")
        assert isinstance(query_id, int)
        return QueryRecord(query_id, Query(name, ltime, payload, node))
    raise EventError(f"stream record: unknown Event {_show(kind)}")


def member(raw: object, where: str) -> tuple[str, Member]:
    """(Serf's status, the member) from one `Members` entry; raises EventError."""
    if not isinstance(raw, dict):
        raise EventError(f"{where}: not a map")
    name = _text(raw.get("Name"), where, "Name")
    where = f"{where} ({name!r})"
    status = raw.get("Status")
    if not isinstance(status, str):
        raise EventError(f"{where}: Status: expected a string, got {_show(status)}")
    tags = raw.get("Tags") or {}
    if not isinstance(tags, dict):
        raise EventError(f"{where}: Tags: expected a map, got {_show(tags)}")
    clean = {_text(key, where, "a tag name"): _text(value, where, f"tag {key!r}", empty=True)
             for key, value in tags.items()}
    return status, Member(name, address(raw.get("Addr"), where), clean.get("role", ""), MappingProxyType(clean))


def address(raw: object, where: str) -> str:
    """The canonical text of Serf's raw IP bytes (an IPv4-mapped IPv6 address as IPv4)."""
    if not isinstance(raw, bytes) or len(raw) not in (4, 16):
        got = f"{len(raw)} bytes" if isinstance(raw, bytes) else _show(raw)
        raise EventError(f"{where}: Addr: expected 4 or 16 bytes of IP address, got {got}")
    import ipaddress

    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return parse_addr(str(ip), where)


def snapshot(reply: object) -> tuple[Snapshot, dict[str, Known]]:
    """The `members` reply as `serf-handle reconcile` reads it (alive, failed, skipped), and
    as the watch loop's model of what the handlers know (every status, by name)."""
    raw = reply.get("Members") if isinstance(reply, dict) else None
    if not isinstance(raw, list):
        raise SerfRPCError("'members': the reply has no Members list")
    alive: list[Member] = []
    failed: list[Member] = []
    skipped: list[str] = []
    model: dict[str, Known] = {}
    for index, item in enumerate(raw):
        where = f"serf members[{index}]"
        status = item.get("Status") if isinstance(item, dict) else None
        try:
            if status not in ("alive", "failed"):  # left, leaving, none: not served, not validated
                name = _text(item.get("Name") if isinstance(item, dict) else None, where, "Name")
                model[name] = Known("left", Member(name, ""))
                continue
            found, one = member(item, where)
        except EventError as exc:
            skipped.append(str(exc))
            continue
        (alive if found == "alive" else failed).append(one)
        model[one.name] = Known(found, one)
    return Snapshot(tuple(alive), tuple(failed), tuple(skipped)), model


def local_node(stats: object) -> Node:
    """This agent as `Event.node` (events.py reads it from SERF_SELF_*): from `stats`. Its
    tags are exact here, where SERF_TAG_* upper-cases them."""
    agent = stats.get("agent") if isinstance(stats, dict) else None
    name = agent.get("name") if isinstance(agent, dict) else None
    tags = stats.get("tags") if isinstance(stats, dict) else None
    try:
        name = _text(name, "'stats'", "agent.name")
        if not isinstance(tags, dict):
            raise EventError(f"'stats': tags: expected a map, got {_show(tags)}")
        clean = {_text(k, "'stats'", "a tag name"): _text(v, "'stats'", f"tag {k!r}", empty=True)
                 for k, v in tags.items()}
    except EventError as exc:
        raise SerfRPCError(str(exc)) from None
    return Node(name, clean.get("role", ""), MappingProxyType(clean))


def stream_filter(selectors: Iterable[str]) -> str:
    """Serf's `stream` Type for exactly these selectors (dispatch's vocabulary is Serf's own):
    a comma list, no spaces; "" means no stream at all (Serf would read it as everything).

    A name Serf's comma list cannot hold (a comma, or white space: Serf does not trim) is
    widened to its kind; the dispatcher still runs only the handlers that asked for it.
    """
    wanted: set[str] = set()
    for selector in selectors:
        if selector == "*":
            return "*"
        kind, colon, name = selector.partition(":")
        wanted.add(kind if colon and ("," in name or any(c.isspace() for c in name)) else selector)
    wanted = {s for s in wanted if ":" not in s or s.partition(":")[0] not in wanted}  # user covers user:NAME
    return ",".join(sorted(wanted))


def _named(record: Mapping[str, object], what: str) -> tuple[str, int, bytes]:
    name = _text(record.get("Name"), what, "Name")
    ltime = record.get("LTime")
    if not _uint(ltime):
        raise EventError(f"{what} {name!r}: LTime: expected a non-negative integer, got {_show(ltime)}")
    assert isinstance(ltime, int)
    payload = record.get("Payload")
    if payload is None:
        payload = b""  # Serf sends an empty payload as nil
    if not isinstance(payload, bytes):
        raise EventError(f"{what} {name!r}: Payload: expected bytes, got {_show(payload)}")
    return name, ltime, payload


def _text(value: object, where: str, what: str, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise EventError(f"{where}: {what}: expected a string, got {_show(value)}")
    if not value and not empty:
        raise EventError(f"{where}: {what} is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: bytes that were not UTF-8
        raise EventError(f"{where}: {what} is not valid UTF-8 (at character {exc.start})") from None
    return value


def _uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _show(value: object) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]
