"""HAProxy's runtime API (the admin socket): change servers live, with no reload.

A reload closes idle keep-alive connections; the runtime API touches none, so
membership changes go through it whenever it can express them:
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
from ..._typing import TYPE_CHECKING
from ...errors import HandlerError
from ._files import read_bytes, write_atomic
from ._live import ADMIN_DRAIN, ADMIN_MAINT, parse, rows
from ._servers import CHECK_OPTIONS, RUNTIME_OPTIONS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from ._live import LiveServer
    from ._plan import Key, RuntimeChange
    from ._servers import Server

    API = Callable[[str], str]

TIMEOUT = 2.0  # seconds per command; HAProxy answers in well under a millisecond
DRAIN_SECONDS = 0.1  # drain before maint, or `del server` is refused under keep-alive load


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


class Runtime:
    """The admin socket for one run: one client, the servers drained early (and when),
    the deletions left pending, and the server-state save before a reload."""

    def __init__(self, path: str, timeout: float = TIMEOUT, drain_seconds: float = DRAIN_SECONDS) -> None:
        self.client = Client(path, timeout)
        self.drain_seconds = drain_seconds
        self.drained: set[Key] = set()
        self.drained_at = 0.0  # time.monotonic() of the last drain
        self.text: str | None = None  # the last `show servers state`

    def live(self) -> dict[Key, LiveServer] | None:
        """HAProxy's servers now; None when the socket does not answer (then the state
        file's record stands in). The text is kept for the next server-state save."""
        try:
            self.text = self.client("show servers state")
        except Unavailable as exc:
            _log.warning(f"haproxy: cannot read HAProxy's servers: {exc}")
            return None
        return parse(self.text)

    def drain_early(self, servers: Iterable[Server]) -> None:
        """Start draining servers about to go before the slow part of a run (`haproxy -c`),
        so the drain time overlaps it. Best effort: `apply` redoes whatever did not work."""
        for server in servers:
            try:
                if _done_or_gone(self.client(f"set server {server.path} state drain")):
                    self.drained.add(server.key)
                    self.drained_at = time.monotonic()
            except Unavailable:
                return

    def undo_drains(self) -> None:
        """After a failed run: put the servers drained early back (best effort; the next
        run compares HAProxy's live state with the record and repairs what is left)."""
        for backend, name in sorted(self.drained):
            try:
                self.client(f"set server {backend}/{name} state ready")
            except Unavailable:
                return
        self.drained.clear()

    def apply(self, change: RuntimeChange) -> tuple[Key, ...]:
        """Send `change`; return the deletions HAProxy refused (still pending).

        Raises Unexpressible when HAProxy refuses a change, Unavailable when it does not answer.
        """
        api = self.client
        for server in change.drain:
            if server.key not in self.drained:
                _expect(api, f"set server {server.path} state drain", _done_or_gone)
                self.drained.add(server.key)
                self.drained_at = time.monotonic()
        if change.drain:
            # Once per run, whatever the number of servers; time since an early drain counts.
            time.sleep(max(0.0, self.drained_at + self.drain_seconds - time.monotonic()))
        for server in change.drain:
            _expect(api, f"set server {server.path} state maint", _done_or_gone)

        pending = []
        for backend, name in change.delete:
            reply = api(f"del server {backend}/{name}")
            if reply not in ("Server deleted.", "No such server.", "No such backend."):
                # Not a failure: it is in maintenance, gone from the config, and retried later.
                _log.info("haproxy: server deletion deferred", server=f"{backend}/{name}", reply=reply)
                pending.append((backend, name))

        for server in change.add:
            options = f"weight {server.weight} {CHECK_OPTIONS} {RUNTIME_OPTIONS}"
            reply = api(f"add server {server.path} {server.address} {options}")
            if reply.startswith("Already exists a server with the same name"):
                # An earlier deletion was deferred: the server is still there, in maintenance.
                _set_addr(api, server)
                _expect(api, f"set weight {server.path} {server.weight}", _done)
            elif reply != "New server registered.":
                raise Unexpressible(f"add server {server.path}: {reply}")
            reply = api(f"enable health {server.path}")
            if reply:
                _log.warning("haproxy: enable health refused", server=server.path, reply=reply)
            _expect(api, f"set server {server.path} state {server.admin}", _done)

        for before, after in change.update:
            if (before.addr, before.port) != (after.addr, after.port):
                _set_addr(api, after)
            if before.weight != after.weight:
                _expect(api, f"set weight {after.path} {after.weight}", _done)
            if before.admin != after.admin:
                _expect(api, f"set server {after.path} state {after.admin}", _done)
        return tuple(pending)

    def save_server_state(self, path: str, servers: Mapping[str, Server]) -> None:
        """Before a reload: save what HAProxy knows (health, maintenance) for the new worker."""
        try:
            live = self.client("show servers state")
        except Unavailable as exc:
            _log.warning(f"haproxy: server state not saved: {exc}")
            live = None
        save_server_state(path, servers, live)


def save_server_state(path: str, servers: Mapping[str, Server], live: str | None = None) -> None:
    """Write `live` (`show servers state`), else the file saved last time, to `path`,
    keeping only lines that agree with the new config (see `filter_server_state`)."""
    text = live
    if text is None:
        raw = read_bytes(path)
        text = None if raw is None else raw.decode("utf-8", "replace")
    if text is None:
        return
    try:
        write_atomic(path, filter_server_state(text, servers).encode("utf-8"), 0o644)
    except OSError as exc:
        _log.warning(f"haproxy: cannot write the server state file: {exc}", path=path)


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
    wanted = {s.key: s for s in servers.values()}
    header, found = rows(text)
    if header is None:
        return ""
    out = ["1", header]
    for line, row in found:
        server = wanted.get((row.get("be_name", ""), row.get("srv_name", "")))
        if server is None:
            continue
        if (row.get("srv_addr"), row.get("srv_port"), row.get("srv_uweight")) != (
            server.addr,
            str(server.port),
            str(server.weight),
        ):
            continue
        if server.admin != "maint" and server.admin != _admin_state(row.get("srv_admin_state", "")):
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def _admin_state(text: str) -> str | None:
    if not text.isdigit():
        return None
    bits = int(text)
    return "maint" if bits & ADMIN_MAINT else "drain" if bits & ADMIN_DRAIN else "ready"
