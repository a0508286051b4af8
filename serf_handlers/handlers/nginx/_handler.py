"""The `nginx` handler: nginx (open source) as the load balancer. nginx has no runtime API
for upstreams, so every change is a checked rewrite of the whole config and a graceful
reload, through the shared pipeline (`serf_handlers.pipeline`): `nginx -t` on the
candidate, an atomic install, a reload only when the text changed, a failed reload retried.

    handlers:
      - type: nginx
        role: web                     # members with this role become upstream servers
        port: 80                      # a member's `port` tag overrides it
        backend: web                  # the default backend; a member's `backend` tag overrides it
        config: /etc/nginx/nginx.conf # the whole file is the handler's
        template: null                # a Jinja2 file; null: the built-in one
        vars: {listen: "*:80"}        # also pid, error_log, access_log, worker_processes,
                                      # worker_connections, worker_shutdown_timeout
        state: /var/lib/serf-handlers/etc_nginx_nginx.conf.json
        check: true                   # `nginx -t -q -c <candidate>` before installing
        nginx: nginx                  # the binary for the check (and the default reload)
        reload: null                  # argv; null: [nginx, -c, <config>, -s, reload]
        backup: false
        query: backends               # the query whose `digest` (serf-handle cluster-check) and
                                      # `drained NODE` (a stopping web node) it answers: `_query`

A member's `weight` (0-256; 0 is `down`) and `state` tags (ready, drain, maint: drain and
maint are `down`) are honoured. Backend names are folded to lowercase: nginx compares upstream
names (and Host) without case, so `API` and `api` are one backend.
"""

from __future__ import annotations

from ..._options import Option, parse
from ..._typing import TYPE_CHECKING
from ...errors import ConfigError
from ...events import MEMBER_EVENTS, Query
from ...pipeline import GIVEN, INSTALLED, WANTED, KeptFile, KeptFileHandler, Target, state_path
from ._servers import is_backend_name, refusal, servers

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ...events import Event, Member
    from ...pipeline import Known
    from ...protocols import Reply
    from ._servers import Server


OPTIONS = (
    Option("role", "text", "web"),
    Option("port", "port", 80),
    Option("backend", "text", "web"),
    Option("config", "path", "/etc/nginx/nginx.conf"),
    Option("template", "path"),
    Option("vars", "mapping", {}),
    Option("state", "path"),
    Option("check", "bool", True),
    Option("nginx", "text", "nginx"),
    Option("reload", "argv"),
    Option("backup", "bool", False),
    Option("query", "query", "backends"),
)


class NginxHandler(KeptFileHandler):
    def __init__(self, **options: object) -> None:
        # `template: null` and `state: null` mean the default, as documented above.
        o = parse(OPTIONS, {k: v for k, v in options.items() if v is not None or k not in ("template", "state")})
        self.selected_role = str(o["role"])
        self.port = int(str(o["port"]))
        backend = str(o["backend"])
        if not is_backend_name(backend):
            raise ConfigError(f"backend: expected a letter or digit, then letters, digits, _ . - (no ..), "
                              f"got {backend!r}")
        self.backend = backend.lower()  # nginx compares upstream names and Host without case
        self.template = None if o["template"] is None else str(o["template"])
        self.vars: Mapping[str, object] = o["vars"]  # type: ignore[assignment]
        config, binary = str(o["config"]), str(o["nginx"])
        check = (binary, "-t", "-q", "-c", "{path}") if o["check"] else None
        reload = o["reload"] or (binary, "-c", config, "-s", "reload")
        target = Target(config, str(o["state"] or state_path(config)), check, reload,  # type: ignore[arg-type]
                        backup=bool(o["backup"]))
        self.kept = KeptFile(f"nginx {config}", target, self._render, self._refuse, self._describe)
        self.query = str(o["query"])
        self.cluster_query = self.query  # `serf-handle cluster-check` asks it `digest` (ClusterView)
        self.default_events: tuple[str, ...] = (*MEMBER_EVENTS, f"query:{self.query}")

    def __call__(self, event: Event) -> Reply:
        if isinstance(event, Query):
            return self._query(event.payload, event.node.name) if event.name == self.query else None
        super().__call__(event)
        return None

    def _query(self, payload: bytes, self_name: str) -> str:
        """The reply to the `query` (`backends`), as the haproxy handler's: the readable server
        list; with `digest`, the line `serf-handle cluster-check` compares; with `drained NODE`,
        whether nginx was given NODE's servers as `down` (or none). All from the record of what
        nginx was last given (as `status` shows it), never from the file's text. Only reads:
        Serf runs a node's handlers one at a time, so an answer must not wait for a run's lock."""
        from ...answers import asks_digest
        from ...dispatch import reply_budget
        from ...drained import bad_payload, drained_node
        from ...pipeline import RecordError
        from ._servers import digest_line, drained_line, server_list

        asked = drained_node(payload)
        if isinstance(asked, ValueError):  # untrusted: one line, never an exception
            return bad_payload(asked)
        try:
            members, stands = self.kept.standing()
        except RecordError:
            return "error=state_unreadable\n"  # `serf-handle reconcile` rebuilds it
        given = self._servers(members) if stands == GIVEN else None
        if asked is not None:
            return drained_line(given, asked)
        return digest_line(given) if asks_digest(payload) else server_list(given, reply_budget(self_name))

    def _servers(self, members: Mapping[str, Known]) -> dict[str, list[Server]]:
        """backend -> its upstream servers, from the kept members of our role."""
        assert self.selected_role is not None
        return servers(members.values(), self.selected_role, self.port, self.backend)

    def _refuse(self, member: Member) -> str | None:
        return refusal(member, self.port) if member.role == self.selected_role else None

    def _describe(self, members: Mapping[str, Known], stands: str) -> list[str]:
        """`status`: the servers the kept members make, and whether nginx has them."""
        from ._servers import table

        heading = {
            GIVEN: "servers nginx was last given (in the installed config, reloaded):",
            INSTALLED: "servers in the installed config; nginx has not loaded it yet (reload pending):",
            WANTED: "servers the members call for; not in the installed config (see above):",
        }[stands]
        return [heading, *table(self._servers(members))]

    def _render(self, members: Mapping[str, Known], node: Mapping[str, object] | None) -> str:
        from ._render import builtin, context

        c = context(self.vars, self._servers(members), self.backend)
        if self.template is None:
            return builtin(c)
        from ..._jinja import render

        return render(self.template, c)
