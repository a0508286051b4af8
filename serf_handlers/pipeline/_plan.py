"""What one run of a kept file must do: a pure function of the old record, the installed
file and the new text, returning the steps in order (`_execute` walks them).

The order is the crash-safety protocol:

1. SAVE intent: the new members, with "reload pending" (only when there is a reload
   command): should the run die between installing and reloading, the next run finds the
   file current but the reload still owed, and reloads.
2. INSTALL: the candidate is written next to the destination, checked (`check` argv), and
   renamed over it; a refused candidate leaves the destination byte-identical.
3. RELOAD: only because the content changed, or because an earlier reload is still owed
   (failed, or killed before it ran): retried even when the file on disk is already
   current, which consul-template, confd and docker-gen get wrong; and once when there is
   no record at all (lost, or a first run over a file rendered beforehand).
4. SAVE done: the digest of what was installed, nothing pending.

A failure anywhere saves `rollback` (the members are never lost; what was installed and
owed stays as it was), or for a failed reload `reload_failed` (the file is installed, the
reload owed), and the run fails.
"""

from __future__ import annotations

from .._typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from ._record import Record

SAVE, INSTALL, RELOAD = "save", "install", "reload"
PENDING = "installed; the reload did not run yet"


class Step(NamedTuple):
    kind: str  # SAVE, INSTALL or RELOAD
    record: Record | None = None  # SAVE: what to save
    why: str = ""  # RELOAD: why (for the log)


class Plan(NamedTuple):
    steps: tuple[Step, ...]
    text: str  # what INSTALL installs
    rollback: Record  # saved when a step fails
    reload_failed: Record  # saved (with the reload's error) when RELOAD fails


def digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def make_plan(old: Record, new: Record, installed: bytes | None, text: str, reloads: bool) -> Plan:
    """The steps from `old` to `new` (its members and node) with `text` as the file.
    `installed` is the destination's bytes (None: no file); `reloads`: a reload command is set."""
    data = text.encode("utf-8")
    done = new._replace(installed=digest(data), reload_pending=None, exists=True)
    rollback = new._replace(installed=old.installed, reload_pending=old.reload_pending, exists=True)
    reload_failed = done._replace(reload_pending="reload failed")
    steps: list[Step] = []
    if installed != data:
        if reloads:
            steps.append(Step(SAVE, new._replace(installed=old.installed, reload_pending=PENDING, exists=True)))
        steps.append(Step(INSTALL))
        if reloads:
            steps.append(Step(RELOAD, why="the content changed"))
    elif reloads and old.reload_pending is not None:
        steps.append(Step(RELOAD, why=f"owed by an earlier run ({old.reload_pending})"))
    elif reloads and not old.exists:
        # The record is lost: a reload it owed would be forgotten, and whether the running
        # service loaded this file is unknown. One reload more is the safe side.
        steps.append(Step(RELOAD, why="no record of whether this file was loaded"))
    steps.append(Step(SAVE, done))
    return Plan(tuple(steps), text, rollback, reload_failed)
