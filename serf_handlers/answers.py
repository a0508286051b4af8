"""What a load balancer answers to the `backends` query, beside `drained NODE`
(serf_handlers/drained.py): with no payload (or any other), the readable server list
(`serf query backends`); with the payload `digest`, the one line `serf-handle cluster-check`
compares across load balancers.

Both load balancer handlers (haproxy, nginx) answer here, in the same words, so load
balancers of either kind read alike and are compared alike: the same servers give the same
digest. Imported only when a query asks: the member-event path never loads it.
"""

from __future__ import annotations

from ._log import escape
from ._typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

PAYLOAD = b"digest"
HEX = 16  # 64 bits: far beyond any chance collision between load balancers, and one short line
TRUNCATED = "truncated"


class Served(NamedTuple):
    """One server a load balancer serves, as the digest counts it."""

    backend: str
    node: str  # the member's Serf node name (untrusted text: escaped in the digest)
    addr: str
    port: int
    weight: int
    state: str  # ready, drain or maint


def asks_digest(payload: bytes) -> bool:
    return payload.strip() == PAYLOAD


def digest_line(served: Iterable[Served], backends: int, kept_failed: int) -> str:
    """`digest=<16 hex> servers=N backends=M kept_failed=K`: small enough for any query reply.

    The digest is the SHA-256 of one `backend node addr port weight state` line per server,
    sorted: whatever order the events came in, and nothing of the load balancer's own (paths,
    listen addresses) goes in. The node name is escaped, so no name can pass for two lines.
    `kept_failed` counts failed members still served (the `min_alive` rule), which may
    rightly differ between load balancers for a while.
    """
    import hashlib  # only on this query's path

    lines = sorted(f"{s.backend} {escape(s.node)} {s.addr} {s.port} {s.weight} {s.state}\n" for s in served)
    digest = hashlib.sha256("".join(lines).encode()).hexdigest()[:HEX]
    return f"digest={digest} servers={len(lines)} backends={backends} kept_failed={kept_failed}\n"


def server_list(backends: Mapping[str, Sequence[str]], budget: int) -> str:
    """One line per backend, its servers' words after it (`-` for none); ends with
    "truncated" if cut to fit `budget` bytes (Serf drops a reply over its limit)."""
    lines: list[str] = []
    used = 0
    reserve = len(TRUNCATED) + 1
    for backend, words in backends.items():
        line = f"{backend}:"
        for word in words or ["-"]:
            if used + len(line) + 1 + len(word) + 1 + reserve > budget:
                lines.append(line)
                return "\n".join(lines) + "\n" + TRUNCATED + "\n"
            line += " " + word
        if used + len(line) + 1 + reserve > budget:
            return "\n".join(lines) + ("\n" if lines else "") + TRUNCATED + "\n"
        lines.append(line)
        used += len(line) + 1
    return "\n".join(lines) + "\n"
