"""The haproxy handler's runtime API (handlers/haproxy/_runtime.py) against a fake admin
socket that answers as HAProxy 2.6 does: servers added, moved, re-weighted and removed live,
refused deletes retried, the reload as the fallback, and server state saved before it."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from serf_handlers import _log
from serf_handlers.dispatch import Drift
from serf_handlers.errors import ConfigError
from serf_handlers.events import Member
from serf_handlers.handlers.haproxy import _runtime, _state
from serf_handlers.handlers.haproxy._options import parse
from serf_handlers.handlers.haproxy._runtime import filter_server_state
from serf_handlers.handlers.haproxy._servers import node_id
from tests.test_haproxy_handler import Env, web

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")


@pytest.fixture(autouse=True)
def fresh_log() -> None:
    """The log writes to whatever stderr is now, not a stream an earlier test closed."""
    _log.configure()


# --- the runtime API, against a fake admin socket --------------------------------------


HANG = 1.0  # seconds a hanging connection stays silent


class FakeAdmin:
    """Answers HAProxy 2.6 runtime API commands the way the real one does, for a few backends."""

    def __init__(self, path: str, backends: tuple[str, ...] = ("web",)) -> None:
        self.path = path
        self.commands: list[str] = []
        self.connections = 0
        self.backends = set(backends)
        self.static: set[str] = set()  # backends with a non-dynamic balance algorithm
        self.busy: set[str] = set()  # servers whose deletion is refused (connections open)
        self.servers: dict[str, dict[str, str]] = {}
        self.hang_on: str | None = None  # a command this HAProxy never answers (starved) ...
        self.hangs = 0  # ... on this many connections
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            if self.hangs:  # a hanging connection must not hold up the client's next try
                threading.Thread(target=self._connection, args=(conn,), daemon=True).start()
            else:
                self._connection(conn)

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            # Two files: a text file's write drops what it had read ahead.
            self.session(conn.makefile("r", encoding="ascii", newline="\n"), conn.makefile("w", encoding="ascii"))

    def session(self, lines: TextIO, out: TextIO) -> None:
        """As HAProxy: one command, then close; or after "prompt" (interactive mode), a
        prompt, then each command's reply as soon as its line arrives, until "quit"."""
        first = lines.readline().rstrip("\n")
        if first != "prompt":
            if self._hang(first, lines):
                return
            out.write(self.answer(first.strip()))
            out.flush()
            return
        out.write("\n> ")
        out.flush()
        for line in lines:
            if line.rstrip("\n") == "quit":
                return
            if self._hang(line, lines):
                return
            out.write(self.answer(line.rstrip("\n")) + "\n> ")
            out.flush()

    def _hang(self, command: str, lines: TextIO) -> bool:
        if not (self.hangs and self.hang_on is not None and command.startswith(self.hang_on)):
            return False
        self.hangs -= 1
        time.sleep(HANG)  # silent, longer than the client waits (`quick_timeouts`)
        return True

    def answer(self, command: str) -> str:
        self.commands.append(command)
        words = command.split()
        target = words[2] if len(words) > 2 else ""
        server = self.servers.get(target)
        if command == "show servers state":
            rows = [
                f"1 {k.split('/')[0]} 1 {k.split('/')[1]} {s['addr']} 2 {s['admin']} {s['weight']} {s['weight']} 1 "
                f"6 3 4 6 0 0 0 - {s['port']} - 0 0 - - 0"
                for k, s in self.servers.items()
            ]
            header = (
                "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight "
                "srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state "
                "srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl "
                "srv_check_port srv_check_addr srv_agent_addr srv_agent_port"
            )
            return "\n".join(["1", header, *rows]) + "\n\n"
        if words[:2] == ["add", "server"]:
            backend = target.split("/")[0]
            if backend not in self.backends:
                return "No such backend.\n"
            if backend in self.static:
                return "Backend must use a dynamic load balancing to support dynamic servers.\n"
            if server is not None:
                return "Already exists a server with the same name in backend.\n"
            addr, _, port = words[3].rpartition(":")
            weight = words[words.index("weight") + 1]
            self.servers[target] = {"addr": addr.strip("[]"), "port": port, "weight": weight, "admin": "1"}
            return "New server registered.\n\n"
        if server is None:
            return "No such server.\n\n"
        if words[:2] == ["enable", "health"]:
            return "\n"
        if words[:2] == ["set", "weight"]:
            server["weight"] = words[3]
            return "\n"
        if words[:2] == ["set", "server"] and words[3] == "state":
            server["admin"] = {"ready": "0", "drain": "8", "maint": "1"}[words[4]]
            return "\n"
        if words[:2] == ["set", "server"] and words[3] == "addr":
            server.update(addr=words[4], port=words[6])
            return f"IP changed from 'x' to '{words[4]}', port changed from 'y' to '{words[6]}'\n\n"
        if words[:2] == ["del", "server"]:
            if server["admin"] != "1":
                return "Only servers in maintenance mode can be deleted.\n"
            if target in self.busy:
                return "Server still has connections attached to it, cannot remove it.\n"
            del self.servers[target]
            return "\n\nServer deleted.\n"
        return "Unknown command\n"

    def take(self) -> list[str]:
        """The commands that changed something since the last take (reads left out)."""
        self.connections = 0
        commands, self.commands = self.commands, []
        return [c for c in commands if c != "show servers state"]


@pytest.fixture
def live(short_dir: Path) -> Iterator[tuple[Env, FakeAdmin]]:
    admin = FakeAdmin(str(short_dir / "admin.sock"), backends=("web", "api"))
    try:
        env = Env(short_dir, socket=admin.path, vars={"bind": "127.0.0.1:18080", "socket": admin.path})
        env.handler.render(write=True)  # as an image does before starting HAProxy
        yield env, admin
    finally:
        admin.close()


ADD = "check inter 500ms fall 1 rise 1 pool-max-conn -1 pool-purge-delay 5s"


def test_runtime_add_and_remove_without_reload(live: tuple[Env, FakeAdmin]) -> None:
    env, admin = live
    env.event("member-join", web("web1", 8081), web("web2", 8082, addr="::1", weight="4"))
    connections = admin.connections
    # Every server is added (in maintenance) before any is enabled: one batch per step.
    assert admin.take() == [
        f"add server web/web1 127.0.0.1:8081 id {node_id('web1')} weight 1 {ADD}",
        f"add server web/web2 [::1]:8082 id {node_id('web2')} weight 4 {ADD}",
        "enable health web/web1",
        "set server web/web1 state ready",
        "enable health web/web2",
        "set server web/web2 state ready",
    ]
    assert connections == 4  # read HAProxy's servers, add them, enable them, read again for the state file
    assert len(env.server_lines()) == 2  # the config is rewritten so a later reload keeps them
    env.event("member-leave", web("web1", 8081))
    assert admin.take() == ["set server web/web1 state drain", "set server web/web1 state maint", "del server web/web1"]
    assert env.reload_count() == 0
    before = env.snapshot()
    env.event("member-leave", web("web1", 8081))
    env.event("member-update", web("web2", 8082, addr="::1", weight="4"))
    assert admin.take() == [] and env.snapshot() == before


def test_runtime_updates_move_and_reweight(live: tuple[Env, FakeAdmin]) -> None:
    env, admin = live
    env.event("member-join", web("web1", 8081))
    admin.take()
    env.event("member-update", web("web1", 9091, weight="9"))
    assert admin.take() == ["set server web/web1 addr 127.0.0.1 port 9091", "set weight web/web1 9"]
    assert admin.servers["web/web1"]["port"] == "9091"
    assert env.reload_count() == 0


def test_servers_put_back_are_added_before_the_leaving_one_drains(live: tuple[Env, FakeAdmin]) -> None:
    """Adds go first: web2 and web3 failed and were removed (3, then 2 of 4 alive: allowed by
    min_alive 0.5); web4 then leaves, 1 of 3 alive, so the run puts web2 and web3 back and
    removes web4. HAProxy must never serve from web1 alone in between (found by
    tests/integration/test_network_faults.py, case f: the early drain of web4 came first)."""
    env, admin = live
    env.event("member-join", *(web(f"web{i}", 8080 + i) for i in range(1, 5)))
    env.event("member-failed", web("web2", 8082))
    env.event("member-failed", web("web3", 8083))
    assert set(admin.servers) == {"web/web1", "web/web4"}
    admin.take()
    env.event("member-leave", web("web4", 8084))
    commands = admin.take()
    put_back = commands.index("set server web/web3 state ready")
    drained = commands.index("set server web/web4 state drain")
    assert put_back < drained, commands
    assert set(admin.servers) == {"web/web1", "web/web2", "web/web3"}
    state = _state.load(str(env.state))  # the state says what HAProxy has: kept failed ones applied
    assert set(state.servers) == {"web1", "web2", "web3"} and state.applied == state.servers
    assert not isinstance(env.handler.status(), Drift)  # `serf-handle status` would exit 0
    assert env.reload_count() == 0


def test_refused_delete_is_pending_retried_and_revived(live: tuple[Env, FakeAdmin]) -> None:
    env, admin = live
    env.event("member-join", web("web1", 8081), web("web2", 8082))
    admin.busy.add("web/web1")
    env.event("member-leave", web("web1", 8081))  # not a failure
    assert _state.load(str(env.state)).pending == (("web", "web1"),)
    assert "web1" not in env.config.read_text()
    assert "deleting" in env.handler.status()
    admin.take()
    env.event("member-update", web("web2", 8082))  # nothing else to do: the deletion is retried
    assert admin.take() == ["del server web/web1"]
    # It comes back while its deletion is still pending: revive it (HAProxy still has it,
    # in maintenance: move it and make it ready).
    env.event("member-join", web("web1", 8085))
    assert admin.take() == ["set server web/web1 addr 127.0.0.1 port 8085", "set server web/web1 state ready"]
    assert _state.load(str(env.state)).pending == ()
    assert admin.servers["web/web1"] == {"addr": "127.0.0.1", "port": "8085", "weight": "1", "admin": "0"}
    admin.busy.clear()
    env.event("member-leave", web("web1", 8085))
    assert "web/web1" not in admin.servers and env.reload_count() == 0


def test_on_failed_maint_through_the_runtime_api(short_dir: Path) -> None:
    admin = FakeAdmin(str(short_dir / "admin.sock"))
    try:
        env = Env(short_dir, socket=admin.path, on_failed="maint")
        env.handler.render(write=True)
        env.event("member-join", web("web0", 8080), web("web1", 8081))  # half the backend stays alive
        admin.take()
        env.event("member-failed", web("web1", 8081))
        assert admin.take() == ["set server web/web1 state maint"]
        env.event("member-join", web("web1", 8081))
        assert admin.take() == ["set server web/web1 state ready"]
        assert env.reload_count() == 0
    finally:
        admin.close()


@pytest.mark.parametrize(
    ("setup", "members"),
    [
        pytest.param(lambda a: None, [web("n1", 80, backend="newbackend")], id="new backend"),
        pytest.param(lambda a: a.static.add("web"), [web("n1", 80)], id="non-dynamic balance algorithm"),
        pytest.param(lambda a: a.backends.discard("web"), [web("n1", 80)], id="HAProxy lacks the backend"),
        pytest.param(lambda a: a.close(), [web("n1", 80)], id="socket does not answer"),
    ],
)
def test_reload_is_the_fallback(live: tuple[Env, FakeAdmin], setup, members: list[Member]) -> None:
    env, admin = live
    admin.servers["web/old"] = {"addr": "10.0.0.1", "port": "80", "weight": "1", "admin": "0"}
    setup(admin)
    env.event("member-join", *members)
    assert env.reload_count() == 1
    assert len(env.server_lines()) == 1
    assert _state.load(str(env.state)).applied == _state.load(str(env.state)).servers


def test_server_state_is_saved_before_a_reload_without_stale_lines(live: tuple[Env, FakeAdmin]) -> None:
    env, admin = live
    env.event("member-join", web("web1", 8081), web("web2", 8082))
    admin.servers["web/web2"]["port"] = "1"  # HAProxy disagrees: that line must not survive
    env.event("member-join", web("a1", 9000, backend="newbackend"))
    assert env.reload_count() == 1
    saved = (env.dir / "haproxy.cfg.state").read_text().splitlines()
    assert saved[0] == "1" and saved[1].startswith("# be_id")
    assert [line.split()[3] for line in saved[2:]] == ["web1"]


def test_socket_without_reload_command_is_a_config_error(short_dir: Path) -> None:
    with pytest.raises(ConfigError, match="socket: needs `reload` as well"):
        Env(short_dir, socket=str(short_dir / "admin.sock"), reload=None)


def test_filter_server_state_keeps_only_agreeing_lines() -> None:
    from serf_handlers.handlers.haproxy._servers import Server

    header = "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_port"
    text = "\n".join(
        [
            "1",
            header,
            "3 web 1 ok 10.0.0.1 2 0 1 80",
            "3 web 2 moved 10.0.0.2 2 0 1 81",
            "3 web 3 drained 10.0.0.3 2 8 1 80",
            "3 web 4 gone 10.0.0.4 2 0 1 80",
            "3 web 5 keptmaint 10.0.0.5 2 1 1 80",
            "garbage",
        ]
    )
    servers = {
        n: Server(n, n, addr, 80, 1, "web", {}, maint=(n == "keptmaint"))
        for n, addr in [("ok", "10.0.0.1"), ("moved", "10.0.0.2"), ("drained", "10.0.0.3"), ("keptmaint", "10.0.0.5")]
    }
    kept = filter_server_state(text, servers).splitlines()
    assert kept == ["1", header, "3 web 1 ok 10.0.0.1 2 0 1 80", "3 web 5 keptmaint 10.0.0.5 2 1 1 80"]


def test_the_state_tag_goes_through_the_runtime_api_without_a_reload(live: tuple[Env, FakeAdmin]) -> None:
    env, admin = live
    env.event("member-join", web("web1", 8081), web("web2", 8082))
    admin.take()
    for state, admin_bits in [("drain", "8"), ("maint", "1"), ("ready", "0")]:
        env.event("member-update", web("web1", 8081, state=state))
        assert admin.take() == [f"set server web/web1 state {state}"]
        assert admin.servers["web/web1"]["admin"] == admin_bits
    # A new member that arrives drained is added, then drained: it never takes traffic.
    env.event("member-join", web("web3", 8083, state="drain"))
    assert admin.take() == [f"add server web/web3 127.0.0.1:8083 id {node_id('web3')} weight 1 {ADD}",
                            "enable health web/web3",
                            "set server web/web3 state drain"]
    assert env.reload_count() == 0


def test_filter_server_state_keeps_a_drained_server_drained() -> None:
    from serf_handlers.handlers.haproxy._servers import Server

    header = "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_port"
    text = f"1\n{header}\n3 web 1 d 10.0.0.1 2 8 5 80\n3 web 2 r 10.0.0.2 2 8 1 80\n"
    servers = {
        "d": Server("d", "d", "10.0.0.1", 80, 5, "web", {}, drain=True),  # its line has weight 5, not 0
        "r": Server("r", "r", "10.0.0.2", 80, 1, "web", {}),  # drained by hand: not brought back
    }
    assert filter_server_state(text, servers).splitlines() == ["1", header, "3 web 1 d 10.0.0.1 2 8 5 80"]


# --- a slow or starved admin socket -------------------------------------------------------


@pytest.fixture
def quick_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_runtime, "TIMEOUT", 0.3)
    monkeypatch.setattr(_runtime, "BACKOFF", (0.01,))


def test_a_batch_longer_than_a_chunk_goes_on_one_connection_in_order(live: tuple[Env, FakeAdmin]) -> None:
    _env, admin = live
    n = 2 * _runtime.CHUNK + 50
    client = _runtime.Client(admin.path)
    adds = [f"add server web/s{i} 10.0.{i >> 8}.{i & 255}:80 weight 1" for i in range(n)]
    assert client.batch(adds) == ["New server registered."] * n
    weights = [f"set weight web/s{i} {i % 7 + 1}" for i in range(n)]
    assert client.batch([*weights, "set weight web/nosuch 2"]) == [""] * n + ["No such server."]
    assert admin.connections == 2 and client.sent == 2 * n + 1
    assert [admin.servers[f"web/s{i}"]["weight"] for i in range(n)] == [str(i % 7 + 1) for i in range(n)]


def test_a_command_that_gets_no_answer_is_tried_again(live: tuple[Env, FakeAdmin], quick_timeouts: None) -> None:
    env, admin = live
    admin.hang_on, admin.hangs = "add server", _runtime.ATTEMPTS - 1
    env.event("member-join", web("web1", 8081))
    assert admin.servers["web/web1"]["admin"] == "0" and admin.hangs == 0
    assert env.reload_count() == 0


def test_a_socket_that_stops_answering_mid_change_fails_without_a_reload_and_the_next_run_finishes(
    live: tuple[Env, FakeAdmin], quick_timeouts: None
) -> None:
    # HAProxy answered (its servers were read), then stopped answering: starved, not down.
    # No reload (it would only add load, and it is what used to get stuck: a failed reload
    # left a config file HAProxy had not loaded, so every later run demanded a reload).
    env, admin = live
    env.event("member-join", web("web1", 8081))
    before = env.config.read_bytes()
    admin.hang_on, admin.hangs = "add server", _runtime.ATTEMPTS
    with pytest.raises(_runtime.Unavailable, match="answered earlier in this run; not reloading"):
        env.event("member-join", web("web2", 8082))
    assert env.reload_count() == 0
    assert env.config.read_bytes() == before  # what HAProxy runs, so the runtime API stays the way
    state = _state.load(str(env.state))
    assert set(state.servers) == {"web1", "web2"} and state.applied is not None and set(state.applied) == {"web1"}
    # The next event (or the periodic reconcile) finishes through the runtime API.
    env.event("member-update", web("web1", 8081))
    assert set(admin.servers) == {"web/web1", "web/web2"} and admin.servers["web/web2"]["admin"] == "0"
    assert env.reload_count() == 0
    assert "server web2 127.0.0.1:8082" in env.config.read_text()


# --- a change of many servers: a reload costs less -----------------------------------------


LIMIT = parse().reload_above  # the default: 250 servers


def many(count: int, port: int = 9000) -> list[Member]:
    return [web(f"n{i:04d}", port, addr=f"10.1.{i >> 8}.{i & 255}") for i in range(count)]


def test_a_change_of_many_servers_reloads_instead_and_a_few_go_through_the_runtime_api(
    live: tuple[Env, FakeAdmin],
) -> None:
    env, admin = live
    env.event("member-join", *many(LIMIT))  # at the limit: the runtime API
    assert env.reload_count() == 0 and len(admin.servers) == LIMIT
    admin.take()
    env.event("member-join", *many(2 * LIMIT + 1))  # above it: one reload, no commands
    assert env.reload_count() == 1
    assert admin.take() == []
    assert len(env.server_lines()) == 2 * LIMIT + 1


def test_when_that_reload_fails_the_runtime_api_makes_the_change(short_dir: Path) -> None:
    admin = FakeAdmin(str(short_dir / "admin.sock"))
    try:
        env = Env(short_dir, socket=admin.path, reload=["false"],
                  vars={"bind": "127.0.0.1:18080", "socket": admin.path})
        env.handler.render(write=True)
        env.event("member-join", *many(LIMIT + 1))
        assert len(admin.servers) == LIMIT + 1
        assert all(server["admin"] == "0" for server in admin.servers.values())
    finally:
        admin.close()


@pytest.mark.parametrize(
    ("reload_above", "reloads"),
    [
        pytest.param(10, 1, id="a lower limit: 11 servers are one reload"),
        pytest.param(1_000_000, 0, id="never: always the runtime API"),
    ],
)
def test_reload_above_is_the_operators_choice(short_dir: Path, reload_above: int, reloads: int) -> None:
    admin = FakeAdmin(str(short_dir / "admin.sock"))
    try:
        env = Env(short_dir, socket=admin.path, reload_above=reload_above,
                  vars={"bind": "127.0.0.1:18080", "socket": admin.path})
        env.handler.render(write=True)
        env.event("member-join", *many(11))
        assert env.reload_count() == reloads
        assert len(env.server_lines()) == 11
    finally:
        admin.close()
