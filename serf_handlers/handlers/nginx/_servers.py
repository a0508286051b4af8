"""Members → nginx upstream servers. A member's `port`, `weight`, `backend` and `state` tags
are untrusted: each is checked here, and a member with a bad one is refused (named once by
the pipeline) instead of reaching the config."""

from __future__ import annotations

from ..._typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ...events import Member
    from ...pipeline import Known

STATES = ("ready", "drain", "maint")
# What a query gets while nginx is not known to run the installed config: it may serve another.
NOT_APPLIED = "error=not_applied (nginx has not loaded what the members call for: see serf-handle status)\n"
_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_NAME = _NAME_START | frozenset("_.-")


class Server(NamedTuple):
    node: str
    backend: str
    addr: str
    port: int
    weight: int  # 0: down (nginx weights start at 1)
    state: str  # ready, drain or maint: drain and maint are `down`

    @property
    def down(self) -> bool:
        return self.state != "ready" or self.weight == 0

    @property
    def address(self) -> str:
        return f"[{self.addr}]:{self.port}" if ":" in self.addr else f"{self.addr}:{self.port}"

    @property
    def line(self) -> str:
        flags = " down" if self.down else ""
        return f"server {self.address} weight={max(self.weight, 1)} max_fails=1 fail_timeout=5s{flags};"


def is_backend_name(name: str) -> bool:
    # nginx refuses a server_name with ".." ("invalid server name or wildcard").
    return 0 < len(name) <= 64 and name[0] in _NAME_START and _NAME.issuperset(name) and ".." not in name


def refusal(member: Member, default_port: int) -> str | None:
    """Why `member` cannot be served, or None."""
    tags = member.tags
    port = tags.get("port", str(default_port))
    if not (port.isdigit() and 0 < int(port) < 65536):
        return f"member {member.name!r}: tag port={port!r}: expected a port number, 1-65535"
    weight = tags.get("weight", "1")
    if not (weight.isdigit() and int(weight) <= 256):
        return f"member {member.name!r}: tag weight={weight!r}: expected 0-256"
    backend = tags.get("backend")
    if backend is not None and not is_backend_name(backend):
        return f"member {member.name!r}: tag backend={backend!r}: expected a letter or digit, then _ . - too (no ..)"
    if tags.get("state", "ready") not in STATES:
        return f"member {member.name!r}: tag state={tags['state']!r}: expected one of {', '.join(STATES)}"
    return None


def servers(members: Iterable[Known], role: str, port: int, backend: str) -> dict[str, list[Server]]:
    """backend -> its servers (sorted by node), from the alive members of `role` (already checked)."""
    found: dict[str, list[Server]] = {backend: []}
    for m in sorted(members):
        if m.role != role or m.status != "alive":
            continue
        t = m.tags
        name = t.get("backend", backend).lower()  # nginx: "duplicate upstream" for `API` beside `api`
        server = Server(m.name, name, m.addr, int(t.get("port", port)), int(t.get("weight", "1")),
                        t.get("state", "ready"))
        found.setdefault(server.backend, []).append(server)
    return found


def table(backends: Mapping[str, list[Server]]) -> list[str]:
    """The servers as `status` shows them: one row each, by backend; a backend without a
    usable server says that it answers 503."""
    rows = [("BACKEND", "SERVER", "WEIGHT", "STATE", "NODE")]
    for name, servers in sorted(backends.items()):
        for s in servers:
            state = "ready" if not s.down else f"down ({s.state})" if s.state != "ready" else "down (weight 0)"
            rows.append((name, s.address, str(s.weight), state, s.node))
        if all(s.down for s in servers):
            rows.append((name, "-", "-", "no usable server: answers 503", "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def drained_line(given: Mapping[str, list[Server]] | None, node: str) -> str:
    """`drained=yes|no ...` (the haproxy handler's words): whether nginx gives `node` no new
    requests, from the servers it was last `given` (None: not known to be what nginx runs: a
    run in progress, a reload owed, the file changed or behind). Nothing of `node` is echoed."""
    if given is None:
        return "drained=no state=applying\n"
    mine = [s for found in given.values() for s in found if s.node == node]
    if not mine:
        return "drained=yes absent\n"  # never served, removed, failed, or skipped
    if all(s.down for s in mine):
        return "drained=yes state=down\n"  # state tag drain or maint, or weight 0
    return "drained=no state=ready\n"


def digest_line(given: Mapping[str, list[Server]] | None) -> str:
    """The `digest` answer (`serf_handlers.answers`) for the servers nginx was last `given`;
    None (a run in progress, a reload owed, the file changed or behind): an error line, as
    nginx may serve something else. nginx keeps no failed member: `kept_failed=0`."""
    from ...answers import Served
    from ...answers import digest_line as line

    if given is None:
        return NOT_APPLIED
    served = (Served(s.backend, s.node, s.addr, s.port, s.weight, s.state) for found in given.values() for s in found)
    return line(served, len(given), 0)


def server_list(given: Mapping[str, list[Server]] | None, budget: int) -> str:
    """The plain answer (`serf_handlers.answers`): one line per backend, `node=addr:port` each,
    with `(w=N)` and `(drain)`/`(maint)` as the haproxy handler writes them."""
    from ...answers import server_list as lines

    if given is None:
        return NOT_APPLIED
    return lines({name: [_word(s) for s in found] for name, found in sorted(given.items())}, budget)


def _word(server: Server) -> str:  # node names were checked by the pipeline: one word each
    weight = "" if server.weight == 1 else f"(w={server.weight})"
    state = "" if server.state == "ready" else f"({server.state})"
    return f"{server.node}={server.address}{weight}{state}"
