"""The queue between the RPC reader and the watch loop (serf_handlers/watch/_inbox.py): it
never blocks the reader, and past its bound it drops nothing without counting it."""

from __future__ import annotations

import threading
import time

import pytest

from serf_handlers.watch._inbox import Collapsed, Inbox, Lost, Record, Signalled

JOIN = {"Event": "member-join", "Members": []}
USER = {"Event": "user", "Name": "deploy", "LTime": 1, "Payload": b""}


def kinds(items: list[object]) -> list[str]:
    out = []
    for item in items:
        if isinstance(item, Record):
            out.append("member" if item.member else "other")
        elif isinstance(item, Collapsed):
            out.append(f"collapsed({item.members},{item.others})")
        else:
            out.append(type(item).__name__)
    return out


@pytest.mark.parametrize(
    ("bound", "puts", "expected"),
    [
        pytest.param(4, ["m", "m", "m"], ["member", "member", "member"], id="under the bound: all kept"),
        pytest.param(4, ["m"] * 4, ["member"] * 4, id="at the bound: all kept"),
        pytest.param(4, ["m"] * 5, ["collapsed(5,0)"], id="past the bound: one marker for every member record"),
        pytest.param(4, ["m"] * 5 + ["m", "m"], ["collapsed(7,0)"], id="member records after the marker: counted in"),
        pytest.param(4, ["u", "m", "m", "m", "m"], ["other", "collapsed(4,0)"],
                     id="user events stay, members collapse"),
        pytest.param(4, ["m"] * 5 + ["u"], ["collapsed(5,0)", "other"], id="a user event after the marker: kept"),
        pytest.param(3, ["u"] * 4, ["other", "other", "collapsed(0,2)"], id="only user events: the oldest go, counted"),
        pytest.param(3, ["u", "m", "u", "u", "u"], ["other", "other", "collapsed(1,2)"], id="both"),
    ],
)
def test_the_bound(bound: int, puts: list[str], expected: list[str]) -> None:
    inbox = Inbox(bound)
    for put in puts:
        inbox.put_record(1, JOIN if put == "m" else USER)
    assert kinds(inbox.take(0)) == expected
    assert inbox.received == len(puts)


def test_after_the_marker_is_taken_member_records_queue_again() -> None:
    inbox = Inbox(2)
    for _ in range(3):
        inbox.put_record(1, JOIN)
    assert kinds(inbox.take(0)) == ["collapsed(3,0)"]
    inbox.put_record(1, JOIN)
    assert kinds(inbox.take(0)) == ["member"]


def test_records_are_numbered_in_arrival_order() -> None:
    inbox = Inbox()
    for body in (JOIN, USER, "not even a map"):
        inbox.put_record(7, body)
    items = inbox.take(0)
    assert [(r.generation, r.number, r.member) for r in items if isinstance(r, Record)] == [
        (7, 1, True), (7, 2, False), (7, 3, False)]


def test_control_items_go_first() -> None:
    inbox = Inbox()
    inbox.put_record(1, JOIN)
    inbox.put_control(Lost(1, "EOF"))
    inbox.put_control(Signalled(15))
    assert kinds(inbox.take(0)) == ["Lost", "Signalled", "member"]
    assert len(inbox) == 0


def test_take_waits_for_an_item_or_the_timeout() -> None:
    inbox = Inbox()
    started = time.monotonic()
    assert inbox.take(0.05) == []
    assert time.monotonic() - started >= 0.04
    threading.Timer(0.05, inbox.put_record, (1, JOIN)).start()
    started = time.monotonic()
    assert kinds(inbox.take(5)) == ["member"]
    assert time.monotonic() - started < 2


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="bound"):
        Inbox(0)
