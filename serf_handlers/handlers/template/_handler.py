"""The `template` handler: a Jinja2 file rendered from the members and kept in step with
them through the shared pipeline (`serf_handlers.pipeline`): checked, installed atomically,
reloaded only when its content changed, and a failed reload retried by the next run.

    handlers:
      - type: template
        source: /etc/serf-handlers/hosts.j2      # a Jinja2 file
        destination: /etc/hosts.serf             # the file kept in step
        state: /var/lib/serf-handlers/hosts.json # default: from the destination's name
        check: [sh, -n, "{path}"]                # argv; {path} is the candidate; null: none
        reload: [systemctl, reload, dnsmasq]     # argv; run when the content changed
        mode: "0644"                             # default: the existing file's
        owner: null                              # user and group names; default: the existing file's
        group: null
        backup: false                            # keep the previous file as <destination>.bak
        role: web                                # only members of this role; default: every role
        status: [alive]                          # and of these statuses (alive, failed)
        vars: {domain: example.com}              # anything else the template wants

The template sees `members` (sorted by name; each with name, addr, port, role, tags,
status), `by_role` (role -> members), `by_tag(name)` (value -> members with that tag),
`node` (the agent that ran the last event: name, role, tags) and `vars`.
"""

from __future__ import annotations

from ..._options import Option, parse
from ..._typing import TYPE_CHECKING
from ...errors import ConfigError
from ...pipeline import KeptFile, KeptFileHandler, Target, state_path

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ...pipeline import Known

STATUSES = ("alive", "failed")

OPTIONS = (
    Option("source", "path", required=True),
    Option("destination", "path", required=True),
    Option("state", "path"),
    Option("check", "argv"),
    Option("reload", "argv"),
    Option("mode", "mode"),
    Option("owner", "text"),
    Option("group", "text"),
    Option("backup", "bool", False),
    Option("role", "text"),
    Option("status", "names", ("alive",)),
    Option("vars", "mapping", {}),
)


class TemplateHandler(KeptFileHandler):
    def __init__(self, **options: object) -> None:
        o = parse(OPTIONS, options)
        statuses = o["status"]
        assert isinstance(statuses, tuple)
        bad = sorted(set(statuses) - set(STATUSES))
        if bad or not statuses:
            raise ConfigError(f"status: expected some of {', '.join(STATUSES)}, got {list(statuses)!r}")
        destination = str(o["destination"])
        target = Target(destination, str(o["state"] or state_path(destination)), o["check"], o["reload"],  # type: ignore[arg-type]
                        o["mode"], o["owner"], o["group"], bool(o["backup"]))  # type: ignore[arg-type]
        self.selected_role = o["role"]  # type: ignore[assignment]
        self.source = str(o["source"])
        self.statuses = frozenset(statuses)
        self.vars: Mapping[str, object] = o["vars"]  # type: ignore[assignment]
        self.kept = KeptFile(f"template {destination}", target, self._render)

    def _render(self, members: Mapping[str, Known], node: Mapping[str, object] | None) -> str:
        from ..._jinja import render

        chosen = [m for _, m in sorted(members.items())
                  if m.status in self.statuses and self.selected_role in (None, m.role)]
        by_role: dict[str, list[Known]] = {}
        for m in chosen:
            by_role.setdefault(m.role, []).append(m)
        context = {"members": chosen, "by_role": by_role, "by_tag": _by_tag(chosen),
                   "node": node or {"name": "", "role": "", "tags": {}}, "vars": self.vars}
        return render(self.source, context)


def _by_tag(members: list[Known]) -> Callable[[str], dict[str, list[Known]]]:
    def by_tag(name: str) -> dict[str, list[Known]]:
        groups: dict[str, list[Known]] = {}
        for m in members:
            if name in m.tags:
                groups.setdefault(m.tags[name], []).append(m)
        return groups

    return by_tag
