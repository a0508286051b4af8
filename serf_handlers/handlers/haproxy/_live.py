"""HAProxy's own view of its servers: `show servers state` on the admin socket.

This is the truth the handler checks its record against (see `_plan`). Columns are read
by the names in the header line, not by position. The admin and operational states are
HAProxy's bit set and enum (`enum srv_admin`, `enum srv_state` in its source).
"""

from __future__ import annotations

from ..._typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from ._servers import Key

ADMIN_MAINT = 0x23  # forced, inherited, or unresolvable address
ADMIN_DRAIN = 0x18  # forced or inherited
RUNNING = 2  # operational state: 0 stopped, 1 starting, 2 running, 3 stopping


class LiveServer(NamedTuple):
    backend: str
    name: str
    addr: str
    port: int
    weight: int
    admin: int
    operational: int

    @property
    def key(self) -> Key:
        return (self.backend, self.name)

    @property
    def state(self) -> str:
        """HAProxy's administrative state, in the words of `set server ... state`."""
        return "maint" if self.admin & ADMIN_MAINT else "drain" if self.admin & ADMIN_DRAIN else "ready"

    @property
    def health(self) -> str:
        return "UP" if self.operational == RUNNING else "DOWN"


def rows(text: str) -> tuple[str | None, list[tuple[str, dict[str, str]]]]:
    """The header line, and each server line with its fields by column name."""
    lines = text.splitlines()
    header = next((line for line in lines if line.startswith("# be_id")), None)
    if header is None:
        return None, []
    columns = header[2:].split()
    found = []
    for line in lines:
        fields = line.split()
        if not line.startswith("#") and len(fields) == len(columns):
            found.append((line, dict(zip(columns, fields, strict=True))))
    return header, found


def parse(text: str) -> dict[Key, LiveServer]:
    """Every server HAProxy has, by (backend, server)."""
    servers = {}
    for _, row in rows(text)[1]:
        try:
            server = LiveServer(
                row["be_name"],
                row["srv_name"],
                row["srv_addr"],
                int(row["srv_port"]),
                int(row["srv_uweight"]),
                int(row["srv_admin_state"]),
                int(row["srv_op_state"]),
            )
        except (KeyError, ValueError):
            continue  # not a server line this version of HAProxy can be understood from
        servers[server.key] = server
    return servers
