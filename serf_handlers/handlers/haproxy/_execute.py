"""Carry out a plan (`_plan.make_plan`): install, runtime API, reload, and the state saves.

The crash-safety protocol, in one place. One run holds the state lock (`<state>.lock`)
throughout and does, in this order:

1. Read HAProxy's live servers (admin socket), then plan. A template that cannot render
   fails here, before anything is touched: save ROLLBACK.
2. Start draining the servers that go (runtime API only), so that the drain time
   overlaps the validation below; not when the change also adds servers (they go first).
3. Only when there was no state file: save INTENT, which records what HAProxy is known
   to run (usually "unknown"). Without it, a run killed between 4 and 6 would leave an
   installed file that the next run takes for what HAProxy runs.
4. Install the new config, if its text changed: `haproxy -c` on a candidate, then an
   atomic rename. A refused or unwritable config leaves the old file byte-identical; the
   early drains are undone: save ROLLBACK. When `haproxy -c` refuses it because of some
   members' values, those members are skipped (named once) and the run starts again
   without them, so one member cannot block the others.
5. Change HAProxy's servers through the runtime API (a change of more than `reload_above`
   servers: by a reload, which costs less; the runtime API if that reload fails); if
   HAProxy refuses, or never
   answered in this run, fall back to a reload. If it answered and then stopped (a
   starved HAProxy: retries did not help), fail without reloading. After a change,
   rewrite the server-state file, so a later reload or restart (ours or an operator's)
   never brings back old settings.
6. Reload, when needed: first save HAProxy's server state for the new worker.
   A failure in 5 or 6: when the change was of servers only and HAProxy is alive, put the
   previous config file back (`_put_back`); save ROLLBACK.
7. Save DONE.

The saves:
- ROLLBACK: `servers` = the new membership (never lost), `applied` = what HAProxy had
  before the run. The next event or reconcile computes its change from HAProxy's live
  servers (or, without an answer, from `applied`), so it finishes what this run could not.
- INTENT: as ROLLBACK, but `applied` as far as it is known before installing.
- DONE: `applied` = `servers`; `pending` = the deletions HAProxy refused (retried later).
A run killed anywhere leaves the previous state file, or INTENT, or DONE: each makes the
next run redo exactly what may be missing (installing the same text again is a no-op),
and HAProxy's live servers are checked against the state on every run.
"""

from __future__ import annotations

import os

from ... import _log, _metrics
from ..._files import read_bytes, write_atomic
from ..._jinja import TemplateError
from ..._typing import TYPE_CHECKING
from ...errors import HandlerError
from . import _state
from ._install import CannotInstall, ValidationError
from ._options import server_state_file
from ._plan import FAIL, RELOAD, WAIT, fingerprint, live_only, make_plan
from ._render import health_checks, render
from ._servers import with_ids

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._options import Options
    from ._plan import Plan
    from ._runtime import Runtime
    from ._servers import Key, Server
    from ._state import State


def session(options: Options) -> Runtime | None:
    """The run's one admin-socket session (None without `socket`): opened once per run and
    passed down, so a silent HAProxy costs its retries once."""
    if options.socket is None:
        return None
    from ._runtime import Runtime

    return Runtime(options.socket)


def converge(
    old: State, new: State, options: Options, full: bool = False, runtime: Runtime | None = None
) -> list[tuple[str, str]]:
    """Bring HAProxy (and the state file) from `old` to `new`. Call under the state lock, with
    the run's `session`. Returns (node, why) for each member skipped because HAProxy rejected
    its server."""
    _metrics.inc(_metrics.P + "haproxy_skipped_members_total", _metrics.newly_skipped(old.skipped, new.skipped))
    new = new._replace(notices=_certificate_notices(options, old))
    culprits: dict[str, str] = {}
    try:
        try:
            _converge(old, new, options, full, runtime)
        except ValidationError as exc:
            culprits = _culprits(old, new, options) if options.check else {}
            if not culprits:
                raise
            _log.error(f"haproxy: skipping {len(culprits)} member(s) HAProxy rejects; applying the others: {exc}")
            _metrics.inc(_metrics.P + "haproxy_skipped_members_total", len(culprits))
            new = _without(old, new, culprits)
            _converge(old, new, options, full, runtime)
    except (CannotInstall, TemplateError) as exc:
        # No member's fault: the membership change must still reach HAProxy (see `live_only`).
        _metrics.inc(_metrics.P + "haproxy_install_failures_total")
        plan = None if runtime is None else live_only(old, new, str(exc), options, runtime.live())
        if plan is None:
            raise
        _log.error(f"haproxy: config not installed, changing HAProxy through the runtime API only: {exc}")
        execute(plan, old, options, runtime)
    finally:
        if runtime is not None:  # every command sent, the `show servers state` reads included
            _metrics.inc(_metrics.P + "haproxy_runtime_commands_total", runtime.client.sent)
    return list(culprits.items())


def _certificate_notices(options: Options, old: State) -> tuple[str, ...]:
    """With `vars.tls_certs`: the expiry warnings (logged only when not already logged, see
    `_certs`) and the expiry gauge. A refused certificate is the render's error, not this."""
    directory = options.vars.get("tls_certs")
    if not directory:
        return ()
    from ._certs import CertError, check, expiry_gauge, expiry_notices

    try:
        certs = check(directory, options.vars.get("tls_default_cert"))
    except CertError:
        return old.notices
    expiry_gauge(certs)
    notices = tuple(expiry_notices(certs))
    for notice in notices:
        if notice not in old.notices:
            _log.warning(f"haproxy: {notice}")
    return notices


def _converge(old: State, new: State, options: Options, full: bool, runtime: Runtime | None) -> None:
    live = None if runtime is None else runtime.live()
    raw = read_bytes(options.config)
    installed = None if raw is None else raw.decode("utf-8", "replace")
    try:
        plan = make_plan(old, new, installed, lambda servers: render(options, servers), options, full, live)
    except HandlerError:
        # Keep the membership (HAProxy still has the old servers): once the template is
        # fixed, the next event or reconcile applies it.
        _save_after_failure(options, old, new._replace(applied=old.applied, pending=old.pending))
        raise
    execute(plan, old, options, runtime)


def execute(plan: Plan, old: State, options: Options, runtime: Runtime | None = None) -> None:
    """Steps 2-7 of the protocol above."""
    if plan.text is not None:
        if runtime is not None and plan.drain_early:
            runtime.drain_early(plan.drain_early)
        from ._install import install

        try:
            if plan.intent is not None:
                _save(options, old, plan.intent)
            install(options.config, plan.text, options.check, options.haproxy, options.backup)
        except HandlerError:
            if runtime is not None:
                runtime.undo_drains()
            _save_after_failure(options, old, plan.rollback)
            raise
        _log.info("haproxy: config installed", config=options.config, servers=len(plan.done.servers))
    try:
        pending = _apply(plan, options, runtime)
    except HandlerError:
        _put_back(plan, options, runtime)
        _save_after_failure(options, old, plan.rollback)
        raise
    _log_changes(plan.before, plan.done.servers)
    _metrics.haproxy_servers(plan.done.servers.values(), len(plan.done.skipped), options.backend)
    _metrics.gauge(_metrics.P + "haproxy_config_behind", plan.done.behind is not None)
    _save(options, old, plan.done._replace(pending=pending))
    if plan.error is not None:
        raise HandlerError(f"config not installed ({plan.error}); HAProxy got the change through the runtime API")


def _apply(plan: Plan, options: Options, runtime: Runtime | None) -> tuple[Key, ...]:
    """Steps 5 and 6: returns the deletions still pending."""
    pending = plan.done.pending
    reason = plan.reload
    many = plan.runtime.size > options.reload_above
    if runtime is not None and reason is None and plan.if_runtime_fails == RELOAD and many:
        done = _reload_instead(runtime, plan, options)
        if done is not None:
            return done
    if runtime is not None and plan.runtime:
        runtime.check_options = health_checks(options, plan.done.servers)
        runtime.ids = {s.key: s.id for s in with_ids(plan.done.servers).values()}
        pending, reason = _runtime_change(runtime, plan, reason)
        if reason is None and runtime.client.sent:
            # Read again: what HAProxy has now is what a later reload or restart must keep.
            runtime.save_server_state(server_state_file(options), plan.done.servers)
    if reason is not None:
        pending = _reload(runtime, plan, options, reason)
    return pending


def _reload_instead(runtime: Runtime, plan: Plan, options: Options) -> tuple[Key, ...] | None:
    """A change of many servers at once: one hitless reload costs less than three runtime-API
    commands per server (HAProxy's cost per command grows with the backend: BENCHMARKS.md,
    section 8, times both). If the reload fails, None: the runtime API makes the change instead, so a
    reload that keeps failing (a starved machine) never blocks it."""
    why = f"{plan.runtime.size} servers change: a reload costs less than the runtime API"
    try:
        return _reload(runtime, plan, options, why)
    except HandlerError as exc:
        _log.warning(f"haproxy: reload failed; changing the servers through the runtime API instead: {exc}")
        return None


def _put_back(plan: Plan, options: Options, runtime: Runtime | None) -> None:
    """After a failed change of servers only (no reload of its own: the plan's reason is
    None) while HAProxy is alive (it answered in this run): put the previous config file
    back, so the file again says what HAProxy is known to run and the next run (an event,
    or the periodic reconcile) finishes the change through the runtime API. Left in place,
    the new file would read as an edit HAProxy has not loaded, and every later run would
    demand a reload: under CPU starvation, a reload that keeps failing while the runtime
    API would have worked. (When HAProxy never answered it is down: the newest file stays,
    for whatever restarts it.)"""
    if runtime is None or not runtime.client.answered or plan.reload is not None:
        return
    if plan.text is None or plan.installed is None:
        return
    runtime.undo_drains()
    from ._install import install

    try:
        install(options.config, plan.installed, False, options.haproxy)
    except HandlerError as exc:
        _log.error(f"haproxy: previous config not put back: {exc}")
        return
    _log.info("haproxy: previous config put back; the next run retries the change", config=options.config)


def _runtime_change(runtime: Runtime, plan: Plan, reason: str | None) -> tuple[tuple[Key, ...], str | None]:
    """Step 5: (the deletions still pending, why a reload is needed now)."""
    from ._runtime import Unavailable, Unexpressible

    try:
        pending = runtime.apply(plan.runtime)
    except (Unexpressible, Unavailable) as exc:
        if plan.if_runtime_fails == WAIT:
            _log.warning(f"haproxy: deferred deletions not retried: {exc}")
            return plan.done.pending, reason
        if plan.if_runtime_fails == FAIL:
            raise HandlerError(f"{plan.error}; and the runtime API cannot apply the change either: {exc}") from None
        if isinstance(exc, Unavailable) and runtime.client.answered:
            # HAProxy answered earlier in this run, then stopped answering: it is alive but
            # starved, and a reload (a new worker, a full config parse) only adds load.
            raise Unavailable(f"{exc} (HAProxy answered earlier in this run; not reloading)") from None
        _log.warning(f"haproxy: runtime API cannot apply the change: {exc}")
        return plan.done.pending, f"runtime API: {exc}"
    if runtime.client.sent:
        sent = runtime.client.sent
        _log.info("haproxy: servers changed through the runtime API", commands=sent, pending=len(pending))
    return pending, reason


def _reload(runtime: Runtime | None, plan: Plan, options: Options, reason: str) -> tuple[Key, ...]:
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
        _metrics.inc(_metrics.P + "haproxy_reload_failures_total")
        raise
    _metrics.inc(_metrics.P + "haproxy_reloads_total")
    _log.info("haproxy: reloaded", reason=reason)
    return ()


def _save(options: Options, old: State, new: State) -> None:
    if not _state.same(old, new):
        _state.save(options.state, new)


def _save_after_failure(options: Options, old: State, new: State) -> None:
    """Save ROLLBACK, but never hide the failure that led here (a full disk fails both)."""
    try:
        _save(options, old, new)
    except (OSError, HandlerError) as exc:
        _log.error(f"haproxy: state not saved either: {exc}", state=options.state)


def _culprits(old: State, new: State, options: Options) -> dict[str, str]:
    """The members whose server alone makes `haproxy -c` reject a config that is valid
    without them: (node -> why). Empty when the config is rejected without any of them
    (the template, or something else, is at fault)."""
    from ._install import validate

    before = old.applied or old.servers
    changed = sorted(node for node, server in new.servers.items() if before.get(node) != server)
    base = {node: s for node, s in new.servers.items() if node not in changed}
    probe = f"{options.state}.probe.cfg"

    def rejects(servers: Mapping[str, Server]) -> str | None:
        try:
            write_atomic(probe, render(options, servers).encode("utf-8"), 0o600)
            validate(options.haproxy, probe)
        except ValidationError as exc:
            return str(exc)
        finally:
            try:
                os.unlink(probe)
            except FileNotFoundError:
                pass
        return None

    if not changed or rejects(base) is not None:
        return {}
    found = {}
    for node in changed:
        why = rejects({**base, node: new.servers[node]})
        if why is not None:
            server = new.servers[node]
            found[node] = f"member {node!r} (tags {dict(server.tags)}): {why}"
    return found


def _without(old: State, new: State, culprits: Mapping[str, str]) -> State:
    """`new` with each culprit back to what HAProxy had (or gone), and remembered as skipped."""
    before = old.applied or old.servers
    servers = dict(new.servers)
    skipped = dict(new.skipped)
    for node, why in culprits.items():
        server = servers.pop(node)
        if node in before:
            servers[node] = before[node]
        skipped[node] = (fingerprint(server.addr, server.tags), why)
    return new._replace(servers=servers, skipped=skipped)


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
                state=server.admin,
            )
