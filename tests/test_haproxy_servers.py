"""HAProxy server naming, member validation and the handler's option validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serf_handlers.errors import ConfigError
from serf_handlers.handlers.haproxy import HAProxyHandler
from serf_handlers.handlers.haproxy._servers import MAX_NAME, Rejected, Server, from_member, server_name, to_json

TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,63}\Z")


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        pytest.param("web1", "web1", id="clean name kept"),
        pytest.param("web-1.dc_2", "web-1.dc_2", id="dots dashes underscores kept"),
        pytest.param("a" * MAX_NAME, "a" * MAX_NAME, id="longest clean name kept"),
    ],
)
def test_clean_names_are_used_as_they_are(node: str, expected: str) -> None:
    assert server_name(node) == expected


@pytest.mark.parametrize(
    "node",
    [
        pytest.param("web 1", id="space"),
        pytest.param("web\n1", id="newline"),
        pytest.param("web\tbackend evil", id="tab and directive"),
        pytest.param("x\nserver evil 6.6.6.6:80", id="injected server line"),
        pytest.param("web/1", id="slash would split backend/server"),
        pytest.param("web;1", id="semicolon would split a runtime command"),
        pytest.param("wéb", id="non-ascii"),
        pytest.param("#comment", id="hash"),
        pytest.param("{{ x }}", id="template syntax"),
        pytest.param("a" * 300, id="too long"),
        pytest.param("web1--0123456789", id="looks like a hashed name"),
        pytest.param("\ud800", id="lone surrogate"),
    ],
)
def test_unusual_names_are_sanitised_and_hashed(node: str) -> None:
    name = server_name(node)
    assert TOKEN.match(name), name
    assert re.search(r"--[0-9a-f]{10}\Z", name)
    assert server_name(node) == name  # deterministic


def test_names_that_sanitise_alike_stay_distinct() -> None:
    nodes = ["web 1", "web\t1", "web/1", "web_1", "web;1", "web\n1", "web_1--" + "0" * 10]
    names = [server_name(n) for n in nodes]
    assert len(set(names)) == len(nodes)
    assert server_name("web_1") == "web_1"  # the clean one keeps its plain name


def test_truncated_long_names_stay_distinct() -> None:
    a, b = "x" * 100 + "a", "x" * 100 + "b"
    assert server_name(a) != server_name(b)
    assert len(server_name(a)) <= MAX_NAME


@given(st.lists(st.text(min_size=1, max_size=80), min_size=2, max_size=20, unique=True))
def test_any_node_names_give_unique_safe_names(nodes: list[str]) -> None:
    names = [server_name(n) for n in nodes]
    assert all(TOKEN.match(n) for n in names)
    assert len(set(names)) == len(names)


def member(tags: dict[str, str], addr: str = "10.0.0.1", name: str = "web1") -> Server:
    return from_member(name, addr, tags, 80, "web")


def test_member_defaults_and_tags() -> None:
    assert member({}) == Server("web1", "web1", "10.0.0.1", 80, 1, "web", {})
    tags = {"port": "8081", "weight": "256", "backend": "api.example.com", "dc": "x\ny"}
    server = member(tags)
    assert (server.port, server.weight, server.backend, server.tags) == (8081, 256, "api.example.com", tags)
    assert member({"port": "0080"}).port == 80
    assert member({"weight": "0"}).weight == 0


@pytest.mark.parametrize(
    ("addr", "address"),
    [
        pytest.param("10.0.0.1", "10.0.0.1:80", id="ipv4"),
        pytest.param("::1", "[::1]:80", id="ipv6 bracketed"),
        pytest.param("2001:DB8::1", "[2001:db8::1]:80", id="ipv6 canonicalised"),
    ],
)
def test_addresses(addr: str, address: str) -> None:
    assert member({}, addr).address == address


@pytest.mark.parametrize(
    ("tags", "addr", "message"),
    [
        pytest.param({"port": "0"}, "10.0.0.1", "tag port='0' is not an integer from 1 to 65535", id="port 0"),
        pytest.param({"port": "65536"}, "10.0.0.1", "port='65536'", id="port too big"),
        pytest.param({"port": "80\nbind :1"}, "10.0.0.1", "port=", id="port with a directive"),
        pytest.param({"port": "-1"}, "10.0.0.1", "port='-1'", id="negative port"),
        pytest.param({"port": " 80"}, "10.0.0.1", "port=' 80'", id="port with space"),
        pytest.param({"port": "٨٠"}, "10.0.0.1", "port=", id="non-ascii digits"),
        pytest.param({"port": ""}, "10.0.0.1", "port=''", id="empty port"),
        pytest.param({"weight": "257"}, "10.0.0.1", "tag weight='257' is not an integer from 0 to 256", id="weight"),
        pytest.param({"weight": "1 backup"}, "10.0.0.1", "weight=", id="weight with option"),
        pytest.param({"backend": "web\nlisten x"}, "10.0.0.1", "tag backend=", id="backend injection"),
        pytest.param({"backend": "a b"}, "10.0.0.1", "not a valid backend name", id="backend with space"),
        pytest.param({"backend": ""}, "10.0.0.1", "not a valid backend name", id="empty backend"),
        pytest.param({"backend": "b" * 64}, "10.0.0.1", "not a valid backend name", id="backend too long"),
        pytest.param({}, "10.0.0.1 check", "address '10.0.0.1 check' is not an IP address", id="addr option"),
        pytest.param({}, "fe80::1%eth0", "is not an IP address", id="zone id"),
        pytest.param({}, "example.com", "is not an IP address", id="hostname"),
    ],
)
def test_unsafe_members_are_rejected_by_name(tags: dict[str, str], addr: str, message: str) -> None:
    with pytest.raises(Rejected, match=re.escape(message)) as info:
        member(tags, addr, name="bad\nnode")
    assert "member 'bad\\nnode'" in str(info.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"port": 0}, "port: expected an integer from 1 to 65535", id="port"),
        pytest.param({"port": "80"}, "port: expected an integer", id="port string"),
        pytest.param({"port": True}, "port: expected an integer", id="port bool"),
        pytest.param({"backend": "a b"}, "backend: expected", id="backend"),
        pytest.param({"config": ""}, "config: expected a non-empty path", id="config empty"),
        pytest.param({"config": "/etc/ha proxy.cfg"}, "config: expected", id="config with space"),
        pytest.param({"template": "/nonexistent.j2"}, "template: /nonexistent.j2: no such file", id="template"),
        pytest.param({"vars": []}, "vars: expected a mapping", id="vars list"),
        pytest.param({"vars": {"servers": 1}}, "vars.servers: reserved", id="vars reserved"),
        pytest.param({"vars": {"not-ident": 1}}, "vars: 'not-ident'", id="vars key"),
        pytest.param({"vars": {"bind": "*:80\n  bind :1"}}, "vars.bind: expected", id="vars bind newline"),
        pytest.param({"state": 3}, "state: expected", id="state"),
        pytest.param({"check": "yes"}, "check: expected true or false", id="check"),
        pytest.param({"haproxy": ""}, "haproxy: expected", id="haproxy"),
        pytest.param({"reload": "kill -USR2 1"}, "reload: expected an argv list", id="reload shell string"),
        pytest.param({"reload": []}, "reload: expected a non-empty list", id="reload empty"),
        pytest.param({"reload": ["kill", 1]}, "reload: expected a non-empty list of non-empty", id="reload int"),
        pytest.param({"socket": ""}, "socket: expected", id="socket"),
        pytest.param({"on_failed": "drop"}, "on_failed: expected one of remove, maint", id="on_failed"),
        pytest.param({"query": "a b"}, "query: expected a query name", id="query"),
        pytest.param({"colour": "red"}, "colour: unknown option", id="unknown option"),
    ],
)
def test_bad_options_are_config_errors_naming_the_option(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        HAProxyHandler(**options)


def test_defaults() -> None:
    handler = HAProxyHandler()
    assert handler.options.role == "web" and handler.takes_role
    assert handler.default_events == (
        "member-join",
        "member-leave",
        "member-failed",
        "member-update",
        "member-reap",
        "query:backends",
    )
    o = handler.options
    assert (o.port, o.backend, o.config, o.state, o.check, o.haproxy, o.reload, o.socket, o.on_failed) == (
        80,
        "web",
        "/etc/haproxy/haproxy.cfg",
        "/var/lib/serf-handlers/haproxy.json",
        True,
        "haproxy",
        None,
        None,
        "remove",
    )
    assert HAProxyHandler(query="lb-view").default_events[-1] == "query:lb-view"
    assert HAProxyHandler(reload=["kill", "-USR2", "1"]).options.reload == ("kill", "-USR2", "1")


def test_creating_the_handler_does_not_import_jinja2() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from serf_handlers.handlers.haproxy import HAProxyHandler; HAProxyHandler();"
        "heavy = [m for m in ('jinja2', 'json', 'subprocess', 'socket', 'hashlib', 'dataclasses') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_every_server_gets_a_stable_id_from_its_node_and_colliding_ones_get_none() -> None:
    from serf_handlers.handlers.haproxy._servers import node_id, with_ids

    assert node_id("web1") == 331608034  # FNV-1a: the same on every machine and Python
    assert node_id("web330386") == node_id("web426259")  # a real collision (found by search)
    servers = {n: from_member(n, "10.0.0.1", {"port": "80"}, 80, "web") for n in ("web1", "web330386", "web426259")}
    ids = {node: s.id for node, s in with_ids(servers).items()}
    assert ids == {"web1": 331608034, "web330386": 0, "web426259": 0}  # HAProxy numbers those two
    # The same collision in different backends is no collision.
    servers["web426259"] = servers["web426259"]._replace(backend="api")
    assert with_ids(servers)["web426259"].id == node_id("web426259")
    assert with_ids(servers)["web426259"].options == f"id {node_id('web426259')} weight 1"
    # Ids live only in what is rendered: the state never stores them.
    assert "id" not in to_json(with_ids(servers)["web1"])


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        pytest.param(None, "    spread-checks 5\n", id="default"),
        pytest.param(0, "    spread-checks 0\n", id="off"),
        pytest.param(50, "    spread-checks 50\n", id="most"),
        pytest.param(51, "check_spread: expected a percent from 0 to 50, got 51", id="too much"),
        pytest.param("5", "check_spread: expected a percent from 0 to 50, got '5'", id="a string"),
        pytest.param(True, "check_spread: expected a percent from 0 to 50, got True", id="a flag"),
    ],
)
def test_check_spread(tmp_path: Path, value: object, rendered: str) -> None:
    options = {} if value is None else {"check_spread": value}
    if not rendered.startswith("    "):
        with pytest.raises(ConfigError, match=re.escape(rendered)):
            HAProxyHandler(config=str(tmp_path / "haproxy.cfg"), **options)
        return
    handler = HAProxyHandler(config=str(tmp_path / "haproxy.cfg"), state=str(tmp_path / "s.json"), **options)
    assert rendered in handler.render()
