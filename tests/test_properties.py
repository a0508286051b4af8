"""Property-based tests: what Serf can send round-trips; anything else fails only with our errors."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from serf_handlers import ConfigError, EventError, MemberEvent, parse_event
from serf_handlers.config import parse_config

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


yaml_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=15,
)


@settings(max_examples=500, deadline=None)
@given(yaml_like | st.fixed_dictionaries({}, optional={"log": yaml_like, "handlers": yaml_like}))
def test_any_config_data_is_accepted_or_a_config_error(data: object) -> None:
    try:
        parse_config(data, "fuzz.yml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yml: ")
