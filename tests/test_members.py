from __future__ import annotations

import json

import pytest

from serf_handlers import SerfRPCError
from serf_handlers.members import parse_members_json


def member(**fields: object) -> dict[str, object]:
    return {
        "name": "web1", "addr": "127.0.0.1:7947", "port": 7947, "tags": {"role": "web"}, "status": "alive", **fields
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(member(), [("web1", "127.0.0.1", "web")], id="IPv4 with gossip port"),
        pytest.param(member(addr="[::1]:7947"), [("web1", "::1", "web")], id="IPv6 with gossip port"),
        pytest.param(member(addr="::1"), [("web1", "::1", "web")], id="bare IPv6"),
        pytest.param(member(status="left"), [], id="left members are dropped"),
        pytest.param(member(status="failed"), [], id="failed members are dropped"),
        pytest.param(member(tags={}), [("web1", "127.0.0.1", "")], id="no role tag"),
    ],
)
def test_alive_members(raw: dict[str, object], expected: list[tuple[str, str, str]]) -> None:
    members, skipped = parse_members_json(json.dumps({"members": [raw]}))
    assert [(m.name, m.addr, m.role) for m in members] == expected
    assert skipped == ()


def test_no_match_prints_null() -> None:
    assert parse_members_json(b'{"members": null}') == ((), ())


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(member(name=""), "missing or empty name", id="empty name"),
        pytest.param(member(addr="nonsense:1"), "invalid IP address 'nonsense'", id="bad address"),
        pytest.param(member(tags={"port": 80}), "tags are not a string mapping", id="non-string tag"),
        pytest.param("web1", "not an object", id="not an object"),
    ],
)
def test_bad_members_are_skipped_with_a_message(raw: object, message: str) -> None:
    members, skipped = parse_members_json(json.dumps({"members": [raw, member(name="ok")]}))
    assert [m.name for m in members] == ["ok"]
    assert len(skipped) == 1 and message in skipped[0]


@pytest.mark.parametrize("text", [b"not json", b"[]", b'{"members": 3}'])
def test_unreadable_output_is_an_rpc_error(text: bytes) -> None:
    with pytest.raises(SerfRPCError):
        parse_members_json(text)
