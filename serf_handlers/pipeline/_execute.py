"""Walk a plan (`_plan`): the only place a kept file's side effects happen.

INSTALL goes through the package's atomic writer: a candidate next to the destination,
fsynced, checked by the `check` argv (`{path}` stands for the candidate), renamed over
the destination, the directory fsynced. The destination keeps its mode, owner and group
unless the options set them; `backup` keeps the previous file as `<destination>.bak`.
A destination that cannot be replaced by rename (a single-file Docker bind mount: EBUSY)
is written in place, after the check passed, with one log line saying so.

Every subprocess gets an argv list, never a shell, and a timeout.
"""

from __future__ import annotations

import os

from .. import _log
from .._files import read_bytes, write_atomic
from .._typing import TYPE_CHECKING
from ..errors import HandlerError
from . import _record
from ._plan import INSTALL, RELOAD, SAVE

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._kept import Target
    from ._plan import Plan
    from ._record import Record

CHECK_TIMEOUT = 30.0
RELOAD_TIMEOUT = 30.0
DEFAULT_MODE = 0o644


class CheckError(HandlerError):
    """The `check` command refused the candidate; the message carries its words."""


def execute(plan: Plan, old: Record, target: Target, name: str, owe: Callable[[str], None]) -> None:
    """Carry out `plan`; on a failure save its rollback record and raise. A RELOAD step is
    handed to `owe` (with why) for the run to carry out once every handler sharing it is done."""
    saved = old  # what the state file holds now: an intent saved by this run replaces `old`
    rollback = plan.rollback
    for step in plan.steps:
        try:
            if step.kind == SAVE:
                assert step.record is not None
                if not _record.same(saved, step.record):
                    _record.save(target.state, step.record)
                    saved = step.record
            elif step.kind == INSTALL:
                install(target, plan.text, name)
                rollback = plan.installed_rollback
            elif step.kind == RELOAD:
                owe(step.why)
        except (HandlerError, OSError) as exc:
            try:
                _record.save(target.state, rollback)
            except (OSError, HandlerError) as also:
                _log.error(f"{name}: state not saved either: {also}", state=target.state)
            if isinstance(exc, OSError):
                raise HandlerError(f"{exc.filename or target.state}: {exc.strerror or exc}") from None
            raise


def reload(argv: Sequence[str]) -> None:
    """Run the reload command; HandlerError (with its words) if it fails."""
    run(argv, RELOAD_TIMEOUT, "reload")


def install(target: Target, text: str, name: str) -> None:
    """Check and install `text` at the destination (see the module docstring)."""
    path = target.destination
    mode, owner = _mode_and_owner(target)
    data = text.encode("utf-8")

    def before_rename(candidate: str) -> None:
        if target.check is not None:
            check(target.check, candidate)
        if target.backup:
            previous = read_bytes(path)
            if previous is not None:
                write_atomic(f"{path}.bak", previous, mode, None, owner)

    try:
        write_atomic(path, data, mode, before_rename, owner)
    except OSError as exc:
        import errno

        if exc.errno not in (errno.EBUSY, errno.EXDEV):
            raise HandlerError(f"cannot write {path}: {exc.strerror or exc}") from None
        _write_in_place(path, data)  # the check above passed: only the rename could not be done
        _log.warning(f"{name}: {path} cannot be replaced by rename ({exc.strerror}); written in place")
    _log.info(f"{name}: file installed", path=path, bytes=len(data))


def _write_in_place(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _mode_and_owner(target: Target) -> tuple[int, tuple[int, int] | None]:
    """The destination's mode and owner: the options', else the existing file's, else 0644 and ours."""
    try:
        st = os.stat(target.destination)
        mode, uid, gid = st.st_mode & 0o7777, st.st_uid, st.st_gid
    except FileNotFoundError:
        mode, uid, gid = DEFAULT_MODE, os.geteuid(), os.getegid()
    # No such user or group here is a HandlerError (not a KeyError), so the rollback is saved.
    if target.owner is not None:
        import pwd

        try:
            uid = pwd.getpwnam(target.owner).pw_uid
        except KeyError:
            raise HandlerError(f"owner: no user {target.owner!r} on this host") from None
    if target.group is not None:
        import grp

        try:
            gid = grp.getgrnam(target.group).gr_gid
        except KeyError:
            raise HandlerError(f"group: no group {target.group!r} on this host") from None
    return (mode if target.mode is None else target.mode), (uid, gid)


def check(argv: Sequence[str], candidate: str) -> None:
    """Run the `check` argv with `{path}` replaced by the candidate; CheckError if it refuses."""
    run([arg.replace("{path}", candidate) for arg in argv], CHECK_TIMEOUT, "check", CheckError)


def run(argv: Sequence[str], timeout: float, what: str, error: type[HandlerError] = HandlerError) -> None:
    import subprocess

    try:
        done = subprocess.run(list(argv), capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise error(f"{what} command {argv[0]!r} not found") from None
    except subprocess.TimeoutExpired:
        raise error(f"{what} command {list(argv)} did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise error(f"{what} command {list(argv)} could not run: {exc}") from None
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode("utf-8", "replace").strip() or "(no output)"
        lines = " | ".join(line.strip() for line in output.splitlines() if line.strip())
        raise error(f"{what} command {list(argv)} exited {done.returncode}: {lines}")
