"""The shared pipeline under the kept-file handlers (`serf_handlers.pipeline`).

1. `make_plan`, pure: a table of runs, each giving the ordered steps (save intent, install,
   save owed and reload, or save done) from the old record, the installed bytes and the new
   text; `after_reload`, what the outcome of an owed reload saves.
2. `_execute` on real files, with tiny argv commands (`true`, `false`, `sh -c`): what a
   failing check, a failing reload and an unchanged record leave behind.
3. `_members`: each member event, reconcile's exact list, and hostile names and tags,
   refused with one message naming the member.
4. `_record`: the state file's round trip, and every kind of corrupt one refused with one
   message that says to run `serf-handle reconcile`.
5. `KeptFile` in-process, with a plain render function: what one run refuses and keeps.

The `template` handler through the real `serf-handle` is in test_template_handler.py.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from serf_handlers.dispatch import Dispatcher
from serf_handlers.errors import HandlerError
from serf_handlers.events import Member, MemberEvent, Node
from serf_handlers.pipeline import KeptFile, KeptFileHandler, Known, Target, _execute, _record
from serf_handlers.pipeline._execute import CheckError, execute
from serf_handlers.pipeline._members import MAX_NAME, MAX_VALUE, after_event, from_members, refusal
from serf_handlers.pipeline._plan import INSTALL, PENDING, RELOAD, SAVE, Plan, Step, after_reload, digest, make_plan
from serf_handlers.pipeline._record import EMPTY, Record, RecordError

A = Known("a", "10.0.0.1", "web", {"port": "80"}, "alive")
B = Known("b", "10.0.0.2", "web", {"port": "81"}, "alive")
TEXT_A, TEXT_AB = "a 10.0.0.1:80\n", "a 10.0.0.1:80\nb 10.0.0.2:81\n"
D_A, D_AB = digest(TEXT_A.encode()), digest(TEXT_AB.encode())
NODE = {"name": "lb", "role": "lb", "tags": {}}


pytestmark = pytest.mark.usefixtures("fresh_log")


def rec(*members: Known, installed: str | None = None, pending: str | None = None, exists: bool = True) -> Record:
    return Record({m.name: m for m in members}, installed, pending, NODE, exists)


# --- 1. make_plan: a table of runs ---------------------------------------------------------


def intent(old: Record, new: Record) -> Record:
    """What is saved before installing when a reload command is set (see _plan)."""
    return new._replace(installed=old.installed, reload_pending=PENDING, exists=True)


def done(new: Record, text: str) -> Record:
    return new._replace(installed=digest(text.encode()), reload_pending=None, exists=True)


def owed(new: Record, text: str, pending: str = PENDING) -> Record:
    """What is saved once the file is installed and its reload owed to the run."""
    return done(new, text)._replace(reload_pending=pending)


def described(plan: Plan, old: Record, new: Record) -> list[str]:
    """The plan's steps in words; a save that would write what is already there says so
    (`execute` skips it)."""
    words = []
    for i, step in enumerate(plan.steps):
        if step.kind == SAVE:
            assert step.record is not None
            if step.record == done(new, plan.text):
                words.append("save done" + (" (nothing new)" if _record.same(old, step.record) else ""))
            elif step.record == intent(old, new) and INSTALL in (s.kind for s in plan.steps[i:]):
                words.append("save intent")
            elif step.record == owed(new, plan.text):
                words.append("save owed")
            elif step.record == owed(new, plan.text, str(old.reload_pending)):
                words.append("save owed (still)")
            else:
                words.append(f"save {step.record!r}")
        elif step.kind == RELOAD:
            words.append(f"reload: {step.why}")
        else:
            words.append(step.kind)
    return words


CHANGED = ["save intent", "install", "save owed", "reload: the content changed"]


@pytest.mark.parametrize(
    ("old", "new", "installed", "text", "reloads", "expected"),
    [
        pytest.param(
            EMPTY, rec(A, exists=False), None, TEXT_A, False, ["install", "save done"],
            id="first install, no reload command: no intent needed",
        ),
        pytest.param(
            EMPTY, rec(A, exists=False), None, TEXT_A, True, CHANGED,
            id="first install with a reload command: intent saved before installing",
        ),
        pytest.param(
            rec(A, installed=D_A), rec(A, B), TEXT_A.encode(), TEXT_AB, True, CHANGED,
            id="join: changed text is installed and reloaded",
        ),
        pytest.param(
            rec(A, B, installed=D_AB), rec(A), TEXT_AB.encode(), TEXT_A, False, ["install", "save done"],
            id="leave without a reload command",
        ),
        pytest.param(
            rec(A, installed=D_A), rec(A), TEXT_A.encode(), TEXT_A, True, ["save done (nothing new)"],
            id="repeated event: nothing to do, nothing to save",
        ),
        pytest.param(
            rec(A, installed=D_A), rec(A, B), TEXT_A.encode(), TEXT_A, True, ["save done"],
            id="unchanged text (a member it does not render): no install, no reload, the members saved",
        ),
        pytest.param(
            rec(A, installed=D_A, pending="reload command ['x'] exited 1: down"), rec(A), TEXT_A.encode(), TEXT_A,
            True, ["save owed (still)", "reload: owed by an earlier run (reload command ['x'] exited 1: down)"],
            id="unchanged text with a reload owed: the reload is retried",
        ),
        pytest.param(
            rec(A, installed=D_A, pending=PENDING), rec(A), TEXT_A.encode(), TEXT_A,
            True, ["save owed", f"reload: owed by an earlier run ({PENDING})"],
            id="killed between install and reload: the next run reloads",
        ),
        pytest.param(
            rec(A, installed=D_A, pending="reload failed"), rec(A), TEXT_A.encode(), TEXT_A, False, ["save done"],
            id="a reload owed but no reload command any more: the debt is dropped",
        ),
        pytest.param(
            rec(A, installed=D_A, pending="reload failed"), rec(A, B), TEXT_A.encode(), TEXT_AB, True, CHANGED,
            id="changed text with a reload owed: one reload covers both",
        ),
        pytest.param(
            rec(A, installed=D_A), rec(A), b"edited by hand\n", TEXT_A, True,
            CHANGED, id="file edited by hand: installed again and reloaded",
        ),
        pytest.param(
            rec(A, installed=D_A), rec(A), None, TEXT_A, True,
            CHANGED, id="file deleted: installed again and reloaded",
        ),
        pytest.param(
            EMPTY, rec(A, exists=False), TEXT_A.encode(), TEXT_A, True,
            ["save owed", "reload: no record of whether this file was loaded"],
            id="no state file, the file already current (reconcile): reloaded once, a lost record may have owed it",
        ),
        pytest.param(
            rec(A, installed=D_AB), rec(A), TEXT_A.encode(), TEXT_A, True, ["save done"],
            id="file current but another digest recorded (render --write): the record catches up, no reload",
        ),
    ],
)
def test_make_plan(
    old: Record, new: Record, installed: bytes | None, text: str, reloads: bool, expected: list[str]
) -> None:
    plan = make_plan(old, new, installed, text, reloads)
    assert described(plan, old, new) == expected
    assert plan.text == text
    # Whatever fails, the new members are kept, and what was installed and owed stays as it was.
    assert plan.rollback == new._replace(installed=old.installed, reload_pending=old.reload_pending, exists=True)
    kinds = [s.kind for s in plan.steps]
    if INSTALL in kinds and reloads:
        # Crash safety: the debt is on disk before the file changes, and stays until the reload ran.
        assert kinds.index(SAVE) < kinds.index(INSTALL) < kinds.index(RELOAD)
        assert plan.installed_rollback == owed(new, text)  # a failure once installed still owes the reload
    if RELOAD in kinds:
        # The reload is the run's last step, owed to the run (which runs each argv once): the
        # record says it is pending until the run reports the outcome (`after_reload`).
        assert kinds[-1] == RELOAD and plan.steps[-2].kind == SAVE
        assert plan.steps[-2].record is not None and plan.steps[-2].record.reload_pending is not None


def test_make_plan_is_pure() -> None:
    old, new = rec(A, installed=D_A), rec(A, B)
    assert make_plan(old, new, TEXT_A.encode(), TEXT_AB, True) == make_plan(old, new, TEXT_A.encode(), TEXT_AB, True)
    assert old == rec(A, installed=D_A) and new == rec(A, B)


# --- 2. execute, on real files ---------------------------------------------------------------


def target(tmp_path: Path, **changes: Any) -> Target:
    base = Target(str(tmp_path / "out"), str(tmp_path / "state.json"))
    return base._replace(**changes)


def reload_log_argv(log: Path) -> tuple[str, ...]:
    return ("sh", "-c", 'echo reload >> "$1"', "reload", str(log))


def run_plan(t: Target, old: Record, new: Record, text: str) -> Plan:
    """`execute`, then what a run does with the reload it owes (KeptFile, the dispatcher):
    run it, and save what `after_reload` says."""
    from serf_handlers._files import read_bytes

    plan = make_plan(old, new, read_bytes(t.destination), text, t.reload is not None)
    whys: list[str] = []
    execute(plan, old, t, "test", whys.append)
    for _why in whys:
        assert t.reload is not None
        error = None
        try:
            _execute.reload(t.reload)
        except HandlerError as exc:
            error = str(exc)
        after = after_reload(_record.load(t.state), digest(text.encode()), error)
        if after is not None:
            _record.save(t.state, after)
        if error is not None:
            raise HandlerError(error)
    return plan


def test_execute_installs_reloads_and_saves(tmp_path: Path) -> None:
    log = tmp_path / "reloads"
    t = target(tmp_path, reload=reload_log_argv(log))
    run_plan(t, EMPTY, rec(A, exists=False), TEXT_A)
    assert Path(t.destination).read_text() == TEXT_A
    assert stat.S_IMODE(os.stat(t.destination).st_mode) == 0o644
    assert log.read_text() == "reload\n"
    assert _record.load(t.state) == done(rec(A), TEXT_A)
    assert stat.S_IMODE(os.stat(t.state).st_mode) == 0o600


def test_a_repeated_run_writes_nothing(tmp_path: Path) -> None:
    t = target(tmp_path, reload=reload_log_argv(tmp_path / "reloads"))
    run_plan(t, EMPTY, rec(A, exists=False), TEXT_A)
    before = os.stat(t.state).st_ino, os.stat(t.destination).st_ino
    run_plan(t, _record.load(t.state), rec(A), TEXT_A)
    assert (os.stat(t.state).st_ino, os.stat(t.destination).st_ino) == before  # neither file replaced
    assert (tmp_path / "reloads").read_text() == "reload\n"


def test_a_refused_candidate_leaves_the_file_and_keeps_the_members(tmp_path: Path) -> None:
    log = tmp_path / "reloads"
    t = target(tmp_path, check=("sh", "-c", 'grep -q "^a " "$1" || { echo "no a in it" >&2; exit 3; }', "c", "{path}"),
               reload=reload_log_argv(log))
    run_plan(t, EMPTY, rec(A, exists=False), TEXT_A)
    old = _record.load(t.state)
    with pytest.raises(CheckError, match=r"check command \[.*\] exited 3: no a in it"):
        run_plan(t, old, rec(B), "b 10.0.0.2:81\n")
    assert Path(t.destination).read_text() == TEXT_A
    assert log.read_text() == "reload\n"
    assert _record.load(t.state) == rec(B, installed=D_A)  # the members kept, the old file and no debt recorded
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_failed_reload_is_owed_and_retried_though_the_file_is_current(tmp_path: Path) -> None:
    log, up = tmp_path / "reloads", tmp_path / "up"
    reload = ("sh", "-c", 'test -e "$2" || { echo "service down" >&2; exit 1; }; echo reload >> "$1"', "r",
              str(log), str(up))
    t = target(tmp_path, reload=reload)
    with pytest.raises(HandlerError, match=r"reload command .* exited 1: service down"):
        run_plan(t, EMPTY, rec(A, exists=False), TEXT_A)
    assert Path(t.destination).read_text() == TEXT_A  # installed
    owed = _record.load(t.state)
    assert owed.installed == D_A and owed.reload_pending is not None and "service down" in owed.reload_pending

    up.touch()
    plan = run_plan(t, owed, rec(A), TEXT_A)
    assert [s.kind for s in plan.steps] == [SAVE, RELOAD]
    assert log.read_text() == "reload\n"
    assert _record.load(t.state) == done(rec(A), TEXT_A)


def test_a_file_restored_after_a_hand_edit_owes_no_reload(tmp_path: Path) -> None:
    """The intent ("reload pending") is saved before installing; the final save must replace
    it even when the final record equals the run's starting one."""
    log = tmp_path / "reloads"
    t = target(tmp_path, reload=reload_log_argv(log))
    run_plan(t, EMPTY, rec(A, exists=False), TEXT_A)
    Path(t.destination).write_text("edited by hand\n")
    run_plan(t, _record.load(t.state), rec(A), TEXT_A)
    assert Path(t.destination).read_text() == TEXT_A
    assert log.read_text() == "reload\nreload\n"
    assert _record.load(t.state).reload_pending is None


def test_mode_owner_and_backup(tmp_path: Path) -> None:
    t = target(tmp_path, mode=0o640, backup=True)
    run_plan(t, EMPTY, rec(A, exists=False), TEXT_A)
    assert stat.S_IMODE(os.stat(t.destination).st_mode) == 0o640
    assert not Path(f"{t.destination}.bak").exists()  # nothing to keep yet
    os.chmod(t.destination, 0o600)  # the option wins over the file's own mode
    run_plan(t, _record.load(t.state), rec(A, B), TEXT_AB)
    assert stat.S_IMODE(os.stat(t.destination).st_mode) == 0o640
    assert Path(f"{t.destination}.bak").read_text() == TEXT_A

    kept = t._replace(mode=None, backup=False)  # no mode option: the existing file's
    os.chmod(kept.destination, 0o604)
    run_plan(kept, _record.load(kept.state), rec(A), TEXT_A)
    assert stat.S_IMODE(os.stat(kept.destination).st_mode) == 0o604
    assert Path(f"{t.destination}.bak").read_text() == TEXT_A  # backup off: the old .bak stays as it was


def test_an_unknown_owner_is_a_handler_error_naming_it(tmp_path: Path) -> None:
    t = target(tmp_path, owner="no-such-user-serf-handlers", reload=reload_log_argv(tmp_path / "reloads"))
    with pytest.raises(HandlerError, match=r"owner: no user 'no-such-user-serf-handlers'"):
        run_plan(t, EMPTY, rec(A, exists=False), TEXT_A)
    assert not Path(t.destination).exists()
    assert _record.load(t.state) == rec(A, installed=None)  # no debt recorded for a file never installed


def test_a_destination_that_cannot_be_renamed_over_is_written_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A single-file bind mount: rename(2) onto it fails with EBUSY (the real mount is in
    test_template_handler.py, for root)."""
    t = target(tmp_path, check=("grep", "-q", "^b ", "{path}"))
    Path(t.destination).write_text("old\n")
    inode = os.stat(t.destination).st_ino
    real_replace = os.replace

    def busy(src: str, dst: str) -> None:
        if dst == t.destination:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", busy)
    with pytest.raises(CheckError):  # still checked first: a refused candidate is never written in place
        _execute.install(t, TEXT_A, "test")
    assert Path(t.destination).read_text() == "old\n"
    _execute.install(t, TEXT_AB, "test")
    assert Path(t.destination).read_text() == TEXT_AB and os.stat(t.destination).st_ino == inode
    assert "cannot be replaced by rename" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_commands_get_an_argv_never_a_shell(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    _execute.check(["true", f"$(touch {canary})", "{path}; touch " + str(canary)], str(tmp_path / "x"))
    assert not canary.exists()
    with pytest.raises(CheckError, match="check command 'no-such-command-xyz' not found"):
        _execute.check(["no-such-command-xyz", "{path}"], "x")


# --- 3. the members --------------------------------------------------------------------------


def member(name: str, addr: str = "10.0.0.9", role: str = "web", **tags: str) -> Member:
    return Member(name, addr, role, {"role": role, **tags})


def known(m: Member, status: str = "alive") -> Known:
    return Known(m.name, m.addr, m.role, dict(m.tags), status)


W1, W2 = member("web1", "10.0.0.1", port="80"), member("web2", "10.0.0.2", port="81")
OLD = {"web1": known(W1), "web2": known(W2)}


@pytest.mark.parametrize(
    ("kind", "members", "expected"),
    [
        pytest.param("member-join", [member("web3", port="82")], {**OLD, "web3": known(member("web3", port="82"))},
                     id="join adds"),
        pytest.param("member-join", [W1], OLD, id="join of a known member changes nothing"),
        pytest.param("member-update", [member("web1", "10.0.0.1", "api", port="90")],
                     {**OLD, "web1": known(member("web1", "10.0.0.1", "api", port="90"))},
                     id="update replaces role and tags"),
        pytest.param("member-failed", [W1], {**OLD, "web1": known(W1, "failed")}, id="failed marks it failed"),
        pytest.param("member-failed", [member("web9")], OLD, id="failed of an unknown member adds nothing"),
        pytest.param("member-join", [W1._replace(addr="10.0.0.11")],
                     {**OLD, "web1": known(W1._replace(addr="10.0.0.11"))}, id="a member back with a new address"),
        pytest.param("member-leave", [W1], {"web2": known(W2)}, id="leave removes"),
        pytest.param("member-reap", [W2], {"web1": known(W1)}, id="reap removes"),
        pytest.param("member-leave", [member("web9")], OLD, id="leave of an unknown member"),
    ],
)
def test_after_event(kind: str, members: list[Member], expected: dict[str, Known]) -> None:
    old = {name: k for name, k in OLD.items()}
    after, refused = after_event(old, kind, members)
    assert after == expected and refused == []
    assert old == OLD  # not changed in place


def test_failed_then_join_is_alive_again() -> None:
    after, _ = after_event(OLD, "member-failed", [W1])
    after, _ = after_event(after, "member-join", [W1])
    assert after == OLD


HOSTILE_NAMES = [
    pytest.param("web\nevil 6.6.6.6", id="newline"),
    pytest.param("web;rm -rf /", id="semicolon"),
    pytest.param("{{ 7*7 }}", id="jinja braces"),
    pytest.param("{% include '/etc/passwd' %}", id="jinja block"),
    pytest.param("$(touch /tmp/x)", id="command substitution"),
    pytest.param("`id`", id="backticks"),
    pytest.param("it's", id="single quote"),
    pytest.param('say "hi"', id="double quote and space"),
    pytest.param("tab\there", id="tab"),
    pytest.param("#comment", id="comment"),
    pytest.param("back\\slash", id="backslash"),
    pytest.param("ünïcödé", id="non-ASCII"),
    pytest.param("", id="empty"),
    pytest.param("x" * (MAX_NAME + 1), id="too long"),
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_name_is_refused_with_one_message_naming_it(name: str) -> None:
    after, refused = after_event(OLD, "member-join", [member(name), member("web3")])
    assert after == {**OLD, "web3": known(member("web3"))}  # the others are applied
    (why,) = refused
    assert why.startswith(f"member {name!r}: its name must be")
    assert "\n" not in why  # one line whatever the name holds
    assert from_members([member(name), W1]) == ({"web1": known(W1)}, [why])


@pytest.mark.parametrize(
    ("tags", "says"),
    [
        pytest.param({"note": "$(reboot)"}, "tag 'note'='$(reboot)'", id="command substitution in a value"),
        pytest.param({"note": "a\nb"}, "tag 'note'='a\\nb'", id="newline in a value"),
        pytest.param({"note": "x;y"}, "tag 'note'='x;y'", id="semicolon in a value"),
        pytest.param({"note": "{{ x }}"}, "tag 'note'='{{ x }}'", id="braces in a value"),
        pytest.param({"note": "'\"`"}, "tag 'note'=", id="quotes in a value"),
        pytest.param({"note": "a b"}, "tag 'note'='a b'", id="space in a value"),
        pytest.param({"no te": "x"}, "tag 'no te'='x'", id="space in a key"),
        pytest.param({"k{": "x"}, "tag 'k{'='x'", id="brace in a key"),
        pytest.param({"": "x"}, "tag ''='x'", id="empty key"),
        pytest.param({"note": "x" * (MAX_VALUE + 1)}, "tag 'note'=", id="value too long"),
    ],
)
def test_a_hostile_tag_is_refused_and_the_old_form_stays(tags: dict[str, str], says: str) -> None:
    hostile = member("web1", "10.0.0.1", port="80", **tags)
    after, refused = after_event(OLD, "member-update", [hostile])
    assert after == OLD  # web1 as it was before the update
    (why,) = refused
    assert why.startswith(f"member 'web1': {says}") and "\n" not in why
    # reconcile keeps exactly the members it is given: a refused one is not kept at all
    assert from_members([hostile, W2]) == ({"web2": known(W2)}, [why])


def test_clean_values_are_kept_as_they_are() -> None:
    clean = member("web-1.example.com", "fd00::1", "web", port="8080", path="/v1/health", version="1.2.3+build=4,5",
                   email="ops@example.com")
    after, refused = after_event({}, "member-join", [clean])
    assert refused == [] and after == {clean.name: known(clean)}


def test_the_handlers_own_refusal() -> None:
    def no_port(m: Member) -> str | None:
        return None if "port" in m.tags else f"member {m.name!r}: no port tag"

    after, refused = after_event({}, "member-join", [member("web1", port="80"), member("web2")], no_port)
    assert list(after) == ["web1"] and refused == ["member 'web2': no port tag"]
    assert refusal(member("bad name"), no_port) is not None  # the shared checks come first


def test_from_members_alive_and_failed() -> None:
    known_members, refused = from_members([W1], [W2, member("web9")])
    assert known_members == {"web1": known(W1), "web2": known(W2, "failed"), "web9": known(member("web9"), "failed")}
    assert refused == []
    # A member in both lists (a snapshot taken mid-change): alive wins.
    assert from_members([W1], [W1])[0] == {"web1": known(W1)}


@pytest.mark.parametrize(
    ("tags", "port"),
    [
        pytest.param({"port": "8080"}, 8080, id="valid"),
        pytest.param({}, None, id="no port tag"),
        pytest.param({"port": "0"}, None, id="zero"),
        pytest.param({"port": "65536"}, None, id="too big"),
        pytest.param({"port": "80a"}, None, id="not a number"),
        pytest.param({"port": "-1"}, None, id="negative"),
    ],
)
def test_known_port(tags: dict[str, str], port: int | None) -> None:
    assert Known("a", "10.0.0.1", "web", tags, "alive").port == port


# --- 4. the record ---------------------------------------------------------------------------


def test_record_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "sub" / "state.json")
    assert _record.load(path) == EMPTY and not EMPTY.exists
    record = Record({"a": A, "b": B._replace(status="failed")}, D_AB, "reload failed", {"name": "lb", "tags": {}})
    _record.save(path, record)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = _record.load(path)
    assert loaded == record and loaded.exists
    assert _record.same(loaded, record)
    assert not _record.same(loaded, record._replace(reload_pending=None))
    assert not _record.same(EMPTY, EMPTY)  # no state file yet: saving always writes one
    assert _record.dumps(loaded) == Path(path).read_bytes()
    data = json.loads(Path(path).read_bytes())
    assert data == {
        "version": 1,
        "members": {"a": {"addr": "10.0.0.1", "role": "web", "tags": {"port": "80"}, "status": "alive"},
                    "b": {"addr": "10.0.0.2", "role": "web", "tags": {"port": "81"}, "status": "failed"}},
        "installed": D_AB, "reload_pending": "reload failed", "node": {"name": "lb", "tags": {}},
    }


def state(**changes: object) -> bytes:
    data: dict[str, object] = {
        "version": 1, "members": {"a": {"addr": "10.0.0.1", "role": "web", "tags": {}, "status": "alive"}},
        "installed": None, "reload_pending": None, "node": None,
    }
    data.update(changes)
    return json.dumps(data).encode()


def entry(**changes: object) -> dict[str, object]:
    return {"members": {"a": {"addr": "10.0.0.1", "role": "web", "tags": {}, "status": "alive", **changes}}}


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        pytest.param(b"{not json", "Expecting property name", id="invalid JSON"),
        pytest.param(state()[:40], "", id="truncated"),
        pytest.param(b"", "Expecting value", id="empty"),
        pytest.param(b"[]", "not a version 1 state object", id="a list"),
        pytest.param(state(version=2), "not a version 1 state object", id="wrong version"),
        pytest.param(state(members=[]), "", id="members a list"),
        pytest.param(state(**entry(status="dead")), "members.a: expected addr, role and status", id="bad status"),
        pytest.param(state(**entry(addr=7)), "members.a: expected addr, role and status", id="address not a string"),
        pytest.param(state(**entry(tags={"port": 80})), "members.a.tags: expected an object of strings",
                     id="tag value not a string"),
        pytest.param(state(**entry(tags=["port"])), "members.a.tags: expected an object of strings",
                     id="tags a list"),
        pytest.param(state(members={"a": {"addr": "10.0.0.1"}}), "'role'", id="member entry incomplete"),
        pytest.param(state(installed=5), "installed, reload_pending: expected strings or null", id="digest a number"),
        pytest.param(state(reload_pending=True), "expected strings or null", id="pending not a string"),
        pytest.param(state(node=["lb"]), "node: expected an object", id="node a list"),
        pytest.param(b"\xff\xfe", "", id="not UTF-8"),
    ],
)
def test_a_corrupt_record_is_one_error_saying_reconcile(tmp_path: Path, raw: bytes, says: str) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(raw)
    with pytest.raises(RecordError) as caught:
        _record.load(str(path))
    message = str(caught.value)
    assert message.startswith(f"state file {path}: ") and message.endswith("; run `serf-handle reconcile`")
    assert says in message and "\n" not in message


# --- 5. KeptFile, in-process -------------------------------------------------------------------


def plain_render(members: Mapping[str, Known], node: Mapping[str, object] | None) -> str:
    return "".join(f"{m.name} {m.addr} {m.status}\n" for _, m in sorted(members.items())) + "# end\n"


def failing_render(members: Mapping[str, Known], node: Mapping[str, object] | None) -> str:
    raise HandlerError("template x: broken")


def event(kind: str, *members: Member) -> MemberEvent:
    return MemberEvent(kind, members, Node("lb", "lb"))  # type: ignore[arg-type]


def test_kept_file_event_with_no_record_never_replaces_an_existing_file(tmp_path: Path) -> None:
    kept = KeptFile("test", target(tmp_path), plain_render)
    Path(kept.target.destination).write_text("web1 10.0.0.1 alive\nweb2 10.0.0.2 alive\n# end\n")
    with pytest.raises(HandlerError, match=r"no state file while .*/out exists; run `serf-handle reconcile`"):
        kept.event(event("member-join", W1))
    assert Path(kept.target.destination).read_text() == "web1 10.0.0.1 alive\nweb2 10.0.0.2 alive\n# end\n"
    assert not Path(kept.target.state).exists()
    text, drift = kept.status()
    assert drift and "no state file" in text  # status must not call this healthy: every event fails

    kept.reconcile([W1, W2])
    assert _record.load(kept.target.state).members == OLD
    kept.event(event("member-leave", W2))
    assert Path(kept.target.destination).read_text() == "web1 10.0.0.1 alive\n# end\n"


def test_kept_file_render_error_keeps_the_members_for_the_run_after_the_fix(tmp_path: Path) -> None:
    kept = KeptFile("test", target(tmp_path), plain_render)
    kept.event(event("member-join", W1))
    installed = Path(kept.target.destination).read_bytes()
    broken = KeptFile("test", kept.target, failing_render)
    with pytest.raises(HandlerError, match="template x: broken"):
        broken.event(event("member-join", W2))
    assert Path(kept.target.destination).read_bytes() == installed
    assert set(_record.load(kept.target.state).members) == {"web1", "web2"}
    text, drift = broken.status()
    assert drift and "cannot be rendered: template x: broken" in text
    kept.event(event("member-update", W1))  # any later event, once fixed, installs it
    assert Path(kept.target.destination).read_text() == "web1 10.0.0.1 alive\nweb2 10.0.0.2 alive\n# end\n"


def test_kept_file_status(tmp_path: Path) -> None:
    kept = KeptFile("test", target(tmp_path), plain_render)
    assert kept.status() == (f"file: {kept.target.destination}: not written yet\n", False)
    kept.event(event("member-join", W1, W2))
    assert kept.status() == (
        "web1 10.0.0.1 role=web alive\nweb2 10.0.0.2 role=web alive\n"
        f"file: {kept.target.destination}: as installed\n", False)
    Path(kept.target.destination).write_text("edited\n")
    text, drift = kept.status()
    assert drift and "changed since this handler installed it" in text
    os.unlink(kept.target.destination)
    text, drift = kept.status()
    assert drift and "not written yet" in text


def test_kept_file_refused_members_are_reported_after_the_others_are_applied(tmp_path: Path) -> None:
    kept = KeptFile("test", target(tmp_path), plain_render)
    with pytest.raises(HandlerError) as caught:
        kept.event(event("member-join", W1, member("bad name"), member("web3", note="$(x)")))
    assert str(caught.value) == (
        "2 member(s) skipped: member 'bad name': its name must be 1-255 of letters, digits and _.:/@+=,-; "
        "member 'web3': tag 'note'='$(x)': only letters, digits and _.:/@+=,- are kept"
    )
    assert Path(kept.target.destination).read_text() == "web1 10.0.0.1 alive\n# end\n"


def test_kept_file_reconcile_rebuilds_a_corrupt_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kept = KeptFile("test", target(tmp_path), plain_render)
    Path(kept.target.state).write_text("{corrupt")
    with pytest.raises(RecordError):
        kept.event(event("member-join", W1))
    kept.reconcile([W1], lambda: [W2])
    assert "rebuilding it" in capsys.readouterr().err
    assert Path(kept.target.destination).read_text() == "web1 10.0.0.1 alive\nweb2 10.0.0.2 failed\n# end\n"


def test_step_and_plan_are_plain_data() -> None:
    # What `_execute` walks is data: comparable, printable, no behaviour.
    plan = make_plan(EMPTY, rec(A, exists=False), None, TEXT_A, False)
    assert plan.steps == (Step(INSTALL), Step(SAVE, done(rec(A), TEXT_A)))


# --- 6. a reload owed to the run: its outcome, and handlers sharing it -------------------------


@pytest.mark.parametrize(
    ("current", "error", "expected"),
    [
        pytest.param(rec(A, installed=D_A, pending=PENDING), None, rec(A, installed=D_A),
                     id="it ran: nothing owed any more"),
        pytest.param(rec(A, installed=D_A, pending=PENDING), "exited 1: down",
                     rec(A, installed=D_A, pending="exited 1: down"), id="it failed: owed, with why"),
        pytest.param(rec(A, B, installed=D_A, pending=PENDING), None, rec(A, B, installed=D_A),
                     id="another run kept new members since (same file): they stay"),
        pytest.param(rec(A, installed=D_AB, pending=PENDING), None, None,
                     id="another run installed another file since: its own reload is owed, left alone"),
        pytest.param(rec(A, installed=D_AB, pending=PENDING), "exited 1", None,
                     id="another file since, and this reload failed: left alone too"),
        pytest.param(rec(A, installed=D_A), None, None, id="already paid by another run: nothing to save"),
        pytest.param(EMPTY, None, None, id="the state file is gone: nothing to record against"),
    ],
)
def test_after_reload(current: Record, error: str | None, expected: Record | None) -> None:
    assert after_reload(current, D_A, error) == expected


class Kept(KeptFileHandler):
    def __init__(self, tmp_path: Path, name: str, reload: tuple[str, ...]) -> None:
        self.kept = KeptFile(name, target(tmp_path, destination=str(tmp_path / name),
                                          state=str(tmp_path / f"{name}.json"), reload=reload), plain_render)


def test_handlers_in_a_long_lived_dispatcher_share_each_runs_reload(tmp_path: Path) -> None:
    """As in watch mode: one Dispatcher, one dispatch per batch; each batch reloads once, and
    a handler called outside a dispatch reloads by itself."""
    log = tmp_path / "reloads"
    handlers = [Kept(tmp_path, name, reload_log_argv(log)) for name in ("a", "b", "c")]
    dispatcher = Dispatcher()
    for h in handlers:
        dispatcher.register(h, name=h.kept.name)
    for batch, (kind, members) in enumerate([("member-join", (W1, W2)), ("member-leave", (W2,))], 1):
        assert dispatcher.dispatch(event(kind, *members)).failed == ()
        assert log.read_text() == "reload\n" * batch
    assert dispatcher.dispatch(event("member-join", W1)).failed == ()  # nothing changed
    assert log.read_text() == "reload\n" * 2
    assert dispatcher.reconcile([W1, W2]).failed == ()
    assert log.read_text() == "reload\n" * 3
    handlers[0](event("member-leave", W1))
    assert log.read_text() == "reload\n" * 4
    assert [_record.load(h.kept.target.state).reload_pending for h in handlers] == [None] * 3


def test_a_kept_file_outside_a_dispatcher_reloads_and_records_a_failure(tmp_path: Path) -> None:
    kept = KeptFile("test", target(tmp_path, reload=("sh", "-c", "echo down >&2; exit 1")), plain_render)
    with pytest.raises(HandlerError, match=r"reload command .* exited 1: down"):
        kept.event(event("member-join", W1))
    assert _record.load(kept.target.state).reload_pending == "reload command ['sh', '-c', 'echo down >&2; exit 1'] " \
        "exited 1: down"
    text, drift = kept.status()
    assert drift and "reload pending: reload command" in text
