"""The parsed-config cache (serf_handlers/_cache.py): used wherever Serf runs the handler,
and never trusted when another user could have written it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from serf_handlers import _cache
from serf_handlers.config import load_config

MEMBER = b"web1\t10.0.0.1\tweb\tport=80\n"
CONFIG = "handlers: [{type: log, events: [member-join]}]\n"
PLANTED: dict[str, object] = {"handlers": []}  # what a planted entry says instead: no handlers at all
ROOT = os.geteuid() == 0
USER = 1000 if ROOT else os.geteuid()  # the non-root user the location table plays

# cli.main as Serf runs it, with root's system dir and /tmp moved under the test's tmp_path.
SCRIPT = """\
import sys
from serf_handlers import _cache
_cache.SYSTEM_DIR, _cache.TMP_DIR = sys.argv[2], sys.argv[3]
from serf_handlers.cli import main
code = main(['--config', sys.argv[1]])
print(code, 'yaml' in sys.modules)
"""


def run_handler(tmp_path: Path, env: dict[str, str]) -> str:
    config = tmp_path / "config.yml"
    if not config.exists():
        config.write_text(CONFIG)
    argv = [sys.executable, "-c", SCRIPT, str(config), str(tmp_path / "var-cache" / "serf-handlers"), str(tmp_path)]
    env = {"PATH": "/usr/bin:/bin", "SERF_EVENT": "member-join", **env}
    done = subprocess.run(argv, input=MEMBER, capture_output=True, env=env, timeout=30, check=True)
    return done.stdout.decode().strip()


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="serf.service: no HOME, no XDG variables"),
        pytest.param({"HOME": "/nonexistent"}, id="HOME that does not exist"),
        pytest.param({"HOME": "/", "XDG_CACHE_HOME": "relative/cache"}, id="HOME=/ and a relative XDG_CACHE_HOME"),
    ],
)
def test_the_cache_works_without_a_usable_home(tmp_path: Path, env: dict[str, str]) -> None:
    assert run_handler(tmp_path, env) == "0 True"  # the first run parses the YAML and fills the cache
    assert run_handler(tmp_path, env) == "0 False"  # the next one does not import yaml
    where = tmp_path / "var-cache" / "serf-handlers" if ROOT else tmp_path / f"serf-handlers-{os.geteuid()}"
    assert stat.S_IMODE(where.stat().st_mode) == 0o700 and len(list(where.iterdir())) == 1


def test_an_untrusted_cache_dir_costs_speed_not_the_run(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    env = {"SERF_HANDLERS_CACHE_DIR": str(cache)}
    assert run_handler(tmp_path, env) == "0 True"
    assert run_handler(tmp_path, env) == "0 True"  # refused again: the YAML is parsed every time
    assert list(cache.iterdir()) == []


def _chmod(mode: int, what: str) -> Callable[[Path, Path], str]:
    def tamper(cache: Path, entry: Path) -> str:
        (cache if what == "dir" else entry).chmod(mode)
        return str(cache)

    return tamper


def _chown(what: str) -> Callable[[Path, Path], str]:
    def tamper(cache: Path, entry: Path) -> str:
        if not ROOT:
            pytest.skip("chown needs root")
        os.chown(cache if what == "dir" else entry, 65534, -1)
        return str(cache)

    return tamper


def _dir_symlink(cache: Path, entry: Path) -> str:
    link = cache.parent / "link"
    link.symlink_to(cache)
    return str(link)


def _entry_symlink(cache: Path, entry: Path) -> str:
    target = cache.parent / "elsewhere.marshal"
    entry.rename(target)
    entry.symlink_to(target)
    return str(cache)


def _entry_fifo(cache: Path, entry: Path) -> str:
    entry.unlink()
    os.mkfifo(entry, 0o600)
    return str(cache)


def _untouched(cache: Path, entry: Path) -> str:
    return str(cache)


@pytest.mark.parametrize(
    ("tamper", "trusted", "repaired"),
    [
        pytest.param(_untouched, True, False, id="a trusted entry is used (the planted data wins)"),
        pytest.param(_chmod(0o770, "dir"), False, False, id="group-writable directory"),
        pytest.param(_chmod(0o707, "dir"), False, False, id="other-writable directory"),
        pytest.param(_chown("dir"), False, False, id="directory owned by another user"),
        pytest.param(_dir_symlink, False, False, id="directory is a symlink"),
        pytest.param(_chmod(0o620, "entry"), False, True, id="group-writable entry"),
        pytest.param(_chmod(0o602, "entry"), False, True, id="other-writable entry"),
        pytest.param(_chown("entry"), False, True, id="entry owned by another user"),
        pytest.param(_entry_symlink, False, True, id="entry is a symlink"),
        pytest.param(_entry_fifo, False, True, id="entry is a FIFO (and does not hang)"),
    ],
)
def test_only_a_trusted_cache_entry_is_used(
    tmp_path: Path, tamper: Callable[[Path, Path], str], trusted: bool, repaired: bool
) -> None:
    config = tmp_path / "config.yml"
    config.write_text(CONFIG)
    cache = tmp_path / "cache"
    _cache.write(str(cache), str(config), config.read_bytes(), PLANTED)  # an entry that disagrees with the file
    (entry,) = cache.iterdir()
    cache_dir = tamper(cache, entry)

    loaded = load_config(str(config), True, cache_dir)

    assert len(loaded.handlers) == (0 if trusted else 1)  # refused: the YAML is parsed normally
    if not trusted:
        # An untrusted entry in a trusted directory is replaced; an untrusted directory is left alone.
        after = _cache.read(cache_dir, str(config), config.read_bytes())
        assert after == (({"handlers": [{"type": "log", "events": ["member-join"]}]},) if repaired else None)


def test_the_cache_is_refused_when_the_effective_uid_is_someone_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yml"
    config.write_text(CONFIG)
    cache = tmp_path / "cache"
    _cache.write(str(cache), str(config), config.read_bytes(), PLANTED)
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 4242)
    assert len(load_config(str(config), True, str(cache)).handlers) == 1
    assert len(list(cache.iterdir())) == 1  # and nothing was written there


def test_a_value_marshal_cannot_store_is_just_not_cached(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(CONFIG)
    _cache.write(str(tmp_path / "cache"), str(config), config.read_bytes(), {"when": object()})
    assert not (tmp_path / "cache").exists()


# --- where the cache lives ---------------------------------------------------------------


def _fs(tmp_path: Path, setup: tuple[str, ...]) -> Path:
    """A small file system: user-owned home, xdg and run dirs, root's var-cache, a sticky tmp."""
    fs = tmp_path / "fs"
    for name, mode, owner in [("home", 0o755, USER), ("xdg", 0o755, USER), ("run", 0o700, USER)]:
        (fs / name).mkdir(parents=True)
        (fs / name).chmod(mode)
        if ROOT:
            os.chown(fs / name, owner, owner)
    (fs / "var-cache").mkdir()
    (fs / "tmp").mkdir()
    (fs / "tmp").chmod(0o1777)
    if "home read-only" in setup:
        (fs / "home").chmod(0o555)
    if "system dir group-writable" in setup:
        (fs / "var-cache" / "serf-handlers").mkdir(0o770)
        (fs / "var-cache" / "serf-handlers").chmod(0o770)
    if "var-cache is a file" in setup:
        (fs / "var-cache").rmdir()
        (fs / "var-cache").write_text("")
    if "tmp dir planted" in setup:  # by someone else: root when we play a user, nobody when root
        (fs / "tmp" / f"serf-handlers-{USER}").mkdir(0o700)
        if not ROOT:
            pytest.skip("planting a directory owned by someone else needs root")
    if "cache dir symlink" in setup:
        (fs / "home" / ".cache").mkdir()
        (fs / "home" / ".cache" / "serf-handlers").symlink_to(fs / "run")
        if ROOT:
            os.chown(fs / "home" / ".cache", USER, USER)
            os.lchown(fs / "home" / ".cache" / "serf-handlers", USER, USER)
    return fs


def _access_as(euid: int) -> Callable[..., bool]:
    """os.access for `euid` from the mode bits (the real one answers for the real uid: root)."""

    def access(path: str, mode: int, **kwargs: object) -> bool:
        if euid == 0:
            return True
        st = os.stat(path)
        bits = st.st_mode >> 6 if st.st_uid == euid else st.st_mode
        want = (2 if mode & os.W_OK else 0) | (1 if mode & os.X_OK else 0)
        return bits & want == want

    return access


@pytest.mark.parametrize(
    ("euid", "env", "setup", "expected"),
    [
        pytest.param(0, {}, (), "{fs}/var-cache/serf-handlers", id="serf.service: root, no HOME"),
        pytest.param(0, {"HOME": "{fs}/home"}, (), "{fs}/var-cache/serf-handlers", id="supervisord/root shell: HOME"),
        pytest.param(0, {"SERF_HANDLERS_CACHE_DIR": "/x"}, (), "/x", id="SERF_HANDLERS_CACHE_DIR overrides"),
        pytest.param(0, {}, ("var-cache is a file",), "{fs}/tmp/serf-handlers-0", id="root, no usable /var/cache"),
        pytest.param(
            0, {"XDG_RUNTIME_DIR": "{fs}/run"}, ("system dir group-writable",), "{fs}/run/serf-handlers",
            id="root, loose system dir: runtime dir",
        ),
        pytest.param(USER, {"HOME": "{fs}/home"}, (), "{fs}/home/.cache/serf-handlers", id="login shell: user, HOME"),
        pytest.param(
            USER, {"HOME": "{fs}/home", "XDG_CACHE_HOME": "{fs}/xdg"}, (), "{fs}/xdg/serf-handlers",
            id="user, XDG_CACHE_HOME",
        ),
        pytest.param(
            USER, {"HOME": "{fs}/home", "XDG_CACHE_HOME": "xdg"}, (), "{fs}/home/.cache/serf-handlers",
            id="user, relative XDG_CACHE_HOME is ignored",
        ),
        pytest.param(
            USER, {"HOME": "{fs}/home", "XDG_RUNTIME_DIR": "{fs}/run"}, ("home read-only",), "{fs}/run/serf-handlers",
            id="user, read-only HOME: runtime dir",
        ),
        pytest.param(
            USER, {"HOME": "{fs}/home"}, ("home read-only",), "{fs}/tmp/serf-handlers-{uid}",
            id="user, read-only HOME, no runtime dir: per-user tmp dir",
        ),
        pytest.param(USER, {}, (), "{fs}/tmp/serf-handlers-{uid}", id="user, no HOME"),
        pytest.param(USER, {"HOME": "/nonexistent"}, (), "{fs}/tmp/serf-handlers-{uid}", id="user, HOME missing"),
        pytest.param(
            USER, {"HOME": "{fs}/home"}, ("cache dir symlink",), "{fs}/tmp/serf-handlers-{uid}",
            id="user, ~/.cache/serf-handlers is a symlink: skipped",
        ),
        pytest.param(
            USER, {"HOME": "{fs}/home"}, ("home read-only", "tmp dir planted"), None,
            id="user, tmp dir planted by someone else: no cache",
        ),
    ],
)
def test_where_the_cache_lives(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    euid: int,
    env: dict[str, str],
    setup: tuple[str, ...],
    expected: str | None,
) -> None:
    fs = _fs(tmp_path, setup)
    monkeypatch.setattr(_cache, "SYSTEM_DIR", str(fs / "var-cache" / "serf-handlers"))
    monkeypatch.setattr(_cache, "TMP_DIR", str(fs / "tmp"))
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    monkeypatch.setattr(os, "access", _access_as(euid))
    chosen = _cache.cache_dir({key: value.format(fs=fs) for key, value in env.items()})
    assert chosen == (expected.format(fs=fs, uid=USER) if expected else None)
