"""The haproxy handler end to end, without HAProxy running: events to state, config and reloads
(a fake reload command that counts), and the runtime API against a fake admin socket."""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import sys
import threading
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import Iterator

import pytest

from serf_handlers import _log, cli
from serf_handlers.errors import ConfigError, HandlerError
from serf_handlers.events import Member, MemberEvent, Node, Query
from serf_handlers.handlers.haproxy import HAProxyHandler, _state
from serf_handlers.handlers.haproxy._runtime import filter_server_state

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")


class Env:
    """A handler's files in one directory, and a reload command that only counts."""

    def __init__(self, tmp_path: Path, **options: object) -> None:
        self.dir = tmp_path
        self.config = tmp_path / "haproxy.cfg"
        self.state = tmp_path / "state.json"
        self.reloads = tmp_path / "reloads"
        options.setdefault("vars", {"bind": "127.0.0.1:18080", "socket": str(tmp_path / "admin.sock")})
        options.setdefault("reload", reload_argv(self.reloads))
        self.handler = HAProxyHandler(config=str(self.config), state=str(self.state), **options)

    def event(self, kind: str, *members: Member) -> None:
        self.handler(MemberEvent(kind, members, Node("lb", "lb")))  # type: ignore[arg-type]

    def reload_count(self) -> int:
        return len(self.reloads.read_text().splitlines()) if self.reloads.exists() else 0

    def servers(self) -> dict[str, tuple[str, int, str]]:
        return {n: (s.addr, s.port, s.backend) for n, s in _state.load(str(self.state)).servers.items()}

    def server_lines(self) -> list[str]:
        return [line.strip() for line in self.config.read_text().splitlines() if line.strip().startswith("server ")]

    def snapshot(self) -> tuple[object, ...]:
        """Everything a no-op must leave alone: the files' inodes, times and bytes, the reloads."""
        files = [p for p in (self.config, self.state) if p.exists()]
        return tuple((p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in files) + (self.reload_count(),)


def reload_argv(counter: Path) -> list[str]:
    return [sys.executable, "-c", "import sys; open(sys.argv[1], 'a').write('reload\\n')", str(counter)]


def web(
    name: str, port: int | None = None, addr: str = "127.0.0.1", tags: dict[str, str] | None = None, **more: str
) -> Member:
    tags = {"role": "web", **(tags or {}), **more}
    if port is not None:
        tags["port"] = str(port)
    return Member(name, addr, "web", MappingProxyType(tags))


@pytest.fixture(autouse=True)
def fresh_log() -> None:
    """The log writes to whatever stderr is now, not a stream an earlier test closed."""
    _log.configure()


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


# --- events, diffing, idempotence ------------------------------------------------------


def test_join_installs_a_valid_config_and_reloads_once(env: Env) -> None:
    env.event("member-join", web("web1", 8081), web("web2", 8082))
    assert env.server_lines() == [
        "server web1 127.0.0.1:8081 weight 1 check inter 500ms fall 1 rise 1",
        "server web2 127.0.0.1:8082 weight 1 check inter 500ms fall 1 rise 1",
    ]
    assert env.reload_count() == 1
    assert env.servers() == {"web1": ("127.0.0.1", 8081, "web"), "web2": ("127.0.0.1", 8082, "web")}
    assert sorted(os.listdir(env.dir)) == ["haproxy.cfg", "reloads", "state.json", "state.json.lock"]


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([("member-join", [web("web1", 8081)])], id="join"),
        pytest.param([("member-update", [web("web1", 8081)])], id="stale update"),
        pytest.param([("member-join", [web("web1", 8081)]), ("member-leave", [web("web1", 8081)])], id="leave"),
        pytest.param([("member-failed", [web("web1", 8081)])], id="failed of an unknown node"),
        pytest.param([("member-reap", [web("gone")])], id="reap of an unknown node"),
    ],
)
def test_same_event_twice_writes_and_reloads_nothing(env: Env, events: list[tuple[str, list[Member]]]) -> None:
    env.event("member-join", web("web0", 8080))
    for kind, members in events:
        env.event(kind, *members)
    before = env.snapshot()
    kind, members = events[-1]
    env.event(kind, *members)
    env.event(kind, *members)
    assert env.snapshot() == before


def test_leave_failed_and_reap_remove(env: Env) -> None:
    env.event("member-join", web("web1", 8081), web("web2", 8082), web("web3", 8083))
    env.event("member-leave", web("web1", 8081))
    env.event("member-failed", web("web2", 8082))
    assert list(env.servers()) == ["web3"]
    env.event("member-reap", web("web3", 8083))
    assert env.servers() == {}
    assert env.server_lines() == []
    assert "\nbackend web\n" in env.config.read_text()  # the empty backend stays, valid
    assert env.reload_count() == 4


def test_on_failed_maint_keeps_the_server_disabled_until_it_rejoins(tmp_path: Path) -> None:
    env = Env(tmp_path, on_failed="maint")
    env.event("member-join", web("web1", 8081))
    env.event("member-failed", web("web1", 8081))
    assert env.server_lines() == ["server web1 127.0.0.1:8081 weight 1 check inter 500ms fall 1 rise 1 disabled"]
    env.event("member-join", web("web1", 8081))
    assert env.server_lines() == ["server web1 127.0.0.1:8081 weight 1 check inter 500ms fall 1 rise 1"]
    env.event("member-failed", web("web1", 8081))
    env.event("member-reap", web("web1", 8081))
    assert env.server_lines() == []


def test_update_moves_a_server_and_tag_only_changes_cost_nothing(env: Env) -> None:
    env.event("member-join", web("web1", 8081))
    env.event("member-update", web("web1", 9091, addr="127.0.0.2", weight="7"))
    assert env.server_lines() == ["server web1 127.0.0.2:9091 weight 7 check inter 500ms fall 1 rise 1"]
    assert env.reload_count() == 2
    config = env.config.read_bytes()
    env.event("member-update", web("web1", 9091, addr="127.0.0.2", weight="7", dc="east"))
    assert env.config.read_bytes() == config and env.reload_count() == 2  # the template does not use tags
    assert _state.load(str(env.state)).servers["web1"].tags["dc"] == "east"


def test_backend_tag_makes_a_routed_backend(env: Env) -> None:
    env.event("member-join", web("web1", 8081), web("api1", 9000, backend="api.local"))
    text = env.config.read_text()
    assert "use_backend api.local if { req.hdr(host),field(1,:),lower -m str api.local }" in text
    assert "backend api.local\n    server api1 127.0.0.1:9000" in text


def test_a_bad_member_is_skipped_by_name_and_the_rest_still_apply(env: Env) -> None:
    env.event("member-join", web("web1", 8081))
    with pytest.raises(HandlerError, match=r"1 member\(s\) skipped: member 'evil\\nnode': tag port='80 backup'"):
        env.event("member-join", web("web2", 8082), web("evil\nnode", tags={"port": "80 backup"}))
    assert set(env.servers()) == {"web1", "web2"}
    # A bad update keeps the last good form of that server.
    with pytest.raises(HandlerError, match="web1"):
        env.event("member-update", web("web1", tags={"weight": "1000"}))
    assert env.servers()["web1"] == ("127.0.0.1", 8081, "web")


def test_hostile_node_name_is_served_under_a_safe_name(env: Env) -> None:
    env.event("member-join", web("web 1\n    server evil 6.6.6.6:80", 8081))
    (line,) = env.server_lines()
    assert line.startswith("server web_1_____server_evil_6.6.6.6_80--")
    assert line.endswith(" 127.0.0.1:8081 weight 1 check inter 500ms fall 1 rise 1")


def test_events_for_other_queries_and_user_events_are_ignored(env: Env) -> None:
    assert env.handler(Query("other", 1, b"")) is None
    assert not env.state.exists()


# --- validation failure, through the CLI so the exit code is tested --------------------


def run_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str], env: dict[str, str], stdin: bytes) -> int:
    for key in list(os.environ):
        if key.startswith("SERF_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SERF_HANDLERS_CACHE_DIR", str(tmp_path / "cache"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(stdin)))
    return cli.main(argv)


def write_config(tmp_path: Path, **extra: str) -> Path:
    lines = [
        "handlers:",
        "  - type: haproxy",
        f"    config: {tmp_path}/haproxy.cfg",
        f"    state: {tmp_path}/state.json",
        f"    vars: {{bind: '127.0.0.1:18080', socket: {tmp_path}/admin.sock}}",
        f"    reload: {reload_argv(tmp_path / 'reloads')!r}",
        *(f"    {key}: {value}" for key, value in extra.items()),
    ]
    path = tmp_path / "config.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_validation_failure_keeps_old_config_byte_identical_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = tmp_path / "t.cfg.j2"
    from serf_handlers.handlers.haproxy._jinja import BUILTIN_TEMPLATE

    good = Path(BUILTIN_TEMPLATE).read_text()
    template.write_text(good)
    config = write_config(tmp_path, template=str(template))
    join = {"SERF_EVENT": "member-join", "SERF_SELF_NAME": "lb"}
    assert run_cli(monkeypatch, tmp_path, ["--config", str(config)], join, b"web1\t127.0.0.1\tweb\tport=8081\n") == 0
    installed = (tmp_path / "haproxy.cfg").read_bytes()
    capsys.readouterr()

    # Every server line gains a keyword HAProxy does not know.
    template.write_text(good.replace("{{ server.options }}", "{{ server.options }} frobnicate"))
    code = run_cli(monkeypatch, tmp_path, ["--config", str(config)], join, b"web2\t127.0.0.1\tweb\tport=8082\n")
    err = capsys.readouterr().err
    assert code == 1
    assert (tmp_path / "haproxy.cfg").read_bytes() == installed
    assert (tmp_path / "reloads").read_text() == "reload\n"
    assert "haproxy rejected the new config, old config kept" in err and "frobnicate" in err and "[ALERT]" in err
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []

    # The membership was kept: once the template is fixed, the next event brings web2 in.
    template.write_text(good)
    assert run_cli(monkeypatch, tmp_path, ["--config", str(config)], join, b"web1\t127.0.0.1\tweb\tport=8081\n") == 0
    assert "server web2 127.0.0.1:8082" in (tmp_path / "haproxy.cfg").read_text()


def test_failed_reload_exits_1_and_is_retried_by_the_next_event(tmp_path: Path) -> None:
    failing = tmp_path / "fail"
    failing.write_text("")
    argv = [sys.executable, "-c", "import os, sys; sys.exit(3 if os.path.exists(sys.argv[1]) else 0)", str(failing)]
    env = Env(tmp_path, reload=argv)
    with pytest.raises(HandlerError, match="exited 3"):
        env.event("member-join", web("web1", 8081))
    assert "web1" in env.config.read_text()  # installed; HAProxy just has not loaded it yet
    failing.unlink()
    env.handler.options = env.handler.options._replace(reload=tuple(reload_argv(env.reloads)))
    env.event("member-join", web("web1", 8081))  # the very same event: not a no-op this time
    assert env.reload_count() == 1
    before = env.snapshot()
    env.event("member-join", web("web1", 8081))
    assert env.snapshot() == before


def test_no_reload_configured_only_writes(tmp_path: Path) -> None:
    env = Env(tmp_path, reload=None)
    env.event("member-join", web("web1", 8081))
    assert "web1" in env.config.read_text()


def test_check_false_installs_without_haproxy(tmp_path: Path) -> None:
    env = Env(tmp_path, check=False, haproxy="/nonexistent/haproxy")
    env.event("member-join", web("web1", 8081))
    assert env.server_lines()
    (tmp_path / "checked").mkdir()
    with pytest.raises(HandlerError, match="'/nonexistent/haproxy' not found"):
        Env(tmp_path / "checked", haproxy="/nonexistent/haproxy").event("member-join", web("web1", 8081))


# --- render, status, the query, reconcile ----------------------------------------------


def test_render_works_on_an_empty_state_and_write_installs_without_reload(env: Env) -> None:
    text = env.handler.render()
    assert "backend web" in text and not env.config.exists()
    assert env.handler.render(write=True) == text
    assert env.config.read_text() == text and env.reload_count() == 0
    # HAProxy started from that config: the first join needs no reload to be *known*,
    # and without a socket it is one reload.
    env.event("member-join", web("web1", 8081))
    assert env.reload_count() == 1
    assert env.handler.render() == env.config.read_text()


def test_render_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    assert run_cli(monkeypatch, tmp_path, ["render", "--config", str(config), "--write"], {}, b"") == 0
    out = capsys.readouterr().out
    assert out == (tmp_path / "haproxy.cfg").read_text() and "backend web" in out
    assert not (tmp_path / "reloads").exists()
    assert run_cli(monkeypatch, tmp_path, ["status", "--config", str(config)], {}, b"") == 0
    assert "(no servers)" in capsys.readouterr().out


def test_status_table(env: Env) -> None:
    env.event("member-join", web("web1", 8081), web("web\t2", 8082, weight="3"), web("a1", 9000, backend="api"))
    rows = [re.split(r"  +", line) for line in env.handler.status().splitlines()]
    assert rows == [
        ["BACKEND", "SERVER", "ADDRESS", "WEIGHT", "STATE", "NODE"],
        ["api", "a1", "127.0.0.1:9000", "1", "ready", "a1"],
        ["web", "web1", "127.0.0.1:8081", "1", "ready", "web1"],
        ["web", _name("web\t2"), "127.0.0.1:8082", "3", "ready", "web\\t2"],
    ]


def _name(node: str) -> str:
    from serf_handlers.handlers.haproxy._servers import server_name

    return server_name(node)


def test_query_reply_is_compact(env: Env) -> None:
    env.event(
        "member-join", web("web1", 8081), web("web2", 8082, addr="::1", weight="5"), web("a1", 9000, backend="api")
    )
    reply = env.handler(Query("backends", 1, b"", Node("lb")))
    assert reply == "api: a1=127.0.0.1:9000\nweb: web1=127.0.0.1:8081 web2=[::1]:8082(w=5)\n"


def test_query_reply_fits_and_says_truncated(env: Env) -> None:
    env.event("member-join", *(web(f"web{i:03}", 8000 + i) for i in range(200)))
    reply = env.handler(Query("backends", 1, b"", Node("lb" * 20)))
    assert isinstance(reply, str)
    assert len(reply.encode()) <= 900 and reply.endswith("\ntruncated\n")
    assert reply.startswith("web: web000=127.0.0.1:8000 web001=")


def test_empty_query_reply(env: Env) -> None:
    assert env.handler(Query("backends", 1, b"", Node("lb"))) == "web: -\n"


def test_reconcile_replaces_the_state_with_exactly_the_members(env: Env) -> None:
    env.event("member-join", web("web1", 8081), web("web2", 8082))
    env.handler.reconcile([web("web2", 8082), web("web3", 8083)])
    assert set(env.servers()) == {"web2", "web3"}
    assert env.reload_count() == 2


def test_reconcile_after_state_deleted_restores_it_without_reload(env: Env) -> None:
    env.event("member-join", web("web1", 8081), web("web2", 8082))
    config, reloads = env.config.read_bytes(), env.reload_count()
    env.state.unlink()
    env.handler.reconcile([web("web1", 8081), web("web2", 8082)])
    assert env.config.read_bytes() == config and env.reload_count() == reloads
    assert set(env.servers()) == {"web1", "web2"}
    before = env.snapshot()
    env.event("member-update", web("web1", 8081))
    assert env.snapshot() == before


def test_corrupt_state_fails_events_and_reconcile_rebuilds_it(env: Env) -> None:
    env.event("member-join", web("web1", 8081))
    env.state.write_text("{not json")
    with pytest.raises(HandlerError, match="serf-handle reconcile"):
        env.event("member-join", web("web2", 8082))
    env.handler.reconcile([web("web1", 8081), web("web2", 8082)])
    assert set(env.servers()) == {"web1", "web2"}


def test_reconcile_keeps_the_last_good_form_of_a_member_gone_bad(env: Env) -> None:
    env.event("member-join", web("web1", 8081))
    with pytest.raises(HandlerError, match="web1"):
        env.handler.reconcile([web("web1", tags={"port": "x"}), web("web2", 8082)])
    assert env.servers() == {"web1": ("127.0.0.1", 8081, "web"), "web2": ("127.0.0.1", 8082, "web")}


# --- the runtime API, against a fake admin socket --------------------------------------


class FakeAdmin:
    """Answers HAProxy 2.6 runtime API commands the way the real one does, for a few backends."""

    def __init__(self, path: str, backends: tuple[str, ...] = ("web",)) -> None:
        self.path = path
        self.commands: list[str] = []
        self.backends = set(backends)
        self.static: set[str] = set()  # backends with a non-dynamic balance algorithm
        self.busy: set[str] = set()  # servers whose deletion is refused (connections open)
        self.servers: dict[str, dict[str, str]] = {}
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
            except socket.timeout:
                continue
            with conn:
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
                conn.sendall(self.answer(data.decode().strip()).encode())

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
            self.servers[target] = {"addr": addr.strip("[]"), "port": port, "weight": words[5], "admin": "1"}
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
        commands, self.commands = self.commands, []
        return commands


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
    assert admin.take() == [
        f"add server web/web1 127.0.0.1:8081 weight 1 {ADD}",
        "enable health web/web1",
        "set server web/web1 state ready",
        f"add server web/web2 [::1]:8082 weight 4 {ADD}",
        "enable health web/web2",
        "set server web/web2 state ready",
    ]
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
    # It comes back while its deletion is still pending: revive it.
    env.event("member-join", web("web1", 8085))
    assert admin.take() == [
        f"add server web/web1 127.0.0.1:8085 weight 1 {ADD}",
        "set server web/web1 addr 127.0.0.1 port 8085",
        "set weight web/web1 1",
        "enable health web/web1",
        "set server web/web1 state ready",
    ]
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
        env.event("member-join", web("web1", 8081))
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


def test_concurrent_serf_handle_runs_lose_no_member(tmp_path: Path) -> None:
    """Several `serf-handle` processes at once (several agents' handlers, a manual run)."""
    import subprocess

    config = write_config(tmp_path)
    serf_handle = str(Path(sys.executable).parent / "serf-handle")
    env = {**os.environ, "SERF_EVENT": "member-join", "SERF_HANDLERS_CACHE_DIR": str(tmp_path / "cache")}
    runs = [
        subprocess.Popen(
            [serf_handle, "--config", str(config)], stdin=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
        )
        for _ in range(6)
    ]
    try:
        for i, run in enumerate(runs):
            assert run.stdin is not None
            run.stdin.write(f"web{i}\t127.0.0.{i + 1}\tweb\tport=80{i}\n".encode())
            run.stdin.close()
        assert [run.wait(120) for run in runs] == [0] * 6
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()
    text = (tmp_path / "haproxy.cfg").read_text()
    assert all(f"server web{i} 127.0.0.{i + 1}:80{i} " in text for i in range(6))
    assert set(_state.load(str(tmp_path / "state.json")).servers) == {f"web{i}" for i in range(6)}


def test_a_broken_template_keeps_the_membership_for_later(tmp_path: Path) -> None:
    template = tmp_path / "t.j2"
    template.write_text("{{ nosuchvar }}\n")
    env = Env(tmp_path, template=str(template))
    with pytest.raises(HandlerError, match="nosuchvar"):
        env.event("member-join", web("web1", 8081))
    assert not env.config.exists() and env.reload_count() == 0
    from serf_handlers.handlers.haproxy._jinja import BUILTIN_TEMPLATE

    template.write_text(Path(BUILTIN_TEMPLATE).read_text())
    env.event("member-update", web("web2", 8082))
    assert [line.split()[1] for line in env.server_lines()] == ["web1", "web2"]


def test_a_member_whose_role_changes_away_is_removed(env: Env) -> None:
    env.event("member-join", web("web1", 8081), web("web2", 8082))
    moved = web("web2", 8082)._replace(role="db", tags=MappingProxyType({"role": "db", "port": "8082"}))
    env.event("member-update", moved)
    assert set(env.servers()) == {"web1"}
    env.event("member-join", Member("db1", "127.0.0.9", "db"))  # other roles never become servers
    assert set(env.servers()) == {"web1"}


def test_reconcile_keeps_only_members_of_the_role(env: Env) -> None:
    env.handler.reconcile([web("web1", 8081), Member("lb", "127.0.0.1", "lb"), Member("db1", "127.0.0.9", "db")])
    assert set(env.servers()) == {"web1"}


def test_config_role_reaches_the_handler_not_the_dispatcher(tmp_path: Path) -> None:
    from serf_handlers.config import build_dispatcher, parse_config

    config = parse_config(
        {"handlers": [{"type": "haproxy", "role": "api", "config": str(tmp_path / "h.cfg"),
                       "state": str(tmp_path / "s.json")}]},
        "test.yml",
    )
    (registration,) = build_dispatcher(config).registrations
    assert registration.role is None  # the handler sees every member, so it notices role changes
    assert registration.handler.options.role == "api"  # type: ignore[attr-defined]
