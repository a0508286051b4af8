"""The haproxy handler's plan: which servers are wanted, and what one run must do to get
there. Pure functions: no files, sockets or processes; a fake renderer stands in for the
template."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import pytest

from serf_handlers.events import Member
from serf_handlers.handlers.haproxy._live import LiveServer
from serf_handlers.handlers.haproxy._options import parse
from serf_handlers.handlers.haproxy._plan import (
    NO_CHANGE,
    SAVE,
    Plan,
    live_only,
    make_plan,
    runtime_change,
    wanted_after_event,
    wanted_from_members,
    without_culprits,
)
from serf_handlers.handlers.haproxy._servers import Server, from_member
from serf_handlers.handlers.haproxy._state import EMPTY, Behind, State

RELOAD = parse(reload=["kill", "-USR2", "1"])
LIVE = parse(reload=["kill", "-USR2", "1"], socket="/run/admin.sock")


def server(node: str, port: int = 80, weight: int = 1, backend: str = "web", maint: bool = False) -> Server:
    """The server a member `node` tagged like this becomes (default tags left out)."""
    tags = {"port": str(port)}
    if weight != 1:
        tags["weight"] = str(weight)
    if backend != "web":
        tags["backend"] = backend
    return from_member(node, "10.0.0.1", tags, 80, "web")._replace(maint=maint)


def servers(*items: Server) -> dict[str, Server]:
    return {s.node: s for s in items}


def fake_render(wanted: Mapping[str, Server]) -> str:
    return "".join(f"{s.path} {s.address} {s.options}{' maint' if s.maint else ''}\n" for s in sorted(wanted.values()))


A, B, C = server("a", 8081), server("b", 8082), server("c", 8083)


def plan(old: State, wanted: Mapping[str, Server], installed: str | None, options=LIVE, full: bool = False) -> Plan:
    return make_plan(old, old._replace(servers=wanted), installed, fake_render, options, full)


def kinds(result: Plan) -> list[str]:
    """The plan's steps in order, in words: what the executor will do."""
    return [f"save {step.why}" if step.kind == SAVE else f"{step.kind} (if it fails: {step.if_fails})"
            if step.if_fails else step.kind for step in result.steps]


def applied(*items: Server, pending: tuple[tuple[str, str], ...] = ()) -> State:
    """A state in which HAProxy is known to run exactly `items`."""
    return State(servers(*items), servers(*items), pending)


# --- make_plan: a table of runs ----------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "wanted", "installed", "options", "expected"),
    [
        pytest.param(
            applied(A, B), servers(A, B), fake_render(servers(A, B)), LIVE,
            {"text": None, "runtime": NO_CHANGE, "reload": None, "intent": None,
             "steps": ["save done"]},
            id="repeated event: nothing at all",
        ),
        pytest.param(
            applied(A, pending=(("web", "old"),)), servers(A), fake_render(servers(A)), LIVE,
            {"text": None, "runtime": NO_CHANGE._replace(delete=(("web", "old"),)), "reload": None,
             "steps": ["runtime (if it fails: wait)", "save done"]},
            id="repeated event retries a deferred deletion, never reloads for it",
        ),
        pytest.param(
            applied(A), servers(A, B), fake_render(servers(A)), LIVE,
            {"text": fake_render(servers(A, B)), "runtime": NO_CHANGE._replace(add=(B,)), "reload": None,
             "steps": ["install", "runtime (if it fails: reload)", "save done"]},
            id="join through the runtime API",
        ),
        pytest.param(
            applied(A, B), servers(A), fake_render(servers(A, B)), LIVE,
            {"text": fake_render(servers(A)), "runtime": NO_CHANGE._replace(drain=(B,), delete=(B.key,)),
             "reload": None,
             "steps": ["drain early", "install", "runtime (if it fails: reload)", "save done"]},
            id="leave: drain, maint, delete",
        ),
        pytest.param(
            applied(A), servers(A._replace(weight=5)), fake_render(servers(A)), LIVE,
            {"runtime": NO_CHANGE._replace(update=((A, A._replace(weight=5)),)), "reload": None,
             "steps": ["install", "runtime (if it fails: reload)", "save done"]},
            id="re-weight",
        ),
        pytest.param(
            applied(A), servers(A._replace(tags={"dc": "x"})), fake_render(servers(A)), LIVE,
            {"text": None, "runtime": NO_CHANGE, "reload": None,
             "steps": ["save done"]},
            id="a tag nobody renders changes nothing",
        ),
        pytest.param(
            applied(A), servers(A, server("x", backend="api")), fake_render(servers(A)), LIVE,
            {"runtime": NO_CHANGE, "reload": "backends added ['api'] or removed []",
             "steps": ["install", "reload", "save done"]},
            id="a new backend needs a reload",
        ),
        pytest.param(
            applied(A), servers(A, B), "edited by hand\n", LIVE,
            {"runtime": NO_CHANGE, "reload": "the installed config was not the one HAProxy runs",
             "steps": ["install", "reload", "save done"]},
            id="installed file is not what HAProxy runs",
        ),
        pytest.param(
            State(servers(A), None), servers(A, B), fake_render(servers(A)), LIVE,
            {"runtime": NO_CHANGE, "reload": "HAProxy's current servers are unknown", "intent": None,
             "steps": ["install", "reload", "save done"]},
            id="an earlier run failed before HAProxy got its config",
        ),
        pytest.param(
            EMPTY, servers(A), None, RELOAD,
            {"text": fake_render(servers(A)), "reload": "HAProxy's current servers are unknown",
             "intent": State(servers(A), None, (), exists=False),
             "steps": ["save intent", "install", "reload", "save done"]},
            id="first run: intent saved before installing",
        ),
        pytest.param(
            EMPTY, servers(A), fake_render({}), LIVE,
            {"runtime": NO_CHANGE._replace(add=(A,)), "reload": None,
             "intent": State(servers(A), {}, (), exists=False),
             "steps": ["save intent", "install", "runtime (if it fails: reload)", "save done"]},
            id="first run over the empty config `render --write` installed",
        ),
        pytest.param(
            EMPTY, servers(A), fake_render(servers(A)), LIVE,
            {"text": None, "runtime": NO_CHANGE, "reload": None, "intent": None,
             "steps": ["save done"]},
            id="state lost, installed config already says this",
        ),
        pytest.param(
            applied(A), servers(A, B), fake_render(servers(A)), RELOAD,
            {"text": fake_render(servers(A, B)), "runtime": NO_CHANGE, "reload": "config changed",
             "steps": ["install", "reload", "save done"]},
            id="reload mode: a change reloads",
        ),
        pytest.param(
            applied(A), servers(A._replace(tags={"dc": "x"})), fake_render(servers(A)), RELOAD,
            {"text": None, "reload": None,
             "steps": ["save done"]},
            id="reload mode: nothing rendered changed, no reload",
        ),
    ],
)
def test_make_plan(old: State, wanted: dict[str, Server], installed: str | None, options, expected: dict) -> None:
    result = plan(old, wanted, installed, options)
    assert {key: kinds(result) if key == "steps" else getattr(result, key) for key in expected} == expected
    # Whatever happens, the new membership is never lost, and HAProxy's record is only
    # moved forward at the end.
    known = old.applied if old.exists else result.intent.applied if result.intent else result.rollback.applied
    assert result.rollback == old._replace(servers=wanted, applied=known)
    assert result.done.servers == result.done.applied == wanted


def test_reconcile_goes_through_even_when_the_state_says_done() -> None:
    # `full`: the state may be wrong about HAProxy; the plan still computes the change.
    old = applied(A, pending=(("web", "gone"),))
    result = plan(old, servers(A), "edited by hand\n", full=True)
    assert result.text == fake_render(servers(A))
    assert result.reload == "the installed config was not the one HAProxy runs"


def test_a_broken_template_fails_the_plan_before_anything_happens() -> None:
    def broken(wanted: Mapping[str, Server]) -> str:
        raise RuntimeError("template error")

    with pytest.raises(RuntimeError):
        make_plan(applied(A), applied(A, B), fake_render(servers(A)), broken, LIVE)


# --- the choices made while planning, not while executing ---------------------------------


def test_a_change_of_more_servers_than_reload_above_is_a_reload_that_falls_back_to_the_runtime_api() -> None:
    few = parse(reload=["kill", "-USR2", "1"], socket="/run/admin.sock", reload_above=2)
    at_limit = plan(applied(A), servers(A, B, C), fake_render(servers(A)), few)
    assert kinds(at_limit) == ["install", "runtime (if it fails: reload)", "save done"]
    d = server("d", 8084)
    above = plan(applied(A), servers(A, B, C, d), fake_render(servers(A)), few)
    assert kinds(above) == ["install", "reload instead (if it fails: reload)", "save done"]
    step = above.steps[1]
    assert step.why == "3 servers change: a reload costs less than the runtime API"
    assert step.change == NO_CHANGE._replace(add=(B, C, d)) and above.reload is None
    # A reload that is needed anyway is just that.
    moved = plan(applied(A), servers(A, B, C, server("x", backend="api")), fake_render(servers(A)), few)
    assert kinds(moved) == ["install", "reload", "save done"]


def test_added_servers_get_their_health_checks_and_ids_from_the_plan() -> None:
    from serf_handlers.handlers.haproxy._servers import node_id

    result = plan(applied(A), servers(A, B), fake_render(servers(A)), parse(
        reload=["kill", "-USR2", "1"], socket="/run/admin.sock", check_inter=2000))
    (step,) = [s for s in result.steps if s.kind == "runtime"]
    assert step.checks == "check inter 2000ms fall 1 rise 1"
    assert step.ids == {B.key: node_id("b")}  # the added server's only, as on its config line


ONLY_A = fake_render(servers(A))


@pytest.mark.parametrize(
    ("old", "wanted", "installed", "options", "put_back"),
    [
        pytest.param(applied(A), servers(A, B), ONLY_A, LIVE, ONLY_A,
                     id="a change of servers only: the previous file goes back if the runtime API fails"),
        pytest.param(applied(A), servers(A, server("x", backend="api")), ONLY_A, LIVE, None,
                     id="a change that reloads anyway keeps the new file"),
        pytest.param(EMPTY, servers(A), None, LIVE, None, id="no previous file"),
        pytest.param(applied(A), servers(A, B), fake_render(servers(A, B)), LIVE, None, id="nothing to install"),
        pytest.param(applied(A), servers(A, B), ONLY_A, RELOAD, None, id="no runtime API"),
    ],
)
def test_which_file_goes_back_after_a_failed_live_change(old, wanted, installed, options, put_back) -> None:
    assert plan(old, wanted, installed, options).put_back == put_back


def test_without_a_reload_command_a_due_reload_is_only_logged() -> None:
    result = plan(applied(A), servers(A, B), fake_render(servers(A)), parse())
    assert kinds(result) == ["install", "no reload", "save done"] and result.reload == "config changed"


def test_the_members_haproxy_refused_are_planned_again_without_them() -> None:
    old = applied(A)
    new = old._replace(servers=servers(A._replace(port=9), B))
    again = without_culprits(old, new, {"a": "bad port", "b": "bad name"})
    assert again.servers == servers(A)  # a back to what HAProxy has, b gone
    assert {node: why for node, (_, why) in again.skipped.items()} == {"a": "bad port", "b": "bad name"}


# --- runtime_change ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "pending", "expected"),
    [
        pytest.param(servers(A, B), servers(A, B), (), NO_CHANGE, id="no change"),
        pytest.param(
            servers(A, B._replace(maint=True)), servers(A), (),
            NO_CHANGE._replace(delete=(B.key,)), id="a server already in maintenance is not drained",
        ),
        pytest.param(
            servers(A), servers(A, B), (B.key,), NO_CHANGE._replace(add=(B,)),
            id="a deferred deletion that comes back is revived, not deleted",
        ),
        pytest.param(
            servers(A), servers(A._replace(backend="api")), (),
            NO_CHANGE._replace(drain=(A,), delete=(A.key,), add=(A._replace(backend="api"),)),
            id="moving to another backend is a delete and an add",
        ),
        pytest.param(
            servers(A), servers(A._replace(port=9, maint=True)), (),
            NO_CHANGE._replace(update=((A, A._replace(port=9, maint=True)),)), id="move and maintenance",
        ),
    ],
)
def test_runtime_change(old, new, pending, expected) -> None:
    assert runtime_change(old, new, pending) == expected


# --- wanted servers ----------------------------------------------------------------------


def member(name: str, role: str = "web", addr: str = "10.0.0.1", **tags: str) -> Member:
    return Member(name, addr, role, MappingProxyType(tags))


MAINT = parse(on_failed="maint")


KEPT = {"failed": True}


def failed(*items: Server, maint: bool = False) -> dict[str, Server]:
    return {s.node: s._replace(failed=True, maint=maint) for s in items}


@pytest.mark.parametrize(
    ("old", "kind", "members", "options", "expected", "skipped"),
    [
        pytest.param({}, "member-join", [member("a", port="8081")], RELOAD, servers(A), [], id="join"),
        pytest.param({}, "member-join", [member("db1", role="db")], RELOAD, {}, [], id="another role is ignored"),
        pytest.param(servers(A, B), "member-leave", [member("a")], RELOAD, servers(B), [], id="leave"),
        pytest.param(servers(A), "member-leave", [member("a")], RELOAD, {}, [], id="the last one leaves: empty"),
        pytest.param(servers(A), "member-reap", [member("a")], RELOAD, {}, [], id="reap"),
        pytest.param(servers(A, B, C), "member-failed", [member("a")], RELOAD, servers(B, C), [], id="failed: removed"),
        pytest.param(
            servers(A, B, C), "member-failed", [member("a")], MAINT, {**servers(B, C), **failed(A, maint=True)}, [],
            id="failed with on_failed maint",
        ),
        pytest.param(
            servers(A, B), "member-failed", [member("a"), member("b")], RELOAD, failed(A, B), [],
            id="partition: all failed, all kept",
        ),
        pytest.param(
            servers(A, B, C), "member-failed", [member("a"), member("b")], MAINT, {**servers(C), **failed(A, B)}, [],
            id="partition: below min_alive, kept and not in maintenance",
        ),
        pytest.param(servers(A), "member-failed", [member("a")], RELOAD, failed(A), [], id="never empties a backend"),
        pytest.param(
            servers(A), "member-update", [member("a", role="db")], RELOAD, {}, [], id="role changed away: removed",
        ),
        pytest.param(
            servers(A), "member-update", [member("a", port="x")], RELOAD, servers(A), ["a"],
            id="an invalid update keeps the last valid form",
        ),
        pytest.param(
            {}, "member-join", [member("a", port="x"), member("b", port="8082")], RELOAD, servers(B), ["a"],
            id="an invalid member is skipped, the others apply",
        ),
        pytest.param(
            {}, "member-join", [member("a", backend="-x")], RELOAD, {}, ["a"],
            id="a backend name HAProxy would read as an option",
        ),
    ],
)
def test_wanted_after_event(old, kind, members, options, expected, skipped) -> None:
    wanted = wanted_after_event(State(old, old), kind, members, options)
    assert wanted.servers == expected
    assert [node for node, _ in wanted.errors] == skipped


def test_failed_members_come_back_when_the_rest_fail_and_leave_when_they_return() -> None:
    # a fails and is removed (3 of 4 alive), then b and c fail: 1 of 4 alive is below half,
    # so all three failed members are served again and health checks decide.
    d = server("d", 8084)
    first = wanted_after_event(applied(A, B, C, d), "member-failed", [member("a")], RELOAD)
    assert first.servers == servers(B, C, d) and first.failed == failed(A) and not first.notes
    second = wanted_after_event(first.state(applied(B, C, d)), "member-failed", [member("b"), member("c")], RELOAD)
    assert second.servers == {**servers(d), **failed(A, B, C)} and second.failed == {}
    assert second.notes == ["keeping 3 failed member(s) in backend web: only 1 of 4 servers alive (min_alive 0.5); "
                            "health checks decide"]
    # The partition heals: they rejoin, and the one that never does is removed again.
    back = wanted_after_event(second.state(applied(d)), "member-join", [member("b", port="8082"),
                                                                        member("c", port="8083")], RELOAD)
    assert back.servers == servers(B, C, d) and back.failed == failed(A)
    assert wanted_after_event(back.state(applied(B, C, d)), "member-reap", [member("a")], RELOAD).failed == {}


def test_a_reported_skip_is_not_reported_again_until_the_member_changes() -> None:
    first = wanted_after_event(EMPTY, "member-join", [member("a", port="x")], RELOAD)
    assert [node for node, _ in first.errors] == ["a"] and set(first.skipped) == {"a"}
    again = wanted_after_event(first.state(EMPTY), "member-update", [member("a", port="x")], RELOAD)
    assert again.errors == [] and set(again.skipped) == {"a"}
    changed = wanted_after_event(again.state(EMPTY), "member-update", [member("a", port="y")], RELOAD)
    assert [node for node, _ in changed.errors] == ["a"]
    fixed = wanted_after_event(changed.state(EMPTY), "member-update", [member("a", port="8081")], RELOAD)
    assert fixed.servers == servers(A) and fixed.skipped == {}


def test_wanted_from_members_keeps_a_bad_members_last_form_unless_its_name_is_taken() -> None:
    old = applied(A, B)
    members = [member("a", port="bad"), member("b", port="8082"), member("c", port="8083")]
    wanted = wanted_from_members(old, members, RELOAD)
    assert wanted.servers == servers(A, B, C)
    assert [node for node, _ in wanted.errors] == ["a"]
    # Only members of the role, and nothing from the old state that is not alive now.
    assert wanted_from_members(old, [member("c", port="8083"), member("x", role="db")], RELOAD).servers == servers(C)
    # Failed members count, and are kept by the partition rule.
    assert wanted_from_members(old, [member("c", port="8083")], RELOAD, failed=[member("a"), member("b")]).servers == {
        **servers(C), **failed(A, B)}


def test_two_nodes_cannot_share_a_server_name() -> None:
    # "a b" sanitises to a hashed name, never to another node's plain name.
    first = wanted_from_members(EMPTY, [member("a b"), member("a_b")], RELOAD)
    names = [s.name for s in first.servers.values()]
    assert len(set(names)) == 2 and not first.skipped


# --- HAProxy's live servers are the truth -----------------------------------------------


def live(*items: Server, admin: dict[str, int] | None = None, port: dict[str, int] | None = None):
    """`show servers state` as parsed: `items` as HAProxy has them, with overrides."""
    admin, port = admin or {}, port or {}
    return {
        s.key: LiveServer(s.backend, s.name, s.addr, port.get(s.node, s.port), s.weight, admin.get(s.node, 0), 2)
        for s in items
    }


@pytest.mark.parametrize(
    ("haproxy", "expected"),
    [
        pytest.param(live(A, B), NO_CHANGE, id="in sync: nothing"),
        pytest.param(live(A, B, admin={"b": 0x08}), NO_CHANGE._replace(update=((B._replace(drain=True), B),)),
                     id="left drained by a failed run"),
        pytest.param(live(A, B, admin={"b": 0x01}), NO_CHANGE._replace(update=((B._replace(maint=True), B),)),
                     id="put in maintenance behind our back"),
        pytest.param(live(A, B, port={"a": 9}), NO_CHANGE._replace(update=((A._replace(port=9), A),)),
                     id="moved behind our back"),
        pytest.param(live(A), NO_CHANGE._replace(add=(B,)), id="missing (HAProxy restarted with an old file)"),
        pytest.param(live(A, B, C._replace(backend="web", name="static")), NO_CHANGE,
                     id="a server this handler did not make is left alone"),
    ],
)
def test_a_repeated_event_repairs_what_haproxy_really_has(haproxy, expected) -> None:
    old = applied(A, B)
    result = make_plan(old, old, fake_render(servers(A, B)), fake_render, LIVE, live=haproxy)
    assert result.runtime == expected and result.reload is None and result.text is None


def test_without_an_answer_from_haproxy_the_record_stands() -> None:
    old = applied(A, B)
    assert make_plan(old, old, fake_render(servers(A, B)), fake_render, LIVE, live=None).runtime == NO_CHANGE


def test_state_lost_while_haproxy_runs_the_installed_file_goes_through_the_runtime_api() -> None:
    # A fresh reconcile (no state file): HAProxy's live servers are exactly the ones the
    # installed file renders, so HAProxy runs that file: no reload for a 5,000-server join.
    result = make_plan(EMPTY, EMPTY._replace(servers=servers(A, B)), fake_render(servers(A)), fake_render, LIVE,
                       full=True, live=live(A))
    assert result.reload is None and result.runtime == NO_CHANGE._replace(add=(B,))
    # A file that is not what HAProxy has still reloads.
    other = make_plan(EMPTY, EMPTY._replace(servers=servers(A, B)), fake_render(servers(A)), fake_render, LIVE,
                      full=True, live=live(A, C))
    assert other.reload == "HAProxy's current servers are unknown"


# --- the config file cannot be installed (issue 18): the runtime API still makes the change ----


WHY = "vars.tls_certs: /etc/certs/b.pem: no private key in it"


@pytest.mark.parametrize(
    ("old", "wanted", "options", "haproxy", "expected"),
    [
        pytest.param(applied(A), servers(A, B), LIVE, live(A), NO_CHANGE._replace(add=(B,)),
                     id="a join reaches HAProxy live"),
        pytest.param(applied(A, B), servers(B), LIVE, live(A, B), NO_CHANGE._replace(drain=(A,), delete=(A.key,)),
                     id="a leave reaches HAProxy live"),
        pytest.param(applied(A), servers(A, server("b", 8082, backend="api")), LIVE, live(A), NO_CHANGE,
                     id="a server of a backend HAProxy does not have waits for the file"),
        pytest.param(applied(A), servers(A, B), RELOAD, live(A), None, id="no socket: nothing can be applied"),
        pytest.param(applied(A), servers(A, B), LIVE, None, None, id="HAProxy silent: nothing can be applied"),
        pytest.param(State(servers(A), None), servers(A, B), LIVE, live(A), None,
                     id="what HAProxy runs is unknown: nothing can be applied"),
    ],
)
def test_live_only(old: State, wanted: dict[str, Server], options, haproxy, expected) -> None:
    result = live_only(old, old._replace(servers=wanted), WHY, options, haproxy)
    if expected is None:
        assert result is None
        return
    assert result is not None
    assert result.runtime == expected and result.text is None and result.reload is None
    assert kinds(result) == (["runtime (if it fails: fail)"] if expected else []) + ["save done"]
    assert result.error == WHY and result.put_back is None
    assert result.done.behind == Behind(WHY, old.applied)  # the installed file still renders what it did
    assert result.done.servers == wanted  # the membership is kept in full
    reachable = {node: s for node, s in wanted.items() if s.backend == "web"}
    assert result.done.applied == reachable


def test_the_first_run_after_the_fix_installs_the_file_without_a_reload() -> None:
    # HAProxy got B live while the file could not be written: it still renders A alone.
    behind = State(servers(A, B), servers(A, B), behind=Behind(WHY, servers(A)))
    result = make_plan(behind, behind, fake_render(servers(A)), fake_render, LIVE, live=live(A, B))
    assert result.text == fake_render(servers(A, B)) and result.reload is None and result.runtime == NO_CHANGE
    assert result.done.behind is None
    # Still behind with nothing new: not skipped as "already applied" (the file is retried).
    again = make_plan(behind, behind, fake_render(servers(A)), fake_render, LIVE, live=live(A, B))
    assert again.text is not None
    # A file changed otherwise (not what the record says it renders) still reloads.
    edited = make_plan(behind, behind, "edited by hand\n", fake_render, LIVE, live=live(A, B))
    assert edited.reload == "the installed config was not the one HAProxy runs"


_LINE = "    server web1 10.0.0.1:80 id 7 weight {w} check inter 500ms fall 1 rise 1{d}"


@pytest.mark.parametrize(
    ("before", "after", "trivial"),
    [
        pytest.param(_LINE.format(w=1, d=""), _LINE.format(w=3, d=""), True, id="weight"),
        pytest.param(_LINE.format(w=1, d=""), _LINE.format(w=1, d=" disabled"), True, id="maintenance"),
        pytest.param(_LINE.format(w=2, d=" disabled"), _LINE.format(w=0, d=""), True, id="weight and state"),
        pytest.param(_LINE.format(w=1, d=""), _LINE.format(w=1, d="").replace("10.0.0.1", "10.0.0.2"), False,
                     id="address"),
        pytest.param(_LINE.format(w=1, d=""), _LINE.format(w=1, d="").replace("web1", "web2"), False, id="name"),
        pytest.param(_LINE.format(w=1, d=""), _LINE.format(w=1, d="") + "\n    server web2 10.0.0.2:80", False,
                     id="a line more"),
        pytest.param("    bind *:80", "    bind *:81", False, id="another line"),
        pytest.param(_LINE.format(w=1, d=""), _LINE.format(w=1, d="").replace("weight 1", "weight x"), False,
                     id="not a number"),
        pytest.param(_LINE.format(w=1, d=""), _LINE.format(w=1, d=" backup"), False, id="another option"),
    ],
)
def test_haproxy_c_is_skipped_only_for_weights_and_states(before: str, after: str, trivial: bool) -> None:
    from serf_handlers.handlers.haproxy._plan import only_weights_and_states

    head = "global\n    maxconn 10\nbackend web\n"
    assert only_weights_and_states(head + before, head + after) is trivial
