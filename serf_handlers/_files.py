"""Atomic file writes and the lock: the package's one writer and one lock, used by the
handlers' state and config files and by the metrics file.

A reader (HAProxy, a concurrent `serf-handle`) must only ever see a complete old file or a
complete new one, so every write goes to a temporary file in the same directory, is
fsynced, optionally validated, renamed over the target, and the directory is fsynced so
the rename survives a crash.
"""

from __future__ import annotations

import os
import time

from ._typing import TYPE_CHECKING
from .errors import HandlerError

if TYPE_CHECKING:
    from collections.abc import Callable


def write_atomic(
    path: str,
    data: bytes,
    mode: int,
    validate: Callable[[str], None] | None = None,
    owner: tuple[int, int] | None = None,
) -> None:
    """Replace `path` with `data` (with `mode`, and `owner` as (uid, gid) if given).
    If `validate(candidate)` raises, `path` is left untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    _remove_stale_candidates(directory, prefix)
    candidate = os.path.join(directory, f"{prefix}{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                os.fchown(fd, *owner)  # e.g. root:haproxy, so HAProxy can still read it
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as exc:
            exc.filename = candidate  # "No space left on device" should say where
            raise
        finally:
            os.close(fd)
        if validate is not None:
            validate(candidate)
        os.replace(candidate, path)
    except BaseException:
        try:
            os.unlink(candidate)
        except OSError:
            pass
        raise
    fsync_dir(directory)


def _remove_stale_candidates(directory: str, prefix: str) -> None:
    """Delete candidates left by runs that were killed (kill -9, power loss) mid-write: the
    PID in their name is gone. They are harmless (HAProxy loads no dotfile ending in .tmp),
    but nothing else would ever remove them."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        pid = name[len(prefix) :].split(".", 1)[0]
        if name.startswith(prefix) and name.endswith(".tmp") and pid.isdigit() and not _alive(int(pid)):
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                pass  # another run cleaned it up first


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_bytes(path: str) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except FileNotFoundError:
        return None


class Lock:
    """An exclusive `flock` on a separate lock file, held for a whole read-modify-write.

    A separate file, because the state file itself is replaced by rename: a lock on the
    old inode would not exclude a process that opened the new one.
    """

    def __init__(self, path: str, timeout: float = 60.0, make_dirs: bool = True) -> None:
        self.path = path
        self.timeout = timeout
        self.make_dirs = make_dirs  # else a missing directory is an OSError
        self._fd = -1

    def __enter__(self) -> Lock:
        import fcntl

        if self.make_dirs:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), mode=0o700, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # Poll rather than block: a stuck holder must not hang every later Serf event.
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise HandlerError(
                            f"{self.path}: still locked by another serf-handle after {self.timeout:g} s"
                        ) from None
                    time.sleep(0.01)
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = -1
