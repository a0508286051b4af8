"""Serf members (untrusted network input) to HAProxy servers (safe to render).

Everything that ends up in haproxy.cfg or in a runtime API command is either one of
these validated values or comes from the operator's own configuration:
- server and backend names use only `[A-Za-z0-9_.-]`;
- addresses are canonical IPv4/IPv6 text; ports are integers 1..65535; weights 0..256.
Tags are passed to templates untouched; the built-in template never renders them.
"""

from __future__ import annotations

from ..._typing import TYPE_CHECKING, NamedTuple
from ...errors import EventError
from ...events import parse_addr

Key = tuple[str, str]  # (backend, server): a server as HAProxy names it

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any, TypeGuard

SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
MAX_NAME = 63
DEFAULT_WEIGHT = 1
_HASH_SEP = "--"
_HASH_LEN = 10
_HEX = frozenset("0123456789abcdef")

# The options of every `server` line are defined here once: the built-in template, the
# Jinja2 template (through its context) and the runtime `add server` command all use them,
# so a server added live behaves exactly like the same server after a reload.
# Servers added at runtime ignore `default-server`, and without both pool options every
# request to them would open a new connection.
RUNTIME_OPTIONS = "pool-max-conn -1 pool-purge-delay 5s"
# A member's `state` tag, in HAProxy's own words (`set server ... state`).
STATES = ("ready", "drain", "maint")


class Rejected(ValueError):
    """A member (or stored entry) that cannot be rendered safely; the message names it."""


class Server(NamedTuple):
    """One HAProxy server, keyed in the state by its Serf node name."""

    node: str  # the exact Serf node name (any text)
    name: str  # the HAProxy server name derived from it (safe charset)
    addr: str  # canonical IP
    port: int
    weight: int
    backend: str  # safe charset
    tags: Mapping[str, str]
    maint: bool = False  # in maintenance: its `state=maint` tag, or failed with on_failed: maint
    failed: bool = False  # its member failed; served only while the partition rule keeps it
    drain: bool = False  # its `state=drain` tag: no new connections, the open ones finish
    id: int = 0  # its HAProxy `id` (see `with_ids`); 0: none on its line. Never stored

    @property
    def address(self) -> str:
        """`IP:PORT`, with the brackets HAProxy needs around an IPv6 address."""
        return f"[{self.addr}]:{self.port}" if ":" in self.addr else f"{self.addr}:{self.port}"

    @property
    def key(self) -> tuple[str, str]:
        return (self.backend, self.name)

    @property
    def path(self) -> str:
        """`backend/server`, as runtime API commands name a server."""
        return f"{self.backend}/{self.name}"

    @property
    def admin(self) -> str:
        """The administrative state HAProxy should give it, in `set server ... state` words."""
        return "maint" if self.maint else "drain" if self.drain else "ready"

    @property
    def live_view(self) -> tuple[str, int, int, str]:
        """What HAProxy's `show servers state` tells of it: address, port, weight, state."""
        return (self.addr, self.port, self.weight, self.admin)

    @property
    def config_weight(self) -> int:
        """Its weight in a config. A config has no drain state, so a draining server gets
        weight 0 there (no new connections either); HAProxy's own drain state and weight
        come back from the server-state file at a reload."""
        return 0 if self.admin == "drain" else self.weight

    @property
    def options(self) -> str:
        """What follows the address on its `server` line, before the health checks."""
        return f"id {self.id} weight {self.config_weight}" if self.id else f"weight {self.config_weight}"


def check_options(inter_ms: int) -> str:
    """The health-check options of every server (a dead one leaves rotation after one failed check)."""
    return f"check inter {inter_ms}ms fall 1 rise 1"


def check_interval(servers: int) -> int:
    """The default check interval (ms) for this many servers: 500 ms up to 500, then about
    1 ms per server up to 4,000 (at most ~1,000 checks a second in all), then 8 s (about 600
    checks a second at 5,000 servers: HAProxy spent 5-12 % of a core on 1,000 a second,
    BENCHMARKS.md section 8). Small sites still see a dead server within a second."""
    return next((inter for limit, inter in _CHECK_TIERS if servers <= limit), 8000)


_CHECK_TIERS = ((500, 500), (1000, 1000), (2000, 2000), (3000, 3000), (4000, 4000))


def with_ids(servers: Mapping[str, Server]) -> dict[str, Server]:
    """`servers`, each with its stable HAProxy `id`: a hash of its node name (32-bit FNV-1a,
    folded to HAProxy's 1..2**31-1), the same on every load balancer and across reloads,
    so stats, server-state files and metrics line up. Servers of one backend whose hashes
    collide (about 1 in 170 backends of 5,000 servers) get none: HAProxy numbers those."""
    taken: dict[tuple[str, int], int] = {}
    ids = {}
    for node, server in servers.items():
        ids[node] = node_id(node)
        key = (server.backend, ids[node])
        taken[key] = taken.get(key, 0) + 1
    return {
        node: server._replace(id=ids[node] if taken[(server.backend, ids[node])] == 1 else 0)
        for node, server in servers.items()
    }


def node_id(node: str) -> int:
    """1..2**31-1 from a node name: FNV-1a (no import on the event path), stable everywhere."""
    value = 0x811C9DC5
    for byte in node.encode("utf-8", "surrogateescape"):
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value % 0x7FFFFFFF + 1


def by_backend(
    servers: Mapping[str, Server], default_backend: str, always: Iterable[str] = ()
) -> dict[str, list[Server]]:
    """Backend name -> its servers sorted by name; the default backend and `always` are always there."""
    backends: dict[str, list[Server]] = {default_backend: [], **{name: [] for name in always}}
    for server in sorted(servers.values(), key=lambda s: (s.backend, s.name)):
        backends.setdefault(server.backend, []).append(server)
    return dict(sorted(backends.items()))


def is_token(text: object) -> TypeGuard[str]:
    """A name that can go anywhere in haproxy.cfg or a runtime command: 1..63 safe chars."""
    return isinstance(text, str) and 0 < len(text) <= MAX_NAME and all(c in SAFE_CHARS for c in text)


def is_backend_name(text: object) -> TypeGuard[str]:
    """A token that starts with a letter or digit: HAProxy reads a leading `-` in an ACL
    pattern (where the built-in template routes by backend name) as an option."""
    return is_token(text) and text[0].isalnum()


def server_name(node: str) -> str:
    """The HAProxy server name for a Serf node name: deterministic and unique.

    A clean, short name is used as it is. Anything else is sanitised, truncated, and
    suffixed with `--` and 10 hex digits of the SHA-256 of the exact node name. A clean
    name that already ends like such a suffix is suffixed too, so a node cannot take
    the name another node's hashing produced.
    """
    if is_token(node) and not _looks_hashed(node):
        return node
    import hashlib  # only for unusual names: hashlib costs a few ms to import

    digest = hashlib.sha256(node.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LEN]
    clean = "".join(c if c in SAFE_CHARS else "_" for c in node)
    return f"{clean[: MAX_NAME - len(_HASH_SEP) - _HASH_LEN]}{_HASH_SEP}{digest}"


def _looks_hashed(name: str) -> bool:
    tail = name[-_HASH_LEN - len(_HASH_SEP) :]
    return len(tail) == _HASH_LEN + len(_HASH_SEP) and tail.startswith(_HASH_SEP) and set(tail[2:]) <= _HEX


def from_member(name: str, addr: str, tags: Mapping[str, str], default_port: int, default_backend: str) -> Server:
    """Validate one member's data; raises Rejected naming the member and the bad value."""
    where = f"member {name!r}"
    port = _int_tag(tags, "port", default_port, 1, 65535, where)
    weight = _int_tag(tags, "weight", DEFAULT_WEIGHT, 0, 256, where)
    state = tags.get("state", "ready")
    if state not in STATES:
        raise Rejected(f"{where}: tag state={state!r} is not one of {', '.join(STATES)}")
    backend = tags.get("backend", default_backend)
    if not is_backend_name(backend):
        raise Rejected(
            f"{where}: tag backend={backend!r} is not a valid backend name "
            "(1-63 of A-Z a-z 0-9 _ . -, starting with a letter or digit)"
        )
    address = _canonical_ip(addr, where)
    maint, drain = state == "maint", state == "drain"
    return Server(name, server_name(name), address, port, weight, backend, dict(tags), maint, False, drain)


def _int_tag(tags: Mapping[str, str], key: str, default: int, low: int, high: int, where: str) -> int:
    text = tags.get(key)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 6) or not low <= int(text) <= high:
        raise Rejected(f"{where}: tag {key}={text!r} is not an integer from {low} to {high}")
    return int(text)


def _canonical_ip(addr: object, where: str) -> str:
    try:
        if isinstance(addr, str):
            return parse_addr(addr, where)
    except EventError:
        pass  # reworded below: the event parser's message names stdin, not the member
    raise Rejected(f"{where}: address {addr!r} is not an IP address")


# --- the state file's form -------------------------------------------------------------


def to_json(server: Server) -> dict[str, Any]:
    return {
        "name": server.name,
        "addr": server.addr,
        "port": server.port,
        "weight": server.weight,
        "backend": server.backend,
        "tags": dict(server.tags),
        "maint": server.maint,
        "failed": server.failed,
        "drain": server.drain,
    }


def from_json(node: str, raw: object) -> Server:
    """Re-validate a stored entry: the state file is rendered too, so it is not trusted blindly."""
    where = f"server for node {node!r}"
    if not isinstance(raw, dict):
        raise Rejected(f"{where}: not an object")
    name, port, weight, backend = raw.get("name"), raw.get("port"), raw.get("weight"), raw.get("backend")
    tags = raw.get("tags", {})
    maint, failed, drain = (raw.get(flag, False) for flag in ("maint", "failed", "drain"))
    if not is_token(name):
        raise Rejected(f"{where}: invalid server name {name!r}")
    if not _is_int(port, 1, 65535):
        raise Rejected(f"{where}: invalid port {port!r}")
    if not _is_int(weight, 0, 256):
        raise Rejected(f"{where}: invalid weight {weight!r}")
    if not is_token(backend):
        raise Rejected(f"{where}: invalid backend {backend!r}")
    if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise Rejected(f"{where}: tags are not a string mapping")
    if not all(isinstance(flag, bool) for flag in (maint, failed, drain)):
        raise Rejected(f"{where}: maint, failed or drain is not a boolean")
    address = _canonical_ip(raw.get("addr"), where)
    return Server(node, name, address, port, weight, backend, tags, maint, failed, drain)


def _is_int(value: object, low: int, high: int) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
