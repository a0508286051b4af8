"""What one run of a kept file must do: a pure function of the old record, the installed
file and the new text, returning the steps in order (`_execute` walks them).

The order is the crash-safety protocol:

1. SAVE intent: the new members, with "reload pending" (only when there is a reload
   command): should the run die between installing and reloading, the next run finds the
   file current but the reload still owed, and reloads.
2. INSTALL: the candidate is written next to the destination, checked (`check` argv), and
   renamed over it; a refused candidate leaves the destination byte-identical.
3. SAVE owed: what was installed, the reload still pending.
4. RELOAD: only because the content changed, or because an earlier reload is still owed
   (failed, or killed before it ran): retried even when the file on disk is already
   current, which consul-template, confd and docker-gen get wrong; and once when there is
   no record at all (lost, or a first run over a file rendered beforehand). The step owes
   the reload to the run, which runs each distinct reload argv once, after every handler
   that shares it (three templates reloading one Caddy: one reload), then hands each the
   outcome: `after_reload` says what to record.
5. Without a reload: SAVE done: the digest of what was installed, nothing pending.

A failure anywhere saves `rollback` (the members are never lost; what was installed and
owed stays as it was; after INSTALL, a reload it needs is owed too), and the run fails.
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
    rollback: Record  # saved when a step before INSTALL, or INSTALL, fails
    installed_rollback: Record  # saved when a step after INSTALL fails: the new file, its reload owed


def digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def make_plan(old: Record, new: Record, installed: bytes | None, text: str, reloads: bool) -> Plan:
    """The steps from `old` to `new` (its members and node) with `text` as the file.
    `installed` is the destination's bytes (None: no file); `reloads`: a reload command is set."""
    data = text.encode("utf-8")
    done = new._replace(installed=digest(data), reload_pending=None, exists=True)
    rollback = new._replace(installed=old.installed, reload_pending=old.reload_pending, exists=True)
    steps: list[Step] = []
    why, owed = "", PENDING  # why a reload is owed ("": none), and what the record says until it ran
    if installed != data:
        if reloads:
            steps.append(Step(SAVE, new._replace(installed=old.installed, reload_pending=PENDING, exists=True)))
            why = "the content changed"
        steps.append(Step(INSTALL))
    elif reloads and old.reload_pending is not None:
        why, owed = f"owed by an earlier run ({old.reload_pending})", old.reload_pending
    elif reloads and not old.exists:
        # The record is lost: a reload it owed would be forgotten, and whether the running
        # service loaded this file is unknown. One reload more is the safe side.
        why = "no record of whether this file was loaded"
    final = done._replace(reload_pending=owed) if why else done
    steps.append(Step(SAVE, final))
    if why:
        steps.append(Step(RELOAD, why=why))
    return Plan(tuple(steps), text, rollback, final)


def after_reload(current: Record, installed: str, error: str | None) -> Record | None:
    """What to save once the reload owed for the file whose digest is `installed` ran
    (`error` None) or failed; None: nothing. `current` is the record now, which another run
    may have changed since: when it installed another file, that run owes its own reload and
    the record is its business; otherwise only the debt changes (its members stay)."""
    if not current.exists or current.installed != installed:
        return None
    after = current._replace(reload_pending=error)
    return None if after == current else after
