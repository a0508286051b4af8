"""The watcher's RPC client (`watch._rpc.Client`) against a Serf RPC server on loopback:
`bench/fake_serf.py`, the stand-in that section 11 uses for 5,000 members, whose framing and
member maps follow SERF_RPC.md and the real agent's answers. Real agents: tests/integration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.fake_serf import FakeSerf, member
from serf_handlers.errors import SerfRPCError
from serf_handlers.watch._inbox import Inbox, Lost, Record
from serf_handlers.watch._records import snapshot
from serf_handlers.watch._rpc import Client, Refused

WEB = member("web1", "127.0.0.7", {"role": "web", "port": "8080"})


@pytest.fixture
def server() -> Iterator[FakeSerf]:
    fake = FakeSerf([WEB], auth="s3cret")
    try:
        yield fake
    finally:
        fake.stop()


def connect(server: FakeSerf, inbox: Inbox, auth: str | None = "s3cret") -> Client:
    client = Client(server.addr, inbox, 1, timeout=2.0)
    client.open(auth)
    return client


def test_members_stats_and_the_stream(server: FakeSerf) -> None:
    inbox = Inbox()
    client = connect(server, inbox)
    client.stream("member-join,member-update")
    found, model = snapshot(client.members()[0])
    assert [(m.name, m.addr, m.role, m.tags["port"]) for m in found.alive] == [("web1", "127.0.0.7", "web", "8080")]
    assert model["web1"].status == "alive"
    assert client.stats() == {"agent": {"name": "lb"}, "tags": {"role": "lb"}, "serf": {"members": "1"}}
    assert server.emit({"Event": "member-update", "Members": [WEB]}) == 1
    assert server.emit({"Event": "member-leave", "Members": [WEB]}) == 0  # not in our filter
    [record] = inbox.take(2.0)
    assert isinstance(record, Record) and record.member and record.body == {"Event": "member-update",
                                                                            "Members": [WEB]}
    client.close()


def test_event_and_tags_reach_the_agent(server: FakeSerf) -> None:
    client = connect(server, Inbox())
    client.event("deploy", b"\x00v1")
    client.tags({"weight": "7"}, delete=("role",))
    assert server.events == [("deploy", b"\x00v1", False)]
    assert server.tags == {"weight": "7"}
    client.close()


def test_a_wrong_token_is_refused(server: FakeSerf) -> None:
    with pytest.raises(Refused, match="Invalid authentication token"):
        connect(server, Inbox(), auth="nope")


def test_a_respond_too_late_is_an_rpc_error_and_the_connection_stays(server: FakeSerf) -> None:
    client = connect(server, Inbox())
    with pytest.raises(SerfRPCError, match="No pending queries matching ID"):
        client.respond(7, b"late")
    assert client.members()[0]["Members"][0]["Name"] == "web1"  # type: ignore[index]
    client.close()


def test_the_agent_going_away_is_one_lost_item(server: FakeSerf) -> None:
    inbox = Inbox()
    client = connect(server, inbox)
    server.stop()
    [lost] = inbox.take(2.0)
    assert isinstance(lost, Lost) and lost.generation == 1
    with pytest.raises(SerfRPCError, match="not connected"):
        client.members()
    client.close()


def test_a_query_streams_its_records_to_its_sink_and_ends_with_done(server: FakeSerf) -> None:
    server.answers = {"lb": b"drained=no"}
    inbox = Inbox()
    client = connect(server, inbox)
    client.stream("member-update")
    records: list[object] = []
    client.query("backends", b"drained web1", records.append, nodes=("lb",), timeout=2.5)
    client.query("backends", b"digest", records.append)  # a second Seq on the same connection
    assert client.members()[0]["Members"][0]["Name"] == "web1"  # type: ignore[index]  # both done by now
    first = {"Type": "ack", "From": "lb", "Payload": None}, {"Type": "response", "From": "lb", "Payload": b"drained=no"}
    done = {"Type": "done", "From": "", "Payload": None}
    assert records == [*first, done, *first, done]
    assert server.queries[0] == {"FilterNodes": ["lb"], "FilterTags": {}, "RequestAck": True, "RelayFactor": 0,
                                 "Timeout": 2_500_000_000, "Name": "backends", "Payload": b"drained web1"}
    assert server.queries[1]["Timeout"] == 0  # Serf's default
    assert server.emit({"Event": "member-update", "Members": [WEB]}) == 1  # the stream still goes to the inbox
    [record] = inbox.take(2.0)
    assert isinstance(record, Record) and record.member
    assert not client._calls or all(c.command == "stream" for c in client._calls.values())  # done: Seqs freed
    client.close()
