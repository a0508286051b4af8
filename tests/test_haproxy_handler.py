"""The haproxy handler end to end, without HAProxy running: events to state, config and reloads
(a fake reload command that counts). The runtime API against a fake admin socket is in
test_haproxy_runtime.py; many serf-handle runs at once in test_haproxy_concurrency.py."""

from __future__ import annotations

import io
import os
import re
import shutil
import sys
from pathlib import Path
from types import MappingProxyType, SimpleNamespace

import pytest

from serf_handlers import _log, cli
from serf_handlers.dispatch import reply_budget
from serf_handlers.errors import ConfigError, HandlerError
from serf_handlers.events import Member, MemberEvent, Node, Query
from serf_handlers.handlers.haproxy import HAProxyHandler, _state
from serf_handlers.handlers.haproxy._servers import node_id
from support.site import count_reload_argv as reload_argv
from support.site import reload_lines

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
        return len(reload_lines(self.reloads))

    def servers(self) -> dict[str, tuple[str, int, str]]:
        return {n: (s.addr, s.port, s.backend) for n, s in _state.load(str(self.state)).servers.items()}

    def server_lines(self) -> list[str]:
        return [line.strip() for line in self.config.read_text().splitlines() if line.strip().startswith("server ")]

    def snapshot(self) -> tuple[object, ...]:
        """Everything a no-op must leave alone: the files' inodes, times and bytes, the reloads."""
        files = [p for p in (self.config, self.state) if p.exists()]
        return (*((p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in files), self.reload_count())


def line(name: str, address: str, weight: int = 1) -> str:
    """A built-in template's server line, with the server's stable id."""
    return f"server {name} {address} id {node_id(name)} weight {weight} check inter 500ms fall 1 rise 1"


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
        f"server web1 127.0.0.1:8081 id {node_id('web1')} weight 1 check inter 500ms fall 1 rise 1",
        f"server web2 127.0.0.1:8082 id {node_id('web2')} weight 1 check inter 500ms fall 1 rise 1",
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
    # The partition rule: a backend is never emptied of failed members that are not reaped.
    assert list(env.servers()) == ["web2"]
    env.event("member-reap", web("web2", 8082))
    assert env.servers() == {}
    assert env.server_lines() == []
    assert "\nbackend web\n" in env.config.read_text()  # the empty backend stays, valid
    assert env.reload_count() == 5


def test_on_failed_maint_keeps_the_server_disabled_until_it_rejoins(tmp_path: Path) -> None:
    env = Env(tmp_path, on_failed="maint")
    healthy = line("web0", "127.0.0.1:8080")
    env.event("member-join", web("web0", 8080), web("web1", 8081))  # half the backend stays alive
    env.event("member-failed", web("web1", 8081))
    disabled = line("web1", "127.0.0.1:8081") + " disabled"
    assert env.server_lines() == [healthy, disabled]
    env.event("member-join", web("web1", 8081))
    assert env.server_lines() == [healthy, line("web1", "127.0.0.1:8081")]
    env.event("member-failed", web("web1", 8081))
    env.event("member-reap", web("web1", 8081))
    assert env.server_lines() == [healthy]


def test_a_failed_member_is_never_put_in_maintenance_when_it_is_all_the_backend_has(tmp_path: Path) -> None:
    env = Env(tmp_path, on_failed="maint")
    env.event("member-join", web("web1", 8081))
    env.event("member-failed", web("web1", 8081))
    assert env.server_lines() == [line("web1", "127.0.0.1:8081")]
    assert "failed (kept)" in env.handler.status()


def test_update_moves_a_server_and_tag_only_changes_cost_nothing(env: Env) -> None:
    env.event("member-join", web("web1", 8081))
    env.event("member-update", web("web1", 9091, addr="127.0.0.2", weight="7"))
    assert env.server_lines() == [line("web1", "127.0.0.2:9091", 7)]
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
    name = "web 1\n    server evil 6.6.6.6:80"
    (line,) = env.server_lines()
    assert line.startswith("server web_1_____server_evil_6.6.6.6_80--")
    assert line.endswith(f" 127.0.0.1:8081 id {node_id(name)} weight 1 check inter 500ms fall 1 rise 1")


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
    # The one budget for Serf's reply limit (checked against the real serf in test_contract.py).
    assert len(reply.encode()) <= reply_budget("lb" * 20) and reply.endswith("\ntruncated\n")
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
    assert registration.role == "api" and registration.takes_role  # it sees every member: notices role changes
    assert registration.handler.options.role == "api"  # type: ignore[attr-defined]


# --- operating: the state tag, HTTP checks, render --diff, backup ----------------------


@pytest.mark.parametrize(
    ("state", "line_end"),
    [
        pytest.param(None, "weight 3 check inter 500ms fall 1 rise 1", id="no tag: ready"),
        pytest.param("ready", "weight 3 check inter 500ms fall 1 rise 1", id="ready"),
        # A config has no drain state: weight 0 takes no new connections either.
        pytest.param("drain", "weight 0 check inter 500ms fall 1 rise 1", id="drain"),
        pytest.param("maint", "weight 3 check inter 500ms fall 1 rise 1 disabled", id="maint"),
    ],
)
def test_the_state_tag_is_rendered(env: Env, state: str | None, line_end: str) -> None:
    tags = {"weight": "3", **({"state": state} if state else {})}
    env.event("member-join", web("web1", 8081, tags=tags))
    assert env.server_lines() == [f"server web1 127.0.0.1:8081 id {node_id('web1')} {line_end}"]
    shown = {"drain": "drain (tag)", "maint": "maint (tag)"}.get(state or "", "ready")
    assert shown in env.handler.status()


def test_an_invalid_state_tag_skips_that_member_only(env: Env) -> None:
    env.event("member-join", web("web1", 8081))
    with pytest.raises(HandlerError, match=r"member 'web1': tag state='bogus' is not one of ready, drain, maint"):
        env.event("member-update", web("web1", 8081, state="bogus"), web("web2", 8082))
    assert set(env.servers()) == {"web1", "web2"}  # web1 keeps its last valid form


def test_check_path_makes_every_backend_check_over_http(tmp_path: Path) -> None:
    env = Env(tmp_path, check_path="/healthz")
    env.event("member-join", web("web1", 8081), web("a1", 9000, backend="api"))
    text = env.config.read_text()
    assert text.count("    option httpchk GET /healthz\n") == 2  # web and api
    from serf_handlers.handlers.haproxy._jinja import BUILTIN_TEMPLATE, render
    from serf_handlers.handlers.haproxy._render import context

    assert render(BUILTIN_TEMPLATE, context(env.handler.options, _state.load(str(env.state)).servers)) == text


@pytest.mark.parametrize(
    "value", [pytest.param("healthz", id="relative"), pytest.param("/a b", id="space"), pytest.param(3, id="number")]
)
def test_check_path_must_be_a_plain_path(tmp_path: Path, value: object) -> None:
    with pytest.raises(ConfigError, match="check_path: expected a path"):
        Env(tmp_path, check_path=value)


def test_render_diff_shows_the_change_and_writes_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    render = ["render", "--config", str(config), "--diff"]
    assert run_cli(monkeypatch, tmp_path, ["render", "--config", str(config), "--write"], {}, b"") == 0
    capsys.readouterr()
    assert run_cli(monkeypatch, tmp_path, render, {}, b"") == 0  # equal
    assert capsys.readouterr().out == ""
    installed = (tmp_path / "haproxy.cfg").read_bytes()
    # The state moves on (here: by hand, as a stale file would); the installed config does not.
    state = _state.load(str(tmp_path / "state.json"))
    from serf_handlers.handlers.haproxy._servers import from_member

    server = from_member("web1", "127.0.0.1", {"port": "8081"}, 80, "web")
    _state.save(str(tmp_path / "state.json"), state._replace(servers={"web1": server}))
    assert run_cli(monkeypatch, tmp_path, render, {}, b"") == 1
    out = capsys.readouterr().out
    assert out.startswith(f"--- {tmp_path}/haproxy.cfg\n+++ ") and f"\n+    {line('web1', '127.0.0.1:8081')}" in out
    assert (tmp_path / "haproxy.cfg").read_bytes() == installed and not (tmp_path / "reloads").exists()
    # Trouble is 2, as with diff(1).
    (tmp_path / "state.json").write_text("{broken")
    assert run_cli(monkeypatch, tmp_path, render, {}, b"") == 2


def test_backup_keeps_the_previous_config(tmp_path: Path) -> None:
    env = Env(tmp_path, backup=True)
    env.event("member-join", web("web1", 8081))
    first = env.config.read_bytes()
    env.event("member-join", web("web2", 8082))
    assert (tmp_path / "haproxy.cfg.bak").read_bytes() == first
    assert (tmp_path / "haproxy.cfg.bak").stat().st_mode & 0o777 == env.config.stat().st_mode & 0o777
    # A config HAProxy rejects is not installed, and the backup is not touched.
    env2 = Env(tmp_path, backup=True, template=str(_bad_template(tmp_path)))
    with pytest.raises(HandlerError, match="haproxy rejected"):
        env2.event("member-join", web("web3", 8083))
    assert (tmp_path / "haproxy.cfg.bak").read_bytes() == first


def _bad_template(tmp_path: Path) -> Path:
    from serf_handlers.handlers.haproxy._jinja import BUILTIN_TEMPLATE

    bad = tmp_path / "bad.cfg.j2"
    bad.write_text(Path(BUILTIN_TEMPLATE).read_text().replace("{{ server.options }}", "{{ server.options }} nonsense"))
    return bad
