"""The haproxy handler's state file: round trip, validation, atomic writes and the lock."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serf_handlers._files import Lock, write_atomic
from serf_handlers.errors import HandlerError
from serf_handlers.handlers.haproxy import _state
from serf_handlers.handlers.haproxy._servers import Server

WEB1 = Server("web1", "web1", "10.0.0.1", 8081, 1, "web", {"port": "8081", "dc": "a,b=c\nd"})
WEB2 = Server("web 2\t\u00e9", "web_2_--0123456789", "::1", 80, 0, "api.example.com", {}, maint=True)


def test_missing_state_is_empty_and_marked_so(tmp_path: Path) -> None:
    state = _state.load(str(tmp_path / "nope.json"))
    assert state == _state.EMPTY
    assert not state.exists and state.applied is None


def test_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "sub" / "dir" / "state.json")
    state = _state.State({WEB1.node: WEB1, WEB2.node: WEB2}, {WEB1.node: WEB1}, (("web", "old1"),))
    _state.save(path, state)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = _state.load(path)
    assert loaded == state
    assert _state.same(loaded, state)
    assert not _state.same(_state.EMPTY, _state.State({}, None, (), exists=False))  # a missing file is written
    # Deterministic bytes: same state, same file.
    assert _state.dumps(loaded) == Path(path).read_bytes()


def test_notices_and_a_file_behind_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "state.json")
    state = _state.State({WEB1.node: WEB1, WEB2.node: WEB2}, {WEB1.node: WEB1, WEB2.node: WEB2},
                         notices=("/c/a.pem: the certificate expires on 2027-01-01 00:00:00 UTC, in 3 day(s)",),
                         behind=_state.Behind("template t.j2 line 2: oops", {WEB1.node: WEB1}))
    _state.save(path, state)
    assert _state.load(path) == state and _state.same(_state.load(path), state)
    assert not _state.same(state, state._replace(behind=None))
    assert not _state.same(state, state._replace(notices=()))


def test_applied_equal_to_servers_is_written_once(tmp_path: Path) -> None:
    path = str(tmp_path / "state.json")
    servers = {WEB1.node: WEB1, WEB2.node: WEB2}
    _state.save(path, _state.State(servers, dict(servers)))
    assert json.loads(Path(path).read_text())["applied"] == "servers"
    assert _state.load(path) == _state.State(servers, servers)


def test_applied_unknown_round_trips_as_null(tmp_path: Path) -> None:
    path = str(tmp_path / "state.json")
    _state.save(path, _state.State({WEB1.node: WEB1}, None))
    assert json.loads(Path(path).read_text())["applied"] is None
    assert _state.load(path).applied is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("{", "invalid JSON", id="truncated"),
        pytest.param("[]", "not a version 1 state object", id="not an object"),
        pytest.param('{"version": 2, "servers": {}}', "not a version 1", id="future version"),
        pytest.param('{"version": 1, "servers": []}', "servers: expected an object", id="servers list"),
        pytest.param(
            '{"version": 1, "servers": {"n": {"name": "x\\nserver evil", "addr": "1.2.3.4", "port": 1,'
            ' "weight": 1, "backend": "web"}}}',
            "invalid server name",
            id="injected name",
        ),
        pytest.param(
            '{"version": 1, "servers": {"n": {"name": "x", "addr": "1.2.3.4 backup", "port": 1,'
            ' "weight": 1, "backend": "web"}}}',
            "is not an IP address",
            id="injected addr",
        ),
        pytest.param(
            '{"version": 1, "servers": {"n": {"name": "x", "addr": "1.2.3.4", "port": true,'
            ' "weight": 1, "backend": "web"}}}',
            "invalid port",
            id="bool port",
        ),
        pytest.param(
            '{"version": 1, "servers": {"a": {"name": "x", "addr": "1.2.3.4", "port": 1, "weight": 1,'
            ' "backend": "web"}, "b": {"name": "x", "addr": "1.2.3.5", "port": 1, "weight": 1, "backend": "web"}}}',
            "two nodes have the same server name",
            id="duplicate names",
        ),
        pytest.param('{"version": 1, "servers": {}, "pending": [["web"]]}', "pending:", id="pending"),
    ],
)
def test_corrupt_state_is_an_error_that_says_to_reconcile(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(content)
    with pytest.raises(_state.StateError, match=message) as info:
        _state.load(str(path))
    assert "serf-handle reconcile" in str(info.value)


def test_write_atomic_validation_failure_leaves_target_and_no_candidate(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"old")

    def refuse(candidate: str) -> None:
        assert Path(candidate).read_bytes() == b"new"
        assert Path(candidate).parent == tmp_path  # same directory: the rename is atomic
        raise HandlerError("no")

    with pytest.raises(HandlerError):
        write_atomic(str(target), b"new", 0o644, refuse)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file"]
    write_atomic(str(target), b"new", 0o640)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640


def test_lock_excludes_other_processes_and_times_out(tmp_path: Path) -> None:
    lock = str(tmp_path / "state.json.lock")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(30)",
            lock,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        started = time.monotonic()
        with pytest.raises(HandlerError, match="still locked by another serf-handle"), Lock(lock, timeout=0.3):
            pass
        assert time.monotonic() - started >= 0.3
    finally:
        holder.kill()
        holder.wait()
    with Lock(lock, timeout=1):
        pass  # released when its holder died


def _join_script(state: str, node: str) -> str:
    return (
        "from serf_handlers._files import Lock\n"
        "from serf_handlers.handlers.haproxy import _state\n"
        "from serf_handlers.handlers.haproxy._servers import from_member\n"
        "import time\n"
        f"with Lock({state + '.lock'!r}):\n"
        f"    old = _state.load({state!r})\n"
        "    time.sleep(0.02)  # widen the read-modify-write window\n"
        f"    servers = {{**old.servers, {node!r}: from_member({node!r}, '10.0.0.1', {{}}, 80, 'web')}}\n"
        f"    _state.save({state!r}, old._replace(servers=servers))\n"
    )


def test_concurrent_read_modify_write_loses_no_update(tmp_path: Path) -> None:
    state = str(tmp_path / "state.json")
    nodes = [f"web{i}" for i in range(8)]
    workers = [subprocess.Popen([sys.executable, "-c", _join_script(state, n)]) for n in nodes]
    try:
        assert [w.wait(60) for w in workers] == [0] * len(nodes)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert sorted(_state.load(state).servers) == nodes


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param(None, 0o640, id="a new config"),
        pytest.param(0o666, 0o640, id="never group- or world-writable, never world-readable"),
        pytest.param(0o600, 0o600, id="a stricter mode is kept"),
    ],
)
def test_installed_config_mode_is_restrictive(tmp_path: Path, before: int | None, after: int) -> None:
    from serf_handlers.handlers.haproxy._install import install

    path = tmp_path / "haproxy.cfg"
    if before is not None:
        path.write_text("old\n")
        path.chmod(before)
    install(str(path), "new\n", check=False, haproxy="haproxy")
    assert stat.S_IMODE(os.stat(path).st_mode) == after


def test_candidates_of_killed_runs_are_removed_by_the_next_write(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited
    stale = tmp_path / f".haproxy.cfg.{dead_pid}.0badf00d.tmp"
    live = tmp_path / f".haproxy.cfg.{os.getpid()}.0badf00d.tmp"  # a run still writing: left alone
    other = tmp_path / f".state.json.{dead_pid}.0badf00d.tmp"  # another file's candidate: not ours to judge
    for path in (stale, live, other):
        path.write_text("partial")
    write_atomic(str(tmp_path / "haproxy.cfg"), b"new", 0o640)
    assert not stale.exists()
    assert live.exists() and other.exists()
