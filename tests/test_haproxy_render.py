"""Rendering haproxy.cfg: the built-in template is complete and valid, and no member data
can add a line or a directive. Every rendered config is checked by the real `haproxy -c`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serf_handlers.events import Member
from serf_handlers.handlers.haproxy import HAProxyHandler, _builtin
from serf_handlers.handlers.haproxy._jinja import BUILTIN_TEMPLATE, TemplateError, render
from serf_handlers.handlers.haproxy._plan import wanted_from_members
from serf_handlers.handlers.haproxy._render import context as render_context
from serf_handlers.handlers.haproxy._servers import Rejected, Server, from_member, node_id
from serf_handlers.handlers.haproxy._state import EMPTY

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")


def handler(tmp_path: Path, **options: object) -> HAProxyHandler:
    options.setdefault("vars", {"bind": "127.0.0.1:18080", "socket": str(tmp_path / "admin.sock")})
    return HAProxyHandler(config=str(tmp_path / "haproxy.cfg"), state=str(tmp_path / "state.json"), **options)


def servers_of(h: HAProxyHandler, *members: Member) -> dict[str, Server]:
    wanted = wanted_from_members(EMPTY, members, h.options)
    assert not wanted.skipped and len(wanted.servers) == len(members)
    return wanted.servers


def haproxy_check(tmp_path: Path, text: str) -> str:
    path = tmp_path / "candidate.cfg"
    path.write_text(text)
    done = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_empty_state_renders_a_complete_valid_config(tmp_path: Path) -> None:
    text = handler(tmp_path)._render({})
    haproxy_check(tmp_path, text)
    for line in [
        f"stats socket {tmp_path}/admin.sock mode 600 level admin expose-fd listeners",
        f"server-state-file {tmp_path}/haproxy.cfg.state",
        "load-server-state-from-file global",
        "mode http",
        "option redispatch",
        "retries 3",
        "retry-on conn-failure empty-response response-timeout",
        "option idle-close-on-response",
        "balance roundrobin",
        "bind 127.0.0.1:18080",
        "default_backend web",
        "backend web",
    ]:
        assert re.search(rf"^\s*{re.escape(line)}$", text, re.M), line
    assert "daemon" not in text  # master-worker in the foreground
    assert text.endswith("\n") and "\n\n\n" not in text


def test_default_bind_and_socket(tmp_path: Path) -> None:
    text = HAProxyHandler(config=str(tmp_path / "h.cfg"))._render({})
    assert "    bind *:80\n" in text
    assert "stats socket /run/haproxy/admin.sock " in text
    reload = ["true"]
    assert "stats socket /tmp/x.sock " in HAProxyHandler(socket="/tmp/x.sock", reload=reload)._render({})
    live = HAProxyHandler(socket="/tmp/x.sock", reload=reload, vars={"socket": "/tmp/v.sock"})
    assert "stats socket /tmp/v.sock " in live._render({})


def test_servers_backends_and_routing(tmp_path: Path) -> None:
    h = handler(tmp_path)
    servers = servers_of(
        h,
        Member("web2", "10.0.0.2", "web", MappingProxyType({"port": "8082", "weight": "5"})),
        Member("web1", "10.0.0.1", "web", MappingProxyType({"port": "8081"})),
        Member("v6", "2001:db8::1", "web", MappingProxyType({})),
        Member("api1", "10.0.1.1", "web", MappingProxyType({"backend": "API.example.com", "port": "9000"})),
    )
    servers["web2"] = servers["web2"]._replace(maint=True)
    text = h._render(servers)
    haproxy_check(tmp_path, text)
    assert (
        "backend web\n"
        f"    server v6 [2001:db8::1]:80 id {node_id('v6')} weight 1 check inter 500ms fall 1 rise 1\n"
        f"    server web1 10.0.0.1:8081 id {node_id('web1')} weight 1 check inter 500ms fall 1 rise 1\n"
        f"    server web2 10.0.0.2:8082 id {node_id('web2')} weight 5 check inter 500ms fall 1 rise 1 disabled\n"
    ) in text
    assert f"backend API.example.com\n    server api1 10.0.1.1:9000 id {node_id('api1')} weight 1 check" in text
    assert "use_backend API.example.com if { req.hdr(host),field(1,:),lower -m str api.example.com }" in text
    assert text.index("backend API.example.com") < text.index("backend web")  # sorted, stable


def test_other_default_backend_still_defined_when_empty(tmp_path: Path) -> None:
    text = handler(tmp_path, backend="app")._render({})
    haproxy_check(tmp_path, text)
    assert "default_backend app" in text and "\nbackend app\n" in text


HOSTILE_NAMES = [
    "evil\nbackend x\n  server y 6.6.6.6:80",
    "evil\r\nglobal",
    "evil }",
    "evil # comment",
    "evil\tcheck disabled",
    "{{ 7 * 7 }}",
    "{% raw %}",
    "web/evil",
    "evil;del server web/web1",
    "\u202eevil",
    "é" * 200,
]


@pytest.mark.parametrize("name", [pytest.param(n, id=repr(n)[:30]) for n in HOSTILE_NAMES])
def test_hostile_node_names_cannot_inject(tmp_path: Path, name: str) -> None:
    h = handler(tmp_path)
    hostile_tags = MappingProxyType({"x": "\nserver evil 6.6.6.6:80", "y": "{{ servers }}"})
    servers = servers_of(h, Member(name, "10.0.0.9", "web", hostile_tags), Member("web1", "10.0.0.1", "web"))
    baseline = h._render(servers_of(h, Member("PLACEHOLDER", "10.0.0.9", "web"), Member("web1", "10.0.0.1", "web")))
    text = h._render(servers)
    haproxy_check(tmp_path, text)
    assert text.count("\n") == baseline.count("\n")
    # Only the name differs, and the stable id derived from it.
    rest = text.replace(servers[name].name, "PLACEHOLDER")
    rest = rest.replace(f" id {node_id(name)} ", f" id {node_id('PLACEHOLDER')} ")
    assert "6.6.6.6" not in rest and "evil" not in rest
    assert sorted(rest.splitlines()) == sorted(baseline.splitlines())
    assert sum(line.strip().startswith("server ") for line in text.splitlines()) == 2


@pytest.mark.parametrize(
    "tags",
    [
        pytest.param({"port": "80\n    server evil 6.6.6.6:80"}, id="port"),
        pytest.param({"weight": "1 backup"}, id="weight"),
        pytest.param({"backend": "web\nfrontend evil"}, id="backend"),
    ],
)
def test_hostile_tags_that_would_be_rendered_are_rejected(tmp_path: Path, tags: dict[str, str]) -> None:
    with pytest.raises(Rejected):
        from_member("web1", "10.0.0.1", MappingProxyType(tags), 80, handler(tmp_path).options.backend)


def test_custom_template_gets_vars_and_tags(tmp_path: Path) -> None:
    template = tmp_path / "custom.cfg.j2"
    template.write_text(
        "defaults\n  mode http\n  timeout connect 1s\n  timeout client 1s\n  timeout server 1s\n"
        "frontend f\n  bind 127.0.0.1:18080\n  default_backend {{ default_backend }}\n"
        "{% for name, members in backends.items() %}\nbackend {{ name }}\n  balance {{ algo }}\n"
        "{% for s in members %}\n  # dc={{ s.tags.get('dc', '-') | replace('\\n', ' ') }}\n"
        "  server {{ s.name }} {{ s.addr }}:{{ s.port }} weight {{ s.weight }}\n{% endfor %}\n{% endfor %}\n"
    )
    h = handler(tmp_path, template=str(template), vars={"algo": "leastconn"})
    servers = servers_of(h, Member("web1", "10.0.0.1", "web", MappingProxyType({"dc": "east"})))
    text = h._render(servers)
    haproxy_check(tmp_path, text)
    assert "  balance leastconn\n  # dc=east\n  server web1 10.0.0.1:80 weight 1\n" in text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param("{{ nosuchvar }}\n", "'nosuchvar' is undefined", id="undefined is an error"),
        pytest.param("{% for x in %}\n", "line 1", id="syntax error with line"),
        pytest.param("{{ 1 // 0 }}\n", "ZeroDivisionError", id="runtime error"),
    ],
)
def test_template_errors_name_the_template(tmp_path: Path, body: str, message: str) -> None:
    template = tmp_path / "bad.j2"
    template.write_text(body)
    with pytest.raises(TemplateError, match=re.escape(message)) as info:
        handler(tmp_path, template=str(template))._render({})
    assert "bad.j2" in str(info.value)


# --- the built-in template's Jinja-free renderer ----------------------------------------

_members = st.lists(
    st.tuples(
        st.text(min_size=1, max_size=20),
        st.sampled_from(["10.0.0.1", "::1", "2001:db8::5", "192.168.1.200"]),
        st.dictionaries(
            st.sampled_from(["port", "weight", "backend", "dc"]),
            st.sampled_from(["80", "8080", "0", "256", "api", "Web.Example-1", "x"]),
        ),
        st.booleans(),
    ),
    max_size=12,
    unique_by=lambda m: m[0],
)


# Every per-service setting, so both renderers are compared on each of them.
_SERVICES = {
    "shop": {"hosts": ["shop.example.com", "*.shop.example.com"], "sticky": True, "slowstart": "10s", "maxconn": 50},
    "static": {"paths": ["/static", "/img.v2"], "strip_path": True, "balance": "leastconn", "timeout_server": "5s"},
    "x": {"check_path": "/up"},
}


@settings(max_examples=200, deadline=None)
@given(
    members=_members,
    backend=st.sampled_from(["web", "app", "api"]),
    bind=st.sampled_from(["*:80", ":::80 v4v6"]),
    identity=st.sampled_from([{}, {"user": "haproxy"}, {"user": "haproxy", "group": "haproxy"}, {"group": "nogroup"}]),
    services=st.sampled_from([None, _SERVICES]),
)
def test_builtin_renderer_equals_the_jinja_template(
    members, backend: str, bind: str, identity: dict[str, str], services: dict[str, object] | None
) -> None:
    h = HAProxyHandler(
        config="/etc/haproxy/haproxy.cfg", backend=backend, vars={"bind": bind, "extra": 1, **identity},
        backends=services, check_path="/healthz" if services else None,
    )
    servers = {}
    for name, addr, tags, maint in members:
        try:
            servers[name] = from_member(name, addr, tags, 80, backend)._replace(maint=maint)
        except Rejected:
            continue
    context = render_context(h.options, servers)
    assert _builtin.render(context) == render(BUILTIN_TEMPLATE, context)


def test_the_builtin_template_does_not_import_jinja2(tmp_path: Path) -> None:
    code = (
        "import sys; from serf_handlers.handlers.haproxy import HAProxyHandler;"
        f"HAProxyHandler(config={str(tmp_path / 'h.cfg')!r})._render({{}});"
        "print('jinja2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
