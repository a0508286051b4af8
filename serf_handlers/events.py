"""Typed Serf events, and the pure parser that builds them from what Serf hands a handler.

Serf runs the handler with the event in environment variables and the members or the
payload on stdin (Serf's "Event Handlers" documentation). `parse_event` turns exactly that into
one of `MemberEvent`, `UserEvent` or `Query`, or raises `EventError` saying what is wrong
and where. Everything here is untrusted network input: it is validated, never trusted.

NamedTuples rather than dataclasses: Serf starts a process per event, and importing
`dataclasses` costs more than a bare interpreter start.
"""

from __future__ import annotations

from types import MappingProxyType

from ._typing import TYPE_CHECKING, NamedTuple
from .errors import EventError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Literal

MEMBER_EVENTS = ("member-join", "member-leave", "member-failed", "member-update", "member-reap")
EVENT_TYPES = (*MEMBER_EVENTS, "user", "query")

if TYPE_CHECKING:
    MemberEventType = Literal["member-join", "member-leave", "member-failed", "member-update", "member-reap"]

_EMPTY: Mapping[str, str] = MappingProxyType({})


class Node(NamedTuple):
    """The local agent that runs the handler (`SERF_SELF_*`, `SERF_TAG_*`)."""

    name: str
    role: str = ""
    tags: Mapping[str, str] = _EMPTY


class Member(NamedTuple):
    """One cluster member from a member event, or from `serf members`."""

    name: str
    addr: str  # a validated IPv4 or IPv6 address, in its canonical text form
    role: str = ""
    tags: Mapping[str, str] = _EMPTY


class MemberEvent(NamedTuple):
    type: MemberEventType
    members: tuple[Member, ...]
    node: Node = Node("")


class UserEvent(NamedTuple):
    name: str
    ltime: int
    payload: bytes
    node: Node = Node("")

    @property
    def type(self) -> Literal["user"]:
        return "user"


class Query(NamedTuple):
    name: str
    ltime: int
    payload: bytes
    node: Node = Node("")

    @property
    def type(self) -> Literal["query"]:
        return "query"


# A types.UnionType: unlike typing.Union it needs no `typing` import, so it is made eagerly.
Event = MemberEvent | UserEvent | Query


def parse_event(env: Mapping[str, str], stdin: bytes) -> Event:
    """Build the event Serf describes in `env` (its SERF_* variables) and `stdin`.

    Pure: no I/O, no global state. Raises `EventError` for anything malformed.
    """
    kind = env.get("SERF_EVENT")
    if not kind:
        raise EventError("SERF_EVENT is not set: serf-handle must be run by a Serf agent")
    node = _local_node(env)
    if kind in MEMBER_EVENTS:
        return MemberEvent(kind, parse_members(stdin), node)  # type: ignore[arg-type]
    if kind == "user":
        name, ltime = _named(env, "SERF_USER_EVENT", "SERF_USER_LTIME", "user event")
        return UserEvent(name, ltime, bytes(stdin), node)
    if kind == "query":
        name, ltime = _named(env, "SERF_QUERY_NAME", "SERF_QUERY_LTIME", "query")
        return Query(name, ltime, bytes(stdin), node)
    raise EventError(f"SERF_EVENT: unknown event type {kind!r} (expected one of {', '.join(EVENT_TYPES)})")


def parse_members(stdin: bytes) -> tuple[Member, ...]:
    """Parse Serf's member lines: NAME<TAB>ADDR<TAB>ROLE<TAB>TAGS, one per member."""
    lines = stdin.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the final newline, not an empty member
    return tuple(_parse_member_line(raw, number) for number, raw in enumerate(lines, 1))


def _parse_member_line(raw: bytes, number: int) -> Member:
    where = f"stdin line {number}"
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError(f"{where}: member data is not valid UTF-8 (byte {exc.start})") from None
    fields = line.split("\t")
    if len(fields) != 4:
        raise EventError(f"{where}: expected 4 tab-separated fields, got {len(fields)}")
    name, addr, role, tags = (_unescape(field) for field in fields)
    if not name:
        raise EventError(f"{where}: empty member name")
    return Member(name, parse_addr(addr, where), role, parse_tags(tags, where))


def parse_addr(text: str, where: str) -> str:
    """Validate a bare IPv4 or IPv6 address and return its canonical form."""
    if not text:
        raise EventError(f"{where}: empty address")
    # ipaddress accepts IPv6 zone ids ("fe80::1%eth0"); Serf never sends one, and a zone
    # is free text that has no business in a generated config.
    if "%" in text:
        raise EventError(f"{where}: invalid IP address {text!r} (zone ids are not accepted)")
    if _is_canonical_ipv4(text):
        return text
    import ipaddress  # only for IPv6 and oddities: importing it costs ~15% of a Python start

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise EventError(f"{where}: invalid IP address {text!r}") from None


def _is_canonical_ipv4(text: str) -> bool:
    # Serf sends dotted quads; this accepts exactly what ipaddress would print back.
    parts = text.split(".")
    return len(parts) == 4 and all(
        p.isascii() and p.isdigit() and len(p) <= 3 and int(p) < 256 and str(int(p)) == p for p in parts
    )


def parse_tags(text: str, where: str = "tags") -> Mapping[str, str]:
    """Parse Serf's `k=v,k=v` tag list.

    Serf escapes neither `,` nor `=`, so a value containing them is ambiguous. The rule:
    a comma starts a new tag only when the text after it contains `=`; otherwise the
    comma belongs to the previous value. A key ends at its first `=`. So `a=1,2,b=x=y`
    gives {"a": "1,2", "b": "x=y"}. The exact tags are in `serf members -format json`.
    """
    tags: dict[str, str] = {}
    if not text:
        return _EMPTY
    key = None
    for piece in text.split(","):
        if "=" in piece:
            key, _, value = piece.partition("=")
            if not key:
                raise EventError(f"{where}: tag with an empty key in {text!r}")
            tags[key] = value
        elif key is None:
            raise EventError(f"{where}: tag {piece!r} has no '='")
        else:
            tags[key] += "," + piece
    return MappingProxyType(tags)


def _unescape(field: str) -> str:
    # Serf writes real tabs and newlines as the two characters \t and \n, and escapes
    # nothing else (not even backslashes), so this is the whole inverse.
    if "\\" not in field:
        return field
    return field.replace("\\t", "\t").replace("\\n", "\n")


def _named(env: Mapping[str, str], name_var: str, ltime_var: str, what: str) -> tuple[str, int]:
    name = env.get(name_var)
    if not name:
        raise EventError(f"{name_var} is not set for a {what}")
    ltime = env.get(ltime_var)
    if ltime is None or ltime == "":
        raise EventError(f"{ltime_var} is not set for {what} {name!r}")
    if not ltime.isascii() or not ltime.isdigit():
        raise EventError(f"{ltime_var}: expected a non-negative integer, got {ltime!r}")
    return name, int(ltime)


def _local_node(env: Mapping[str, str]) -> Node:
    # Serf upper-cases tag keys and maps anything outside [A-Z0-9_] to "_" in SERF_TAG_*,
    # so the original keys are lost; we report them lower-cased.
    tags = {key[9:].lower(): value for key, value in env.items() if key.startswith("SERF_TAG_") and len(key) > 9}
    return Node(env.get("SERF_SELF_NAME", ""), env.get("SERF_SELF_ROLE", ""), MappingProxyType(tags))
