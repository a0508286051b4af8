"""Decide what one run must do: pure functions of the old state, the members and the
installed config. No files, sockets or processes here; `_execute` carries a plan out.

- `wanted_after_event` / `wanted_from_members`: the servers HAProxy should have;
- `make_plan`: the config text to install (if it changed), the runtime-API change, or the
  reason a reload is needed instead, and the states to save on the way (see `_execute`
  for the order and why).
"""

from __future__ import annotations

from ..._typing import TYPE_CHECKING, NamedTuple
from ._servers import Rejected, Server, from_member
from ._state import State

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from ...events import Member
    from ._options import Options

    Render = Callable[[Mapping[str, Server]], str]

Key = tuple[str, str]  # (backend, server)


# --- which servers HAProxy should have -------------------------------------------------


class Wanted(NamedTuple):
    servers: dict[str, Server]  # node -> server
    skipped: list[tuple[str, str]]  # (node, why) for each member that cannot be rendered safely


def wanted_after_event(old: Mapping[str, Server], kind: str, members: Iterable[Member], options: Options) -> Wanted:
    """The servers after a member event of `kind`, starting from `old`."""
    wanted = Wanted(dict(old), [])
    names = {s.name: node for node, s in old.items()}
    for member in members:
        ours = member.role == options.role
        if kind in ("member-join", "member-update") and ours:
            _admit(wanted, names, member, options, old)
        elif member.name not in wanted.servers:
            continue  # another role's member, or one we never had
        elif kind == "member-failed" and options.on_failed == "maint":
            wanted.servers[member.name] = wanted.servers[member.name]._replace(maint=True)
        else:
            names.pop(wanted.servers.pop(member.name).name, None)
    return wanted


def wanted_from_members(old: Mapping[str, Server], members: Iterable[Member], options: Options) -> Wanted:
    """Exactly the alive `members` of our role (reconcile)."""
    wanted = Wanted({}, [])
    names: dict[str, str] = {}
    for member in members:
        if member.role == options.role:
            _admit(wanted, names, member, options, old)
    return wanted


def _admit(wanted: Wanted, names: dict[str, str], member: Member, options: Options, old: Mapping[str, Server]) -> None:
    """Add `member`'s server; a member that cannot be rendered safely keeps its last valid
    form (if it had one and its name is still free) until it sends a valid one."""
    try:
        server = from_member(member.name, member.addr, member.tags, options.port, options.backend)
        owner = names.get(server.name, member.name)
        if owner != member.name:
            raise Rejected(f"member {member.name!r}: server name {server.name!r} is already used by node {owner!r}")
    except Rejected as exc:
        wanted.skipped.append((member.name, str(exc)))
        kept = old.get(member.name)
        if kept is None or names.get(kept.name, member.name) != member.name:
            wanted.servers.pop(member.name, None)
            return
        server = kept
    wanted.servers[member.name] = server
    names[server.name] = member.name


# --- the runtime-API change ------------------------------------------------------------


class RuntimeChange(NamedTuple):
    """Turn HAProxy's servers from `applied` into the wanted ones, in this order."""

    drain: tuple[Server, ...]  # `state drain`, one short wait for the whole run, `state maint`
    delete: tuple[Key, ...]  # `del server`; one that HAProxy refuses stays pending
    add: tuple[Server, ...]  # `add server` (in maintenance), `enable health`, then its state
    update: tuple[tuple[Server, Server], ...]  # (before, after): address, weight, maintenance

    def __bool__(self) -> bool:
        return any((self.drain, self.delete, self.add, self.update))


NO_CHANGE = RuntimeChange((), (), (), ())


def leaving(old: Mapping[str, Server], new: Mapping[str, Server]) -> list[Server]:
    """The servers of `old` that `new` no longer has at the same backend/name."""
    return [s for node, s in sorted(old.items()) if node not in new or new[node].key != s.key]


def runtime_change(old: Mapping[str, Server], new: Mapping[str, Server], pending: Iterable[Key]) -> RuntimeChange:
    gone = leaving(old, new)
    added = tuple(s for node, s in sorted(new.items()) if node not in old or old[node].key != s.key)
    kept = tuple((old[node], s) for node, s in sorted(new.items()) if node in old and old[node].key == s.key)
    readded = {s.key for s in added}  # a deferred deletion whose server comes back is revived instead
    delete = sorted({*pending, *(s.key for s in gone)} - readded)
    return RuntimeChange(
        drain=tuple(s for s in gone if not s.maint),
        delete=tuple(delete),
        add=added,
        update=tuple((before, after) for before, after in kept if before != after._replace(tags=before.tags)),
    )


# --- one run ---------------------------------------------------------------------------


class Plan(NamedTuple):
    text: str | None  # the config to install; None: the installed file is already right
    runtime: RuntimeChange  # what to send to the admin socket (NO_CHANGE: nothing)
    reload: str | None  # why HAProxy must reload; None: no reload
    reload_if_runtime_fails: bool  # the runtime change is the membership change, not a retry
    intent: State | None  # saved before installing (see `_execute`)
    rollback: State  # saved when installing or reloading fails
    done: State  # saved at the end; its `pending` is replaced by what the run left pending
    before: Mapping[str, Server]  # what HAProxy had, for the log


def make_plan(
    old: State,
    wanted: Mapping[str, Server],
    installed: str | None,
    render: Render,
    options: Options,
    full: bool = False,
) -> Plan:
    """What must happen to bring HAProxy from `old` to `wanted`.

    `installed` is the text of the installed config (None: no file); `full` (reconcile)
    goes through every step even when the state says HAProxy already has `wanted`.
    Raises what `render` raises (a broken template).
    """
    live = options.socket is not None
    new = old._replace(servers=wanted)
    rollback = new._replace(applied=old.applied)
    applied = old.applied
    if not full and old.exists and applied == wanted:
        # What HAProxy has is what we want: a repeated or irrelevant event ends here,
        # retrying only the deletions HAProxy refused earlier.
        retry = runtime_change(wanted, wanted, old.pending) if live else NO_CHANGE
        return Plan(None, retry, None, False, None, rollback, new._replace(applied=wanted), wanted)

    text = render(wanted)
    if applied is None and not old.exists:
        if installed == text:
            # No state (deleted, or a first reconcile), and the installed config already says
            # exactly this: HAProxy runs it. (A saved null instead means an earlier run failed
            # before HAProxy got its config: that one reloads.)
            applied = wanted
        elif installed == render({}):
            applied = {}  # the empty config `serf-handle render --write` installed before HAProxy started
    changed = installed != text
    # With no state file, record first that HAProxy has not got this config yet: should the
    # run die between install and reload, the next one must not take the file for what HAProxy runs.
    intent = new._replace(applied=applied) if changed and not old.exists else None
    reason = _reload_reason(applied, wanted, installed, text, render, options)
    runtime = NO_CHANGE
    if live and reason is None and applied is not None:
        runtime = runtime_change(applied, wanted, old.pending)
    done = new._replace(applied=wanted)
    return Plan(text if changed else None, runtime, reason, True, intent, rollback, done, applied or {})


def _reload_reason(
    applied: Mapping[str, Server] | None,
    wanted: Mapping[str, Server],
    installed: str | None,
    text: str,
    render: Render,
    options: Options,
) -> str | None:
    """Why the change needs a reload rather than the runtime API (None: it does not)."""
    if applied is None:
        return "HAProxy's current servers are unknown"
    if options.socket is None:
        return "config changed" if render(applied) != text else None
    if installed != text and installed != render(applied):
        # Someone changed the template or the file: HAProxy must load the whole config.
        return "the installed config was not the one HAProxy runs"
    old_backends = {options.backend, *(s.backend for s in applied.values())}
    new_backends = {options.backend, *(s.backend for s in wanted.values())}
    if old_backends != new_backends:
        added, removed = sorted(new_backends - old_backends), sorted(old_backends - new_backends)
        return f"backends added {added} or removed {removed}"
    return None
