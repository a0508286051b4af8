"""Carry out a plan (`_plan.make_plan`): install, runtime API, reload, and the state saves.

The crash-safety protocol, in one place. One run holds the state lock (`<state>.lock`)
throughout and does, in this order:

1. Plan. A template that cannot render fails here, before anything is touched:
   save ROLLBACK.
2. Start draining the servers that go (runtime API only), so that the drain time
   overlaps the validation below.
3. Only when there was no state file: save INTENT, which records what HAProxy is known
   to run (usually "unknown"). Without it, a run killed between 4 and 6 would leave an
   installed file that the next run takes for what HAProxy runs.
4. Install the new config, if its text changed: `haproxy -c` on a candidate, then an
   atomic rename. A refused or unwritable config leaves the old file byte-identical:
   save ROLLBACK.
5. Change HAProxy's servers through the runtime API; if HAProxy refuses or does not
   answer, fall back to a reload.
6. Reload, when needed: first save HAProxy's server state for the new worker. A failed
   reload: save ROLLBACK.
7. Save DONE.

The saves:
- ROLLBACK: `servers` = the new membership (never lost), `applied` = what HAProxy had
  before the run. The next event or reconcile computes its change from `applied`, so it
  finishes what this run could not.
- INTENT: as ROLLBACK, but `applied` as far as it is known before installing.
- DONE: `applied` = `servers`; `pending` = the deletions HAProxy refused (retried later).
A run killed anywhere leaves the previous state file, or INTENT, or DONE: each makes the
next run redo exactly what may be missing (installing the same text again is a no-op).
"""

from __future__ import annotations

from ... import _log
from ..._typing import TYPE_CHECKING
from ...errors import HandlerError
from . import _state
from ._files import read_bytes
from ._plan import make_plan
from ._render import render, server_state_file

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._options import Options
    from ._plan import Key, Plan
    from ._runtime import Runtime
    from ._servers import Server
    from ._state import State


def converge(old: State, wanted: Mapping[str, Server], options: Options, full: bool = False) -> None:
    """Bring HAProxy (and the state file) from `old` to `wanted`. Call under the state lock."""
    raw = read_bytes(options.config)
    installed = None if raw is None else raw.decode("utf-8", "replace")
    try:
        plan = make_plan(old, wanted, installed, lambda servers: render(options, servers), options, full)
    except HandlerError:
        # Keep the membership (HAProxy still has the old servers): once the template is
        # fixed, the next event or reconcile applies it.
        _save(options, old, old._replace(servers=wanted))
        raise
    execute(plan, old, options)


def execute(plan: Plan, old: State, options: Options) -> None:
    """Steps 2-7 of the protocol above."""
    runtime = None
    if options.socket is not None:
        from ._runtime import Runtime

        runtime = Runtime(options.socket)
        if plan.text is not None:
            runtime.drain_early(plan.runtime.drain)
    if plan.text is not None:
        from ._install import install

        try:
            if plan.intent is not None:
                _save(options, old, plan.intent)
            install(options.config, plan.text, options.check, options.haproxy)
        except HandlerError:
            _save(options, old, plan.rollback)
            raise
        _log.info("haproxy: config installed", config=options.config, servers=len(plan.done.servers))
    pending = plan.done.pending
    reason = plan.reload
    if runtime is not None and plan.runtime:
        pending, reason = _runtime_change(runtime, plan, reason)
    if reason is not None:
        pending = _reload(runtime, plan, old, options, reason)
    _log_changes(plan.before, plan.done.servers)
    _save(options, old, plan.done._replace(pending=pending))


def _runtime_change(runtime: Runtime, plan: Plan, reason: str | None) -> tuple[tuple[Key, ...], str | None]:
    """Step 5: (the deletions still pending, why a reload is needed now)."""
    from ._runtime import Unavailable, Unexpressible

    try:
        pending = runtime.apply(plan.runtime)
    except (Unexpressible, Unavailable) as exc:
        if not plan.reload_if_runtime_fails:
            _log.warning(f"haproxy: deferred deletions not retried: {exc}")
            return plan.done.pending, reason
        _log.warning(f"haproxy: runtime API cannot apply the change: {exc}")
        return plan.done.pending, f"runtime API: {exc}"
    if runtime.client.sent:
        sent = runtime.client.sent
        _log.info("haproxy: servers changed through the runtime API", commands=sent, pending=len(pending))
    return pending, reason


def _reload(runtime: Runtime | None, plan: Plan, old: State, options: Options, reason: str) -> tuple[Key, ...]:
    """Step 6; returns the deletions still pending (none: the new worker never had them)."""
    if options.reload is None:  # (never with a socket: the options require a reload then)
        _log.info("haproxy: config changed; no reload command configured", reason=reason)
        return plan.done.pending
    from ._install import reload

    path = server_state_file(options)
    if runtime is not None:
        runtime.save_server_state(path, plan.done.servers)
    else:
        from ._runtime import save_server_state

        save_server_state(path, plan.done.servers)
    try:
        reload(options.reload)
    except HandlerError:
        _save(options, old, plan.rollback)
        raise
    _log.info("haproxy: reloaded", reason=reason)
    return ()


def _save(options: Options, old: State, new: State) -> None:
    if not _state.same(old, new):
        _state.save(options.state, new)


def _log_changes(before: Mapping[str, Server], after: Mapping[str, Server]) -> None:
    for node in sorted(before.keys() - after.keys()):
        _log.info("haproxy: server removed", node=node, server=before[node].path)
    for node, server in sorted(after.items()):
        old = before.get(node)
        if old is None:
            _log.info("haproxy: server added", node=node, server=server.path, address=server.address)
        elif old._replace(tags=server.tags) != server:
            _log.info(
                "haproxy: server changed",
                node=node,
                server=server.path,
                address=server.address,
                weight=server.weight,
                maint=server.maint,
            )
