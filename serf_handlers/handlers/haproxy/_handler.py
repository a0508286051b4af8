"""The `haproxy` handler: HAProxy's backend servers always equal the alive Serf members of a role.

One run, under the state lock:
1. update the wanted servers from the event (or, for reconcile, replace them);
2. if HAProxy already has exactly those servers, stop: a repeated event writes nothing,
   reloads nothing and sends no command;
3. with a socket, start draining the servers that go (the drain time overlaps the rest);
4. render the config; install it only if its text changed (validated, atomically);
5. bring HAProxy there: through the runtime API when a socket is configured and it can
   express the change, else (or when the socket does not answer) with the reload command;
6. save the state, recording what HAProxy now runs (`applied`), so a failed step is
   completed by the next run.
A member that cannot be rendered safely is skipped and named; the others still apply,
and the run then fails (exit 1).
"""

from __future__ import annotations

import os

from ... import _log
from ..._typing import TYPE_CHECKING
from ...dispatch import QUERY_REPLY_BUDGET
from ...errors import ConfigError, HandlerError
from ...events import MEMBER_EVENTS, MemberEvent, Query
from . import _state
from ._files import Lock, read_bytes, write_atomic
from ._options import DEFAULT_SOCKET, Options, parse
from ._servers import Rejected, Server, from_member
from ._state import State

if TYPE_CHECKING:
    from typing import Mapping, Sequence

    from ...dispatch import Reply
    from ...events import Event, Member
    from ._runtime import Drained

QUERY_BUDGET = 900  # bytes; Serf drops a reply over about 1 KiB, node name included


class HAProxyHandler:
    """Keeps HAProxy's servers equal to the alive Serf members of a role (default `web`).

    Options, all validated here (a ConfigError names the bad one):

        handlers:
          - type: haproxy
            role: web                  # members with this role become servers
            port: 80                   # server port; a member's `port` tag overrides it
            backend: web               # default backend; a member's `backend` tag overrides it
            config: /etc/haproxy/haproxy.cfg
            template: null             # a Jinja2 file; null: the built-in template
            vars: {bind: "*:80"}       # template variables (built-in: bind, socket, server_state_file)
            state: /var/lib/serf-handlers/haproxy.json
            check: true                # `haproxy -c -f <candidate>` before installing
            haproxy: haproxy           # the binary used for the check
            reload: [kill, -USR2, "<master pid>"]   # argv, never a shell string; null: no reload
            socket: /run/haproxy/admin.sock         # enables the runtime API (changes without reload)
            on_failed: remove          # or maint: keep a failed member's server in maintenance
            query: backends            # the query that answers with this load balancer's view

    A member's `weight` tag (0-256) is honoured. Requests whose Host header equals a
    backend's name go to that backend; all others go to `backend`.
    """

    # It filters members by role itself (not in the dispatcher), so that it also sees a
    # member whose role changed away from `role`, and removes its server.
    takes_role = True

    @property
    def role(self) -> str:
        return self.options.role

    def __init__(self, **options: object) -> None:
        unknown = sorted(set(options) - set(Options._fields))
        if unknown:
            raise ConfigError(f"{', '.join(unknown)}: unknown option(s) (expected {', '.join(Options._fields)})")
        self.options = parse(**options)
        self.default_events: tuple[str, ...] = (*MEMBER_EVENTS, f"query:{self.options.query}")
        self._lock_path = f"{self.options.state}.lock"

    # --- the Handler protocol ------------------------------------------------------------

    def __call__(self, event: Event) -> Reply:
        if isinstance(event, MemberEvent):
            self._member_event(event)
        elif isinstance(event, Query) and event.name == self.options.query:
            budget = min(QUERY_BUDGET, QUERY_REPLY_BUDGET - len(event.node.name.encode("utf-8")))
            from ._report import summary

            return summary(_state.load(self.options.state), self.options.backend, budget)
        return None

    def reconcile(self, members: Sequence[Member]) -> None:
        """Make the servers exactly the alive `members` of our role, and apply that."""
        members = [m for m in members if m.role == self.options.role]
        errors: list[str] = []
        with Lock(self._lock_path):
            try:
                old = _state.load(self.options.state)
            except _state.StateError as exc:
                _log.error(f"haproxy: {exc}; rebuilding it from scratch")
                old = _state.EMPTY
            servers: dict[str, Server] = {}
            names: dict[str, str] = {}
            for member in members:
                try:
                    server = self._server(member, names)
                except Rejected as exc:
                    errors.append(str(exc))
                    _log.error(f"haproxy: member skipped: {exc}", node=member.name)
                    kept = old.servers.get(member.name)
                    if kept is None or kept.name in names:
                        continue
                    server = kept  # its last valid form stays until it sends a valid one
                servers[member.name] = server
                names[server.name] = member.name
            self._apply(old, old._replace(servers=servers), full=True)
        _raise_skipped(errors)

    # --- the CLI's status and render -----------------------------------------------------

    def status(self) -> str:
        from ._report import table

        return table(_state.load(self.options.state), self.options.backend)

    def render(self, write: bool = False) -> str:
        """The config for the current state; with `write`, also install it (no reload)."""
        if not write:
            return self._render(_state.load(self.options.state).servers)
        from ._install import install

        with Lock(self._lock_path):
            text = self._render(_state.load(self.options.state).servers)
            if read_bytes(self.options.config) != text.encode("utf-8"):
                install(self.options.config, text, self.options.check, self.options.haproxy)
                _log.info("haproxy: config installed (no reload)", config=self.options.config)
        return text

    # --- one run -------------------------------------------------------------------------

    def _member_event(self, event: MemberEvent) -> None:
        errors: list[str] = []
        with Lock(self._lock_path):
            old = _state.load(self.options.state)
            servers = dict(old.servers)
            names = {s.name: node for node, s in servers.items()}
            for member in event.members:
                ours = member.role == self.options.role
                if event.type in ("member-join", "member-update") and ours:
                    try:
                        server = self._server(member, names)
                    except Rejected as exc:
                        errors.append(str(exc))
                        _log.error(f"haproxy: member skipped: {exc}", event=event.type, node=member.name)
                        continue
                    servers[member.name] = server
                    names[server.name] = member.name
                elif member.name not in servers:
                    continue  # another role's member, or one we never had
                elif event.type == "member-failed" and self.options.on_failed == "maint":
                    servers[member.name] = servers[member.name]._replace(maint=True)
                else:
                    names.pop(servers.pop(member.name).name, None)
            self._apply(old, old._replace(servers=servers), full=False)
        _raise_skipped(errors)

    def _server(self, member: Member, names: Mapping[str, str]) -> Server:
        server = from_member(member.name, member.addr, member.tags, self.options.port, self.options.backend)
        owner = names.get(server.name, member.name)
        if owner != member.name:
            raise Rejected(f"member {member.name!r}: server name {server.name!r} is already used by node {owner!r}")
        return server

    def _apply(self, old: State, new: State, full: bool) -> None:
        o = self.options
        desired = new.servers
        applied = old.applied
        if not full and old.exists and applied == desired:
            # What HAProxy has is what we want: a repeated or irrelevant event ends here.
            pending = self._retry_deletions(applied, old.pending) if old.pending else old.pending
            self._save(old, new._replace(applied=applied, pending=pending))
            return

        drained = None
        if o.socket is not None and applied is not None:
            from ._runtime import Client, drain_early, removed

            if removed(applied, desired):
                drained = drain_early(Client(o.socket), applied, desired)
        raw = read_bytes(o.config)
        before = None if raw is None else raw.decode("utf-8", "replace")
        try:
            text = self._render(desired)
            if applied is None and not old.exists and before == self._render({}):
                applied = {}  # the empty config `serf-handle render --write` installed before HAProxy started
            changed = before != text
            if changed:
                from ._install import install

                if not old.exists:
                    # Record first that HAProxy has not got this config yet: should this run
                    # die between install and reload, the next one must not take the
                    # installed file for what HAProxy runs.
                    self._save(old, new._replace(applied=applied, pending=old.pending))
                install(o.config, text, o.check, o.haproxy)
                _log.info("haproxy: config installed", config=o.config, servers=len(desired))
        except HandlerError:
            # Keep the membership (HAProxy still has the old servers): once the template is
            # fixed, the next event or reconcile applies it.
            self._save(old, new._replace(applied=old.applied, pending=old.pending))
            raise
        if not changed and applied is None and not old.exists:
            # No state (deleted, or a first reconcile): the installed config already says
            # exactly this, and HAProxy runs its config. (A saved null instead means an
            # earlier run failed before HAProxy got its config: that one reloads.)
            applied = desired

        reason, pending = self._live_update(applied, desired, old.pending, before, text, changed, drained)
        if reason is not None:
            if o.reload is None:  # (never with a socket: the options require a reload then)
                _log.info("haproxy: config changed; no reload command configured", reason=reason)
            else:
                from ._install import reload

                self._save_server_state(desired)
                try:
                    reload(o.reload)
                except HandlerError:
                    self._save(old, new._replace(applied=old.applied, pending=pending))
                    raise
                pending = ()  # the new worker never had them
                _log.info("haproxy: reloaded", reason=reason)
        _log_changes(applied or {}, desired)
        self._save(old, new._replace(applied=desired, pending=pending))

    def _live_update(
        self,
        applied: Mapping[str, Server] | None,
        desired: Mapping[str, Server],
        pending: tuple[tuple[str, str], ...],
        before: str | None,
        text: str,
        changed: bool,
        drained: Drained | None = None,
    ) -> tuple[str | None, tuple[tuple[str, str], ...]]:
        """Apply the change through the runtime API if possible: (why a reload is needed, pending)."""
        if applied is None:
            return "HAProxy's current servers are unknown", pending
        if self.options.socket is None:
            return ("config changed" if self._render(applied) != text else None), pending
        if changed and before != self._render(applied):
            # Someone changed the template or the file: HAProxy must load the whole config.
            return "the installed config was not the one HAProxy runs", pending
        old_backends = {self.options.backend, *(s.backend for s in applied.values())}
        new_backends = {self.options.backend, *(s.backend for s in desired.values())}
        if old_backends != new_backends:
            added, removed = sorted(new_backends - old_backends), sorted(old_backends - new_backends)
            return f"backends added {added} or removed {removed}", pending
        from ._runtime import Client, Unavailable, Unexpressible, apply

        client = Client(self.options.socket)
        try:
            pending = apply(client, applied, desired, pending, drained=drained)
        except (Unexpressible, Unavailable) as exc:
            _log.warning(f"haproxy: runtime API cannot apply the change: {exc}")
            return f"runtime API: {exc}", pending
        if client.sent:
            _log.info("haproxy: servers changed through the runtime API", commands=client.sent, pending=len(pending))
        return None, pending

    def _retry_deletions(
        self, servers: Mapping[str, Server], pending: tuple[tuple[str, str], ...]
    ) -> tuple[tuple[str, str], ...]:
        if self.options.socket is None:
            return ()
        from ._runtime import Client, Unavailable, Unexpressible, apply

        try:
            return apply(Client(self.options.socket), servers, servers, pending)
        except (Unexpressible, Unavailable) as exc:
            _log.warning(f"haproxy: deferred deletions not retried: {exc}")
            return pending

    def _save(self, old: State, new: State) -> None:
        if not _state.same(old, new):
            _state.save(self.options.state, new)

    # --- rendering -----------------------------------------------------------------------

    def _context(self, servers: Mapping[str, Server]) -> dict[str, object]:
        from ._report import by_backend

        o = self.options
        backends = by_backend(servers, o.backend)
        context: dict[str, object] = {
            "bind": "*:80",
            "socket": o.socket or DEFAULT_SOCKET,
            "server_state_file": f"{os.path.abspath(o.config)}.state",
            "user": "",  # workers drop root to this user and group when set
            "group": "",
        }
        context.update(o.vars)
        context.update(
            backends=backends,
            servers=[s for group in backends.values() for s in group],
            default_backend=o.backend,
        )
        return context

    def _render(self, servers: Mapping[str, Server]) -> str:
        if self.options.template is None:
            from . import _builtin  # the built-in template without importing Jinja2

            return _builtin.render(self._context(servers))
        from ._render import render

        return render(self.options.template, self._context(servers))

    def _save_server_state(self, servers: Mapping[str, Server]) -> None:
        """Before a reload: save what HAProxy knows (health, maintenance) for the new worker,
        keeping only lines that agree with the new config (see `filter_server_state`)."""
        from ._runtime import Client, Unavailable, filter_server_state

        path = str(self._context({})["server_state_file"])
        text = None
        if self.options.socket is not None:
            try:
                text = Client(self.options.socket)("show servers state")
            except Unavailable as exc:
                _log.warning(f"haproxy: server state not saved: {exc}")
        if text is None:
            raw = read_bytes(path)
            text = None if raw is None else raw.decode("utf-8", "replace")
        if text is None:
            return
        try:
            write_atomic(path, filter_server_state(text, servers).encode("utf-8"), 0o644)
        except OSError as exc:
            _log.warning(f"haproxy: cannot write the server state file: {exc}", path=path)


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


def _raise_skipped(errors: list[str]) -> None:
    if errors:
        raise HandlerError(f"{len(errors)} member(s) skipped: {'; '.join(errors)}")
