"""HAProxy's runtime API (the admin socket): change servers live, with no reload.

A reload closes idle keep-alive connections; the runtime API touches none, so
membership changes go through it whenever it can express them:
- add: `add server` (in maintenance) with every option on the line (runtime servers
  ignore `default-server`), `enable health`, `enable server`;
- remove: `set server ... state drain`, a short wait (once per run), `state maint`, `del
  server`. A refused delete (connections still open) is kept pending and retried later;
- move or re-weight: `set server ... addr IP port P`, `set weight`.

Each step of a change is one batch on one connection (HAProxy's interactive mode), so a
change of thousands of servers costs milliseconds, not thousands of connections.
Commands carry only validated names, addresses and integers; the client still refuses
anything that could split a command, as a last line of defence.
"""

from __future__ import annotations

import time

from ... import _log
from ..._files import read_bytes, write_atomic
from ..._typing import TYPE_CHECKING
from ...errors import HandlerError
from ._live import ADMIN_DRAIN, ADMIN_MAINT, parse, rows
from ._servers import RUNTIME_OPTIONS

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import TypeVar

    from ._live import LiveServer
    from ._plan import RuntimeChange
    from ._servers import Key, Server

    _A = TypeVar("_A")
    _R = TypeVar("_R")

TIMEOUT = 3.0  # seconds per wait on the socket; HAProxy answers in well under a millisecond
ATTEMPTS = 3  # a starved HAProxy may miss one wait: try again, after these pauses
BACKOFF = (0.25, 1.0)
CHUNK = 200  # commands written before their replies are read: bounded socket buffers
DRAIN_SECONDS = 0.1  # drain before maint, or `del server` is refused under keep-alive load


class Unavailable(HandlerError):
    """The admin socket did not answer."""


class Unexpressible(Exception):
    """HAProxy refused a change through the runtime API; a reload must apply it."""


class Client:
    """Commands to the admin socket at `path`: one per connection, or a batch on one
    connection in HAProxy's interactive mode (`prompt`), where each reply ends at the next
    prompt. Commands go in chunks, each chunk's replies read before the next is sent, and
    the timeout is for each wait: a long batch that HAProxy keeps answering is never cut
    short, a silent HAProxy still is.

    A command or batch that gets no answer is tried again (`ATTEMPTS`, after `BACKOFF`):
    every command here is safe to repeat. Once the socket has failed every attempt, later
    calls on this client fail at once: HAProxy is down or hung, and Serf waits for us."""

    def __init__(self, path: str, timeout: float | None = None, attempts: int | None = None) -> None:
        self.path = path
        self.timeout = TIMEOUT if timeout is None else timeout
        self.attempts = ATTEMPTS if attempts is None else attempts
        self.sent = 0
        self.answered = False  # whether any exchange succeeded: HAProxy is alive
        self.down: str | None = None  # why every attempt failed once: no more tries in this run

    def __call__(self, command: str) -> str:
        (reply,) = self._retrying(_Session.exchange, [command])
        return reply

    def batch(self, commands: Sequence[str]) -> list[str]:
        """One reply per command, in order."""
        if not commands:
            return []
        if len(commands) == 1:
            return [self(commands[0])]
        return self._retrying(_Session.batch, commands)

    def _retrying(self, how: Callable[[_Session, Sequence[str]], list[str]], commands: Sequence[str]) -> list[str]:
        for command in commands:
            _checked(command)
        if self.down is not None:
            raise Unavailable(f"{self.down} (earlier in this run; not tried again)")
        for attempt in range(self.attempts):
            try:
                with _Session(self.path, self.timeout) as session:
                    replies = how(session, commands)
            except Unavailable as exc:
                if attempt + 1 == self.attempts:
                    self.down = str(exc)
                    raise
                time.sleep(BACKOFF[min(attempt, len(BACKOFF) - 1)])
                continue
            self.sent += len(commands)
            self.answered = True
            return replies
        raise AssertionError("unreachable")


PROMPT = "\n> "  # in interactive mode: opens the session and follows every reply


class _Session:
    """One connection to the admin socket; raises Unavailable on any socket error or timeout."""

    def __init__(self, path: str, timeout: float) -> None:
        # `_socket`, the C module under `socket`: the same socket object and errors, without
        # socket.py's import (selectors, array, enum conversions): about a quarter of a bare
        # `python -c pass`, measured on the event path.
        import _socket

        self.path = path
        self.buffer = ""
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self._guard(self.sock.connect, path)

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def exchange(self, commands: Sequence[str]) -> list[str]:
        """One command on this connection (non-interactive: HAProxy closes after the reply)."""
        import _socket

        self._guard(self.sock.sendall, (commands[0] + "\n").encode("ascii"))
        self._guard(self.sock.shutdown, _socket.SHUT_WR)
        while self._recv():
            pass
        return [self.buffer.strip()]

    def batch(self, commands: Sequence[str]) -> list[str]:
        self._send("prompt\n")
        self._replies(1)  # the opening prompt
        replies: list[str] = []
        for start in range(0, len(commands), CHUNK):
            chunk = commands[start : start + CHUNK]
            self._send("".join(command + "\n" for command in chunk))
            replies += self._replies(len(chunk))
        self._send("quit\n")
        return replies

    def _send(self, text: str) -> None:
        self._guard(self.sock.sendall, text.encode("ascii"))

    def _replies(self, count: int) -> list[str]:
        while self.buffer.count(PROMPT) < count:
            if not self._recv():
                raise Unavailable(f"admin socket {self.path}: closed after {len(self.buffer)} bytes")
        *replies, self.buffer = self.buffer.split(PROMPT, count)
        return [reply.strip() for reply in replies]

    def _recv(self) -> bool:
        chunk = self._guard(self.sock.recv, 65536)
        self.buffer += chunk.decode("utf-8", "replace")
        return bool(chunk)

    def _guard(self, call: Callable[[_A], _R], arg: _A) -> _R:
        try:
            return call(arg)
        except OSError as exc:  # includes the timeout
            raise Unavailable(f"admin socket {self.path}: {exc.strerror or exc or type(exc).__name__}") from None


def _checked(command: str) -> str:
    if any(c in command for c in "\n\r;\0"):
        raise ValueError(f"refusing a runtime API command that could split: {command!r}")
    return command


class Runtime:
    """The admin socket for one run: one client, the servers drained early (and when),
    the deletions left pending, and the server-state save before a reload."""

    def __init__(self, path: str, timeout: float | None = None, drain_seconds: float = DRAIN_SECONDS) -> None:
        self.client = Client(path, timeout)
        self.drain_seconds = drain_seconds
        self.drained: set[Key] = set()
        self.drained_at = 0.0  # time.monotonic() of the last drain

    def live(self) -> dict[Key, LiveServer] | None:
        """HAProxy's servers now; None when the socket does not answer (then the state
        file's record stands in)."""
        try:
            text = self.client("show servers state")
        except Unavailable as exc:
            _log.warning(f"haproxy: cannot read HAProxy's servers: {exc}")
            return None
        return parse(text)

    def drain_early(self, servers: Sequence[Server]) -> None:
        """Start draining servers about to go before the slow part of a run (`haproxy -c`),
        so the drain time overlaps it. Best effort: `apply` redoes whatever did not work."""
        try:
            replies = self.client.batch([f"set server {s.path} state drain" for s in servers])
        except Unavailable:
            return
        self.drained.update(s.key for s, reply in zip(servers, replies, strict=True) if _done_or_gone(reply))
        self.drained_at = time.monotonic()

    def undo_drains(self) -> None:
        """After a failed run: put the servers drained early back (best effort; the next
        run compares HAProxy's live state with the record and repairs what is left)."""
        keys = sorted(self.drained)
        try:
            self.client.batch([f"set server {backend}/{name} state ready" for backend, name in keys])
        except Unavailable:
            return
        self.drained.clear()

    def apply(
        self, change: RuntimeChange, checks: str, ids: Mapping[Key, int], extras: Mapping[Key, str] | None = None
    ) -> tuple[Key, ...]:
        """Send `change`, each step as one batch; return the deletions HAProxy refused
        (still pending). Added servers get `checks` (health-check options), their `ids` and
        `extras` (their service's cookie, slowstart, maxconn),
        as on their config line. Raises Unexpressible when HAProxy refuses a change,
        Unavailable when it does not answer. Servers are added before any is drained, so a
        run that removes one and puts back others (failed members the partition rule keeps)
        never leaves the backend with fewer servers in between."""
        self._add(change.add, checks, ids, extras or {})
        late = [s for s in change.drain if s.key not in self.drained]
        self._expect([f"set server {s.path} state drain" for s in late], _done_or_gone)
        if late:
            self.drained.update(s.key for s in late)
            self.drained_at = time.monotonic()
        if change.drain:
            # Once per run, whatever the number of servers; time since an early drain counts.
            time.sleep(max(0.0, self.drained_at + self.drain_seconds - time.monotonic()))
        self._expect([f"set server {s.path} state maint" for s in change.drain], _done_or_gone)
        pending = self._delete(change.delete)
        commands: list[tuple[str, Callable[[str], bool]]] = []
        for before, after in change.update:
            if (before.addr, before.port) != (after.addr, after.port):
                commands.append((f"set server {after.path} addr {after.addr} port {after.port}", _addr_set))
            if before.weight != after.weight:
                commands.append((f"set weight {after.path} {after.weight}", _done))
            if before.admin != after.admin:
                commands.append((f"set server {after.path} state {after.admin}", _done))
        for (command, ok), reply in zip(commands, self.client.batch([c for c, _ in commands]), strict=True):
            _check(command, reply, ok)
        return pending

    def _delete(self, keys: Sequence[Key]) -> tuple[Key, ...]:
        pending = []
        for key, reply in zip(keys, self.client.batch([f"del server {b}/{n}" for b, n in keys]), strict=True):
            if reply not in ("Server deleted.", "No such server.", "No such backend."):
                # Not a failure: it is in maintenance, gone from the config, and retried later.
                _log.info("haproxy: server deletion deferred", server="/".join(key), reply=reply)
                pending.append(key)
        return tuple(pending)

    def _add(self, servers: Sequence[Server], checks: str, ids: Mapping[Key, int], extras: Mapping[Key, str]) -> None:
        options = f"{checks} {RUNTIME_OPTIONS}"
        adds = [
            f"add server {s.path} {s.address} {_id(ids, s)}weight {s.weight}{extras.get(s.key, '')} {options}"
            for s in servers
        ]
        then: list[tuple[str, Callable[[str], bool]]] = []
        for server, reply in zip(servers, self.client.batch(adds), strict=True):
            if reply.startswith("Already exists a server with the same name"):
                # An earlier deletion was deferred: the server is still there, in maintenance.
                then.append((f"set server {server.path} addr {server.addr} port {server.port}", _addr_set))
                then.append((f"set weight {server.path} {server.weight}", _done))
            elif reply != "New server registered.":
                raise Unexpressible(f"add server {server.path}: {reply}")
        for server in servers:
            then.append((f"enable health {server.path}", _any))
            then.append((f"set server {server.path} state {server.admin}", _done))
        for (command, ok), reply in zip(then, self.client.batch([c for c, _ in then]), strict=True):
            if ok is _any and reply:
                _log.warning("haproxy: enable health refused", command=command, reply=reply)
            _check(command, reply, ok)

    def _expect(self, commands: Sequence[str], ok: Callable[[str], bool]) -> None:
        for command, reply in zip(commands, self.client.batch(commands), strict=True):
            _check(command, reply, ok)

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


def _id(ids: Mapping[Key, int], server: Server) -> str:
    sid = ids.get(server.key)
    return f"id {sid} " if sid else ""


def _done(reply: str) -> bool:
    return reply == ""


def _any(reply: str) -> bool:
    return True


def _done_or_gone(reply: str) -> bool:
    return reply in ("", "No such server.", "No such backend.")


def _addr_set(reply: str) -> bool:
    return "changed from" in reply or "no need to change" in reply


def _check(command: str, reply: str, ok: Callable[[str], bool]) -> None:
    if not ok(reply):
        raise Unexpressible(f"{command}: {reply or '(no reply)'}")


def filter_server_state(text: str, servers: Mapping[str, Server]) -> str:
    """Keep only the `show servers state` lines that agree with the config about to load.

    HAProxy applies a saved server's port (and admin state) over the config's, so a stale
    line could move a server back; a line is kept only when backend, name, address, port
    and weight all match and its maintenance state is the wanted one. HAProxy applies a
    saved weight only when the line's `srv_iweight` equals the config's weight, so that
    field is set to the weight the config gives the server (0 while it drains).
    """
    wanted = {s.key: s for s in servers.values()}
    header, found = rows(text)
    if header is None:
        return ""
    columns = header[2:].split()
    iweight = columns.index("srv_iweight") if "srv_iweight" in columns else None
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
        if iweight is not None:
            fields = line.split()
            fields[iweight] = str(server.config_weight)
            line = " ".join(fields)
        out.append(line)
    return "\n".join(out) + "\n"


def _admin_state(text: str) -> str | None:
    if not text.isdigit():
        return None
    bits = int(text)
    return "maint" if bits & ADMIN_MAINT else "drain" if bits & ADMIN_DRAIN else "ready"
