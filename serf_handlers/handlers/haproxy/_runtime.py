"""HAProxy's runtime API (the admin socket): change servers live, with no reload.

A reload closes idle keep-alive connections; the runtime API touches none (see
HAPROXY.md), so membership changes go through it whenever it can express them:
- add: `add server` (in maintenance) with every option on the line (runtime servers
  ignore `default-server`), `enable health`, `enable server`;
- remove: `set server ... state drain`, a short wait (once per run), `state maint`, `del
  server`. A refused delete (connections still open) is kept pending and retried later;
- move or re-weight: `set server ... addr IP port P`, `set weight`.

One connection per command: send, half-close, read to EOF, all under a timeout.
Commands carry only validated names, addresses and integers; the client still refuses
anything that could split a command, as a last line of defence.
"""

from __future__ import annotations

import time

from ... import _log
from ..._typing import TYPE_CHECKING, NamedTuple
from ...errors import HandlerError
from ._servers import Server

if TYPE_CHECKING:
    from typing import Callable, Iterable, Mapping

TIMEOUT = 2.0  # seconds per command; HAProxy answers in well under a millisecond
DRAIN_SECONDS = 0.1  # drain before maint, or `del server` is refused under keep-alive load
# Servers added at runtime ignore `default-server`, and without both pool options every
# request to them opens a new connection; keep in step with the built-in template.
ADD_OPTIONS = "check inter 500ms fall 1 rise 1 pool-max-conn -1 pool-purge-delay 5s"

Key = tuple[str, str]  # (backend, server)
if TYPE_CHECKING:
    API = Callable[[str], str]


class Unavailable(HandlerError):
    """The admin socket did not answer."""


class Unexpressible(Exception):
    """HAProxy refused a change through the runtime API; a reload must apply it."""


class Client:
    """Sends one command per connection to the admin socket at `path`."""

    def __init__(self, path: str, timeout: float = TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self.sent = 0

    def __call__(self, command: str) -> str:
        import socket

        if any(c in command for c in "\n\r;\0"):
            raise ValueError(f"refusing a runtime API command that could split: {command!r}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        chunks: list[bytes] = []
        try:
            sock.connect(self.path)
            sock.sendall(command.encode("ascii") + b"\n")
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError as exc:  # includes the timeout
            raise Unavailable(f"admin socket {self.path}: {exc.strerror or exc or type(exc).__name__}") from None
        finally:
            sock.close()
        self.sent += 1
        return b"".join(chunks).decode("utf-8", "replace").strip()


def removed(old: Mapping[str, Server], new: Mapping[str, Server]) -> list[Server]:
    """The servers of `old` that `new` no longer has at the same backend/name."""
    return [s for node, s in sorted(old.items()) if node not in new or new[node].key != s.key]


def drain_early(api: API, old: Mapping[str, Server], new: Mapping[str, Server]) -> "Drained":
    """Start draining the servers about to go, before the slow part of a run (rendering,
    `haproxy -c`), so that the drain time overlaps it. Best effort: `apply` redoes whatever
    did not work. A drained server of a node that left is harmless even if the run fails."""
    keys: set[Key] = set()
    for server in removed(old, new):
        if server.maint:
            continue
        try:
            if _done_or_gone(api(f"set server {server.path} state drain")):
                keys.add(server.key)
        except Unavailable:
            break
    return Drained(frozenset(keys), time.monotonic())


class Drained(NamedTuple):
    keys: frozenset[Key]
    at: float  # time.monotonic() when they were drained


def apply(
    api: API,
    old: Mapping[str, Server],
    new: Mapping[str, Server],
    pending: Iterable[Key],
    drain_seconds: float = DRAIN_SECONDS,
    drained: Drained | None = None,
) -> tuple[Key, ...]:
    """Turn HAProxy's servers from `old` into `new`; return the deletions still pending.

    Raises Unexpressible when HAProxy refuses a change, Unavailable when it does not answer.
    """
    gone = removed(old, new)
    added = [s for node, s in sorted(new.items()) if node not in old or old[node].key != s.key]
    changed = [(old[node], s) for node, s in sorted(new.items()) if node in old and old[node].key == s.key]
    waiting = set(pending)

    draining = [s for s in gone if not s.maint]
    early = drained or Drained(frozenset(), 0.0)
    late = [s for s in draining if s.key not in early.keys]
    for server in late:
        _expect(api, f"set server {server.path} state drain", _done_or_gone)
    if draining:
        # Once per run, whatever the number of servers; time already spent since an early drain counts.
        since = time.monotonic() if late else early.at
        time.sleep(max(0.0, since + drain_seconds - time.monotonic()))
    for server in draining:
        _expect(api, f"set server {server.path} state maint", _done_or_gone)
    waiting.update(s.key for s in gone)

    readded = {s.key for s in added}
    for backend, name in sorted(waiting - readded):
        reply = api(f"del server {backend}/{name}")
        if reply in ("Server deleted.", "No such server.", "No such backend."):
            waiting.discard((backend, name))
        else:
            # Not a failure: it is in maintenance, gone from the config, and retried later.
            _log.info("haproxy: server deletion deferred", server=f"{backend}/{name}", reply=reply)

    for server in added:
        reply = api(f"add server {server.path} {server.address} weight {server.weight} {ADD_OPTIONS}")
        if reply.startswith("Already exists a server with the same name"):
            # An earlier deletion was deferred: the server is still there, in maintenance.
            _set_addr(api, server)
            _expect(api, f"set weight {server.path} {server.weight}", _done)
        elif reply != "New server registered.":
            raise Unexpressible(f"add server {server.path}: {reply}")
        reply = api(f"enable health {server.path}")
        if reply:
            _log.warning("haproxy: enable health refused", server=server.path, reply=reply)
        _expect(api, f"set server {server.path} state {'maint' if server.maint else 'ready'}", _done)
        waiting.discard(server.key)

    for before, after in changed:
        if (before.addr, before.port) != (after.addr, after.port):
            _set_addr(api, after)
        if before.weight != after.weight:
            _expect(api, f"set weight {after.path} {after.weight}", _done)
        if before.maint != after.maint:
            _expect(api, f"set server {after.path} state {'maint' if after.maint else 'ready'}", _done)
    return tuple(sorted(waiting))


def _set_addr(api: API, server: Server) -> None:
    _expect(api, f"set server {server.path} addr {server.addr} port {server.port}", _addr_set)


def _done(reply: str) -> bool:
    return reply == ""


def _done_or_gone(reply: str) -> bool:
    return reply in ("", "No such server.", "No such backend.")


def _addr_set(reply: str) -> bool:
    return "changed from" in reply or "no need to change" in reply


def _expect(api: API, command: str, ok: Callable[[str], bool]) -> None:
    reply = api(command)
    if not ok(reply):
        raise Unexpressible(f"{command}: {reply or '(no reply)'}")


def filter_server_state(text: str, servers: Mapping[str, Server]) -> str:
    """Keep only the `show servers state` lines that agree with the config about to load.

    HAProxy applies a saved server's port (and admin state) over the config's, so a stale
    line could move a server back; a line is kept only when backend, name, address, port
    and weight all match and its maintenance state is the wanted one.
    """
    wanted = {(s.backend, s.name): s for s in servers.values()}
    lines = text.splitlines()
    header = next((line for line in lines if line.startswith("# be_id")), None)
    if header is None:
        return ""
    columns = header[2:].split()
    out = ["1", header]
    for line in lines:
        fields = line.split()
        if line.startswith("#") or len(fields) != len(columns):
            continue
        row = dict(zip(columns, fields))
        server = wanted.get((row.get("be_name", ""), row.get("srv_name", "")))
        if server is None:
            continue
        if (row.get("srv_addr"), row.get("srv_port"), row.get("srv_uweight")) != (
            server.addr,
            str(server.port),
            str(server.weight),
        ):
            continue
        if not server.maint and row.get("srv_admin_state") != "0":
            continue
        out.append(line)
    return "\n".join(out) + "\n"
