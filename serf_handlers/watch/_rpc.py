"""A small client for a Serf agent's RPC port: one connection, one reader thread, a Seq table.

The protocol (SERF_RPC.md, checked against Debian's serf 0.9.4): back-to-back msgpack
objects over TCP, no length prefix. A request is a header `{Command, Seq}` and, for some
commands, a body; a reply is a header `{Seq, Error}` and, for some commands, a body, which
the header does not announce: the client must know it from the command, so every Seq in
flight is in the table with what its reply carries. After a `stream` is acknowledged, each
later header with its Seq is followed by one record.

The reader thread only decodes: it completes a waiting call, or puts a record in the inbox,
and never waits for anyone (see _inbox.py). Every socket operation has a timeout: a reply
that does not come within IO_TIMEOUT means the agent is stuck, and the connection is
dropped, as it is for anything the client cannot follow (an unknown Seq, bytes that are
not msgpack): the loop then reconnects and reconciles.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgpack

from ..errors import SerfRPCError
from ._inbox import Inbox, Lost

CONNECT_TIMEOUT = 5.0
IO_TIMEOUT = 10.0  # s: a send, or a call's reply, slower than this: the agent is stuck
_MAX_BUFFER = 64 * 1024 * 1024  # one msgpack object at most (a `members` reply of 5,000 is ~1 MB)
_VERSION = 1  # the only IPC version Serf speaks

# Serf answers these errors before it reads the request, with no body whatever the command.
_NO_BODY_ERRORS = frozenset({"Handshake required", "Authentication required", "Unsupported command"})


class Refused(SerfRPCError):
    """The agent refused the handshake, the auth token or the stream filter: retrying the
    same thing will not help."""


@dataclass(slots=True)
class _Call:
    """A call waiting for its reply."""

    command: str
    body: bool  # its reply carries a body
    stream: bool = False  # a `stream`: acknowledged once, then one record per header
    done: threading.Event = field(default_factory=threading.Event)
    error: str = ""
    reply: object = None
    mark: int = 0  # records the inbox had received when the reply came (see `members`)
    failure: str | None = None  # the connection died first
    sink: Callable[[object], None] | None = None  # a `query`'s records go here, not to the inbox


def parse_rpc_addr(addr: str) -> tuple[str, int]:
    """("host", port) from "HOST:PORT" or "[IPv6]:PORT"; raises SerfRPCError."""
    host, colon, port = addr.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise SerfRPCError(f"rpc-addr: expected HOST:PORT (e.g. 127.0.0.1:7373), got {addr!r}")
    return host, int(port)


class Client:
    """One connection to the agent at `addr`. `open` connects, shakes hands and authenticates;
    records of its stream go to `inbox`, tagged with `generation`, and when the connection
    ends without `close`, a `Lost` item says why. `cancel` set: calls stop waiting."""

    def __init__(self, addr: str, inbox: Inbox, generation: int, cancel: threading.Event | None = None,
                 timeout: float = IO_TIMEOUT) -> None:
        self.addr = addr
        self.generation = generation
        self._inbox = inbox
        self._cancel = cancel or threading.Event()
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()  # the Seq table, the Seq counter and the dead flag
        self._send_lock = threading.Lock()
        self._calls: dict[int, _Call] = {}
        self._seq = 0
        self._dead: str | None = None
        self._closing = False
        self._reader: threading.Thread | None = None
        self._body_for: _Call | None = None  # the reader's state: what the next object is the body of
        self._record_for: _Call | None = None  # ... or the stream whose record it is

    # --- the commands the watch loop uses ------------------------------------------------------

    def open(self, auth: str | None) -> None:
        """Connect, then `handshake` and, with a token, `auth`, each awaited: a command sent
        before auth is answered twice by the agent (SERF_RPC.md)."""
        host, port = parse_rpc_addr(self.addr)
        try:
            self._sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            raise SerfRPCError(f"cannot connect to {self.addr}: {exc.strerror or exc}") from None
        self._sock.settimeout(self._timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = threading.Thread(target=self._read, name=f"serf-rpc-{self.generation}", daemon=True)
        self._reader.start()
        self._call("handshake", {"Version": _VERSION}, refused=True)
        if auth:
            self._call("auth", {"AuthKey": auth}, refused=True)

    def stream(self, types: str) -> None:
        """Subscribe to `types` (Serf's filter); the records go to the inbox."""
        self._call("stream", {"Type": types}, stream=True, refused=True)

    def stats(self) -> object:
        return self._call("stats", body=True).reply

    def members(self) -> tuple[object, int]:
        """The `members` reply, and how many records the inbox had received before it: those
        are older news than this list (the agent wrote them first on this one connection)."""
        call = self._call("members", body=True)
        return call.reply, call.mark

    def respond(self, query_id: int, payload: bytes) -> None:
        """Answer a query of this connection; SerfRPCError says why not (too late, or another
        responder of this node was first)."""
        self._call("respond", {"ID": query_id, "Payload": payload})

    # --- for the benchmarks and tests: drive an agent without a `serf` process per command --

    def event(self, name: str, payload: bytes, coalesce: bool = False) -> None:
        """Send a user event through this agent (`serf event`)."""
        self._call("event", {"Name": name, "Payload": payload, "Coalesce": coalesce})

    def tags(self, tags: dict[str, str], delete: tuple[str, ...] = ()) -> None:
        """Set (and delete) this agent's own tags (`serf tags`)."""
        self._call("tags", {"Tags": tags, "DeleteTags": list(delete)})

    def query(self, name: str, payload: bytes, sink: Callable[[object], None], nodes: Sequence[str] = (),
              timeout: float = 0.0, ack: bool = True) -> None:
        """Send a query through this agent (`serf query`), returning once the agent took it.
        Each record of its answer, `{Type: ack|response|done, From, Payload}`, then goes to
        `sink`, on the reader thread, the last one `done`; ack and response records with an
        empty From are Serf's spurious ones (SERF_RPC.md). `timeout` 0: Serf's default.
        The agent runs one connection's commands one after the other: queries sent on one
        connection never share a Lamport time, which concurrent ones can (see BENCHMARKS §11)."""
        request = {"FilterNodes": list(nodes), "FilterTags": {}, "RequestAck": ack, "RelayFactor": 0,
                   "Timeout": round(timeout * 1e9), "Name": name, "Payload": payload}
        self._call("query", request, stream=True, sink=sink)

    def close(self) -> None:
        """Drop the connection (no `Lost` item); pending calls fail."""
        self._closing = True
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reader's recv at once
            except OSError:
                pass
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(2.0)
        if sock is not None:
            sock.close()
        self._died("closed")

    # --- requests ---------------------------------------------------------------------------

    def _call(self, command: str, request: dict[str, object] | None = None, body: bool = False,
              stream: bool = False, refused: bool = False, sink: Callable[[object], None] | None = None) -> _Call:
        call = _Call(command, body, stream, sink=sink)
        with self._lock:
            if self._dead is not None:
                raise SerfRPCError(f"'{command}': not connected ({self._dead})")
            self._seq += 1
            seq = self._seq  # never reused: a late reply must not match a newer call
            self._calls[seq] = call
        data = msgpack.packb({"Command": command, "Seq": seq}, use_bin_type=True)
        if request is not None:
            data += msgpack.packb(request, use_bin_type=True)
        assert self._sock is not None
        try:
            with self._send_lock:
                self._sock.sendall(data)
        except OSError as exc:
            self._abort(f"sending '{command}' failed: {exc}")
            raise SerfRPCError(f"'{command}': {self._dead}") from None
        self._wait(call)
        if call.failure is not None:
            raise SerfRPCError(f"'{command}': {call.failure}")
        if call.error:
            kind = Refused if refused else SerfRPCError
            raise kind(f"'{command}': {call.error}")
        return call

    def _wait(self, call: _Call) -> None:
        waited = 0.0
        while not call.done.wait(0.1):
            waited += 0.1
            if self._cancel.is_set():
                call.failure = "cancelled"
                return
            if waited >= self._timeout:
                self._abort(f"no reply to '{call.command}' within {self._timeout:g} s")
                call.failure = f"no reply within {self._timeout:g} s"
                return

    def _abort(self, reason: str) -> None:
        """Give the connection up: the reader ends, and the loop hears of it (`Lost`)."""
        with self._lock:
            if self._dead is None:
                self._dead = reason
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # --- the reader thread ------------------------------------------------------------------

    def _read(self) -> None:
        assert self._sock is not None
        unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape", max_buffer_size=_MAX_BUFFER)
        reason = "the agent closed the connection"
        try:
            while True:
                try:
                    data = self._sock.recv(65536)
                except TimeoutError:
                    continue  # a quiet stream is normal; close() wakes us with a shutdown
                if not data:
                    break
                unpacker.feed(data)
                for obj in unpacker:
                    self._receive(obj)
        except (OSError, ValueError, _ProtocolError) as exc:  # msgpack's errors are ValueErrors
            reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, _ProtocolError) else str(exc)
        self._died(reason)
        if not self._closing:
            self._inbox.put_control(Lost(self.generation, self._dead or reason))

    def _receive(self, obj: object) -> None:
        if self._body_for is not None:
            call = self._body_for
            self._body_for = None
            call.reply, call.mark = obj, self._inbox.received
            call.done.set()
            return
        if self._record_for is not None:
            stream, self._record_for = self._record_for, None
            if stream.sink is None:
                self._inbox.put_record(self.generation, obj)
                return
            stream.sink(obj)
            if isinstance(obj, dict) and obj.get("Type") == "done":
                with self._lock:  # the agent sends nothing more on this Seq
                    self._calls = {seq: c for seq, c in self._calls.items() if c is not stream}
            return
        if not isinstance(obj, dict) or not isinstance(obj.get("Seq"), int):
            raise _ProtocolError(f"expected a reply header, got {type(obj).__name__}")
        seq, error = obj["Seq"], obj.get("Error") or ""
        if not isinstance(error, str):
            raise _ProtocolError(f"reply header for Seq {seq}: Error is {type(error).__name__}")
        with self._lock:
            waiting = self._calls.get(seq)
            if waiting is None:
                raise _ProtocolError(f"a reply for Seq {seq}, which no call is waiting for")
            call = waiting
            if call.stream and call.done.is_set():
                self._record_for = call  # an acknowledged stream: one record follows
                return
            if not call.stream or error:
                del self._calls[seq]
        call.error = error
        if call.body and error not in _NO_BODY_ERRORS:
            self._body_for = call
            return
        call.mark = self._inbox.received
        call.done.set()

    def _died(self, reason: str) -> None:
        """Mark the connection dead (the first reason stays) and fail every pending call."""
        with self._lock:
            self._dead = self._dead or reason
            calls, self._calls = list(self._calls.values()), {}
        for call in calls:
            if not call.done.is_set():
                call.failure = self._dead
                call.done.set()


class _ProtocolError(Exception):
    """What the agent sent cannot be followed: the connection is dropped."""
