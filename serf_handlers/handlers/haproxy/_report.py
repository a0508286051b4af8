"""Human-readable views of the state: `serf-handle status` and the `backends` query reply."""

from __future__ import annotations

from ..._log import escape
from ..._typing import TYPE_CHECKING
from ._servers import Server, by_backend
from ._state import State

if TYPE_CHECKING:
    pass

TRUNCATED = "truncated"


def table(state: State, default_backend: str) -> str:
    rows = [("BACKEND", "SERVER", "ADDRESS", "WEIGHT", "STATE", "NODE")]
    for backend, servers in by_backend(state.servers, default_backend).items():
        if not servers:
            rows.append((backend, "-", "-", "-", "(no servers)", "-"))
        for s in servers:
            rows.append((backend, s.name, s.address, str(s.weight), "maint" if s.maint else "ready", escape(s.node)))
    for backend, name in sorted(state.pending):
        rows.append((backend, name, "-", "-", "deleting", "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    if state.applied is not None and state.applied != state.servers:
        lines.append("note: HAProxy does not have all of this yet (the last change failed; it is retried)")
    return "\n".join(lines) + "\n"


def summary(state: State, default_backend: str, budget: int) -> str:
    """One line per backend, `server=addr:port` each; ends with "truncated" if cut to fit `budget` bytes."""
    lines: list[str] = []
    used = 0
    reserve = len(TRUNCATED) + 1
    for backend, servers in by_backend(state.servers, default_backend).items():
        words = [f"{backend}:"] + [_word(s) for s in servers] if servers else [f"{backend}:", "-"]
        line = words[0]
        for word in words[1:]:
            if used + len(line) + 1 + len(word) + 1 + reserve > budget:
                lines.append(line)
                return "\n".join(lines) + "\n" + TRUNCATED + "\n"
            line += " " + word
        if used + len(line) + 1 + reserve > budget:
            return "\n".join(lines) + ("\n" if lines else "") + TRUNCATED + "\n"
        lines.append(line)
        used += len(line) + 1
    return "\n".join(lines) + "\n"


def _word(server: Server) -> str:
    extra = ("" if server.weight == 1 else f"(w={server.weight})") + ("(maint)" if server.maint else "")
    return f"{server.name}={server.address}{extra}"
