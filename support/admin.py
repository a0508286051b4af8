"""HAProxy's admin socket, as the tests and the benchmarks read it, through the package's own
runtime API client (under a timeout, refusing anything that could split a command) and its
one `show servers state` parser (`_live.rows`)."""

from __future__ import annotations

from pathlib import Path

from serf_handlers.handlers.haproxy._live import rows
from serf_handlers.handlers.haproxy._runtime import Client, Unavailable

__all__ = ["Unavailable", "admin", "answers", "live_servers", "server_rows"]


def admin(path: Path | str, command: str, timeout: float = 2.0) -> str:
    """One runtime API command to a real HAProxy admin socket; raises `Unavailable` if it
    does not answer."""
    return Client(str(path), timeout)(command)


def answers(path: Path | str) -> bool:
    """Whether HAProxy answers on its admin socket (for `wait_until`)."""
    try:
        return admin(path, "show info").startswith("Name: HAProxy")
    except Unavailable:
        return False


def live_servers(path: Path | str, backend: str = "web") -> dict[str, tuple[str, str, str, str]]:
    """HAProxy's own view: server name -> (addr, port, weight, admin state) from `show servers
    state`; empty if HAProxy does not answer."""
    return {
        row["srv_name"]: (row["srv_addr"], row["srv_port"], row["srv_uweight"], row["srv_admin_state"])
        for row in server_rows(path, backend)
    }


def server_rows(path: Path | str, backend: str | None = None) -> list[dict[str, str]]:
    """Every column of `show servers state` (of `backend`, else of all backends), one dict
    per server (`be_name`, `srv_name`, `srv_addr`, `srv_port`, `srv_op_state`: 2 is UP,
    `srv_admin_state`: 0 is ready, …); empty if HAProxy does not answer."""
    try:
        text = admin(path, f"show servers state {backend}" if backend else "show servers state")
    except Unavailable:
        return []
    return [row for _line, row in rows(text)[1]]
