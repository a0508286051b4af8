"""The `file_sd` handler: Prometheus service discovery from Serf members (Prometheus has
none for Serf), through the shared pipeline (`serf_handlers.pipeline`).

    handlers:
      - type: file_sd
        destination: /etc/prometheus/targets/serf.json   # read by a file_sd_configs entry
        state: /var/lib/serf-handlers/serf-targets.json  # default: from the destination's name
        role: null             # only members of this role; default: every role
        port_tag: metrics_port # the tag that gives a member's metrics port
        port: 9100             # without that tag
        labels: [dc, version]  # tags copied as labels

One target group per alive member: `<addr>:<port>`, labels `node`, `role` and the chosen
tags (names made valid for Prometheus: characters outside [a-zA-Z0-9_] become `_`, never a
leading digit or `__`). Written atomically through a temporary dot file ending in `.tmp`,
which a `*.json` glob does not match; with no state file, an event never replaces a file
that has targets (that could drop every target): `reconcile` rebuilds it. No command needed:
Prometheus re-reads the file itself.
"""

from __future__ import annotations

from ..._options import Option, parse
from ..._typing import TYPE_CHECKING
from ...errors import ConfigError
from ...pipeline import KeptFile, KeptFileHandler, Target, state_path

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ...events import Member
    from ...pipeline import Known

OPTIONS = (
    Option("destination", "path", required=True),
    Option("state", "path"),
    Option("role", "text"),
    Option("port_tag", "text", "metrics_port"),
    Option("port", "port", 9100),
    Option("labels", "names", ()),
)
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def label_name(tag: str) -> str:
    """A valid Prometheus label name for `tag`: [a-zA-Z_][a-zA-Z0-9_]*, never `__`-prefixed
    (reserved for Prometheus' own)."""
    name = "".join(c if c in _LABEL_CHARS else "_" for c in tag)
    if name[:1].isdigit():
        name = "_" + name
    return "tag" + name if name.startswith("__") else name


class FileSDHandler(KeptFileHandler):
    def __init__(self, **options: object) -> None:
        o = parse(OPTIONS, options)
        destination = str(o["destination"])
        self.selected_role = None if o["role"] is None else str(o["role"])
        self.port_tag = str(o["port_tag"])
        self.port = int(str(o["port"]))
        labels = tuple(str(tag) for tag in o["labels"])  # type: ignore[attr-defined]
        self.labels = {tag: label_name(tag) for tag in labels}
        names = [*self.labels.values(), "node", "role"]
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise ConfigError(f"labels: {', '.join(clash)}: two labels would have this name")
        target = Target(destination, str(o["state"] or state_path(destination)))
        self.kept = KeptFile(f"file_sd {destination}", target, self._render, self._refuse)

    def _refuse(self, member: Member) -> str | None:
        if self._port(member.tags) is None:
            port = member.tags[self.port_tag]
            return f"member {member.name!r}: tag {self.port_tag}={port!r}: expected a port number, 1-65535"
        return None

    def _port(self, tags: Mapping[str, str]) -> int | None:
        """The member's port: its `port_tag` as a number (None when invalid), else `port`."""
        text = tags.get(self.port_tag)
        if text is None:
            return self.port
        return int(text) if text.isascii() and text.isdigit() and 0 < int(text) < 65536 else None

    def _render(self, members: Mapping[str, Known], node: Mapping[str, object] | None) -> str:
        import json

        groups = []
        for name, m in sorted(members.items()):
            port = self._port(m.tags)  # None: kept under another port_tag, invalid for this one
            if m.status != "alive" or self.selected_role not in (None, m.role) or port is None:
                continue
            host = f"[{m.addr}]" if ":" in m.addr else m.addr
            labels = {"node": name, "role": m.role}
            labels.update({label: m.tags[tag] for tag, label in self.labels.items() if tag in m.tags})
            groups.append({"targets": [f"{host}:{port}"], "labels": labels})  # "0080" written as 80
        return json.dumps(groups, indent=1, sort_keys=True) + "\n"
