"""The `haproxy` handler: HAProxy's backend servers always equal the alive Serf members of a role.

One run, under the state lock: work out the wanted servers from the event (or, for
reconcile, from all alive members; `_plan`), then bring HAProxy there (`_execute`, which
also documents the crash-safety protocol). A member that cannot be rendered safely is
skipped and named; the others still apply, and the run then fails (exit 1).
"""

from __future__ import annotations

from ... import _log, _metrics
from ..._files import Lock, read_bytes
from ..._typing import TYPE_CHECKING
from ...dispatch import Drift, reply_budget
from ...errors import HandlerError
from ...events import MEMBER_EVENTS, MemberEvent, Query
from . import _state
from ._execute import converge, session
from ._options import parse
from ._plan import wanted_after_event, wanted_from_members
from ._render import routing_maps

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from ...dispatch import Reply
    from ...events import Event, Member
    from ._options import Options
    from ._plan import Wanted
    from ._routes import Routes
    from ._runtime import Runtime
    from ._servers import Server
    from ._state import State

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
            min_alive: 0.5             # member-failed never takes a backend below this fraction
                                       # of its servers (a partition): failed ones beyond it stay
                                       # served, and HAProxy's health checks decide
            query: backends            # the query that answers with this load balancer's view
                                       # (payload `digest`: one line for `serf-handle cluster-check`;
                                       # `drained NODE`: one line, has it drained NODE?)
            check_path: null           # e.g. /healthz: HTTP health checks (2xx/3xx) instead of TCP
            check_inter: null          # ms between checks; null: 500 up to 500 servers, longer above
            check_spread: 5            # HAProxy's spread-checks percent
            reload_above: 250          # with socket: a change of more servers is one reload (cheaper)
            backup: false              # keep the previous config as <config>.bak

    A member's `weight` tag (0-256) and `state` tag (ready, drain, maint) are honoured.
    Requests whose Host header equals a
    backend's name go to that backend; all others go to `backend`.
    """

    # It filters members by role itself (not in the dispatcher), so that it also sees a
    # member whose role changed away from `role`, and removes its server.
    takes_role = True

    @property
    def role(self) -> str:
        return self.options.role

    @property
    def cluster_query(self) -> str:
        """The query this handler answers (`backends`): `serf-handle cluster-check` asks it."""
        return self.options.query

    def __init__(self, **options: object) -> None:
        self.options = parse(**options)  # an unknown option is a ConfigError naming it
        self.default_events: tuple[str, ...] = (*MEMBER_EVENTS, f"query:{self.options.query}")
        self._lock_path = f"{self.options.state}.lock"

    # --- the Handler protocol ------------------------------------------------------------

    def __call__(self, event: Event) -> Reply:
        if isinstance(event, MemberEvent):
            self._member_event(event)
        elif isinstance(event, Query) and event.name == self.options.query:
            return self._query(event.payload, event.node.name)
        return None

    def _query(self, payload: bytes, self_name: str) -> str:
        """The reply to the `query` (`backends`): a readable list of the servers, or with the
        payload `digest` one line for `serf-handle cluster-check`, or with `drained NODE` one
        line saying whether this load balancer has drained NODE (a stopping web node asks)."""
        from ...answers import asks_digest
        from ...drained import bad_payload, drained_node
        from ._report import summary

        asked = drained_node(payload)
        if asked is None and not asks_digest(payload):
            return summary(_state.load(self.options.state), self.options.backend, reply_budget(self_name))
        if isinstance(asked, ValueError):  # untrusted: one line, never an exception
            return bad_payload(asked)
        from ._report import digest_line, drained_line

        try:
            state = _state.load(self.options.state)
        except _state.StateError:
            return "error=state_unreadable\n"  # the asker names us; `reconcile` repairs it
        return digest_line(state, self.options.backend) if asked is None else drained_line(state, asked)

    def reconcile(self, members: Sequence[Member]) -> None:
        """Make the servers exactly the alive `members` of our role (and the failed ones the
        partition rule keeps), and HAProxy's live servers exactly those.

        `members` is read under the lock when it is a `Membership` (as `serf-handle reconcile`
        passes it), so it is never older than an event this handler already applied."""
        from ...members import Membership

        with Lock(self._lock_path):
            runtime = session(self.options)
            old = self._load(runtime, rebuild=True)
            failed = members.failed if isinstance(members, Membership) else ()
            wanted = wanted_from_members(old, members, self.options, failed)
            errors = self._converge(old, wanted, True, runtime)
        _raise_skipped(errors)

    # --- the CLI's check, certs, status and render ------------------------------------------

    def self_check(self) -> tuple[list[str], list[str]]:
        """`serf-handle check`: the TLS certificates (a refused one raises CertError; an
        expiring one is a problem: HAProxy still serves it, but the operator must renew it)."""
        tls = self.options.tls
        if tls is None:
            return [], []
        from ._certs import check, expiry_notices, summary

        certs = check(tls.certs, tls.default_cert)
        return [summary(tls.certs, certs)], [f"renew the certificate: {notice}" for notice in expiry_notices(certs)]

    def refresh_certificates(self) -> list[str] | None:
        """`serf-handle certs`: make HAProxy serve the certificate files as they are now."""
        if self.options.tls is None:
            return None
        from ._certs import refresh

        return refresh(self.options)

    def status(self) -> str:
        """The desired servers beside HAProxy's live ones; a `Drift` when they differ."""
        from ._report import table

        state = _state.load(self.options.state)
        live = None
        runtime = session(self.options)
        if runtime is not None:
            live = runtime.live()
        text, differs = table(state, self.options.backend, live)
        if routing_maps(self.options):
            text, differs = _with_routes(text, differs, self.options, state, runtime)
        if self.options.tls is not None:
            from ._certs import status as tls_status

            tls, refused = tls_status(self.options.tls.certs, self.options.tls.default_cert)
            text, differs = text + tls, differs or refused
        return Drift(text) if differs else text

    def render(self, write: bool = False, diff: bool = False) -> str:
        """The config for the current state; with `write`, also install it (no reload);
        with `diff`, only a unified diff from the installed config to it ("" when equal)."""
        o = self.options
        if diff:
            import difflib

            raw = read_bytes(o.config)
            installed = [] if raw is None else raw.decode("utf-8", "replace").splitlines(keepends=True)
            rendered = self._render(_state.load(o.state).servers).splitlines(keepends=True)
            return "".join(difflib.unified_diff(installed, rendered, o.config, f"{o.config} (rendered from {o.state})"))
        if not write:
            return self._render(_state.load(o.state).servers)
        from ._install import install

        with Lock(self._lock_path):
            servers = _state.load(o.state).servers
            self._write_routes(servers.values())  # the config loads the maps
            text = self._render(servers)
            if read_bytes(o.config) != text.encode("utf-8"):
                install(o.config, text, o.check, o.haproxy, o.backup)
                _log.info("haproxy: config installed (no reload)", config=o.config)
        return text

    # --- one run ---------------------------------------------------------------------------

    def _member_event(self, event: MemberEvent) -> None:
        with Lock(self._lock_path):
            runtime = session(self.options)
            old = self._load(runtime, rebuild=runtime is not None)
            wanted = wanted_after_event(old, event.type, event.members, self.options)
            errors = self._converge(old, wanted, False, runtime)
        _raise_skipped(errors)

    def _load(self, runtime: Runtime | None, rebuild: bool) -> State:
        """The state; an unreadable one is rebuilt (one warning) when `rebuild` is possible:
        from HAProxy's live servers, or from nothing for reconcile."""
        try:
            return _state.load(self.options.state)
        except _state.StateError as exc:
            if not rebuild:
                raise
            live = None if runtime is None else runtime.live()
            _log.warning(f"haproxy: {exc}; rebuilding it from {'scratch' if live is None else 'HAProxy'}")
            return _state.EMPTY if live is None else _state.from_live(live)

    def _converge(self, old: State, wanted: Wanted, full: bool, runtime: Runtime | None) -> list[tuple[str, str]]:
        for node, why in wanted.errors:
            _log.error(f"haproxy: member skipped: {why}", node=node)
        for node in sorted(wanted.skipped.keys() - {node for node, _ in wanted.errors}):
            _log.debug("haproxy: member still skipped", node=node, why=wanted.skipped[node][1])
        for note in wanted.notes:
            _log.warning(f"haproxy: {note}")
        new = wanted.state(old)
        routes = self._write_routes(new.servers.values())
        rejected = converge(old, new, self.options, full, runtime)
        for node, why in rejected:
            _log.error(f"haproxy: member skipped: {why}", node=node)
        behind = None if routes is None or runtime is None else _keep_routes_live(runtime, self.options, routes)
        # ("", why): not a member's fault; the run still fails, after the servers changed.
        return wanted.errors + rejected + ([] if behind is None else [("", f"routes not updated live: {behind}")])

    def _write_routes(self, servers: Iterable[Server]) -> Routes | None:
        """With routing by maps: the routes, their files written before the config is checked
        (it loads them). A tag route two backends claim is refused: logged once, when new."""
        if not routing_maps(self.options):
            return None
        from ._maps import prepare

        routes, _written, refused = prepare(self.options, servers)
        for line in refused:
            _log.error(f"haproxy: tag route refused: {line}")
        return routes

    def _render(self, servers: Mapping[str, Server]) -> str:
        from ._render import render

        return render(self.options, servers)


def _with_routes(text: str, differs: bool, options: Options, state: State, runtime: Runtime | None) -> tuple[str, bool]:
    """`status` with the routes, each checked against HAProxy's live maps."""
    from ._maps import live, report
    from ._routes import make_routes
    from ._runtime import Unavailable

    routes = make_routes(options.backends, state.servers.values(), options.routes_from_tags)
    try:
        have = None if runtime is None or runtime.client.down else live(runtime.client, options)
    except Unavailable:
        have = None
    more, drift = report(routes, have)
    return text + more, differs or drift


def _keep_routes_live(runtime: Runtime, options: Options, routes: Routes) -> str | None:
    """HAProxy's live maps equal to the routes; why not, if they could not be (logged and
    counted: the servers' change already happened, and the next run or reconcile tries again)."""
    from ._maps import keep_live
    from ._runtime import Unavailable

    try:
        replaced = keep_live(runtime.client, options, routes)
    except (Unavailable, HandlerError) as exc:
        _metrics.inc(_metrics.P + "haproxy_route_update_failures_total")
        _log.error(f"haproxy: routes not updated live: {exc}")
        return str(exc)
    if replaced:
        _metrics.inc(_metrics.P + "haproxy_route_updates_total", len(replaced))
        _log.info("haproxy: routes changed through the runtime API", maps=",".join(replaced))
    return None


def _raise_skipped(errors: Sequence[tuple[str, str]]) -> None:
    """One line for the run's errors: (node, why) of each member skipped, ("", why) of the rest."""
    skipped = [message for node, message in errors if node]
    parts = [f"{len(skipped)} member(s) skipped: {'; '.join(skipped)}"] if skipped else []
    parts += [message for node, message in errors if not node]
    if parts:
        raise HandlerError("; ".join(parts))
