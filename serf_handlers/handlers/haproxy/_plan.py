"""Decide what one run must do: pure functions of the old state, the members and the
installed config. No files, sockets or processes here; `_execute` carries a plan out.

- `wanted_after_event` / `wanted_from_members`: the servers HAProxy should have;
- `make_plan`: the steps of one run, in order (`Step`, `Plan`): the states to save, the
  config text to install (if it changed), the runtime-API change or the reason a reload is
  needed instead, and what to do when a step fails. Every choice (a reload instead of many
  runtime commands, what follows a refusal, the file to put back) is made here; `_execute`
  walks the steps and writes down their order and why (the crash-safety protocol);
- `live_only`: when the config cannot be installed for a reason that is no member's, the
  part of the change the runtime API can still make, with the config file left behind;
- `without_culprits`: the membership again without the members HAProxy refused, to be
  planned anew.
"""

from __future__ import annotations

from ..._typing import TYPE_CHECKING, NamedTuple
from ._render import health_checks, server_extras
from ._servers import Key, Rejected, Server, from_member, with_ids
from ._state import Behind, State, from_live

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from ...events import Member
    from ._live import LiveServer
    from ._options import Options

    Render = Callable[[Mapping[str, Server]], str]



# The reload reason when backends come or go (counted apart: no map or runtime command spares it).
BACKENDS_CHANGED = "backends added"


# --- which servers HAProxy should have -------------------------------------------------


class Wanted(NamedTuple):
    servers: dict[str, Server]  # node -> server: what HAProxy should serve
    failed: dict[str, Server]  # failed members not served (see `contain_failures`)
    skipped: dict[str, tuple[str, str]]  # node -> (fingerprint, why): members that cannot be served
    errors: list[tuple[str, str]]  # (node, why): the skips not reported before
    notes: list[str]  # one line per backend where the partition rule keeps failed members

    def state(self, old: State) -> State:
        """The membership part of the state to save."""
        return old._replace(servers=self.servers, failed=self.failed, skipped=self.skipped)


def wanted_after_event(old: State, kind: str, members: Iterable[Member], options: Options) -> Wanted:
    """The servers after a member event of `kind`, starting from `old`."""
    wanted = Wanted(dict(old.servers), dict(old.failed), dict(old.skipped), [], [])
    names = {s.name: node for node, s in old.servers.items()}
    for member in members:
        node = member.name
        if kind in ("member-join", "member-update") and member.role == options.role:
            wanted.failed.pop(node, None)
            _admit(wanted, names, member, options, old)
            continue
        if kind != "member-failed":
            wanted.skipped.pop(node, None)  # it left, was reaped, or is no longer of our role
            wanted.failed.pop(node, None)
        if node not in wanted.servers:
            continue  # another role's member, or one we never had
        if kind == "member-failed":
            wanted.servers[node] = wanted.servers[node]._replace(failed=True)
        else:
            names.pop(wanted.servers.pop(node).name, None)
    return contain_failures(wanted, options)


def wanted_from_members(
    old: State, members: Iterable[Member], options: Options, failed: Iterable[Member] = ()
) -> Wanted:
    """Exactly the alive `members` of our role, and the `failed` ones the rule keeps (reconcile)."""
    wanted = Wanted({}, {}, {}, [], [])
    names: dict[str, str] = {}
    for member in members:
        if member.role == options.role:
            _admit(wanted, names, member, options, old)
    for member in failed:
        if member.role == options.role and member.name not in wanted.servers:
            known = old.servers.get(member.name) or old.failed.get(member.name)
            try:
                server = known or from_member(member.name, member.addr, member.tags, options.port, options.backend)
            except Rejected:
                continue  # a failed member that could never be served: nothing to keep
            if server.name not in names:
                wanted.servers[member.name] = server._replace(failed=True)
                names[server.name] = member.name
    return contain_failures(wanted, options)


def fingerprint(addr: str, tags: Mapping[str, str]) -> str:
    """What a member sent, to tell a problem already reported from a new one."""
    return repr((addr, sorted(tags.items())))


def _admit(wanted: Wanted, names: dict[str, str], member: Member, options: Options, old: State) -> None:
    """Add `member`'s server; a member that cannot be rendered safely keeps its last valid
    form (if it had one and its name is still free) until it sends a valid one."""
    node = member.name
    try:
        server = from_member(node, member.addr, member.tags, options.port, options.backend)
        owner = names.get(server.name, node)
        if owner != node:
            raise Rejected(f"member {node!r}: server name {server.name!r} is already used by node {owner!r}")
        known = old.skipped.get(node)
        if known is not None and known[0] == fingerprint(member.addr, member.tags):
            raise Rejected(known[1])  # HAProxy rejected exactly this before (see `_execute`)
    except Rejected as exc:
        skip(wanted, old, member, str(exc))
        kept = old.servers.get(node)
        if kept is None or names.get(kept.name, node) != node:
            wanted.servers.pop(node, None)
            return
        server = kept
    else:
        wanted.skipped.pop(node, None)
    wanted.servers[node] = server
    names[server.name] = node


def skip(wanted: Wanted, old: State, member: Member, why: str) -> None:
    """Record that `member` is not served; an error only if this problem is new."""
    seen = fingerprint(member.addr, member.tags)
    if old.skipped.get(member.name, ("", ""))[0] != seen:
        wanted.errors.append((member.name, why))
    wanted.skipped[member.name] = (seen, why)


def contain_failures(wanted: Wanted, options: Options) -> Wanted:
    """The partition rule: `member-failed` never takes a backend below `min_alive` of its
    servers, and never empties it.

    From where the load balancer stands, a partition looks like every member failing at
    once although they all still serve. So per backend: when enough members are alive,
    failed ones are removed (or kept in maintenance with `on_failed: maint`); otherwise
    every failed one stays served and HAProxy's health checks decide who gets traffic.
    """
    alive = {node: s for node, s in wanted.servers.items() if not s.failed}
    down = {**wanted.failed, **{node: s for node, s in wanted.servers.items() if s.failed}}
    servers, failed, notes = dict(alive), {}, list(wanted.notes)
    for backend in sorted({s.backend for s in down.values()}):
        gone = {node: s for node, s in down.items() if s.backend == backend}
        up = sum(1 for s in alive.values() if s.backend == backend)
        total = up + len(gone)
        if up == 0 or up < options.min_alive * total:
            servers.update({node: _failed(s, maint=False) for node, s in gone.items()})
            notes.append(
                f"keeping {len(gone)} failed member(s) in backend {backend}: only {up} of {total} "
                f"servers alive (min_alive {options.min_alive:g}); health checks decide"
            )
        elif options.on_failed == "maint":
            servers.update({node: _failed(s, maint=True) for node, s in gone.items()})
        else:
            failed.update({node: _failed(s, maint=False) for node, s in gone.items()})
    return wanted._replace(servers=servers, failed=failed, notes=notes)


def _failed(server: Server, maint: bool) -> Server:
    # Its own `state=maint` tag still holds; only on_failed: maint adds maintenance.
    return server._replace(failed=True, maint=maint or server.tags.get("state") == "maint")


# --- the runtime-API change ------------------------------------------------------------


class RuntimeChange(NamedTuple):
    """Turn HAProxy's servers from `applied` into the wanted ones, in this order."""

    drain: tuple[Server, ...]  # `state drain`, one short wait for the whole run, `state maint`
    delete: tuple[Key, ...]  # `del server`; one that HAProxy refuses stays pending
    add: tuple[Server, ...]  # `add server` (in maintenance), `enable health`, then its state
    update: tuple[tuple[Server, Server], ...]  # (before, after): address, weight, state

    def __bool__(self) -> bool:
        return any(self)

    @property
    def repairs(self) -> bool:
        """Whether it changes anything beyond retrying deferred deletions."""
        return any((self.drain, self.add, self.update))

    @property
    def size(self) -> int:
        """How many servers it adds, removes or changes."""
        return len(self.add) + len(self.delete) + len(self.update)


NO_CHANGE = RuntimeChange((), (), (), ())


def leaving(old: Mapping[str, Server], new: Mapping[str, Server]) -> list[Server]:
    """The servers of `old` that `new` no longer has at the same backend/name."""
    return [s for node, s in sorted(old.items()) if node not in new or new[node].key != s.key]


def runtime_change(
    old: Mapping[str, Server],
    new: Mapping[str, Server],
    pending: Iterable[Key],
) -> RuntimeChange:
    """From `old` (HAProxy's servers, as `as_servers` reads them) to `new`."""
    gone = leaving(old, new)
    added = tuple(s for node, s in sorted(new.items()) if node not in old or old[node].key != s.key)
    kept = tuple((old[node], s) for node, s in sorted(new.items()) if node in old and old[node].key == s.key)
    wanted = {s.key for s in new.values()}  # a deferred deletion whose server comes back is revived instead
    delete = sorted({*pending, *(s.key for s in gone)} - wanted)
    return RuntimeChange(
        drain=tuple(s for s in gone if not s.maint),
        delete=tuple(delete),
        add=added,
        update=tuple((before, after) for before, after in kept if before.live_view != after.live_view),
    )


def as_servers(live: Mapping[Key, LiveServer], old: State, wanted: Mapping[str, Server]) -> dict[str, Server]:
    """HAProxy's live servers in the form of our record, by node: only the servers this
    handler made (an operator's own servers in the template are left alone). A second
    server of one node (left by a failed move) is listed under its path, to be removed."""
    records = (old.failed, old.applied or {}, old.servers, wanted)
    owner = {s.key: node for servers in records for node, s in servers.items()}
    actual: dict[str, Server] = {}
    for key, row in sorted(live.items()):
        node = owner.get(key)
        if node is None:
            continue
        record = next(servers[node] for servers in reversed(records) if node in servers)
        if node in actual or record.key != key:
            node = f"\0{row.backend}/{row.name}"  # no node name holds a NUL: not wanted, so removed
        actual[node] = record._replace(
            node=node, backend=row.backend, name=row.name, addr=row.addr, port=row.port, weight=row.weight,
            maint=row.state == "maint", drain=row.state == "drain",
        )
    return actual


# --- one run ---------------------------------------------------------------------------

# The kinds of step, in the order a plan lists them (`Plan.steps`; `_execute` walks them and
# writes down the crash-safety protocol). SAVE, INSTALL and RELOAD mean what the pipeline's
# steps of those names mean (serf_handlers/pipeline/_plan.py); they are spelled again here,
# not imported: importing the pipeline package would cost every haproxy event ~1.6 ms.
DRAIN_EARLY = "drain early"  # start draining `drain`, so that the drain overlaps `haproxy -c`
SAVE = "save"  # save `state` (`why`: INTENT or DONE)
INSTALL = "install"  # `text`: `haproxy -c` on a candidate, then an atomic rename
RELOAD_INSTEAD = "reload instead"  # a reload (`why`) makes `change`; if the reload fails, the runtime API does
RUNTIME = "runtime"  # send `change` to the admin socket; if HAProxy refuses it or is silent: `if_fails`
RELOAD = "reload"  # save HAProxy's server state, then run the reload command (`why`: the reason)
NO_RELOAD = "no reload"  # a reload is due (`why`) but no reload command is configured: logged only
INTENT, DONE = "intent", "done"  # which SAVE: before installing, or the run's last step

# What a run does when the runtime API cannot make its change (`Step.if_fails`):
# RELOAD: the change is the membership change: a reload makes it instead
WAIT = "wait"  # it only retries deferred deletions: they wait for the next run
FAIL = "fail"  # the config file is behind (`live_only`): a reload would load old servers


class Step(NamedTuple):
    kind: str  # one of the kinds above
    state: State | None = None  # SAVE: what to save (DONE: its `pending` is what the run leaves)
    why: str = ""  # SAVE: INTENT or DONE; RELOAD_INSTEAD, RELOAD, NO_RELOAD: the reason, for the log
    text: str = ""  # INSTALL: the config
    drain: tuple[Server, ...] = ()  # DRAIN_EARLY: the servers that go
    change: RuntimeChange = NO_CHANGE  # RUNTIME, RELOAD_INSTEAD: the runtime-API change
    checks: str = ""  # RUNTIME, RELOAD_INSTEAD: added servers' health-check options, as on their config line
    ids: Mapping[Key, int] = {}  # RUNTIME, RELOAD_INSTEAD: added servers' config-line `id`; never mutated
    extras: Mapping[Key, str] = {}  # RUNTIME, RELOAD_INSTEAD: what their service adds to the line (`_routes`)
    if_fails: str = ""  # RUNTIME, RELOAD_INSTEAD: RELOAD, WAIT or FAIL (above)
    check: bool = True  # INSTALL: `haproxy -c` first (False: `only_weights_and_states` differ)


class Plan(NamedTuple):
    steps: tuple[Step, ...]  # in order; the last one saves DONE
    rollback: State  # saved when a step fails
    before: Mapping[str, Server]  # what HAProxy had, for the log
    put_back: str | None = None  # after a failed live change: the config file to put back (`_put_back`)
    error: str | None = None  # the run fails with this after saving DONE (`live_only`)

    def step(self, kind: str, why: str | None = None) -> Step | None:
        """The first step of `kind` (and `why`), if the plan has one."""
        return next((s for s in self.steps if s.kind == kind and why in (None, s.why)), None)

    # Views of the steps, for the executor's log and for tests.
    @property
    def done(self) -> State:
        step = self.step(SAVE, DONE)
        assert step is not None and step.state is not None  # every plan ends with it
        return step.state

    @property
    def intent(self) -> State | None:
        step = self.step(SAVE, INTENT)
        return None if step is None else step.state

    @property
    def text(self) -> str | None:
        """The config to install; None: the installed file is already right."""
        step = self.step(INSTALL)
        return None if step is None else step.text

    @property
    def runtime(self) -> RuntimeChange:
        step = self.step(RUNTIME) or self.step(RELOAD_INSTEAD)
        return NO_CHANGE if step is None else step.change

    @property
    def reload(self) -> str | None:
        """Why HAProxy must load the config (None: it need not)."""
        step = self.step(RELOAD) or self.step(NO_RELOAD)
        return None if step is None else step.why


def make_plan(
    old: State,
    new: State,
    installed: str | None,
    render: Render,
    options: Options,
    full: bool = False,
    live: Mapping[Key, LiveServer] | None = None,
) -> Plan:
    """What must happen to bring HAProxy from `old` to `new.servers`.

    `installed` is the text of the installed config (None: no file); `live` is what
    HAProxy really has (`show servers state`; None without an answer). `full` (reconcile)
    goes through every step even when nothing seems to differ.
    Raises what `render` raises (a broken template).
    """
    wanted = new.servers
    rollback = new._replace(applied=old.applied, pending=old.pending)
    applied = old.applied
    actual = applied if live is None else as_servers(live, old, wanted)
    pending = old.pending if live is None else tuple(key for key in old.pending if key in live)
    done = Step(SAVE, new._replace(applied=wanted, behind=None, pending=pending), DONE)
    if not full and old.exists and applied == wanted and old.behind is None:
        # The record says HAProxy has what we want: a repeated or irrelevant event ends here,
        # retrying deferred deletions, unless HAProxy itself says otherwise (drift, or what a
        # failed run left behind): then it is repaired like any change.
        retry = NO_CHANGE if options.socket is None else runtime_change(actual or {}, wanted, pending)
        if not retry.repairs:
            return Plan((*_apply(retry, None, wanted, options, WAIT), done), rollback, wanted)

    text = render(wanted)
    if applied is None and not old.exists:
        applied = _running(installed, text, wanted, render, live)
        rollback = new._replace(applied=applied, pending=old.pending)  # what HAProxy runs, as now known
    changed = installed != text
    # With no state file, record first that HAProxy has not got this config yet: should the
    # run die between install and reload, the next one must not take the file for what HAProxy runs.
    intent = rollback if changed and not old.exists else None
    written = applied if old.behind is None else old.behind.servers  # what the installed file renders
    reason = _reload_reason(applied, written, wanted, installed, text, render, options)
    runtime = NO_CHANGE
    if options.socket is not None and reason is None and applied is not None:
        runtime = runtime_change(applied if live is None else actual or {}, wanted, pending)
    # A change of weights and states alone edits validated numbers and flags of a text HAProxy
    # already accepted: `haproxy -c` (most of such a run's time) can prove nothing more.
    check = not (reason is None and installed is not None and only_weights_and_states(installed, text))
    install = _install(text, intent, runtime, check) if changed else []
    steps = (*install, *_apply(runtime, reason, wanted, options, RELOAD), done)
    put_back = _put_back(installed if changed else None, reason, options)
    return Plan(steps, rollback, (applied if live is None else actual) or {}, put_back)


def _put_back(replaced: str | None, reason: str | None, options: Options) -> str | None:
    """The file to put back if the change fails in the runtime API (`replaced`: the one the
    run replaces): only after a change of servers alone (no reload of its own). It again
    says what HAProxy runs, and the next run finishes through the runtime API. Left in
    place, the new file would read as an edit HAProxy has not loaded, and every later run
    would demand a reload: under CPU starvation, a reload that keeps failing while the
    runtime API would have worked."""
    return replaced if reason is None and options.socket is not None else None


def _install(text: str, intent: State | None, runtime: RuntimeChange, check: bool) -> list[Step]:
    """DRAIN_EARLY (not when servers are also added: they go first, `Runtime.apply`, so
    capacity never dips), SAVE INTENT, INSTALL."""
    early = () if runtime.add else runtime.drain
    steps = [Step(DRAIN_EARLY, drain=early)] if early else []
    if intent is not None:
        steps.append(Step(SAVE, intent, INTENT))
    return [*steps, Step(INSTALL, text=text, check=check)]


def only_weights_and_states(installed: str, text: str) -> bool:
    """Whether `text` differs from `installed` only in `server` lines' `weight N` and trailing
    ` disabled` (a member's weight and state tags: validated values). Read from the texts
    themselves, so any template, and any other difference, gets the full check."""
    before, after = installed.splitlines(), text.splitlines()
    if len(before) != len(after):
        return False
    for a, b in zip(before, after, strict=True):
        core = _server_line_core(a)
        if a != b and (core is None or core != _server_line_core(b)):
            return False
    return True


def _server_line_core(line: str) -> tuple[str, ...] | None:
    """A `server` line's words without its weight and `disabled` (None: not a server line)."""
    words = line.split()
    if not words or words[0] != "server" or "weight" not in words[:-1]:
        return None
    at = words.index("weight")
    if not words[at + 1].isdigit():
        return None
    kept = words[:at] + words[at + 2 :]
    return tuple(kept[:-1] if kept[-1] == "disabled" else kept)


def _apply(
    change: RuntimeChange, reason: str | None, servers: Mapping[str, Server], options: Options, if_fails: str
) -> list[Step]:
    """How HAProxy gets the change: a reload for `reason`, else `change` through the runtime API
    (`servers`: all of the new config's, for the added servers' ids and health checks)."""
    if reason is not None:
        return [Step(RELOAD if options.reload is not None else NO_RELOAD, why=reason)]
    if not change:
        return []
    added = {s.key for s in change.add}
    ids = {s.key: s.id for s in with_ids(servers).values() if s.key in added} if added else {}
    extras = {s.key: server_extras(options.backends.get(s.backend), s.name) for s in change.add}
    step = Step(RUNTIME, change=change, checks=health_checks(options, servers), ids=ids, extras=extras,
                if_fails=if_fails)
    if if_fails == RELOAD and change.size > options.reload_above:
        # One hitless reload costs less than three runtime-API commands per server (HAProxy's
        # cost per command grows with the backend: BENCHMARKS.md, section 8, times both). If
        # it fails, the runtime API makes the change, so a reload that keeps failing (a starved
        # machine) never blocks it.
        why = f"{change.size} servers change: a reload costs less than the runtime API"
        return [step._replace(kind=RELOAD_INSTEAD, why=why)]
    return [step]


def live_only(
    old: State, new: State, why: str, options: Options, live: Mapping[Key, LiveServer] | None
) -> Plan | None:
    """When the candidate config cannot be installed for a reason that is no member's (`why`:
    a broken template, a certificate HAProxy refuses, `haproxy -c`, the disk): the part of the
    change the runtime API can make (servers of the backends HAProxy already has), so traffic
    still follows the members. The config file stays behind; the state says so and why, and
    the first run after the fix installs it (`make_plan`). The run still fails with `why`.
    None when nothing can be applied live: no socket, HAProxy silent, what it runs unknown."""
    if options.socket is None or live is None or old.applied is None:
        return None
    backends = {*_standing_backends(options), *(s.backend for s in old.applied.values())}
    reachable = {node: s for node, s in new.servers.items() if s.backend in backends}
    actual = as_servers(live, old, reachable)
    pending = tuple(key for key in old.pending if key in live)
    written = old.applied if old.behind is None else old.behind.servers
    rollback = new._replace(applied=old.applied, pending=old.pending)
    done = new._replace(applied=reachable, pending=pending, behind=Behind(why, written))
    change = runtime_change(actual, reachable, pending)
    steps = (*_apply(change, None, new.servers, options, FAIL), Step(SAVE, done, DONE))
    return Plan(steps, rollback, actual, None, why)


def without_culprits(old: State, new: State, culprits: Mapping[str, str]) -> State:
    """After `haproxy -c` refused the config because of some members (`culprits`: node ->
    why, `_install.culprits`): `new` with each of them back to what HAProxy had (or gone),
    and remembered as skipped, to be planned again, so one member cannot block the others."""
    before = old.applied or old.servers
    servers = dict(new.servers)
    skipped = dict(new.skipped)
    for node, why in culprits.items():
        server = servers.pop(node)
        if node in before:
            servers[node] = before[node]
        skipped[node] = (fingerprint(server.addr, server.tags), why)
    return new._replace(servers=servers, skipped=skipped)


def _running(
    installed: str | None, text: str, wanted: Mapping[str, Server], render: Render,
    live: Mapping[Key, LiveServer] | None,
) -> Mapping[str, Server] | None:
    """With no state (deleted, or a first reconcile): the servers HAProxy runs, when the
    installed config shows them; else None (unknown: reload). (A saved null instead means
    an earlier run failed before HAProxy got its config: that one reloads.)"""
    if installed == text:
        return wanted  # the installed config already says exactly this: HAProxy runs it
    if installed == render({}):
        return {}  # the empty config `serf-handle render --write` installed before HAProxy started
    running = None if live is None else from_live(live).servers
    if running is not None and installed == render(running):
        return running  # HAProxy's live servers are exactly the installed file's
    return None


def _reload_reason(
    applied: Mapping[str, Server] | None,
    written: Mapping[str, Server] | None,
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
    if installed != text and (written is None or installed != render(written)):
        # Someone changed the template or the file: HAProxy must load the whole config.
        return "the installed config was not the one HAProxy runs"
    always = _standing_backends(options)
    old_backends = {*always, *(s.backend for s in applied.values())}
    new_backends = {*always, *(s.backend for s in wanted.values())}
    if old_backends != new_backends:
        added, removed = sorted(new_backends - old_backends), sorted(old_backends - new_backends)
        return f"{BACKENDS_CHANGED} {added} or removed {removed}"
    sticky = sorted(_sticky_joins(applied, wanted, options))
    if sticky:
        # HAProxy 2.6 refuses `cookie` on `add server` ("not accepted for dynamic server"):
        # a server joins a sticky backend by a (hitless) reload. Leaves and updates stay live.
        return f"servers join sticky backend(s) {sticky}: HAProxy 2.6 adds no server with a cookie live"
    return None


def _standing_backends(options: Options) -> set[str]:
    """The backends in every config, with or without servers: the default, TCP and configured ones."""
    return {options.backend, *options.tcp, *options.backends}


def _sticky_joins(applied: Mapping[str, Server], wanted: Mapping[str, Server], options: Options) -> set[str]:
    """The sticky backends (`backends.<name>.sticky`) that `wanted` adds a server to."""
    sticky = {name for name, service in options.backends.items() if service.sticky}
    before = {s.key for s in applied.values()}
    return {s.backend for s in wanted.values() if s.backend in sticky and s.key not in before}
