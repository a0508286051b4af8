"""The parsed-config cache: where it may live, whether to trust it, reading and writing it.

Serf starts `serf-handle` once per event, and importing PyYAML costs more than the rest
of a run, so config.py keeps the parsed file here (with `marshal`, keyed by the file's
exact bytes) and imports YAML only when the file changed.

Where (the first usable place; `SERF_HANDLERS_CACHE_DIR` overrides all of them):
- root: /var/cache/serf-handlers (serf.service sets no HOME);
- anyone else: $XDG_CACHE_HOME/serf-handlers, else $HOME/.cache/serf-handlers;
- then $XDG_RUNTIME_DIR/serf-handlers, then /tmp/serf-handlers-<euid>.
A place is usable when the directory already exists and is trusted, or when it can be
created (its nearest existing ancestor is a directory we may write to).

Trust: `marshal` data decides which handlers run, so a cache entry is used only if no
other user could have written it. The directory must be a real directory (not a
symlink) owned by the effective uid and not group/other-writable; the entry must be a
regular file, opened without following symlinks, owned by the effective uid and not
group/other-writable. The entry is opened relative to the checked directory's fd, so
the directory cannot be swapped in between. Anything untrusted or failing is skipped
(a debug record at most): the cache only ever costs or saves speed.

Cheap on purpose: only os, stat (imported by os already) and marshal; no pwd lookups. A
miss writes the entry through the package's one atomic writer (`_files.write_atomic`).
"""

from __future__ import annotations

import marshal
import os
import stat

from . import _log
from ._typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

FORMAT = 1
SYSTEM_DIR = "/var/cache/serf-handlers"  # root's cache (module attributes: tests point them elsewhere)
TMP_DIR = "/tmp"  # the last resort, as TMP_DIR/serf-handlers-<euid>
_NAME = "serf-handlers"
_LOOSE = stat.S_IWGRP | stat.S_IWOTH
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO in place of the entry must not hang the run (it is refused below).
_OPEN_ENTRY = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def cache_dir(env: Mapping[str, str]) -> str | None:
    """The cache directory to use for this environment, or None for no cache."""
    explicit = env.get("SERF_HANDLERS_CACHE_DIR")
    if explicit:
        return explicit
    for candidate in candidates(env, os.geteuid()):
        if _usable(candidate):
            return candidate
    return None


def candidates(env: Mapping[str, str], euid: int) -> list[str]:
    """Where the cache may live for this user, best first. XDG says: ignore relative paths."""
    found = []
    if euid == 0:
        found.append(SYSTEM_DIR)
    else:
        xdg_cache, home = env.get("XDG_CACHE_HOME", ""), env.get("HOME", "")
        if xdg_cache.startswith("/"):
            found.append(os.path.join(xdg_cache, _NAME))
        if home.startswith("/"):
            found.append(os.path.join(home, ".cache", _NAME))
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime.startswith("/"):
        found.append(os.path.join(runtime, _NAME))
    found.append(os.path.join(TMP_DIR, f"{_NAME}-{euid}"))
    return found


def read(directory: str, path: str, source: bytes) -> tuple[object] | None:
    """`(data,)` cached for config file `path` holding exactly `source`; None if no trusted entry."""
    dir_fd = _open_dir(directory)
    if dir_fd is None:
        return None
    try:
        fd = os.open(_entry(path), _OPEN_ENTRY, dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as file:
            problem = _untrusted(os.fstat(fd), stat.S_ISREG)
            if problem:
                _log.debug(f"config cache entry ignored: {problem}", cache=directory)
                return None
            fmt, cached_source, data = marshal.load(file)
        if fmt == FORMAT and cached_source == source:
            return (data,)
    except (OSError, EOFError, ValueError, TypeError):
        pass  # no usable entry: the caller parses the YAML and rewrites it
    finally:
        os.close(dir_fd)
    return None


def write(directory: str, path: str, source: bytes, data: object) -> None:
    """Store `data` parsed from `source`; silently does nothing where that is not possible or safe."""
    try:
        blob = marshal.dumps((FORMAT, source, data))  # type: ignore[arg-type]
    except ValueError:
        return  # YAML produced a type marshal cannot store (e.g. a date): just don't cache
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        _log.debug(f"config cache not written: {exc}", cache=directory)
        return
    dir_fd = _open_dir(directory)
    if dir_fd is None:
        return
    os.close(dir_fd)
    # Only a miss writes (the config changed), so the writer's import and its fsyncs are off
    # the usual per-event path. The path is used after the check: a directory swapped in
    # between gets a 0600 file of ours, and a reader still trusts only an entry it checks.
    from ._files import write_atomic

    try:
        write_atomic(os.path.join(directory, _entry(path)), blob, 0o600)
    except OSError as exc:
        # A full disk or read-only directory only costs speed, never correctness.
        _log.debug(f"config cache not written: {exc}", cache=directory)


def _entry(path: str) -> str:
    # One entry per config file, named after its absolute path (no hashing to import).
    return "config" + os.path.abspath(path).replace("%", "%25").replace("/", "%") + ".marshal"


def _open_dir(directory: str) -> int | None:
    """An fd of `directory` if it is trusted, else None (with a debug record)."""
    try:
        fd = os.open(directory, _OPEN_DIR)
    except OSError as exc:
        # ELOOP/ENOTDIR: a symlink (O_NOFOLLOW) or not a directory. ENOENT: nothing cached yet.
        _log.debug(f"config cache not used: {exc.strerror}", cache=directory)
        return None
    problem = _untrusted(os.fstat(fd), stat.S_ISDIR)
    if problem:
        os.close(fd)
        _log.debug(f"config cache not used: the directory is {problem}", cache=directory)
        return None
    return fd


def _untrusted(st: os.stat_result, is_kind: Callable[[int], bool]) -> str | None:
    """Why a file with this status could have been written by another user; None: it could not."""
    if not is_kind(st.st_mode):
        return "of the wrong type" if not stat.S_ISLNK(st.st_mode) else "a symbolic link"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}"
    if st.st_mode & _LOOSE:
        return "group- or other-writable"
    return None


def _usable(directory: str) -> bool:
    """Whether the cache can live at `directory`: trusted there already, or creatable."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return _creatable(os.path.dirname(directory))
    except OSError:
        return False
    problem = _untrusted(st, stat.S_ISDIR)
    if problem:
        _log.debug(f"config cache location skipped: {problem}", cache=directory)
    return problem is None


def _creatable(path: str) -> bool:
    """Whether `path` and what is under it can be created: its nearest existing ancestor is writable."""
    while True:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            parent = os.path.dirname(path)
            if parent == path:
                return False
            path = parent
            continue
        except OSError:
            return False
        return stat.S_ISDIR(st.st_mode) and os.access(path, os.W_OK | os.X_OK)
