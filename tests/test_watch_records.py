"""Serf RPC records to events (serf_handlers/watch/_records.py): what Serf sends, and what a
hostile member or a broken agent could make it send, as msgpack decodes it."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import msgpack
import pytest

from serf_handlers.errors import EventError, SerfRPCError
from serf_handlers.events import Member, Node, Query, UserEvent
from serf_handlers.watch._coalesce import Known
from serf_handlers.watch._records import (
    MemberRecord,
    QueryRecord,
    convert,
    local_node,
    snapshot,
    stream_filter,
)

NODE = Node("lb", "lb", MappingProxyType({"role": "lb"}))


def rpc_member(name: Any = "web1", addr: Any = b"\x7f\x00\x00\x01", tags: Any = None, status: Any = "alive",
               **more: Any) -> dict[str, Any]:
    """A `Members` entry as Serf 0.9.4 sends it (SERF_RPC.md)."""
    return {"Name": name, "Addr": addr, "Port": 7946, "Tags": {"role": "web"} if tags is None else tags,
            "Status": status, "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2, "DelegateMin": 2,
            "DelegateMax": 5, "DelegateCur": 5, **more}


def wire(obj: object) -> object:
    """`obj` through msgpack as the agent encodes it and the client decodes it. A Go string
    may hold any bytes: a surrogate-escaped str here goes out as those raw bytes, in a str."""
    data = msgpack.packb(obj, use_bin_type=True, unicode_errors="surrogateescape")
    return msgpack.unpackb(data, raw=False, unicode_errors="surrogateescape")


def member(name: str, addr: str = "127.0.0.1", **tags: str) -> Member:
    return Member(name, addr, tags.get("role", ""), MappingProxyType(tags))


def test_a_member_join_record() -> None:
    second = rpc_member("web2", tags={"role": "web", "a": "1,2"})
    record = wire({"Event": "member-join", "Members": [rpc_member(), second]})
    assert convert(record, NODE) == MemberRecord(
        "member-join", (member("web1", role="web"), member("web2", role="web", a="1,2")), ()
    )


@pytest.mark.parametrize(
    ("addr", "text"),
    [
        pytest.param(b"\x0a\x00\x00\x05", "10.0.0.5", id="IPv4, 4 bytes"),
        pytest.param(b"\x00" * 15 + b"\x01", "::1", id="IPv6, 16 bytes"),
        pytest.param(b"\x00" * 10 + b"\xff\xff\x0a\x00\x00\x05", "10.0.0.5", id="IPv4-mapped (older agents)"),
        pytest.param(bytes.fromhex("fd000000000000000000000000000002"), "fd00::2", id="picked by the agent"),
    ],
)
def test_addresses_are_raw_ip_bytes(addr: bytes, text: str) -> None:
    record = convert(wire({"Event": "member-join", "Members": [rpc_member(addr=addr)]}), NODE)
    assert isinstance(record, MemberRecord)
    assert record.members[0].addr == text


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        pytest.param(rpc_member(addr=b"\x7f\x00\x01"), "Addr: expected 4 or 16 bytes of IP address, got 3 bytes",
                     id="3 address bytes"),
        pytest.param(rpc_member(addr="127.0.0.1"), "Addr: expected 4 or 16 bytes of IP address, got str",
                     id="address as text"),
        pytest.param(rpc_member(addr=None), "Addr: expected 4 or 16 bytes", id="no address"),
        pytest.param(rpc_member(name=""), "Name is empty", id="empty name"),
        pytest.param(rpc_member(name=7), "Name: expected a string, got int 7", id="name not a string"),
        pytest.param(rpc_member(name=b"web1"), "Name: expected a string, got bytes", id="name as bytes"),
        pytest.param(rpc_member(name=b"w\xffb".decode("utf-8", "surrogateescape")), "Name is not valid UTF-8",
                     id="name not UTF-8"),
        pytest.param(rpc_member(tags={"role": "web", "x": b"\xff".decode("utf-8", "surrogateescape")}),
                     "tag 'x' is not valid UTF-8", id="tag value not UTF-8"),
        pytest.param(rpc_member(tags={"role": 5}), "tag 'role': expected a string, got int 5", id="tag not a string"),
        pytest.param(rpc_member(tags={"": "x"}), "a tag name is empty", id="empty tag name"),
        pytest.param(rpc_member(tags=["role"]), "Tags: expected a map", id="tags not a map"),
        pytest.param(rpc_member(status=None), "Status: expected a string", id="no status"),
        pytest.param("web1", "not a map", id="member not a map"),
    ],
)
def test_a_bad_member_is_skipped_and_named_the_others_stay(entry: object, message: str) -> None:
    record = convert(wire({"Event": "member-update", "Members": [entry, rpc_member("good")]}), NODE)
    assert isinstance(record, MemberRecord)
    assert [m.name for m in record.members] == ["good"]
    assert len(record.skipped) == 1
    assert record.skipped[0].startswith("member-update record, Members[0]")
    assert message in record.skipped[0]


def test_a_hostile_name_stays_one_line_in_the_message() -> None:
    record = convert(wire({"Event": "member-join", "Members": [rpc_member("evil\nINFO fake", addr=b"")]}), NODE)
    assert isinstance(record, MemberRecord)
    assert "\n" not in record.skipped[0] and "'evil\\nINFO fake'" in record.skipped[0]


def test_names_and_tags_are_exact_not_escaped() -> None:
    entry = rpc_member("a\tb", tags={"role": "web", "k": "x=y,z"})
    record = convert(wire({"Event": "member-join", "Members": [entry]}), NODE)
    assert isinstance(record, MemberRecord)
    assert record.members[0].name == "a\tb"
    assert dict(record.members[0].tags) == {"role": "web", "k": "x=y,z"}


def test_user_event_and_query_records() -> None:
    user = wire({"Coalesce": False, "Event": "user", "LTime": 1, "Name": "deploy", "Payload": b"\x00\xffv1"})
    assert convert(user, NODE) == UserEvent("deploy", 1, b"\x00\xffv1", NODE)
    empty = wire({"Coalesce": True, "Event": "user", "LTime": 4, "Name": "deploy2", "Payload": None})
    assert convert(empty, NODE) == UserEvent("deploy2", 4, b"", NODE)
    query = wire({"Event": "query", "ID": 1, "LTime": 1, "Name": "backends", "Payload": b"digest"})
    assert convert(query, NODE) == QueryRecord(1, Query("backends", 1, b"digest", NODE))


@pytest.mark.parametrize(
    ("record", "message"),
    [
        pytest.param(["member-join"], "stream record: expected a map, got list", id="not a map"),
        pytest.param({"Event": "member-bogus"}, "unknown Event str 'member-bogus'", id="unknown event"),
        pytest.param({"Members": []}, "unknown Event nothing", id="no event"),
        pytest.param({"Event": "member-join", "Members": None}, "Members is not a list", id="no members"),
        pytest.param({"Event": "user", "LTime": 1, "Payload": b""}, "user event: Name: expected a string",
                     id="user event without a name"),
        pytest.param({"Event": "user", "Name": "d", "LTime": -1, "Payload": b""}, "LTime: expected a non-negative",
                     id="negative LTime"),
        pytest.param({"Event": "user", "Name": "d", "LTime": True, "Payload": b""}, "LTime: expected a non-negative",
                     id="boolean LTime"),
        pytest.param({"Event": "user", "Name": "d", "LTime": 1, "Payload": "text"}, "Payload: expected bytes",
                     id="payload as text"),
        pytest.param({"Event": "query", "Name": "q", "LTime": 1, "Payload": b""}, "ID: expected a non-negative",
                     id="query without an ID"),
        pytest.param({"Event": "query", "Name": "q", "ID": "1", "LTime": 1, "Payload": b""},
                     "ID: expected a non-negative", id="query ID as text"),
    ],
)
def test_a_malformed_record_is_an_event_error(record: object, message: str) -> None:
    with pytest.raises(EventError, match=message.replace("(", r"\(")):
        convert(wire(record), NODE)


def test_members_reply_as_a_snapshot_and_a_model() -> None:
    reply = wire({"Members": [
        rpc_member("lb", tags={"role": "lb"}),
        rpc_member("web1"),
        rpc_member("web2", status="failed"),
        rpc_member("web3", status="left"),
        rpc_member("web4", status="leaving", addr=b""),  # not served: not validated
        rpc_member("bad", addr=b"\x01"),
    ]})
    found, model = snapshot(reply)
    assert [m.name for m in found.alive] == ["lb", "web1"]
    assert [m.name for m in found.failed] == ["web2"]
    assert len(found.skipped) == 1 and "serf members[5] ('bad')" in found.skipped[0]
    assert {name: known.status for name, known in model.items()} == {
        "lb": "alive", "web1": "alive", "web2": "failed", "web3": "left", "web4": "left"}
    assert model["web1"] == Known("alive", member("web1", role="web"))


@pytest.mark.parametrize("reply", [None, {}, {"Members": None}, {"Members": {}}, []])
def test_a_members_reply_without_members_is_an_rpc_error(reply: object) -> None:
    with pytest.raises(SerfRPCError, match="no Members list"):
        snapshot(reply)


def test_local_node_from_stats() -> None:
    stats = wire({"agent": {"name": "lb"}, "tags": {"role": "lb", "Zone": "b"}, "runtime": {}, "serf": {}})
    assert local_node(stats) == Node("lb", "lb", MappingProxyType({"role": "lb", "Zone": "b"}))
    with pytest.raises(SerfRPCError, match=r"agent\.name"):
        local_node({"agent": {}, "tags": {}})
    with pytest.raises(SerfRPCError, match="tags: expected a map"):
        local_node({"agent": {"name": "lb"}, "tags": None})


@pytest.mark.parametrize(
    ("selectors", "expected"),
    [
        pytest.param([], "", id="no handler: no stream (Serf reads '' as everything)"),
        pytest.param(["member-join", "member-leave", "query:backends"], "member-join,member-leave,query:backends",
                     id="exactly the registered ones"),
        pytest.param(["member-join", "*"], "*", id="a handler for everything"),
        pytest.param(["user:deploy", "user", "query:a"], "query:a,user", id="user covers user:NAME"),
        pytest.param(["user:a,b"], "user", id="a name Serf's comma list cannot hold: its kind"),
        pytest.param(["query:x y", "query:ok"], "query", id="white space, which Serf does not trim: its kind"),
        pytest.param(["member-join", "member-join"], "member-join", id="once each"),
    ],
)
def test_stream_filter(selectors: list[str], expected: str) -> None:
    assert stream_filter(selectors) == expected
