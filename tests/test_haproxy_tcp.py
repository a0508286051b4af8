"""TCP services chosen by member tags (the handler's `tcp` option): rendering, validation,
and the runtime API's view of them. Every rendered config is checked by the real `haproxy -c`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import MappingProxyType

import pytest

from serf_handlers.errors import ConfigError
from serf_handlers.events import Member
from serf_handlers.handlers.haproxy import HAProxyHandler, _builtin
from serf_handlers.handlers.haproxy._jinja import BUILTIN_TEMPLATE, render
from serf_handlers.handlers.haproxy._plan import make_plan, wanted_from_members
from serf_handlers.handlers.haproxy._render import context
from serf_handlers.handlers.haproxy._servers import node_id
from serf_handlers.handlers.haproxy._state import EMPTY

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")

TCP = {"redis": "127.0.0.1:16379", "pg": "127.0.0.1:15432"}


def handler(tmp_path: Path, **options: object) -> HAProxyHandler:
    options.setdefault("vars", {"bind": "127.0.0.1:18080", "socket": str(tmp_path / "admin.sock")})
    return HAProxyHandler(config=str(tmp_path / "h.cfg"), state=str(tmp_path / "s.json"), **options)


def member(name: str, **tags: str) -> Member:
    return Member(name, "127.0.0.1", "web", MappingProxyType(tags))


def test_a_tagged_member_serves_its_tcp_service_and_every_service_is_there(tmp_path: Path) -> None:
    h = handler(tmp_path, tcp=TCP)
    members = [member("r1", backend="redis", port="6379"), member("w1", port="8081")]
    ctx = context(h.options, wanted_from_members(EMPTY, members, h.options).servers)
    text = _builtin.render(ctx)
    assert text == render(BUILTIN_TEMPLATE, ctx)  # the .j2 reference says the same
    http, _, tcp = text.partition("\nfrontend tcp-")
    assert "server w1 127.0.0.1:8081" in http and "r1" not in http and "use_backend" not in http
    assert "frontend tcp-" + tcp == (
        "frontend tcp-pg\n    mode tcp\n    no option idle-close-on-response\n    bind 127.0.0.1:15432\n"
        "    default_backend pg\n\nbackend pg\n    mode tcp\n\n"  # no servers yet: still there
        "frontend tcp-redis\n    mode tcp\n    no option idle-close-on-response\n    bind 127.0.0.1:16379\n"
        "    default_backend redis\n\nbackend redis\n    mode tcp\n"
        f"    server r1 127.0.0.1:6379 id {node_id('r1')} weight 1 check inter 500ms fall 1 rise 1\n"
    )
    candidate = tmp_path / "candidate.cfg"
    candidate.write_text(text)
    done = subprocess.run(["haproxy", "-c", "-f", str(candidate)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "idle-close" not in done.stderr, done.stdout + done.stderr


def test_check_path_is_for_http_backends_only(tmp_path: Path) -> None:
    h = handler(tmp_path, tcp=TCP, check_path="/healthz")
    text = _builtin.render(context(h.options, {}))
    assert text.count("option httpchk") == 1 and "option httpchk" in text.partition("frontend tcp-")[0]


def test_the_first_server_of_a_tcp_service_needs_no_reload(tmp_path: Path) -> None:
    h = handler(tmp_path, tcp=TCP, socket=str(tmp_path / "admin.sock"), reload=["true"])
    old = EMPTY._replace(applied={}, exists=True)
    wanted = wanted_from_members(old, [member("r1", backend="redis", port="6379")], h.options)
    plan = make_plan(old, old._replace(servers=wanted.servers), h._render({}), h._render, h.options)
    assert plan.reload is None and [s.path for s in plan.runtime.add] == ["redis/r1"]


@pytest.mark.parametrize(
    ("tcp", "message"),
    [
        pytest.param({"web": "*:6379"}, "tcp.web: the same name as the HTTP backend", id="collides with HTTP"),
        pytest.param({"-x": "*:1"}, "tcp: '-x': a service name is", id="bad name"),
        pytest.param({"redis": "*:6379\nfrontend evil"}, "tcp.redis: expected a listen address", id="two lines"),
        pytest.param({"redis": ""}, "tcp.redis: expected a listen address", id="empty"),
        pytest.param(["redis"], "tcp: expected a mapping", id="not a mapping"),
    ],
)
def test_bad_tcp_options_are_config_errors(tmp_path: Path, tcp: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        handler(tmp_path, tcp=tcp)
