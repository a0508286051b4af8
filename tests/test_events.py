"""Parsing Serf's events (serf_handlers/events.py): member lines, tags, user events, queries,
the local node; and property-based: what Serf can send round-trips, anything else fails only
with an EventError."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serf_handlers import EventError, Member, MemberEvent, Node, Query, UserEvent, parse_event
from serf_handlers.events import parse_tags

JOIN = {"SERF_EVENT": "member-join", "SERF_SELF_NAME": "lb", "SERF_SELF_ROLE": "lb"}


def members(stdin: bytes) -> tuple[Member, ...]:
    event = parse_event(JOIN, stdin)
    assert isinstance(event, MemberEvent)
    return event.members


@pytest.mark.parametrize(
    ("stdin", "expected"),
    [
        pytest.param(
            b"web1\t127.0.0.1\tweb\tport=8081,role=web\n",
            [("web1", "127.0.0.1", "web", {"port": "8081", "role": "web"})],
            id="one member",
        ),
        pytest.param(b"notags\t127.0.0.1\t\t\n", [("notags", "127.0.0.1", "", {})], id="no role and no tags"),
        pytest.param(b"web 4\t127.0.0.1\tweb\t\n", [("web 4", "127.0.0.1", "web", {})], id="name with a space"),
        pytest.param(b"v6\t::1\tweb\t\n", [("v6", "::1", "web", {})], id="IPv6"),
        pytest.param(
            b"v6\t2001:DB8:0:0::1\tweb\t\n", [("v6", "2001:db8::1", "web", {})], id="IPv6 in canonical form"
        ),
        pytest.param(
            b"a\\tb\\nc\t10.0.0.1\tr\\to\tk=v\\n2\n",
            [("a\tb\nc", "10.0.0.1", "r\to", {"k": "v\n2"})],
            id="tab and newline escapes undone",
        ),
        pytest.param(
            b"back\\slash\t10.0.0.1\t\t\n", [("back\\slash", "10.0.0.1", "", {})], id="other backslashes kept"
        ),
        pytest.param(
            b"web3\t127.0.0.1\tweb\tmy-key.x=1,sp ace=x y,dc=east,role=web,port=8083,weird=a,b=c d\n",
            [
                (
                    "web3",
                    "127.0.0.1",
                    "web",
                    {"my-key.x": "1", "sp ace": "x y", "dc": "east", "role": "web", "port": "8083",
                     "weird": "a", "b": "c d"},
                )
            ],
            id="the real batch line from the protocol notes",
        ),
        pytest.param(
            "név\t10.0.0.2\tweb\tcity=Zürich\n".encode(),
            [("név", "10.0.0.2", "web", {"city": "Zürich"})],
            id="unicode",
        ),
        pytest.param(b"", [], id="no members"),
        pytest.param(b"x\t10.0.0.1\t\t", [("x", "10.0.0.1", "", {})], id="no final newline"),
    ],
)
def test_member_lines(stdin: bytes, expected: list[tuple[str, str, str, dict[str, str]]]) -> None:
    assert [(m.name, m.addr, m.role, dict(m.tags)) for m in members(stdin)] == expected


def test_batch_of_any_size_keeps_order() -> None:
    stdin = b"".join(b"node%d\t10.0.%d.%d\tweb\tport=80\n" % (i, i // 256, i % 256) for i in range(10_000))
    parsed = members(stdin)
    assert len(parsed) == 10_000
    assert parsed[4242] == Member("node4242", "10.0.16.146", "web", parsed[4242].tags)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", {}, id="empty"),
        pytest.param("a=1", {"a": "1"}, id="one"),
        pytest.param("a=1,2", {"a": "1,2"}, id="comma without = belongs to the value"),
        pytest.param("a=1,2,b=3", {"a": "1,2", "b": "3"}, id="comma followed by = starts a tag"),
        pytest.param("a=x=y", {"a": "x=y"}, id="key ends at the first ="),
        pytest.param("a=", {"a": ""}, id="empty value"),
    ],
)
def test_tag_rule(text: str, expected: dict[str, str]) -> None:
    assert dict(parse_tags(text)) == expected


def test_user_event_keeps_binary_payload() -> None:
    payload = bytes(range(256))
    event = parse_event({"SERF_EVENT": "user", "SERF_USER_EVENT": "deploy", "SERF_USER_LTIME": "7"}, payload)
    assert event == UserEvent("deploy", 7, payload, Node(""))
    assert event.type == "user"


def test_query() -> None:
    env = {"SERF_EVENT": "query", "SERF_QUERY_NAME": "backends", "SERF_QUERY_LTIME": "12"}
    event = parse_event(env, b"")
    assert isinstance(event, Query)
    assert (event.type, event.name, event.ltime, event.payload) == ("query", "backends", 12, b"")


def test_local_node_from_environment() -> None:
    env = {**JOIN, "SERF_TAG_ROLE": "lb", "SERF_TAG_DC": "east", "SERF_TAG_MY_KEY_X": "a\tb"}
    event = parse_event(env, b"")
    assert event.node.name == "lb"
    assert event.node.role == "lb"
    assert dict(event.node.tags) == {"role": "lb", "dc": "east", "my_key_x": "a\tb"}


@pytest.mark.parametrize(
    ("env", "stdin", "message"),
    [
        pytest.param({}, b"", "SERF_EVENT is not set", id="no SERF_EVENT"),
        pytest.param({"SERF_EVENT": "member-explode"}, b"", "unknown event type 'member-explode'", id="unknown"),
        pytest.param(JOIN, b"a\tb\n", "stdin line 1: expected 4 tab-separated fields, got 2", id="too few fields"),
        pytest.param(
            JOIN, b"a\t10.0.0.1\t\t\nb\t10.0.0.2\t\t\t\n", "stdin line 2: expected 4 tab-separated fields, got 5",
            id="too many fields on line 2",
        ),
        pytest.param(JOIN, b"\t10.0.0.1\tweb\t\n", "stdin line 1: empty member name", id="empty name"),
        pytest.param(JOIN, b"a\t\tweb\t\n", "stdin line 1: empty address", id="empty address"),
        pytest.param(JOIN, b"a\t10.0.0.256\tweb\t\n", "invalid IP address '10.0.0.256'", id="bad IPv4"),
        pytest.param(JOIN, b"a\tlocalhost\tweb\t\n", "invalid IP address 'localhost'", id="hostname"),
        pytest.param(JOIN, b"a\t127.0.0.1:7946\tweb\t\n", "invalid IP address", id="address with port"),
        pytest.param(JOIN, b"a\tfe80::1%eth0\tweb\t\n", "zone ids are not accepted", id="IPv6 zone"),
        pytest.param(JOIN, b"a\xff\t10.0.0.1\tweb\t\n", "stdin line 1: member data is not valid UTF-8", id="not UTF-8"),
        pytest.param(JOIN, b"a\t10.0.0.1\tweb\tnoequals\n", "tag 'noequals' has no '='", id="tag without ="),
        pytest.param(JOIN, b"a\t10.0.0.1\tweb\t=v\n", "tag with an empty key", id="tag with empty key"),
        pytest.param(
            {"SERF_EVENT": "user", "SERF_USER_LTIME": "1"}, b"", "SERF_USER_EVENT is not set", id="user no name"
        ),
        pytest.param(
            {"SERF_EVENT": "query", "SERF_QUERY_LTIME": "1"}, b"", "SERF_QUERY_NAME is not set", id="query no name"
        ),
        pytest.param(
            {"SERF_EVENT": "user", "SERF_USER_EVENT": "d"}, b"", "SERF_USER_LTIME is not set", id="no ltime"
        ),
        pytest.param(
            {"SERF_EVENT": "query", "SERF_QUERY_NAME": "q", "SERF_QUERY_LTIME": "-3"}, b"",
            "SERF_QUERY_LTIME: expected a non-negative integer, got '-3'", id="negative ltime",
        ),
        pytest.param(
            {"SERF_EVENT": "user", "SERF_USER_EVENT": "d", "SERF_USER_LTIME": "٣"}, b"",
            "expected a non-negative integer", id="non-ASCII digit ltime",
        ),
    ],
)
def test_bad_input_raises_a_clear_error(env: dict[str, str], stdin: bytes, message: str) -> None:
    with pytest.raises(EventError, match=None) as info:
        parse_event(env, stdin)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


# --- property-based (moved from test_properties.py) -------------------------------------

# Text Serf can carry exactly: no literal "\t"/"\n" two-character sequences, because
# Serf does not escape backslashes and such a sequence reads back as a real tab/newline.
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40).filter(
    lambda s: "\\t" not in s and "\\n" not in s
)
names = text.filter(bool)
tag_keys = text.filter(lambda s: s and "=" not in s and "," not in s)
tag_values = text.filter(lambda s: "," not in s)  # "=" is fine: a key ends at its first "="
addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)


def serf_escape(value: str) -> str:
    # What Serf's eventClean does to names, roles and tags before writing a member line.
    return value.replace("\t", "\\t").replace("\n", "\\n")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(names, addresses, text, st.dictionaries(tag_keys, tag_values, max_size=5)), max_size=20))
def test_member_lines_round_trip(members: list[tuple[str, str, str, dict[str, str]]]) -> None:
    stdin = "".join(
        "\t".join([serf_escape(n), a, serf_escape(r), serf_escape(",".join(f"{k}={v}" for k, v in t.items()))]) + "\n"
        for n, a, r, t in members
    ).encode()
    event = parse_event({"SERF_EVENT": "member-update"}, stdin)
    assert isinstance(event, MemberEvent)
    got = [(m.name, m.addr, m.role, dict(m.tags)) for m in event.members]
    assert got == [(n, str(ipaddress.ip_address(a)), r, t) for n, a, r, t in members]


event_types = st.sampled_from(["member-join", "member-leave", "member-failed", "member-update", "member-reap",
                               "user", "query", "bogus", ""])


@settings(max_examples=500, deadline=None)
@given(event_types, st.dictionaries(st.sampled_from(["SERF_USER_EVENT", "SERF_USER_LTIME", "SERF_QUERY_NAME",
                                                     "SERF_QUERY_LTIME", "SERF_SELF_NAME", "SERF_TAG_X"]),
                                    st.text(max_size=8)),
       st.binary(max_size=300) | st.lists(st.sampled_from([b"\t", b"\n", b"a", b"1.2.3.4", b"::1", b"=", b",",
                                                           b"\\t", b"\xff", b" "]), max_size=40).map(b"".join))
def test_anything_malformed_raises_only_event_error(kind: str, env: dict[str, str], stdin: bytes) -> None:
    try:
        parse_event({**env, "SERF_EVENT": kind}, stdin)
    except EventError as exc:
        assert str(exc) and "\n" not in str(exc)
