"""Walk a plan (`_plan.make_plan`): install, runtime API, reload, and the state saves.

A plan lists its steps in order (`_plan.Step`), with every choice already made: whether a
reload replaces many runtime commands, what follows when HAProxy refuses a change, which
file goes back after a failure. This module carries the steps out, one after the other;
it observes (did HAProxy answer?) but does not choose. The crash-safety protocol, in one
place. One run holds the state lock (`<state>.lock`) throughout and does, in this order:

1. Read HAProxy's live servers (admin socket), then plan. A template that cannot render
   fails here, before anything is touched: save ROLLBACK.
2. DRAIN_EARLY: start draining the servers that go (runtime API only), so that the drain
   time overlaps the validation below; not when the change also adds servers (they go first).
3. SAVE INTENT, only when there was no state file: it records what HAProxy is known to run
   (usually "unknown"). Without it, a run killed between 4 and 6 would leave an installed
   file that the next run takes for what HAProxy runs.
4. INSTALL the new config, if its text changed: `haproxy -c` on a candidate (not when only
   servers' weights and states changed: `_plan.only_weights_and_states`), then an atomic
   rename. A refused or unwritable config leaves the old file byte-identical; the early
   drains are undone: save ROLLBACK. When `haproxy -c` refuses it because of some
   members' values, those members are skipped (named once) and the run is planned again
   without them (`_plan.without_culprits`), so one member cannot block the others.
5. RUNTIME: change HAProxy's servers through the runtime API (RELOAD_INSTEAD, for a change
   of more than `reload_above` servers: a reload, which costs less; the runtime API if that
   reload fails). If HAProxy refuses, or never answered in this run, the step's `if_fails`
   says what follows: a reload, waiting for the next run, or failing. If it answered and
   then stopped (a starved HAProxy: retries did not help), fail without reloading. After a
   change, rewrite the server-state file, so a later reload or restart (ours or an
   operator's) never brings back old settings.
6. RELOAD, when needed: first save HAProxy's server state for the new worker.
   A failure in 5 or 6: put back the previous config file when the plan names one
   (`Plan.put_back`: a change of servers only) and HAProxy is alive; save ROLLBACK.
7. SAVE DONE.

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

from ... import _log, _metrics
from ..._files import read_bytes
from ..._jinja import TemplateError
from ..._typing import TYPE_CHECKING
from ...errors import HandlerError
from . import _state
from ._install import CannotInstall, ValidationError
from ._options import server_state_file
from ._plan import (
    BACKENDS_CHANGED,
    DONE,
    DRAIN_EARLY,
    FAIL,
    INSTALL,
    NO_RELOAD,
    RELOAD,
    RELOAD_INSTEAD,
    RUNTIME,
    SAVE,
    WAIT,
    live_only,
    make_plan,
    without_culprits,
)
from ._render import render

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._options import Options
    from ._plan import Plan, Step
    from ._runtime import Runtime
    from ._servers import Key, Server
    from ._state import State

# Steps 5 and 6: when one of them fails, the plan's file may be put back; when a step
# before them fails, the early drains are undone.
_LIVE = (RELOAD_INSTEAD, RUNTIME, RELOAD)


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
            execute(_planned(old, new, options, full, runtime), old, options, runtime)
        except ValidationError as exc:
            culprits = _culprits(old, new, options) if options.check else {}
            if not culprits:
                raise
            _log.error(f"haproxy: skipping {len(culprits)} member(s) HAProxy rejects; applying the others: {exc}")
            _metrics.inc(_metrics.P + "haproxy_skipped_members_total", len(culprits))
            new = without_culprits(old, new, culprits)
            execute(_planned(old, new, options, full, runtime), old, options, runtime)
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
    if options.tls is None:
        return ()
    from ._certs import CertError, check, expiry_gauge, expiry_notices

    try:
        certs = check(options.tls.certs, options.tls.default_cert)
    except CertError:
        return old.notices
    expiry_gauge(certs)
    notices = tuple(expiry_notices(certs))
    for notice in notices:
        if notice not in old.notices:
            _log.warning(f"haproxy: {notice}")
    return notices


def _planned(old: State, new: State, options: Options, full: bool, runtime: Runtime | None) -> Plan:
    """Step 1: read HAProxy's servers and the installed file, and plan."""
    live = None if runtime is None else runtime.live()
    raw = read_bytes(options.config)
    installed = None if raw is None else raw.decode("utf-8", "replace")
    try:
        return make_plan(old, new, installed, lambda servers: render(options, servers), options, full, live)
    except HandlerError:
        # Keep the membership (HAProxy still has the old servers): once the template is
        # fixed, the next event or reconcile applies it.
        _save_after_failure(options, old, new._replace(applied=old.applied, pending=old.pending))
        raise


def _culprits(old: State, new: State, options: Options) -> dict[str, str]:
    from ._install import culprits

    def render_servers(servers: Mapping[str, Server]) -> str:
        return render(options, servers)

    probe = f"{options.state}.probe.cfg"
    return culprits(old.applied or old.servers, new.servers, render_servers, options.haproxy, probe)


def execute(plan: Plan, old: State, options: Options, runtime: Runtime | None = None) -> None:
    """Steps 2-7 of the protocol above: `plan.steps`, in order."""
    pending = plan.done.pending  # the deletions HAProxy refused; steps 5 and 6 replace them
    for step in plan.steps:
        try:
            pending = _step(step, plan, old, options, runtime, pending)
        except HandlerError:
            if step.kind in _LIVE:
                _put_back(plan, options, runtime)
            elif runtime is not None:
                runtime.undo_drains()
            _save_after_failure(options, old, plan.rollback)
            raise
    if plan.error is not None:
        raise HandlerError(f"config not installed ({plan.error}); HAProxy got the change through the runtime API")


def _step(
    step: Step, plan: Plan, old: State, options: Options, runtime: Runtime | None, pending: tuple[Key, ...]
) -> tuple[Key, ...]:
    """Carry out one step; returns the deletions still pending after it."""
    if step.kind == DRAIN_EARLY:
        assert runtime is not None  # planned only with the runtime API, as all runtime steps
        runtime.drain_early(step.drain)
    elif step.kind == SAVE:
        assert step.state is not None
        _save(options, old, _finish(plan, step.state, pending, options) if step.why == DONE else step.state)
    elif step.kind == INSTALL:
        from ._install import install

        install(options.config, step.text, options.check and step.check, options.haproxy, options.backup)
        _log.info("haproxy: config installed", config=options.config, servers=len(plan.done.servers))
    elif step.kind == RELOAD_INSTEAD:
        return _reload_instead(step, plan, options, runtime)
    elif step.kind == RUNTIME:
        return _runtime(step, plan, options, runtime)
    elif step.kind == RELOAD:
        return _reload(runtime, plan, options, step.why)
    elif step.kind == NO_RELOAD:
        _log.info("haproxy: config changed; no reload command configured", reason=step.why)
    else:
        raise AssertionError(f"unknown step {step.kind!r}")
    return pending


def _finish(plan: Plan, done: State, pending: tuple[Key, ...], options: Options) -> State:
    """Before SAVE DONE: log and count the change; the state to save, with what is left pending."""
    _log_changes(plan.before, done.servers)
    _metrics.haproxy_servers(done.servers.values(), len(done.skipped), options.backend)
    _metrics.gauge(_metrics.P + "haproxy_config_behind", done.behind is not None)
    return done._replace(pending=pending)


def _reload_instead(step: Step, plan: Plan, options: Options, runtime: Runtime | None) -> tuple[Key, ...]:
    """RELOAD_INSTEAD (step 5): the reload; if it fails, the runtime API makes the change."""
    try:
        return _reload(runtime, plan, options, step.why)
    except HandlerError as exc:
        _log.warning(f"haproxy: reload failed; changing the servers through the runtime API instead: {exc}")
        return _runtime(step, plan, options, runtime)


def _put_back(plan: Plan, options: Options, runtime: Runtime | None) -> None:
    """After a failed step 5 or 6: put back the config file the plan names (`Plan.put_back`),
    while HAProxy is alive (it answered in this run). When it never answered it is down: the
    newest file stays, for whatever restarts it."""
    if plan.put_back is None or runtime is None or not runtime.client.answered:
        return
    runtime.undo_drains()
    from ._install import install

    try:
        install(options.config, plan.put_back, False, options.haproxy)
    except HandlerError as exc:
        _log.error(f"haproxy: previous config not put back: {exc}")
        return
    _log.info("haproxy: previous config put back; the next run retries the change", config=options.config)


def _runtime(step: Step, plan: Plan, options: Options, runtime: Runtime | None) -> tuple[Key, ...]:
    """Step 5: send the change; returns the deletions still pending."""
    from ._runtime import Unavailable, Unexpressible

    assert runtime is not None
    try:
        pending = runtime.apply(step.change, step.checks, step.ids, step.extras)
    except (Unexpressible, Unavailable) as exc:
        why = _refused(step, plan, runtime, exc)
        if why is not None:
            return _reload(runtime, plan, options, why)
        pending = plan.done.pending
    else:
        _log.info("haproxy: servers changed through the runtime API", commands=runtime.client.sent,
                  pending=len(pending))
    if runtime.client.sent:
        # Read again: what HAProxy has now is what a later reload or restart must keep.
        runtime.save_server_state(server_state_file(options), plan.done.servers)
    return pending


def _refused(step: Step, plan: Plan, runtime: Runtime, exc: Exception) -> str | None:
    """HAProxy refused the change or did not answer: what the step's `if_fails` says. Raises,
    or returns why a reload makes the change (None: it waits for the next run)."""
    from ._runtime import Unavailable

    if step.if_fails == WAIT:
        _log.warning(f"haproxy: deferred deletions not retried: {exc}")
        return None
    if step.if_fails == FAIL:
        raise HandlerError(f"{plan.error}; and the runtime API cannot apply the change either: {exc}") from None
    assert step.if_fails == RELOAD
    if isinstance(exc, Unavailable) and runtime.client.answered:
        # HAProxy answered earlier in this run, then stopped answering: it is alive but
        # starved, and a reload (a new worker, a full config parse) only adds load.
        raise Unavailable(f"{exc} (HAProxy answered earlier in this run; not reloading)") from None
    _log.warning(f"haproxy: runtime API cannot apply the change: {exc}")
    return f"runtime API: {exc}"


def _reload(runtime: Runtime | None, plan: Plan, options: Options, reason: str) -> tuple[Key, ...]:
    """Step 6; returns the deletions still pending (none: the new worker never had them)."""
    from ._install import reload

    assert options.reload is not None  # planned only with a reload command (`socket` needs one)
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
    if reason.startswith(BACKENDS_CHANGED):
        _metrics.inc(_metrics.P + "haproxy_backend_reloads_total")  # what routing by maps cannot spare
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
