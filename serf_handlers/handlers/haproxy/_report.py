"""Human-readable views of the state: `serf-handle status` and the `backends` query reply."""

from __future__ import annotations

from ..._log import escape
from ..._typing import TYPE_CHECKING
from ._plan import as_servers, runtime_change
from ._servers import Server, by_backend
from ._state import State

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._live import LiveServer
    from ._servers import Key


def table(
    state: State, default_backend: str, live: Mapping[Key, LiveServer] | None = None
) -> tuple[str, bool]:
    """The status table, and whether HAProxy's `live` servers differ from the state."""
    header = ("BACKEND", "SERVER", "ADDRESS", "WEIGHT", "STATE", "NODE")
    rows: list[tuple[str, ...]] = [header if live is None else (*header[:5], "LIVE", header[5])]
    wrong = set() if live is None else _differing(state, live)
    for backend, servers in by_backend(state.servers, default_backend).items():
        if not servers:
            rows.append(_row(live, (backend, "-", "-", "-", "(no servers)"), "", "-"))
        for s in servers:
            cell = "-" if live is None else _live_cell(live.get(s.key), s.key in wrong)
            rows.append(_row(live, (backend, s.name, s.address, str(s.weight), _state(s)), cell, escape(s.node)))
    for node, s in sorted(state.failed.items()):
        rows.append(_row(live, (s.backend, s.name, s.address, str(s.weight), "failed (removed)"), "", escape(node)))
    for backend, name in sorted(state.pending):
        rows.append(_row(live, (backend, name, "-", "-", "deleting"), "", "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    for node, (_, why) in sorted(state.skipped.items()):
        lines.append(f"skipped: {escape(node)}: {why}")
    if state.applied is not None and state.applied != state.servers:
        lines.append("note: HAProxy does not have all of this yet (the last change failed; it is retried)")
    if state.behind is not None:
        lines.append(
            f"config file behind: not installed ({state.behind.why}); HAProxy got the changes through the runtime "
            "API, and the first run after the fix installs the file"
        )
    if wrong:
        lines.append(
            f"HAProxy differs from this for {len(wrong)} server(s) (marked !); `serf-handle reconcile` repairs it"
        )
    return "\n".join(lines) + "\n", bool(wrong) or state.behind is not None


def _row(live: object, cells: tuple[str, ...], live_cell: str, node: str) -> tuple[str, ...]:
    return (*cells, node) if live is None else (*cells, live_cell or "-", node)


def _state(server: Server) -> str:
    """Its state and where that comes from: the member's `state` tag or the failure rule."""
    if server.failed:
        return "maint (failed)" if server.maint else "failed (kept)"
    return "ready" if server.admin == "ready" else f"{server.admin} (tag)"


def _live_cell(found: LiveServer | None, wrong: bool) -> str:
    if found is None:
        return "missing !"
    text = f"{found.state} {found.health}"
    return f"{text} {found.addr}:{found.port} w={found.weight} !" if wrong else text


def _differing(state: State, live: Mapping[Key, LiveServer]) -> set[Key]:
    """The keys of the servers HAProxy has otherwise than the state says (missing, moved,
    re-weighted, drained, in or out of maintenance, or left behind)."""
    change = runtime_change(as_servers(live, state, state.servers), state.servers, ())
    return {s.key for s in (*change.drain, *change.add)} | {after.key for _, after in change.update}


def summary(state: State, default_backend: str, budget: int) -> str:
    """One line per backend, `server=addr:port` each, cut to fit `budget` bytes (`serf_handlers.answers`)."""
    from ...answers import server_list

    backends = by_backend(state.servers, default_backend)
    return server_list({name: [_word(s) for s in found] for name, found in backends.items()}, budget)


def _word(server: Server) -> str:
    extra = "" if server.weight == 1 else f"(w={server.weight})"
    extra += "" if server.admin == "ready" else f"({server.admin})"
    return f"{server.name}={server.address}{extra}"


def digest_line(state: State, default_backend: str) -> str:
    """What this load balancer serves, as `serf-handle cluster-check` compares it
    (`serf_handlers.answers`): each server with its admin state, and the failed ones kept."""
    from ...answers import Served
    from ...answers import digest_line as line

    servers = state.servers.values()
    served = (Served(s.backend, s.node, s.addr, s.port, s.weight, s.admin) for s in servers)
    return line(served, len(by_backend(state.servers, default_backend)), sum(1 for s in servers if s.failed))


# `drained NODE`: a web node that is stopping asks every load balancer whether it has drained
# it (docker/common/serf-drain.sh), and leaves only once all of them say yes (or a timeout).
# The payload is parsed in serf_handlers/drained.py, shared with the nginx handler.
_DRAINED = ("drain", "maint")


def drained_line(state: State, node: str) -> str:
    """`drained=yes|no ...`: whether this load balancer's HAProxy gives `node` no new requests.

    Yes when the node's server is wanted in `drain` or `maint` and HAProxy was brought there
    (the state's `applied`), or when HAProxy has no server for it (`absent`: never served,
    already removed, or skipped). No while its server is `ready`, while the change is not
    applied yet (`applying`, retried by the next run), or when what HAProxy runs is unknown.
    One short line whatever the node; nothing of the asker's text is echoed."""
    wanted = state.servers.get(node)
    if state.applied is None:
        return "drained=no state=unknown\n"
    applied = state.applied.get(node)
    if wanted is None:
        if applied is not None and applied.admin not in _DRAINED:
            return "drained=no state=removing\n"
        return "drained=yes absent\n"
    if wanted.admin not in _DRAINED:
        return f"drained=no state={wanted.admin}\n"
    if applied is not None and applied.admin not in _DRAINED:
        return f"drained=no state={wanted.admin} applying\n"
    return f"drained=yes state={wanted.admin}\n"
