"""`serf-handle watch`'s coalescing (serf_handlers/watch/_coalesce.py): pure, table-driven."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from serf_handlers.events import Member
from serf_handlers.watch._coalesce import Change, Known, Wait, Window, due, extend, merge


def web(name: str, addr: str = "10.0.0.1", **tags: str) -> Member:
    return Member(name, addr, "web", MappingProxyType({"role": "web", **tags}))


A, B, C = web("a"), web("b"), web("c")
A2 = web("a", "10.0.0.2")  # a's address changed
A_TAG = web("a", weight="5")  # a's tags changed


def join(m: Member) -> Change:
    return Change("member-join", m)


def leave(m: Member) -> Change:
    return Change("member-leave", m)


def fail(m: Member) -> Change:
    return Change("member-failed", m)


def update(m: Member) -> Change:
    return Change("member-update", m)


def reap(m: Member) -> Change:
    return Change("member-reap", m)


ALIVE_A = {"a": Known("alive", A)}


@pytest.mark.parametrize(
    ("before", "changes", "events"),
    [
        pytest.param({}, [], (), id="nothing"),
        pytest.param({}, [join(A)], (("member-join", (A,)),), id="one join"),
        pytest.param({}, [join(A), join(B)], (("member-join", (A, B)),), id="joins merge into one event"),
        pytest.param({}, [join(A), leave(A)], (), id="joined and left inside the window: not applied"),
        pytest.param({}, [join(A), leave(A), reap(A)], (), id="joined, left, reaped inside the window"),
        pytest.param({}, [join(A), fail(A)], (("member-failed", (A,)),), id="joined and failed: the failure counts"),
        pytest.param(ALIVE_A, [leave(A), join(A)], (), id="left and came back as it was: nothing"),
        pytest.param(ALIVE_A, [fail(A), join(A)], (), id="failed and recovered inside the window: nothing"),
        pytest.param(ALIVE_A, [leave(A), join(A2)], (("member-join", (A2,)),), id="came back with a new address"),
        pytest.param(ALIVE_A, [update(A_TAG)], (("member-update", (A_TAG,)),), id="tag change"),
        pytest.param(ALIVE_A, [update(A_TAG), update(A)], (), id="tag change and back: nothing"),
        pytest.param(ALIVE_A, [update(A)], (), id="a stale update changing nothing"),
        pytest.param(ALIVE_A, [join(A)], (), id="a repeated join changing nothing"),
        pytest.param(ALIVE_A, [leave(A)], (("member-leave", (A,)),), id="a known member leaves"),
        pytest.param(ALIVE_A, [update(A_TAG), leave(A_TAG)], (("member-leave", (A_TAG,)),),
                     id="updated then left"),
        pytest.param(ALIVE_A, [fail(A)], (("member-failed", (A,)),), id="a known member fails"),
        pytest.param({"a": Known("failed", A)}, [fail(A)], (), id="failed again: nothing"),
        pytest.param({"a": Known("failed", A)}, [join(A)], (("member-join", (A,)),), id="a failed member recovers"),
        pytest.param({"a": Known("failed", A)}, [leave(A)], (("member-leave", (A,)),),
                     id="force-leave of a failed one"),
        pytest.param({"a": Known("left", A)}, [reap(A)], (), id="reap of a member that already left"),
        pytest.param(ALIVE_A, [fail(A), reap(A)], (("member-reap", (A,)),), id="failed and reaped inside the window"),
        pytest.param({}, [update(A)], (("member-join", (A,)),), id="an update of an unknown member is a join"),
        pytest.param({}, [leave(A)], (), id="a leave of a member never known"),
        pytest.param(
            {"a": Known("alive", A), "b": Known("alive", B)},
            [fail(A), join(C), leave(B), update(A_TAG)],
            (("member-join", (C,)), ("member-update", (A_TAG,)), ("member-leave", (B,))),
            id="one event per type, joins first, each member in its last change's",
        ),
        pytest.param(
            {"a": Known("alive", A)},
            [leave(A), join(B), fail(C)],
            (("member-join", (B,)), ("member-leave", (A,)), ("member-failed", (C,))),
            id="the order is join, update, leave, failed, reap whatever arrived first",
        ),
    ],
)
def test_merge(before: dict[str, Known], changes: list[Change], events: tuple[object, ...]) -> None:
    assert merge(before, changes)[0] == events


@pytest.mark.parametrize(
    ("changes", "after"),
    [
        pytest.param([join(A), leave(A)], {"a": Known("left", A)}, id="a member that left is remembered as left"),
        pytest.param([join(A), reap(A)], {}, id="a reaped member is forgotten"),
        pytest.param([fail(A), join(A2)], {"a": Known("alive", A2)}, id="the last change wins"),
        pytest.param([join(B)], {"a": Known("alive", A), "b": Known("alive", B)}, id="others stay"),
    ],
)
def test_merge_gives_the_membership_after_the_window(changes: list[Change], after: dict[str, Known]) -> None:
    assert merge(ALIVE_A, changes)[1] == after


def test_merge_leaves_its_input_alone() -> None:
    before = dict(ALIVE_A)
    merge(before, [leave(A)])
    assert before == ALIVE_A


@pytest.mark.parametrize(
    ("wait", "first", "last", "expected"),
    [
        pytest.param(Wait(), 10.0, 10.0, 10.0, id="no wait: due at once"),
        pytest.param(Wait(0.5, 2.0), 10.0, 10.0, 10.5, id="min after the only change"),
        pytest.param(Wait(0.5, 2.0), 10.0, 11.0, 11.5, id="min after the last change"),
        pytest.param(Wait(0.5, 2.0), 10.0, 11.8, 12.0, id="changes keep coming: max after the first"),
        pytest.param(Wait(0.0, 2.0), 10.0, 11.0, 11.0, id="min 0: at once, max does not delay"),
        pytest.param(Wait(1.0, 0.5), 10.0, 10.0, 11.0, id="max below min (not from config): min holds"),
    ],
)
def test_due(wait: Wait, first: float, last: float, expected: float) -> None:
    assert due(Window((join(A),), first, last), wait) == pytest.approx(expected)


def test_extend_keeps_the_first_change_time_and_the_order() -> None:
    window = extend(None, [join(A)], 1.0)
    assert extend(window, [], 5.0) is window
    window = extend(window, [leave(A), join(B)], 2.0)
    assert window == Window((join(A), leave(A), join(B)), 1.0, 2.0)
    assert extend(None, [], 3.0) is None
