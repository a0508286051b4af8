"""The `digest` question: `serf-handle cluster-check` asks every load balancer, through its
`backends` query with the payload `digest`, what it serves, and compares the one-line answers.

Both load balancer handlers (haproxy, nginx) answer here, in the same words, so load
balancers of either kind are compared alike: the same servers give the same digest.
Imported only when a query asks: the member-event path never loads it.
"""

from __future__ import annotations

from ._log import escape
from ._typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Iterable

PAYLOAD = b"digest"
HEX = 16  # 64 bits: far beyond any chance collision between load balancers, and one short line


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
