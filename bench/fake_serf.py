"""A stand-in for a Serf agent's RPC port, for what real agents cannot reach on 2 cores.

Section 7 found that about 200 real serf agents are the most this machine holds (the load
average reached 455 while they started), so a watcher facing 5,000 members is measured
against this server instead: it speaks the handshake, auth, stream, stop, members, stats,
respond, event, tags and query commands exactly as ../shared/SERF_RPC.md describes them
(msgpack objects back to back, a header `{Error, Seq}` then a body for `members` and
`stats` only, records on the stream's Seq, a query's ack, response and done records on the
query's Seq) and answers `members` with whatever list it is given. The member maps have
the real agent's fields and types (checked against Debian's serf 0.9.4 for two agents:
`Addr` as 4 raw bytes, `Port` an int, `Tags` a map of strings, the protocol and delegate
versions), so the watcher parses and validates them exactly as a real agent's.

Loopback only; every socket has a timeout; `stop` closes every connection (a real agent's
shutdown: plain EOF).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Mapping, Sequence

import msgpack

TIMEOUT = 10.0  # s: any send, and the wait between a client's requests before we look again
# The requests that carry a body (SERF_RPC.md, section 2); `members`, `stats`, `leave` do not.
_REQUEST_BODY = frozenset({"handshake", "auth", "stream", "stop", "respond", "event", "tags", "force-leave",
                           "members-filtered", "join", "query", "monitor"})


def member(name: str, addr: str, tags: Mapping[str, str], status: str = "alive", port: int = 7946) -> dict[str, object]:
    """One `Members` entry as the real agent encodes it (keys in the agent's order)."""
    return {"Addr": socket.inet_aton(addr), "DelegateCur": 5, "DelegateMax": 5, "DelegateMin": 2, "Name": name,
            "Port": port, "ProtocolCur": 2, "ProtocolMax": 5, "ProtocolMin": 1, "Status": status, "Tags": dict(tags)}


def loopback_addr(index: int) -> str:
    """A distinct 127/8 address per member (loopback: health checks never leave the machine)."""
    return f"127.1.{index // 250}.{index % 250 + 1}"


class _Conn:
    """One client connection: its streams (Seq -> filter) and a lock around its sends."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.streams: dict[int, set[str]] = {}
        self.shaken = False

    def send(self, *objects: object) -> None:
        data = b"".join(msgpack.packb(o, use_bin_type=True) for o in objects)
        with self.lock:
            self.sock.sendall(data)


class FakeSerf:
    """A Serf RPC server on 127.0.0.1 answering `members` with `members`; `emit` streams a record."""

    def __init__(self, members: Sequence[Mapping[str, object]], name: str = "lb",
                 tags: Mapping[str, str] | None = None, auth: str | None = None) -> None:
        self.members = list(members)
        self.name, self.tags, self.auth = name, dict(tags or {"role": "lb"}), auth
        self.members_asked: list[float] = []  # monotonic times of each `members` request
        self.events: list[tuple[str, object, bool]] = []  # user events sent through us: (Name, Payload, Coalesce)
        self.queries: list[dict[str, object]] = []  # query requests sent through us
        self.answers: dict[str, bytes] = {}  # node -> its answer to every query: an ack, a response
        self._conns: list[_Conn] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)  # so `stop` is noticed
        self.addr = f"127.0.0.1:{self._server.getsockname()[1]}"
        self._stopped = threading.Event()
        self._threads = [threading.Thread(target=self._accept, name="fake-serf", daemon=True)]
        self._threads[0].start()

    def emit(self, record: Mapping[str, object]) -> int:
        """Send `record` on every stream whose filter takes its Event; how many got it."""
        kind = str(record.get("Event"))
        sent = 0
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            for seq, types in list(conn.streams.items()):
                if "*" in types or kind in types or (kind == "query" and f"query:{record.get('Name')}" in types):
                    try:
                        conn.send({"Error": "", "Seq": seq}, dict(record))
                        sent += 1
                    except OSError:
                        pass
        return sent

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.sock.close()
        for thread in self._threads:
            thread.join(2.0)
        self._server.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, _peer = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(TIMEOUT)
            conn = _Conn(sock)
            with self._lock:
                self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), name="fake-serf-conn", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: _Conn) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        pending: dict[str, object] | None = None  # a header whose body is still to come
        try:
            while not self._stopped.is_set():
                try:
                    data = conn.sock.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                unpacker.feed(data)
                for obj in unpacker:
                    if pending is None and _has_body(obj):
                        pending = obj
                        continue
                    header, body = (pending, obj) if pending is not None else (obj, None)
                    pending = None
                    if not self._answer(conn, header, body):
                        return
        except OSError:
            return
        finally:
            conn.sock.close()

    def _answer(self, conn: _Conn, header: object, body: object) -> bool:
        """Reply to one request; False: the connection is closed, as the agent closes it."""
        if not isinstance(header, dict):
            return False
        command, seq = header.get("Command"), header.get("Seq")
        if not conn.shaken and command != "handshake":
            conn.send({"Error": "Handshake required", "Seq": seq})
            return False
        request = body if isinstance(body, dict) else {}
        if command == "handshake":
            conn.shaken = request.get("Version") == 1
            conn.send({"Error": "" if conn.shaken else "Unsupported version", "Seq": seq})
        elif command == "auth":
            conn.send({"Error": "" if request.get("AuthKey") == self.auth else "Invalid authentication token",
                       "Seq": seq})
        elif command == "stream":
            conn.streams[int(str(seq))] = set(str(request.get("Type") or "*").split(","))
            conn.send({"Error": "", "Seq": seq})
        elif command == "stop":
            conn.streams.pop(int(str(request.get("Stop"))), None)
            conn.send({"Error": "", "Seq": seq})
        elif command == "members":
            self.members_asked.append(time.monotonic())
            conn.send({"Error": "", "Seq": seq}, {"Members": list(self.members)})
        elif command == "stats":
            conn.send({"Error": "", "Seq": seq}, {"agent": {"name": self.name}, "tags": self.tags,
                                                  "serf": {"members": str(len(self.members))}})
        elif command == "event":
            self.events.append((str(request.get("Name")), request.get("Payload"), bool(request.get("Coalesce"))))
            conn.send({"Error": "", "Seq": seq})
        elif command == "tags":
            self.tags.update(request.get("Tags") or {})
            for key in request.get("DeleteTags") or ():
                self.tags.pop(key, None)
            conn.send({"Error": "", "Seq": seq})
        elif command == "query":
            self.queries.append(dict(request))
            conn.send({"Error": "", "Seq": seq})
            for kind in ("ack", "response"):
                for node, payload in self.answers.items():
                    conn.send({"Error": "", "Seq": seq},
                              {"Type": kind, "From": node, "Payload": payload if kind == "response" else None})
            conn.send({"Error": "", "Seq": seq}, {"Type": "done", "From": "", "Payload": None})
        elif command == "respond":
            conn.send({"Error": "No pending queries matching ID", "Seq": seq})
        else:
            conn.send({"Error": "Unsupported command", "Seq": seq})
            return False
        return True


def _has_body(obj: object) -> bool:
    """A request header whose command sends a body (the agent knows it from the command too)."""
    return isinstance(obj, dict) and obj.get("Command") in _REQUEST_BODY
