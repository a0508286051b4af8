"""What a hostile member cannot reach: no shell, no argv, no runtime API command beyond the
sanitised fields; and the files the handler writes carry restrictive permissions."""

from __future__ import annotations

import grp
import io
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from serf_handlers import _log, cli
from support.site import FIXED_VARS, HAPROXY, Site, member_line
from tests.test_haproxy_runtime import FakeAdmin

pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")

HOSTILE = [
    ("evil\n    server x 6.6.6.6:80 #", "127.0.0.5", {"port": "8085"}),
    ("$(touch /tmp/serf-handlers-pwned)", "127.0.0.6", {"port": "8086", "note": "`reboot`; rm -rf /"}),
    ("web;shutdown sessions server web/web1", "127.0.0.7", {"weight": "3", "x": "'\"$IFS"}),
    ("--help", "127.0.0.8", {"port": "8088"}),
    ("-c", "127.0.0.9", {"port": "8089"}),
    ("bad $(id)", "127.0.0.10", {"port": "0"}),  # rejected
]
WEB1 = ("web1", "127.0.0.1", {"port": "8081"})


def stdin_of(*members: tuple[str, str, dict[str, str]]) -> bytes:
    return b"".join(member_line(name, addr, **tags) for name, addr, tags in members)


def member_texts() -> set[str]:
    """Every string a member supplied (names and tag values), as far as long enough to be telling."""
    texts = {name for name, _, _ in HOSTILE} | {v for _, _, tags in HOSTILE for v in tags.values()}
    return {t for t in texts if len(t) >= 4 and not t.isdigit()}


class Recorder:
    """subprocess.Popen and os.posix_spawnp (serf_handlers/_spawn.py: `haproxy -c`, the reload
    command) that record every call; every other way to start a program fails the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []
        real = subprocess.Popen
        real_spawnp = os.posix_spawnp
        calls = self.calls

        class RecordingPopen(real):  # type: ignore[misc, valid-type]
            def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
                calls.append((args, kwargs))
                super().__init__(args, *rest, **kwargs)

        def recording_spawnp(path: Any, argv: Any, env: Any, **kwargs: Any) -> int:
            assert path == argv[0], (path, argv)  # the program is the argv's own first word
            calls.append((argv, {}))
            return real_spawnp(path, argv, env, **kwargs)

        monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
        monkeypatch.setattr(os, "posix_spawnp", recording_spawnp)
        for name in ("system", "popen", "posix_spawn", "spawnv", "spawnvp", "execv", "execvp"):
            if hasattr(os, name):
                monkeypatch.setattr(os, name, _forbidden(name))


def _forbidden(name: str) -> Any:
    def call(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"os.{name} called with {args!r}")

    return call


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]) -> Any:
    """cli.main in this process, as Serf would run it: env and stdin bytes; returns (code, stderr)."""

    def runner(site: Site, event: str | None, stdin: bytes = b"", argv: tuple[str, ...] = ()) -> tuple[int, str]:
        for key in list(os.environ):
            if key.startswith("SERF_"):
                monkeypatch.delenv(key)
        for key, value in site.env(event).items():
            if key.startswith("SERF_") or key == "PATH":
                monkeypatch.setenv(key, value)
        monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(stdin)))
        code = cli.main(["--config", str(site.yml), *argv])
        _log.configure()  # don't keep a stream pytest will close
        return code, capsysbinary.readouterr().err.decode()

    return runner


SAFE = r"[A-Za-z0-9_.-]{1,63}"
ADDRESS = r"(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-f:]+\])"
RUNTIME_COMMANDS = [
    (
        rf"add server {SAFE}/{SAFE} {ADDRESS}:\d{{1,5}} (?:id \d{{1,10}} )?weight \d{{1,3}} "
        r"check inter 500ms fall 1 rise 1 pool-max-conn -1 pool-purge-delay 5s"
    ),
    rf"enable health {SAFE}/{SAFE}",
    rf"set server {SAFE}/{SAFE} state (ready|drain|maint)",
    rf"set server {SAFE}/{SAFE} addr [0-9a-f.:]+ port \d{{1,5}}",
    rf"set weight {SAFE}/{SAFE} \d{{1,3}}",
    rf"del server {SAFE}/{SAFE}",
    r"show servers state",
]


def test_no_member_data_reaches_a_shell_an_argv_or_a_runtime_command(
    run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, short_dir: Path
) -> None:
    recorder = Recorder(monkeypatch)
    site = Site(tmp_path / "site")
    reload_argv = site.options["reload"]
    admin = FakeAdmin(str(short_dir / "admin.sock"))
    try:
        live = Site(tmp_path / "live", socket=admin.path)
        live.write_yml(vars={**FIXED_VARS, "socket": admin.path})
        assert run(live, None, argv=("render", "--write"))[0] == 0
        for target in (site, live):
            code, err = run(target, "member-join", stdin_of(WEB1, *HOSTILE))
            assert code == 1 and "1 member(s) skipped: member 'bad $(id)'" in err, err
            assert run(target, "member-leave", stdin_of(*HOSTILE[:2]))[0] == 0
            assert run(target, "member-update", stdin_of((HOSTILE[2][0], "127.0.0.77", {"weight": "9"})))[0] == 0
            members = [(name, addr, {"role": "web", **tags}) for name, addr, tags in (WEB1, *HOSTILE[3:5])]
            target.fake_serf(members)
            assert run(target, None, argv=("reconcile",))[0] == 0
    finally:
        admin.close()

    assert recorder.calls, "nothing was run"
    candidate = re.compile(rf"^{re.escape(str(site.dir))}/\.haproxy\.cfg\.\d+\.[0-9a-f]{{8}}\.tmp$")
    live_candidate = re.compile(rf"^{re.escape(str(live.dir))}/\.haproxy\.cfg\.\d+\.[0-9a-f]{{8}}\.tmp$")
    for args, kwargs in recorder.calls:
        assert kwargs.get("shell", False) is False
        assert isinstance(args, list) and all(isinstance(arg, str) for arg in args), args
        is_check = args[:3] == [HAPROXY, "-c", "-f"] and len(args) == 4
        assert (
            (is_check and (candidate.match(args[3]) or live_candidate.match(args[3])))
            or args == reload_argv
            or args == [str(site.bin / "serf"), "members", "-format", "json"]
            or args == [str(live.bin / "serf"), "members", "-format", "json"]
            or args[:4] == ["serf", "members", "-format", "json"]
        ), args
        for text in member_texts():
            assert all(text not in arg for arg in args), (text, args)
    kinds = {"check": 0, "reload": 0, "serf": 0}
    for args, _ in recorder.calls:
        kinds["check" if args[1:2] == ["-c"] else "reload" if args == reload_argv else "serf"] += 1
    assert min(kinds.values()) > 0, kinds
    print(f"\nsecurity: {len(recorder.calls)} subprocesses {kinds}, {len(admin.commands)} runtime API commands checked")

    assert admin.commands, "the runtime API was not used"
    unsafe = {text for text in member_texts() if not re.fullmatch(SAFE, text)}  # a clean name is its own server name
    for command in admin.commands:
        assert any(re.fullmatch(pattern, command) for pattern in RUNTIME_COMMANDS), command
        for text in unsafe:
            assert text not in command, (text, command)


def test_the_package_never_asks_for_a_shell() -> None:
    """A cheap guard against regressions: no shell=True, os.system or os.popen anywhere in the package."""
    root = Path(cli.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"shell\s*=\s*True|os\.system\(|os\.popen\(", text), path


# --- permissions ---------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [pytest.param(0o000, id="umask 000"), pytest.param(0o077, id="umask 077")])
def test_modes_of_the_files_the_handler_writes(tmp_path: Path, umask: int) -> None:
    site = Site(tmp_path / "site", state=str(tmp_path / "site" / "var" / "haproxy.json"))
    env = site.env("member-join")
    done = subprocess.run(
        [sys.executable, "-m", "serf_handlers", "--config", str(site.yml)],
        input=stdin_of(WEB1),
        capture_output=True,
        env=env,
        timeout=60,
        umask=umask,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    state = tmp_path / "site" / "var" / "haproxy.json"
    assert mode(state) == 0o600  # members' names, addresses and tags: owner only
    assert mode(state.parent) == 0o700  # created by the handler
    assert mode(Path(f"{state}.lock")) == 0o600
    assert mode(site.config) == 0o640  # new haproxy.cfg: owner writes, group reads, others nothing
    assert mode(site.cache) == 0o700 and all(mode(p) == 0o600 for p in site.cache.iterdir())


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param(0o600, 0o600, id="a narrower mode is kept"),
        pytest.param(0o640, 0o640, id="group-readable is kept"),
        pytest.param(0o666, 0o640, id="world-writable is narrowed"),
    ],
)
def test_an_existing_config_keeps_its_mode_but_never_a_loose_one(tmp_path: Path, before: int, after: int) -> None:
    site = Site(tmp_path / "site")
    assert site.join(stdin_of(WEB1)).returncode == 0
    site.config.chmod(before)
    assert site.join(stdin_of(("web2", "127.0.0.2", {"port": "8082"}))).returncode == 0
    assert "server web2 " in site.config.read_text() and mode(site.config) == after


def _other_group() -> int | None:
    for name in ("haproxy", "nogroup"):
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            continue
    return None


@pytest.mark.skipif(os.geteuid() != 0 or _other_group() is None, reason="needs root and a haproxy or nogroup group")
def test_an_existing_config_keeps_its_group(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    assert site.join(stdin_of(WEB1)).returncode == 0
    gid = _other_group()
    assert gid is not None
    os.chown(site.config, -1, gid)
    site.config.chmod(0o640)
    assert site.join(stdin_of(("web2", "127.0.0.2", {"port": "8082"}))).returncode == 0
    assert "server web2 " in site.config.read_text() and mode(site.config) == 0o640
    assert site.config.stat().st_gid == gid
