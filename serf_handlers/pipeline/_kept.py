"""`KeptFile`: one file kept in step with the members, for a handler to build on.

A handler gives it a `Target` (where the file goes, its check and reload commands, its
mode, owner and group) and a render function (the kept members and the local node → the
file's text). One run holds the lock `<state>.lock` throughout: read the record, update the
members, render, plan, execute. The commands `status`, `render` and `check` come with it.
"""

from __future__ import annotations

from .. import _log
from .._files import Lock, read_bytes
from .._typing import TYPE_CHECKING, NamedTuple
from ..dispatch import OwedReload
from ..errors import HandlerError
from . import _record
from ._execute import check, execute, reload
from ._members import after_event, from_members
from ._plan import after_reload, digest, make_plan

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from ..events import Member, MemberEvent
    from ._members import Known, Refuse

    Render = Callable[[Mapping[str, Known], Mapping[str, object] | None], str]
    # `status` lines for the kept members, and where they stand (GIVEN, INSTALLED or WANTED).
    Describe = Callable[[Mapping[str, Known], str], list[str]]


STATE_DIR = "/var/lib/serf-handlers"
# Where the kept members stand, for a handler's `describe` (see `KeptFile.status`):
GIVEN = "given"  # the installed file is what they render, and the service loaded it
INSTALLED = "installed"  # the installed file is what they render; its reload is still owed
WANTED = "wanted"  # the installed file is not what they render (see the file's status line)


def state_path(destination: str) -> str:
    """The default state file of a kept file: one per destination."""
    import os

    return os.path.join(STATE_DIR, destination.strip("/").replace("/", "_") + ".json")


class Target(NamedTuple):
    destination: str
    state: str
    check: tuple[str, ...] | None = None  # argv; `{path}` stands for the candidate file
    reload: tuple[str, ...] | None = None  # argv, run only when the content changed (or owed)
    mode: int | None = None  # None: keep the existing file's (0644 for a new one)
    owner: str | None = None
    group: str | None = None
    backup: bool = False


class KeptFile:
    def __init__(
        self, name: str, target: Target, render: Render, refuse: Refuse | None = None, describe: Describe | None = None
    ) -> None:
        self.name = name
        self.target = target
        self._render = render
        self._refuse = refuse
        self._describe = describe
        self._shared: list[OwedReload] | None = None  # set while `sharing`

    # --- runs ------------------------------------------------------------------------------

    def event(self, event: MemberEvent) -> None:
        node = {"name": event.node.name, "role": event.node.role, "tags": dict(event.node.tags)}
        owed: list[OwedReload] = []
        with Lock(f"{self.target.state}.lock"):
            old = _record.load(self.target.state)
            if not old.exists and self._holds_members(read_bytes(self.target.destination)):
                # With no record, an event knows only its own members: writing now would drop
                # every other one from a file that has them (an empty target list, say).
                raise HandlerError(
                    f"{self.target.state}: no state file while {self.target.destination} exists; "
                    "run `serf-handle reconcile` to rebuild it (the file is left as it is)"
                )
            members, refused = after_event(old.members, event.type, event.members, self._refuse)
            self._converge(old, old._replace(members=members, node=node), refused, owed)
        self._settle(owed, refused)

    def _holds_members(self, installed: bytes | None) -> bool:
        """Whether the file may hold members an event would drop: not when it is missing,
        empty, or what no members render to (as `render --write` installs before any event)."""
        if installed is None or not installed.strip():
            return False
        try:
            return installed != self._render({}, None).encode("utf-8")
        except HandlerError:
            return True

    def reconcile(self, alive: Sequence[Member], failed: Callable[[], Iterable[Member]] = tuple) -> None:
        owed: list[OwedReload] = []
        with Lock(f"{self.target.state}.lock"):
            try:
                old = _record.load(self.target.state)
            except _record.RecordError as exc:
                _log.warning(f"{self.name}: {exc}; rebuilding it")
                old = _record.EMPTY
            members, refused = from_members(alive, failed(), self._refuse)
            self._converge(old, old._replace(members=members), refused, owed)
        self._settle(owed, refused)

    def _converge(self, old: _record.Record, new: _record.Record, refused: list[str], owed: list[OwedReload]) -> None:
        """Render, plan and execute; a reload the plan owes is added to `owed`. A run failing
        for another reason still names the members it skipped."""
        try:
            text = self._render(new.members, new.node)
        except HandlerError:
            if not _record.same(old, new):
                _record.save(self.target.state, new)  # keep the members for the run after the fix
            _log_refused(self.name, refused)
            raise
        plan = make_plan(old, new, read_bytes(self.target.destination), text, self.target.reload is not None)
        installed = digest(text.encode("utf-8"))
        try:
            execute(plan, old, self.target, self.name, lambda why: owed.append(self._owed(installed, why)))
        except HandlerError:
            _log_refused(self.name, refused)
            raise

    def _owed(self, installed: str, why: str) -> OwedReload:
        argv = self.target.reload
        assert argv is not None
        return OwedReload(argv, lambda: reload(argv), lambda error: self._reloaded(installed, why, error))

    def _settle(self, owed: list[OwedReload], refused: list[str]) -> None:
        """After a run, outside the lock: hand the reload it owes to the dispatcher's run
        (`sharing`), which runs it once for every handler sharing it; or, outside one, run it
        now. Then report the members it skipped."""
        if self._shared is not None:
            self._shared.extend(owed)
        elif owed:
            from ..dispatch import run_owed_reloads

            failed = run_owed_reloads([(self.name, one) for one in owed])
            if failed:
                _log_refused(self.name, refused)
                raise HandlerError(failed[0][1])
        _raise_refused(self.name, refused)

    def _reloaded(self, installed: str, why: str, error: str | None) -> None:
        """Record the outcome of the reload owed for the file whose digest is `installed`."""
        with Lock(f"{self.target.state}.lock"):
            after = after_reload(_record.load(self.target.state), installed, error)
            if after is not None:
                _record.save(self.target.state, after)
        if error is None:
            _log.info(f"{self.name}: reloaded", reason=why)

    def sharing(self, owed: list[OwedReload]) -> Sharing:
        """`with kept.sharing(owed):` the reloads runs owe go to `owed`, for the dispatcher
        to run once per argv after every handler of its run (protocols.ReloadSharer)."""
        return Sharing(self, owed)

    # --- status, render, check -------------------------------------------------------------

    def status(self) -> tuple[str, bool]:
        """The kept members and the file; True when the file differs from what was installed,
        is behind the members (not rendered, or refused by the check), has no state file (so
        every event leaves it alone), or a reload is owed (`serf-handle status` exits 1). A
        handler's `describe` adds what the members mean to its service (nginx: the servers)."""
        record = _record.load(self.target.state)
        lines = [f"{m.name} {m.addr} role={m.role} {m.status}" for m in sorted(record.members.values())]
        line, drift, current = self._file_status(record, read_bytes(self.target.destination))
        lines.append(f"file: {self.target.destination}: {line}")
        if record.reload_pending is not None:
            lines.append(f"reload pending: {record.reload_pending} (the next run retries it)")
            drift = True
        if self._describe is not None and record.exists:
            lines += self._describe(record.members, _stands(record, current))
        return "\n".join(lines) + "\n", drift

    def standing(self) -> tuple[Mapping[str, Known], str | None]:
        """The kept members and where they stand (GIVEN, INSTALLED, WANTED; None without a
        state file), as `status` hands them to `describe`: for a query's answer (nginx:
        `drained NODE`). It only reads (no lock, no write), so it is quick whatever a run
        holds; a run in progress shows as not GIVEN (its intent is saved with a reload owed).
        Raises RecordError for a state file it cannot use."""
        record = _record.load(self.target.state)
        if not record.exists:
            return record.members, None
        current = self._file_status(record, read_bytes(self.target.destination))[2]
        return record.members, _stands(record, current)

    def _file_status(self, record: _record.Record, installed: bytes | None) -> tuple[str, bool, bool]:
        """(what the file is, whether that is drift, whether it is what the record renders)."""
        if installed is None or (not record.exists and not self._holds_members(installed)):
            return "not written yet", record.exists, False
        if not record.exists:
            return "no state file, so events leave it as it is (`serf-handle reconcile` rebuilds it)", True, False
        if record.installed is not None and digest(installed) != record.installed:
            return "changed since this handler installed it (`serf-handle reconcile` writes it again)", True, False
        try:
            behind = self._render(record.members, record.node).encode("utf-8") != installed
        except HandlerError as exc:
            return f"cannot be rendered: {exc}", True, False
        if behind:
            return ("behind the members: not installed since they changed "
                    "(see the last run's error; `serf-handle render --diff` shows what is missing)"), True, False
        return "as installed", False, True

    def text(self) -> str:
        record = _record.load(self.target.state)
        return self._render(record.members, record.node)

    def diff(self) -> str:
        import difflib

        raw = read_bytes(self.target.destination)
        installed = [] if raw is None else raw.decode("utf-8", "replace").splitlines(keepends=True)
        rendered = self.text().splitlines(keepends=True)
        where = f"{self.target.destination} (rendered from {self.target.state})"
        return "".join(difflib.unified_diff(installed, rendered, self.target.destination, where))

    def write(self) -> str:
        """`render --write`: install the text for the current record now (checked; no reload),
        and record that it did (else `status` would call the handler's own file changed)."""
        from ._execute import install

        with Lock(f"{self.target.state}.lock"):
            record = _record.load(self.target.state)
            text = self._render(record.members, record.node)
            data = text.encode("utf-8")
            if read_bytes(self.target.destination) != data:
                install(self.target, text, self.name)
            done = record._replace(installed=digest(data), exists=True)  # a reload owed stays owed
            if not _record.same(record, done):
                _record.save(self.target.state, done)
        return text

    def self_check(self) -> list[str]:
        """`serf-handle check`: render the current record and run `check` on it (nothing installed)."""
        import os
        import tempfile

        text = self.text()
        if self.target.check is None:
            return [f"renders {len(text.encode('utf-8'))} bytes for {self.target.destination} (no check command)"]
        directory = os.path.dirname(os.path.abspath(self.target.destination))
        try:
            fd, candidate = tempfile.mkstemp(prefix=".check.", suffix=".tmp", dir=directory)
        except OSError as exc:  # the directory is missing or not writable: what an install would hit too
            raise HandlerError(f"cannot write a candidate in {directory}: {exc.strerror or exc}") from None
        try:
            os.write(fd, text.encode("utf-8"))
            os.close(fd)
            check(self.target.check, candidate)
        finally:
            os.unlink(candidate)
        return [f"renders {len(text.encode('utf-8'))} bytes for {self.target.destination}; the check accepts it"]


class Sharing:
    """See `KeptFile.sharing`."""

    def __init__(self, kept: KeptFile, owed: list[OwedReload]) -> None:
        self._kept, self._owed = kept, owed

    def __enter__(self) -> None:
        self._kept._shared = self._owed

    def __exit__(self, *exc_info: object) -> None:
        self._kept._shared = None


def _stands(record: _record.Record, current: bool) -> str:
    """Where the record's members stand, given whether the installed file is what they render."""
    return WANTED if not current else INSTALLED if record.reload_pending is not None else GIVEN


def _log_refused(name: str, refused: list[str]) -> None:
    for why in refused:
        _log.error(f"{name}: member skipped: {why}")


def _raise_refused(name: str, refused: list[str]) -> None:
    if refused:
        _log_refused(name, refused)
        raise HandlerError(f"{len(refused)} member(s) skipped: {'; '.join(refused)}")
