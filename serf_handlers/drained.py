"""The `drained NODE` question, asked by a web node that is stopping: it asks every load
balancer, through each one's `backends` query (docker/common/serf-drain.sh), whether it has
drained NODE, and leaves once all of them answer `drained=yes ...` (or at a timeout).

Every handler that answers it (haproxy, nginx) parses the untrusted payload here, and
answers with one short line of the same words: `drained=yes absent`, `drained=yes state=...`,
`drained=no state=...`; a bad payload gets `error=bad_payload WHY`, never the asker's text.

Imported only when a query asks: the member-event path never loads it.
"""

from __future__ import annotations

DRAINED_PAYLOAD = b"drained"
MAX_NODE_BYTES = 512  # far above any real node name, well below Serf's 1 KiB query limit


def drained_node(payload: bytes) -> str | ValueError | None:
    """The node a `drained NODE` payload asks about (exact: Serf node names may hold spaces);
    None when the payload is another form; a ValueError (returned, not raised) saying what is
    wrong with a malformed one. NODE is untrusted: UTF-8, 1-512 bytes, no control characters."""
    body = payload[:-1] if payload.endswith(b"\n") else payload  # Serf appends one newline
    after = body[len(DRAINED_PAYLOAD) : len(DRAINED_PAYLOAD) + 1]
    if not body.startswith(DRAINED_PAYLOAD) or (after and not after.isspace()):
        return None  # another word ("drainedx", "digest", ""): not this form
    raw = body[len(DRAINED_PAYLOAD) + 1 :]
    if after != b" " or not raw:
        return ValueError("expected: drained NODE")
    if len(raw) > MAX_NODE_BYTES:
        return ValueError(f"node name over {MAX_NODE_BYTES} bytes")
    try:
        node = raw.decode("utf-8")
    except UnicodeDecodeError:
        return ValueError("node name is not UTF-8")
    if any(ch < " " or "\x7f" <= ch <= "\x9f" for ch in node):
        return ValueError("control character in node name")
    return node


def bad_payload(why: ValueError) -> str:
    """The one line that answers a malformed `drained NODE` payload (what `drained_node`
    returned): it says what is wrong, and echoes nothing of the payload."""
    return f"error=bad_payload {why}\n"
