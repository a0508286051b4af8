"""The `nginx` handler end to end through the real `serf-handle`, as Serf runs it (SERF_*
environment, members on stdin), with a config.yml in tmp_path and Debian's real `nginx -t`
checking every candidate: the nginx.conf it writes (an upstream per backend, the `port`,
`weight`, `backend` and `state` tags, 503 for a backend without a usable server, Host
routing), hostile members, a refused candidate, when it reloads, a failed reload, the
commands (`render`, `render --diff`, `check`, `status`, `reconcile`), the `backends` query's
`drained NODE` answer, configuration errors and `kill -9` in the middle of runs. A real nginx serving through it:
tests/integration/test_nginx_lb.py."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from serf_handlers._files import Lock
from serf_handlers.dispatch import reply_budget
from serf_handlers.events import Node, Query
from serf_handlers.handlers.nginx import NginxHandler
from serf_handlers.pipeline import _record
from support.processes import SERF_HANDLE
from support.site import clean_environ, member_line, record_reload_argv, reload_lines, sha, stderr_lines
from tests.helpers import the_error

NGINX = shutil.which("nginx")
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")

HANDLER = "nginx (handlers[0])"
LISTEN = "127.0.0.1:18089"  # nothing listens: `nginx -t` does not bind

# --- reading the nginx.conf the built-in template writes ---------------------------------

_UPSTREAM = re.compile(r"^    upstream (\S+) \{\n(.*?)^    \}\n", re.M | re.S)
_SERVER = re.compile(r"^        server (\S+) weight=(\d+) max_fails=1 fail_timeout=5s( down)?;  # (\S+)$", re.M)
_VHOST = re.compile(
    r"^    server \{\n        listen (\S+)( default_server)?;\n(?:        server_name (\S+);\n)?"
    r"        location / \{\n            (?:proxy_pass http://(\S+);|return (503);)",
    re.M,
)


class Srv(NamedTuple):
    node: str
    address: str  # addr:port as nginx has it
    weight: int
    down: bool


def upstreams(text: str) -> dict[str, list[Srv]]:
    """upstream name -> its servers, in order."""
    found = {}
    for name, body in _UPSTREAM.findall(text):
        assert f"        zone {name} 64k;\n" in body and "        keepalive 32;\n" in body, body
        found[name] = [Srv(node, address, int(weight), bool(down)) for address, weight, down, node in
                       _SERVER.findall(body)]
    return found


def routes(text: str) -> dict[str, str]:
    """Host -> the upstream it is proxied to, or "503"; "" is the default server."""
    found = {}
    for listen, default, server_name, upstream, status in _VHOST.findall(text):
        assert listen == LISTEN
        assert bool(default) == (not server_name), "exactly the default backend has no server_name"
        found[server_name] = upstream or status
    assert text.count("    server {\n") == len(found), text
    return found


def up(node: str, address: str, weight: int = 1, down: bool = False) -> Srv:
    return Srv(node, address, weight, down)


# --- one handler's files and runs ----------------------------------------------------------

# Appends one line per reload to $1: the reload counter.
COUNT = 'echo reload >> "$1"'
# Fails (as `nginx -s reload` does when nginx is not running) while the file $2 exists.
FLAKY = 'if [ -e "$2" ]; then echo "nginx is not running" >&2; exit 1; fi; echo reload >> "$1"'


class Ngx:
    """An nginx handler's files in one directory and `serf-handle` runs against them."""

    def __init__(self, directory: Path, pid: Path | None = None, **options: Any) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = directory / "nginx.conf"
        self.state = directory / "state.json"
        self.reloads = directory / "reloads"
        self.yml = directory / "config.yml"
        self.bin = directory / "bin"
        self.pid = pid or directory / "nginx.pid"  # `nginx -t` creates it (empty) if it is missing
        self.options: dict[str, Any] = {
            "config": str(self.conf), "state": str(self.state), "nginx": NGINX,
            "reload": ["sh", "-c", COUNT, "reload", str(self.reloads)],
            "vars": {"pid": str(self.pid), "listen": LISTEN},
        }
        self.write_yml(**options)

    def write_yml(self, **changes: Any) -> None:
        """config.yml as JSON (YAML reads it); an option set to `...` is dropped."""
        self.options.update(changes)
        entry = {"type": "nginx", **{k: v for k, v in self.options.items() if v is not ...}}
        self.yml.write_text(json.dumps({"handlers": [entry]}, indent=1) + "\n")

    def run(self, event: str | None, stdin: bytes = b"", args: tuple[str, ...] = ()
            ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([SERF_HANDLE, "--config", str(self.yml), *args], input=stdin, capture_output=True,
                              env=self.env(event), timeout=60, check=False)

    def env(self, event: str | None) -> dict[str, str]:
        env = clean_environ()
        env["SERF_HANDLERS_CACHE_DIR"] = str(self.dir / "cache")
        env["SERF_SELF_NAME"], env["SERF_SELF_ROLE"] = "lb", "lb"
        if event is not None:
            env["SERF_EVENT"] = event
        if self.bin.exists():
            env["PATH"] = f"{self.bin}:{env.get('PATH', '')}"
        return env

    def ask(self, payload: bytes, name: str = "backends") -> subprocess.CompletedProcess[bytes]:
        """A Serf query, as the agent runs the handler for it: the payload on stdin."""
        env = {**self.env("query"), "SERF_QUERY_NAME": name, "SERF_QUERY_LTIME": "7"}
        return subprocess.run([SERF_HANDLE, "--config", str(self.yml)], input=payload, capture_output=True,
                              env=env, timeout=60, check=False)

    def handler(self) -> NginxHandler:
        """The handler this config.yml makes, to call in-process."""
        return NginxHandler(**self.options)

    def ok(self, event: str | None, *lines: bytes, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[bytes]:
        done = self.run(event, b"".join(lines), args)
        assert done.returncode == 0, stderr_lines(done)
        return done

    def text(self) -> str:
        return self.conf.read_text()

    def upstreams(self) -> dict[str, list[Srv]]:
        return upstreams(self.text())

    def routes(self) -> dict[str, str]:
        return routes(self.text())

    def kept(self) -> dict[str, dict[str, Any]]:
        members: dict[str, dict[str, Any]] = self.record()["members"]
        return members

    def record(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.state.read_bytes())
        return data

    def reload_count(self) -> int:
        return len(reload_lines(self.reloads))

    def snapshot(self) -> tuple[object, ...]:
        """What must stay untouched: the config's inode, mtime and bytes, and the state."""
        st = self.conf.stat()
        state = self.state.read_bytes() if self.state.exists() else None
        return st.st_ino, st.st_mtime_ns, self.conf.read_bytes(), state

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir() if p.name.endswith(".tmp"))

    def fake_serf(self, members: Sequence[tuple[str, str, str, Mapping[str, str]]]) -> None:
        """A `serf` first on PATH whose `members -format json` prints these (name, addr, status, tags)."""
        self.bin.mkdir(exist_ok=True)
        listing = self.dir / "members.json"
        listing.write_text(json.dumps({"members": [
            {"name": name, "addr": f"[{addr}]:7946" if ":" in addr else f"{addr}:7946", "port": 7946,
             "status": status, "tags": dict(tags)} for name, addr, status, tags in members]}))
        serf = self.bin / "serf"
        serf.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write(open({str(listing)!r}).read())\n")
        serf.chmod(0o755)


def nginx_t(path: Path) -> tuple[bool, str]:
    """Debian's `nginx -t` on a file: (accepted, what it said)."""
    assert NGINX is not None
    done = subprocess.run([NGINX, "-t", "-q", "-c", str(path)], capture_output=True, timeout=30, check=False)
    return done.returncode == 0, (done.stdout + done.stderr).decode("utf-8", "replace")


def accepted(site: Ngx) -> None:
    ok, said = nginx_t(site.conf)
    assert ok, said


@pytest.fixture
def ngx(tmp_path: Path) -> Ngx:
    return Ngx(tmp_path / "lb")


# --- the config nginx gets ------------------------------------------------------------------


def test_the_config_nginx_accepts_an_upstream_per_backend(ngx: Ngx) -> None:
    ngx.ok("member-join",
           member_line("web2", "10.0.0.2", port="8080"),
           member_line("web1", "10.0.0.1"),
           member_line("web6", "fd00::6", port="81", weight="5"),
           member_line("api1", "10.0.1.1", backend="api", port="9000"),
           member_line("db1", "10.0.9.1", role="db", port="5432"),  # not role web: not a server
           member_line("lb", "10.0.0.9", role="lb"))
    accepted(ngx)
    assert ngx.upstreams() == {
        "api": [up("api1", "10.0.1.1:9000")],
        "web": [up("web1", "10.0.0.1:80"), up("web2", "10.0.0.2:8080"), up("web6", "[fd00::6]:81", 5)],
    }
    assert ngx.routes() == {"": "web", "api": "api"}
    text = ngx.text()
    # What every upstream and proxy location has: passive checks shared by the workers (zone),
    # keep-alive to the servers, retries on another server, a bounded shutdown of old workers.
    for line in ("worker_shutdown_timeout 30s;", "proxy_next_upstream error timeout http_502 http_503 http_504;",
                 "proxy_http_version 1.1;", 'proxy_set_header Connection "";', "proxy_set_header Host $host;",
                 f"pid {ngx.pid};"):
        assert line in text, line
    assert "db1" not in text and "10.0.9.1" not in text and "lb" not in upstreams(text)
    assert ngx.leftovers() == [] and ngx.conf.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("tags", "server"),
    [
        pytest.param({}, up("web1", "10.0.0.1:80"), id="defaults"),
        pytest.param({"port": "8080"}, up("web1", "10.0.0.1:8080"), id="port tag"),
        pytest.param({"port": "0081"}, up("web1", "10.0.0.1:81"), id="port with leading zeros"),
        pytest.param({"port": "65535"}, up("web1", "10.0.0.1:65535"), id="the highest port"),
        pytest.param({"weight": "7"}, up("web1", "10.0.0.1:80", 7), id="weight"),
        pytest.param({"weight": "256"}, up("web1", "10.0.0.1:80", 256), id="the highest weight"),
        pytest.param({"weight": "0"}, up("web1", "10.0.0.1:80", 1, True), id="weight 0 is down"),
        pytest.param({"state": "ready"}, up("web1", "10.0.0.1:80"), id="state ready"),
        pytest.param({"state": "drain"}, up("web1", "10.0.0.1:80", 1, True), id="state drain is down"),
        pytest.param({"state": "maint", "weight": "3"}, up("web1", "10.0.0.1:80", 3, True), id="state maint is down"),
    ],
)
def test_port_weight_and_state_tags(ngx: Ngx, tags: dict[str, str], server: Srv) -> None:
    # web2 keeps the backend usable, so that web1's line is there whatever its state.
    ngx.ok("member-join", member_line("web1", "10.0.0.1", **tags), member_line("web2", "10.0.0.2"))
    accepted(ngx)
    assert ngx.upstreams() == {"web": [server, up("web2", "10.0.0.2:80")]}


def test_the_port_option_and_the_backend_option(tmp_path: Path) -> None:
    ngx = Ngx(tmp_path, port=8000, backend="shop")
    ngx.ok("member-join", member_line("web1", "10.0.0.1"), member_line("web2", "10.0.0.2", port="8001"),
           member_line("api1", "10.0.1.1", backend="api"))
    accepted(ngx)
    assert ngx.upstreams() == {"api": [up("api1", "10.0.1.1:8000")],
                               "shop": [up("web1", "10.0.0.1:8000"), up("web2", "10.0.0.2:8001")]}
    assert ngx.routes() == {"": "shop", "api": "api"}


def test_a_backend_without_a_usable_server_answers_503_and_has_no_upstream(ngx: Ngx) -> None:
    # No member at all: the default backend answers 503 (nginx refuses an empty upstream).
    ngx.ok(None, args=("render", "--write"))
    accepted(ngx)
    assert ngx.upstreams() == {} and ngx.routes() == {"": "503"}

    ngx.ok("member-join", member_line("web1", "10.0.0.1"), member_line("api1", "10.0.1.1", backend="api"),
           member_line("api2", "10.0.1.2", backend="api"))
    assert ngx.routes() == {"": "web", "api": "api"}
    # Every api server drained or at weight 0: an upstream of `down` servers would answer 502.
    ngx.ok("member-update", member_line("api1", "10.0.1.1", backend="api", state="drain"),
           member_line("api2", "10.0.1.2", backend="api", weight="0"))
    accepted(ngx)
    assert ngx.upstreams() == {"web": [up("web1", "10.0.0.1:80")]}
    assert ngx.routes() == {"": "web", "api": "503"}
    # One of them ready again: the upstream is back, the down one listed as down.
    ngx.ok("member-update", member_line("api2", "10.0.1.2", backend="api"))
    assert ngx.upstreams()["api"] == [up("api1", "10.0.1.1:80", 1, True), up("api2", "10.0.1.2:80")]
    # The default backend's last server leaves: 503 there, api still served.
    ngx.ok("member-leave", member_line("web1", "10.0.0.1"))
    accepted(ngx)
    assert ngx.routes() == {"": "503", "api": "api"} and set(ngx.upstreams()) == {"api"}


def test_host_routing_one_server_block_per_backend(ngx: Ngx) -> None:
    ngx.ok("member-join", member_line("web1", "10.0.0.1"), member_line("a1", "10.0.1.1", backend="api"),
           member_line("s1", "10.0.2.1", backend="shop.example.com"), member_line("x1", "10.0.3.1", backend="X-2"),
           member_line("x2", "10.0.3.2", backend="x-2"))
    accepted(ngx)
    # Host names are compared without case, and so are nginx's upstream names: one backend x-2.
    assert ngx.routes() == {"": "web", "api": "api", "shop.example.com": "shop.example.com", "x-2": "x-2"}
    assert ngx.upstreams()["x-2"] == [up("x1", "10.0.3.1:80"), up("x2", "10.0.3.2:80")]
    # A member moving to another backend moves its server.
    ngx.ok("member-update", member_line("a1", "10.0.1.1", backend="shop.example.com"))
    accepted(ngx)
    assert ngx.routes() == {"": "web", "shop.example.com": "shop.example.com", "x-2": "x-2"}
    assert ngx.upstreams()["shop.example.com"] == [up("a1", "10.0.1.1:80"), up("s1", "10.0.2.1:80")]


@pytest.mark.parametrize("backend", ["a.", "1", "80", "0.0.0.0", "localhost", "a-", "x" * 64, "Web"])
def test_every_backend_name_the_handler_accepts_is_one_nginx_accepts(ngx: Ngx, backend: str) -> None:
    ngx.ok("member-join", member_line("web1", "10.0.0.1"), member_line("b1", "10.0.1.1", backend=backend))
    accepted(ngx)
    assert up("b1", "10.0.1.1:80") in ngx.upstreams()[backend.lower()]


def test_role_failed_and_leaving_members(ngx: Ngx) -> None:
    ngx.ok("member-join", member_line("web1", "10.0.0.1"), member_line("web2", "10.0.0.2"),
           member_line("web3", "10.0.0.3"))
    ngx.ok("member-failed", member_line("web2", "10.0.0.2"))
    assert [s.node for s in ngx.upstreams()["web"]] == ["web1", "web3"]
    assert ngx.kept()["web2"]["status"] == "failed"
    ngx.ok("member-join", member_line("web2", "10.0.0.2"))
    assert [s.node for s in ngx.upstreams()["web"]] == ["web1", "web2", "web3"]
    ngx.ok("member-update", member_line("web3", "10.0.0.3", role="db"))  # its role changed away
    assert [s.node for s in ngx.upstreams()["web"]] == ["web1", "web2"]
    ngx.ok("member-leave", member_line("web1", "10.0.0.1"))
    ngx.ok("member-failed", member_line("web2", "10.0.0.2"))
    ngx.ok("member-reap", member_line("web2", "10.0.0.2"))
    accepted(ngx)
    assert ngx.upstreams() == {} and ngx.routes() == {"": "503"}
    assert set(ngx.kept()) == {"web3"}  # the db member is kept (a role change back would add it)


def test_the_role_option(tmp_path: Path) -> None:
    ngx = Ngx(tmp_path, role="app")
    ngx.ok("member-join", member_line("web1", "10.0.0.1"), member_line("app1", "10.0.0.5", role="app", port="3000"))
    assert ngx.upstreams() == {"web": [up("app1", "10.0.0.5:3000")]}
    # A bad port on a member of another role is none of this handler's business.
    ngx.ok("member-join", member_line("web2", "10.0.0.2", port="http"))
    assert ngx.upstreams() == {"web": [up("app1", "10.0.0.5:3000")]}


# --- hostile and invalid members -----------------------------------------------------------

HOSTILE_NAMES = [
    "new\nline",
    "semi;colon",
    "brace{",
    "brace}",
    'quote"name',
    "quote'name",
    "$(touch {canary})",
    "`touch {canary}`",
    "space name",
    "x" * 300,
]
HOSTILE_TAGS = [  # each: one member with these tags (no comma: Serf's tag separator)
    {"port": "80;"},
    {"port": "80 backup"},
    {"port": "http"},
    {"port": "0"},
    {"port": "65536"},
    {"port": "-1"},
    {"weight": "-1"},
    {"weight": "257"},
    {"weight": "1.5"},
    {"weight": "w"},
    {"backend": "-x"},
    {"backend": ".x"},
    {"backend": "a..b"},
    {"backend": "a/b"},
    {"backend": "x" * 65},
    {"backend": "a;b"},
    {"backend": "a{b"},
    {"backend": 'a"b'},
    {"backend": "$(touch {canary})"},
    {"state": "draining"},
    {"state": "DRAIN"},
    {"state": ""},
    {"dc": "ams;\n}"},  # any tag: the pipeline keeps no value outside its safe characters
    {"q'uote": "1"},
]


def names_tag(line: str, tag: str) -> bool:
    """Whether a refusal names the tag: `tag port='x'` (the handler's) or `tag 'port'='x'` (the pipeline's)."""
    quoted = repr(tag)
    return any(f"tag {name}=" in line for name in (tag, quoted, quoted.replace('"', '\\"')))  # the log escapes "


def test_hostile_members_are_skipped_by_name_and_the_others_applied(ngx: Ngx, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    good = [member_line("web1", "10.0.0.1"), member_line("web2", "::2", port="8080"),
            member_line("api1", "10.0.1.1", backend="api")]
    bad = [member_line(name.replace("{canary}", str(canary)), "10.0.0.66") for name in HOSTILE_NAMES]
    bad += [member_line(f"tagged{i}", "10.0.0.77", **{k: v.replace("{canary}", str(canary)) for k, v in tags.items()})
            for i, tags in enumerate(HOSTILE_TAGS)]
    done = ngx.run("member-join", b"".join([good[0], *bad, good[1], good[2]]))

    error = the_error(done, HANDLER)
    assert f"{len(bad)} member(s) skipped: " in error
    skipped = [line for line in stderr_lines(done) if f" ERROR nginx {ngx.conf}: member skipped: member " in line]
    assert len(skipped) == len(bad), skipped  # one record per member
    for i, tags in enumerate(HOSTILE_TAGS):
        (line,) = [s for s in skipped if f"member 'tagged{i}': tag " in s]
        assert names_tag(line, next(iter(tags))), line
    accepted(ngx)
    assert ngx.upstreams() == {"api": [up("api1", "10.0.1.1:80")],
                               "web": [up("web1", "10.0.0.1:80"), up("web2", "[::2]:8080")]}
    assert set(ngx.kept()) == {"web1", "web2", "api1"}
    text = ngx.text()
    for fragment in ("10.0.0.66", "10.0.0.77", "$(", "`", "canary", "tagged", "'", "backup", "-x"):
        assert fragment not in text, fragment
    assert not list(tmp_path.glob("canary*")), "a member's data reached a shell"
    assert ngx.reload_count() == 1


def test_a_bad_tag_in_an_update_keeps_the_members_old_form(ngx: Ngx) -> None:
    ngx.ok("member-join", member_line("web1", "10.0.0.1", port="8081", weight="2"))
    before = ngx.snapshot()
    for tags in ({"port": "80;"}, {"weight": "1000"}, {"backend": "a..b"}, {"state": "gone"}):
        done = ngx.run("member-update", member_line("web1", "10.0.0.1", **tags))
        error = the_error(done, HANDLER)
        assert "member 'web1': tag " in error and names_tag(error, next(iter(tags))), error
    assert ngx.snapshot() == before and ngx.reload_count() == 1
    assert ngx.upstreams() == {"web": [up("web1", "10.0.0.1:8081", 2)]}


# --- a refused candidate ----------------------------------------------------------------------


def test_a_candidate_nginx_refuses_leaves_the_config_byte_identical(ngx: Ngx, tmp_path: Path) -> None:
    ngx.ok("member-join", member_line("web1", "10.0.0.1"))
    before, reloads = ngx.snapshot()[:3], ngx.reload_count()
    bad = tmp_path / "bad.conf.j2"
    bad.write_text("events {}\nhttp {\n    frobnicate {{ backends | length }};\n}\n")
    ngx.write_yml(template=str(bad))

    done = ngx.run("member-join", member_line("web2", "10.0.0.2"))

    error = the_error(done, HANDLER)
    lines = stderr_lines(done)
    assert len(lines) == 2, lines  # the ERROR record and the summary: one line each
    assert "check command [" in error and "'-t', '-q', '-c'" in error and "exited 1" in error
    assert 'unknown directive \\"frobnicate\\"' in error, error  # nginx's own words
    assert ngx.snapshot()[:3] == before, "the installed config was touched"
    assert ngx.reload_count() == reloads and ngx.leftovers() == []
    assert set(ngx.kept()) == {"web1", "web2"}  # the members are kept for the run after the fix
    assert ngx.record()["reload_pending"] is None

    # `status` and `check` say so; fixed, the next run installs the kept members and reloads.
    status = ngx.run(None, args=("status",))
    assert status.returncode == 1 and "behind the members" in status.stdout.decode(), status.stdout.decode()
    check = ngx.run(None, args=("check",))
    assert check.returncode == 1 and "frobnicate" in check.stderr.decode()
    ngx.write_yml(template=...)
    ngx.ok("member-join", member_line("web3", "10.0.0.3"))
    accepted(ngx)
    assert [s.node for s in ngx.upstreams()["web"]] == ["web1", "web2", "web3"]
    assert ngx.reload_count() == reloads + 1


def test_an_own_template_gets_the_same_context(ngx: Ngx, tmp_path: Path) -> None:
    template = tmp_path / "own.conf.j2"
    template.write_text(
        "pid {{ pid }};\nerror_log {{ error_log }};\nevents {}\nhttp {\n"
        "{% for name, servers in backends | dictsort %}{% if servers %}"
        "    upstream {{ name }} {\n{% for s in servers %}        server {{ s.addr }}:{{ s.port }}"
        "{{ ' down' if s.down }}; # {{ s.node }} w{{ s.weight }} {{ s.state }}\n{% endfor %}    }\n{% endif %}"
        "{% endfor %}"
        "    server { listen {{ listen }}; location / { proxy_pass http://{{ default_backend }}; } }\n}\n"
    )
    ngx.write_yml(template=str(template), vars={"pid": str(ngx.pid), "listen": LISTEN, "error_log": "stderr"})
    ngx.ok("member-join", member_line("web1", "10.0.0.1", weight="3"), member_line("web2", "10.0.0.2", state="drain"))
    accepted(ngx)
    assert "server 10.0.0.1:80; # web1 w3 ready\n" in ngx.text()
    assert "server 10.0.0.2:80 down; # web2 w1 drain\n" in ngx.text()
    assert "proxy_pass http://web;" in ngx.text()
    # `template: null` is the built-in one.
    ngx.write_yml(template=None)
    ngx.ok("member-join", member_line("web3", "10.0.0.3"))
    accepted(ngx)
    assert [s.node for s in ngx.upstreams()["web"]] == ["web1", "web2", "web3"]


# --- when it reloads -----------------------------------------------------------------------------


def test_it_reloads_only_when_the_text_changed(ngx: Ngx) -> None:
    ngx.ok("member-join", member_line("web1", "10.0.0.1"), member_line("web2", "10.0.0.2"))
    assert ngx.reload_count() == 1
    steps: list[tuple[str, bytes, bool]] = [
        ("member-join", member_line("web1", "10.0.0.1"), False),  # the same again
        ("member-update", member_line("web2", "10.0.0.2"), False),  # a stale update
        ("member-update", member_line("web1", "10.0.0.1", dc="ams"), False),  # a tag the config does not use
        ("member-join", member_line("db1", "10.0.9.1", role="db"), False),  # another role
        ("member-failed", member_line("ghost", "10.0.0.66"), False),  # never seen
        ("member-leave", member_line("db1", "10.0.9.1", role="db"), False),
        ("member-update", member_line("web1", "10.0.0.1", dc="ams", weight="4"), True),
        ("member-update", member_line("web2", "10.0.0.2", state="drain"), True),
        ("member-failed", member_line("web2", "10.0.0.2", state="drain"), True),  # its down line goes
        ("member-leave", member_line("web2", "10.0.0.2"), False),  # already out of the config
        ("member-leave", member_line("web1", "10.0.0.1"), True),
    ]
    for event, line, changes in steps:
        count, before = ngx.reload_count(), ngx.snapshot()[:3]
        ngx.ok(event, line)
        assert ngx.reload_count() == count + changes, (event, line)
        assert (ngx.snapshot()[:3] == before) == (not changes), (event, line)
    ngx.ok(None, args=("render", "--write"))  # current already: nothing written, no reload
    assert ngx.reload_count() == 1 + sum(c for _e, _l, c in steps)


def test_a_failed_reload_is_remembered_and_retried_by_the_next_run(ngx: Ngx, tmp_path: Path) -> None:
    down = tmp_path / "nginx-down"
    ngx.write_yml(reload=["sh", "-c", FLAKY, "reload", str(ngx.reloads), str(down)])
    ngx.ok("member-join", member_line("web1", "10.0.0.1"))
    down.touch()

    done = ngx.run("member-join", member_line("web2", "10.0.0.2"))

    error = the_error(done, HANDLER)
    assert "reload command ['sh', '-c'" in error and "exited 1: nginx is not running" in error
    accepted(ngx)
    assert [s.node for s in ngx.upstreams()["web"]] == ["web1", "web2"]  # installed, not known to be loaded
    status = ngx.run(None, args=("status",))
    assert status.returncode == 1, stderr_lines(status)
    assert "reload pending: " in status.stdout.decode() and "the next run retries it" in status.stdout.decode()
    # Still failing: still owed, even though the file is current.
    assert ngx.run("member-update", member_line("web2", "10.0.0.2")).returncode == 1
    assert ngx.reload_count() == 1

    down.unlink()
    ngx.ok("member-update", member_line("web2", "10.0.0.2"))  # nothing changed, but the reload is owed
    assert ngx.reload_count() == 2
    assert ngx.run(None, args=("status",)).returncode == 0 and ngx.record()["reload_pending"] is None
    ngx.ok("member-update", member_line("web2", "10.0.0.2"))
    assert ngx.reload_count() == 2  # paid once


def test_a_run_failing_for_another_reason_still_names_the_members_it_skipped(ngx: Ngx, tmp_path: Path) -> None:
    down = tmp_path / "nginx-down"
    down.touch()
    ngx.write_yml(reload=["sh", "-c", FLAKY, "reload", str(ngx.reloads), str(down)])
    done = ngx.run("member-join", member_line("web1", "10.0.0.1") + member_line("bad", "10.0.0.66", port="80;"))
    lines = stderr_lines(done)
    assert done.returncode == 1 and lines[-1].startswith(f"serf-handle: error: handler {HANDLER} failed: "), lines
    # Both failures, each once: the member skipped, then the reload (run once the handlers are done).
    skipped, reload = [line for line in lines if f" ERROR handler {HANDLER} failed: " in line]
    assert "1 member(s) skipped: member 'bad': tag 'port'='80;'" in skipped and "not running" not in skipped
    assert "exited 1: nginx is not running" in reload
    said = f" ERROR nginx {ngx.conf}: member skipped: member 'bad': tag "
    assert len([line for line in lines if said in line]) == 1, lines
    assert ngx.upstreams() == {"web": [up("web1", "10.0.0.1:80")]}


def test_the_default_check_and_reload_are_the_nginx_binary(ngx: Ngx, tmp_path: Path) -> None:
    """`nginx: PATH` runs `PATH -t -q -c <candidate>` and, with no `reload`, `PATH -c <config>
    -s reload`: with no nginx running that fails, in nginx's words, and stays owed."""
    calls = tmp_path / "calls"
    wrapper = tmp_path / "nginx-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {NGINX} "$@"\n')
    wrapper.chmod(0o755)
    ngx.write_yml(nginx=str(wrapper), reload=...)

    done = ngx.run("member-join", member_line("web1", "10.0.0.1"))

    error = the_error(done, HANDLER)
    assert f"reload command ['{wrapper}', '-c', '{ngx.conf}', '-s', 'reload'] exited 1" in error
    assert str(ngx.pid) in error  # nginx: no (valid) PID in the pid file
    check, reload = calls.read_text().splitlines()
    assert re.fullmatch(rf"-t -q -c {re.escape(str(ngx.dir))}/\.nginx\.conf\.\d+\.[0-9a-f]{{8}}\.tmp", check), check
    assert reload == f"-c {ngx.conf} -s reload"
    assert ngx.run(None, args=("status",)).returncode == 1
    # `check: false`: no `nginx -t`; the owed reload is tried again by the next run.
    ngx.write_yml(check=False)
    assert ngx.run("member-join", member_line("web2", "10.0.0.2")).returncode == 1
    assert calls.read_text().splitlines()[2:] == [f"-c {ngx.conf} -s reload"]


def test_backup_keeps_the_previous_config(tmp_path: Path) -> None:
    ngx = Ngx(tmp_path, backup=True)
    ngx.ok("member-join", member_line("web1", "10.0.0.1"))
    first = ngx.conf.read_bytes()
    ngx.ok("member-join", member_line("web2", "10.0.0.2"))
    assert Path(f"{ngx.conf}.bak").read_bytes() == first and ngx.conf.read_bytes() != first


# --- the commands ----------------------------------------------------------------------------------


def test_status_render_diff_and_check(ngx: Ngx) -> None:
    status = ngx.run(None, args=("status",))
    assert status.returncode == 0 and f"file: {ngx.conf}: not written yet" in status.stdout.decode()

    ngx.ok("member-join", member_line("web1", "10.0.0.1"), member_line("web2", "::2"))
    installed = ngx.conf.read_bytes()
    status = ngx.ok(None, args=("status",))
    assert status.stdout.decode().splitlines() == [
        f"# {HANDLER}", "web1 10.0.0.1 role=web alive", "web2 ::2 role=web alive", f"file: {ngx.conf}: as installed",
        "servers nginx was last given (in the installed config, reloaded):",
        "BACKEND  SERVER       WEIGHT  STATE  NODE",
        "web      10.0.0.1:80  1       ready  web1",
        "web      [::2]:80     1       ready  web2",
    ]
    assert ngx.ok(None, args=("render",)).stdout == installed
    diff = ngx.run(None, args=("render", "--diff"))
    assert diff.returncode == 0 and diff.stdout == b""
    check = ngx.ok(None, args=("check",))
    assert f"handler {HANDLER}: renders {len(installed)} bytes for {ngx.conf}; the check accepts it" in \
        check.stdout.decode()

    # Edited behind the handler's back: status and --diff say so; --diff writes nothing.
    ngx.conf.write_text(ngx.conf.read_text().replace("10.0.0.1:80", "6.6.6.6:80"))
    status = ngx.run(None, args=("status",))
    assert status.returncode == 1 and "changed since this handler installed it" in status.stdout.decode()
    diff = ngx.run(None, args=("render", "--diff"))
    assert diff.returncode == 1
    text = diff.stdout.decode()
    assert text.startswith(f"--- {ngx.conf}\n+++ {ngx.conf} (rendered from {ngx.state})\n")
    assert "-        server 6.6.6.6:80 " in text and "+        server 10.0.0.1:80 " in text
    assert b"6.6.6.6" in ngx.conf.read_bytes()

    ngx.ok(None, args=("render", "--write"))  # checked, installed, no reload
    assert ngx.conf.read_bytes() == installed and ngx.reload_count() == 1
    assert ngx.run(None, args=("render", "--diff")).returncode == 0
    assert ngx.run(None, args=("status",)).returncode == 0


def servers_in_status(ngx: Ngx) -> tuple[str, list[list[str]]]:
    """`status`: the heading over the servers, and their rows (cells: two spaces or more apart)."""
    lines = ngx.run(None, args=("status",)).stdout.decode().splitlines()
    (at,) = [i for i, line in enumerate(lines) if line.startswith("servers ")]
    assert lines[at + 1].split() == ["BACKEND", "SERVER", "WEIGHT", "STATE", "NODE"]
    return lines[at], [re.split(r"  +", line) for line in lines[at + 2:]]


def test_status_shows_the_servers_nginx_was_last_given(ngx: Ngx, tmp_path: Path) -> None:
    down = tmp_path / "nginx-down"
    ngx.write_yml(reload=["sh", "-c", FLAKY, "reload", str(ngx.reloads), str(down)])
    ngx.ok("member-join", member_line("web1", "10.0.0.1", weight="3"), member_line("web2", "fd00::2", port="8080"),
           member_line("web3", "10.0.0.3", state="drain"),
           member_line("api1", "10.0.1.1", backend="api", state="maint"), member_line("db1", "10.0.9.1", "db"))
    heading, rows = servers_in_status(ngx)
    assert heading == "servers nginx was last given (in the installed config, reloaded):"
    assert rows == [
        ["api", "10.0.1.1:80", "1", "down (maint)", "api1"],
        ["api", "-", "-", "no usable server: answers 503", "-"],
        ["web", "10.0.0.1:80", "3", "ready", "web1"],
        ["web", "[fd00::2]:8080", "1", "ready", "web2"],
        ["web", "10.0.0.3:80", "1", "down (drain)", "web3"],
    ]
    assert {s.address for s in ngx.upstreams()["web"]} == {"10.0.0.1:80", "[fd00::2]:8080", "10.0.0.3:80"}

    down.touch()  # installed, but the reload fails: nginx still runs the servers before it
    assert ngx.run("member-leave", member_line("web1", "10.0.0.1")).returncode == 1
    heading, rows = servers_in_status(ngx)
    assert heading == "servers in the installed config; nginx has not loaded it yet (reload pending):"
    assert [row[4] for row in rows if row[0] == "web"] == ["web2", "web3"]
    down.unlink()
    ngx.ok("member-update", member_line("web2", "fd00::2", port="8080"))  # pays the reload
    assert servers_in_status(ngx)[0] == "servers nginx was last given (in the installed config, reloaded):"

    ngx.conf.write_text(ngx.conf.read_text().replace("10.0.0.3:80", "6.6.6.6:80"))  # behind our back
    heading, rows = servers_in_status(ngx)
    assert heading == "servers the members call for; not in the installed config (see above):"


def test_reconcile_rebuilds_from_serf_and_reports_a_bad_member(ngx: Ngx) -> None:
    ngx.ok("member-join", member_line("web1", "10.0.0.1"), member_line("old", "10.0.0.99"))
    ngx.fake_serf([
        ("web1", "10.0.0.1", "alive", {"role": "web", "port": "8080"}),
        ("web2", "10.0.0.2", "failed", {"role": "web"}),
        ("web3", "fd00::3", "alive", {"role": "web", "backend": "api"}),
        ("db1", "10.0.9.1", "alive", {"role": "db"}),
        ("bad", "10.0.0.66", "alive", {"role": "web", "weight": "heavy"}),
    ])
    done = ngx.run(None, args=("reconcile",))
    assert done.returncode == 1 and "member 'bad': tag weight='heavy': expected 0-256" in done.stderr.decode()
    accepted(ngx)
    assert ngx.upstreams() == {"api": [up("web3", "[fd00::3]:80")], "web": [up("web1", "10.0.0.1:8080")]}
    assert ngx.kept()["web2"]["status"] == "failed" and "old" not in ngx.kept() and "bad" not in ngx.kept()
    assert ngx.reload_count() == 2

    ngx.fake_serf([("web1", "10.0.0.1", "alive", {"role": "web", "port": "8080"}),
                   ("web3", "fd00::3", "alive", {"role": "web", "backend": "api"})])
    ngx.ok(None, args=("reconcile",))
    assert ngx.reload_count() == 2  # nothing in the config changed
    assert ngx.run(None, args=("status",)).returncode == 0


def test_without_a_state_file_events_wait_for_reconcile(ngx: Ngx) -> None:
    ngx.ok("member-join", member_line("web1", "10.0.0.1"), member_line("web2", "10.0.0.2"))
    ngx.state.unlink()
    before = ngx.snapshot()
    done = ngx.run("member-join", member_line("web3", "10.0.0.3"))
    error = the_error(done, HANDLER)
    assert f"{ngx.state}: no state file while {ngx.conf} exists; run `serf-handle reconcile`" in error
    assert ngx.snapshot() == before  # web1 and web2 are not dropped

    ngx.fake_serf([(f"web{i}", f"10.0.0.{i}", "alive", {"role": "web"}) for i in (1, 2, 3)])
    ngx.ok(None, args=("reconcile",))
    assert [s.node for s in ngx.upstreams()["web"]] == ["web1", "web2", "web3"]
    ngx.ok("member-leave", member_line("web1", "10.0.0.1"))
    assert [s.node for s in ngx.upstreams()["web"]] == ["web2", "web3"]


# --- the `backends` query: `drained NODE` ------------------------------------------------------------


def ask(handler: NginxHandler, payload: bytes, name: str = "backends") -> object:
    return handler(Query(name, 7, payload, Node("lb")))


@pytest.mark.parametrize(
    ("event", "line", "reply"),
    [
        pytest.param("member-join", member_line("web1", "10.0.0.1"), "drained=no state=ready\n", id="ready"),
        pytest.param("member-join", member_line("web1", "10.0.0.1", weight="5"), "drained=no state=ready\n",
                     id="ready, weight 5"),
        pytest.param("member-update", member_line("web1", "10.0.0.1", state="drain"), "drained=yes state=down\n",
                     id="state tag drain"),
        pytest.param("member-update", member_line("web1", "10.0.0.1", state="maint"), "drained=yes state=down\n",
                     id="state tag maint"),
        pytest.param("member-update", member_line("web1", "10.0.0.1", weight="0"), "drained=yes state=down\n",
                     id="weight 0"),
        pytest.param("member-update", member_line("web1", "10.0.0.1", backend="api", state="drain"),
                     "drained=yes state=down\n", id="drained in another backend"),
        pytest.param("member-leave", member_line("web1", "10.0.0.1"), "drained=yes absent\n", id="left"),
        pytest.param("member-failed", member_line("web1", "10.0.0.1"), "drained=yes absent\n", id="failed"),
        pytest.param("member-update", member_line("web1", "10.0.0.1", role="db"), "drained=yes absent\n",
                     id="role changed away"),
        pytest.param("member-update", member_line("web1", "10.0.0.1", state="drain", port="80;"),
                     "drained=no state=ready\n", id="a refused update keeps the served form"),
    ],
)
def test_drained_answers_from_the_servers_nginx_was_last_given(ngx: Ngx, event: str, line: bytes, reply: str) -> None:
    ngx.ok("member-join", member_line("web1", "10.0.0.1"), member_line("web2", "10.0.0.2"))
    ngx.run(event, line)  # a refused member fails the run; the others are applied
    assert ngx.run(None, args=("status",)).returncode == 0  # nginx was given all of it
    handler = ngx.handler()
    before = ngx.snapshot()
    assert ask(handler, b"drained web1\n") == reply
    assert ask(handler, b"drained web2\n") == "drained=no state=ready\n"
    assert ask(handler, b"drained web9\n") == "drained=yes absent\n"  # never served
    assert ngx.snapshot() == before  # an answer writes nothing


def test_drained_says_applying_until_nginx_is_known_to_run_the_file(ngx: Ngx, tmp_path: Path) -> None:
    down = tmp_path / "nginx-down"
    ngx.write_yml(reload=["sh", "-c", FLAKY, "reload", str(ngx.reloads), str(down)])
    handler = ngx.handler()
    assert ask(handler, b"drained web1\n") == "drained=no state=applying\n"  # no state file: nothing known
    ngx.ok("member-join", member_line("web1", "10.0.0.1"), member_line("web2", "10.0.0.2"))
    assert ask(handler, b"drained web1\n") == "drained=no state=ready\n"

    down.touch()  # installed with web1 down, but the reload fails: nginx still sends it requests
    assert ngx.run("member-update", member_line("web1", "10.0.0.1", state="drain")).returncode == 1
    assert ngx.upstreams()["web"][0] == up("web1", "10.0.0.1:80", 1, True)  # the file says down...
    assert ngx.record()["reload_pending"] is not None
    assert ask(handler, b"drained web1\n") == "drained=no state=applying\n"  # ...but a reload is owed
    assert ask(handler, b"drained web9\n") == "drained=no state=applying\n"

    down.unlink()
    ngx.ok("member-update", member_line("web1", "10.0.0.1", state="drain"))  # pays the reload
    assert ask(handler, b"drained web1\n") == "drained=yes state=down\n"

    ngx.conf.write_text(ngx.conf.read_text().replace(" down;", ";"))  # behind our back: web1 served again
    assert ask(handler, b"drained web1\n") == "drained=no state=applying\n"
    ngx.state.write_text("{truncated")
    assert ask(handler, b"drained web1\n") == "error=state_unreadable\n"
    assert ask(handler, b"drained \xff\n") == "error=bad_payload node name is not UTF-8\n"  # judged first


@pytest.mark.parametrize(
    ("payload", "reply"),
    [
        pytest.param(b"drained\n", "error=bad_payload expected: drained NODE\n", id="no node"),
        pytest.param(b"drained \n", "error=bad_payload expected: drained NODE\n", id="empty node"),
        pytest.param(b"drained\tweb1\n", "error=bad_payload expected: drained NODE\n", id="tab separator"),
        pytest.param(b"drained web1\x00$(reboot)\n", "error=bad_payload control character in node name\n",
                     id="NUL and a shell substitution"),
        pytest.param(b"drained web1\nweb2\n", "error=bad_payload control character in node name\n",
                     id="newline in the name"),
        pytest.param(b"drained web\x1b[2J\n", "error=bad_payload control character in node name\n",
                     id="terminal escape"),
        pytest.param("drained web\u0085\n".encode(), "error=bad_payload control character in node name\n",
                     id="C1 next line"),
        pytest.param(b"drained \xc3\n", "error=bad_payload node name is not UTF-8\n", id="truncated UTF-8"),
        pytest.param(b"drained " + b"A" * 100_000, "error=bad_payload node name over 512 bytes\n", id="100 KB"),
        pytest.param(b"drained " + b"w" * 512, "drained=yes absent\n", id="512 bytes: a name, never served"),
        pytest.param("drained wéb 1\n".encode(), "drained=yes absent\n", id="unicode and a space"),
    ],
)
def test_a_hostile_drained_payload_gets_one_line(ngx: Ngx, payload: bytes, reply: str) -> None:
    ngx.ok("member-join", member_line("web1", "10.0.0.1"))
    got = ask(ngx.handler(), payload)
    assert got == reply
    assert isinstance(got, str) and len(got.encode()) < reply_budget("x" * 200)


def haproxy_answer(payload: bytes, lines: Sequence[bytes], kept_failed: Sequence[bytes] = ()) -> str:
    """What an haproxy load balancer given the same member lines answers to `payload`."""
    from serf_handlers.events import parse_members
    from serf_handlers.handlers.haproxy._report import digest_line, summary
    from serf_handlers.handlers.haproxy._servers import from_member
    from serf_handlers.handlers.haproxy._state import State

    failed = parse_members(b"".join(kept_failed))
    servers = {m.name: from_member(m.name, m.addr, m.tags, 80, "web")._replace(failed=m in failed)
               for m in parse_members(b"".join([*lines, *kept_failed]))}
    state = State(servers, None)
    return digest_line(state, "web") if payload == b"digest\n" else summary(state, "web", reply_budget("lb"))


MEMBERS = [member_line("web1", "10.0.0.1"), member_line("web2", "10.0.0.2", weight="3", state="drain"),
           member_line("web3", "10.0.0.3", port="8080", backend="api")]
NOT_APPLIED = "error=not_applied (nginx has not loaded what the members call for: see serf-handle status)\n"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\n", id="a newline"),
        pytest.param(b"digests\n", id="another word"),
        pytest.param(b"drainedweb1\n", id="drained, glued"),
        pytest.param(b"\xff" * 2000, id="binary"),
    ],
)
def test_any_other_payload_gets_the_server_list_in_haproxys_words(ngx: Ngx, payload: bytes) -> None:
    ngx.ok("member-join", *MEMBERS)
    reply = ask(ngx.handler(), payload)
    assert reply == "api: web3=10.0.0.3:8080\nweb: web1=10.0.0.1:80 web2=10.0.0.2:80(w=3)(drain)\n"
    assert reply == haproxy_answer(payload, MEMBERS)


def test_the_server_list_is_cut_to_fit_a_reply(ngx: Ngx) -> None:
    many = [member_line(f"node-{i:03d}-" + "x" * 40, f"10.0.0.{i + 1}") for i in range(60)]
    ngx.ok("member-join", *many)
    reply = ask(ngx.handler(), b"")
    assert isinstance(reply, str) and reply.endswith("\ntruncated\n")
    assert len(reply.encode()) <= reply_budget("lb") < len(haproxy_answer(b"", many[:1]) * 60)
    assert reply == haproxy_answer(b"", many)


def test_the_server_list_is_an_error_until_nginx_is_known_to_run_the_file(ngx: Ngx, tmp_path: Path) -> None:
    assert ask(ngx.handler(), b"") == NOT_APPLIED  # no state file: nothing known


# --- the `backends` query: `digest` (serf-handle cluster-check) -----------------------------------


def haproxy_digest(lines: Sequence[bytes], kept_failed: Sequence[bytes] = ()) -> str:
    return haproxy_answer(b"digest\n", lines, kept_failed)


def test_nginx_and_haproxy_serving_the_same_members_give_the_same_digest(ngx: Ngx) -> None:
    ngx.ok("member-join", *MEMBERS)
    before = ngx.snapshot()
    reply = ask(ngx.handler(), b"digest\n")
    assert reply == haproxy_digest(MEMBERS)
    assert isinstance(reply, str) and reply.endswith(" servers=3 backends=2 kept_failed=0\n")
    assert ngx.snapshot() == before  # an answer writes nothing

    ngx.ok("member-update", member_line("web2", "10.0.0.2", weight="3"))  # drain ended: another digest
    assert ask(ngx.handler(), b"digest\n") == haproxy_digest(
        [MEMBERS[0], member_line("web2", "10.0.0.2", weight="3"), MEMBERS[2]])
    ngx.ok("member-failed", MEMBERS[0])  # nginx keeps no failed member; haproxy kept it would differ
    reply = ask(ngx.handler(), b"digest\n")
    assert reply == haproxy_digest([member_line("web2", "10.0.0.2", weight="3"), MEMBERS[2]])
    assert reply != haproxy_digest([member_line("web2", "10.0.0.2", weight="3"), MEMBERS[2]], [MEMBERS[0]])


def test_digest_is_an_error_until_nginx_is_known_to_run_the_file(ngx: Ngx, tmp_path: Path) -> None:
    down = tmp_path / "nginx-down"
    ngx.write_yml(reload=["sh", "-c", FLAKY, "reload", str(ngx.reloads), str(down)])
    handler = ngx.handler()
    assert ask(handler, b"digest\n") == NOT_APPLIED  # no state file: nothing known
    ngx.ok("member-join", MEMBERS[0])
    assert ask(handler, b"digest\n") == haproxy_digest(MEMBERS[:1])
    down.touch()
    assert ngx.run("member-join", MEMBERS[2]).returncode == 1  # installed, the reload failed
    assert ask(handler, b"digest\n") == NOT_APPLIED  # nginx may still serve web1 alone
    ngx.state.write_text("{truncated")
    assert ask(handler, b"digest\n") == "error=state_unreadable\n"


def test_the_query_option_names_the_query_it_answers(ngx: Ngx) -> None:
    ngx.ok("member-join", member_line("web1", "10.0.0.1"))
    handler = ngx.handler()
    assert handler.default_events[-1] == "query:backends"
    assert ask(handler, b"drained web1\n", name="ping") is None  # another query: no reply
    ngx.write_yml(query="lbs")
    handler = ngx.handler()
    assert "query:lbs" in handler.default_events and "query:backends" not in handler.default_events
    assert ask(handler, b"drained web1\n", name="lbs") == "drained=no state=ready\n"
    assert ask(handler, b"drained web1\n") is None


def test_the_query_through_serf_handle(ngx: Ngx) -> None:
    """As the Serf agent runs it: SERF_EVENT=query, the payload on stdin, the reply on stdout
    (Serf sends stdout and stderr back, so nothing else may reach them); exit 0."""
    ngx.ok("member-join", member_line("web1", "10.0.0.1", state="drain"), member_line("web2", "10.0.0.2"))
    for payload, reply in ((b"drained web1\n", b"drained=yes state=down\n"),
                           (b"drained web2\n", b"drained=no state=ready\n"),
                           (b"drained web1\x1b]0;pwned\x07\n", b"error=bad_payload control character in node name\n"),
                           (b"digest\n", haproxy_digest([member_line("web1", "10.0.0.1", state="drain"),
                                                          member_line("web2", "10.0.0.2")]).encode()),
                           (b"\n", b"web: web1=10.0.0.1:80(drain) web2=10.0.0.2:80\n")):
        done = ngx.ask(payload)
        assert (done.returncode, done.stdout, done.stderr) == (0, reply, b""), payload
    # Another query is not the handler's: nothing runs, nothing is said.
    done = ngx.ask(b"drained web1\n", name="ping")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")


def test_an_answer_does_not_wait_for_a_run_holding_the_lock(ngx: Ngx) -> None:
    """Serf runs a node's handlers one at a time: a query that waited for the lock held by
    a run (a reconcile, an `nginx -t`, a reload) would delay every later event."""
    ngx.ok("member-join", member_line("web1", "10.0.0.1", weight="0"))
    before = ngx.snapshot()
    with Lock(f"{ngx.state}.lock"):
        started = time.monotonic()
        done = ngx.ask(b"drained web1\n")
        took = time.monotonic() - started
    assert (done.returncode, done.stdout) == (0, b"drained=yes state=down\n"), stderr_lines(done)
    assert took < 10, f"{took:.1f} s"
    assert ngx.snapshot() == before and ngx.leftovers() == []


def test_the_member_event_path_does_not_load_the_query_helpers() -> None:
    """The query's helpers load only when a query asks (Serf starts a process per event)."""
    code = ("import sys; from serf_handlers.handlers.nginx import _handler; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('serf_handlers'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "serf_handlers.drained" not in done.stdout.split()


# --- configuration errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "says"),
    [
        pytest.param({"frobnicate": 1}, " (nginx): frobnicate: unknown option(s)", id="unknown option"),
        pytest.param({"port": 0}, " (nginx): port: expected a port number, 1-65535", id="port 0"),
        pytest.param({"port": "80"}, " (nginx): port: expected a port number, 1-65535", id="port as a string"),
        pytest.param({"backend": "-x"}, " (nginx): backend: expected a letter or digit", id="backend -x"),
        pytest.param({"backend": "a..b"}, " (nginx): backend: expected a letter or digit", id="backend a..b"),
        pytest.param({"backend": "x" * 65}, " (nginx): backend: expected a letter or digit", id="backend too long"),
        pytest.param({"backend": ""}, " (nginx): backend: expected a non-empty string", id="backend empty"),
        pytest.param({"role": ["web"]}, ".role: expected a non-empty string", id="role a list"),
        pytest.param({"config": "nginx.conf"}, " (nginx): config: expected an absolute path", id="config relative"),
        pytest.param({"config": None}, " (nginx): config: expected an absolute path", id="config null"),
        pytest.param({"state": "state.json"}, " (nginx): state: expected an absolute path", id="state relative"),
        pytest.param({"template": "own.j2"}, " (nginx): template: expected an absolute path", id="template relative"),
        pytest.param({"reload": "nginx -s reload"}, " (nginx): reload: expected a command as a list of strings",
                     id="reload a shell string"),
        pytest.param({"reload": []}, " (nginx): reload: expected a command as a list of strings", id="reload empty"),
        pytest.param({"check": "yes"}, " (nginx): check: expected true or false", id="check a string"),
        pytest.param({"check": ["nginx", "-t"]}, " (nginx): check: expected true or false", id="check an argv"),
        pytest.param({"vars": ["listen"]}, " (nginx): vars: expected a mapping", id="vars a list"),
        pytest.param({"nginx": ""}, " (nginx): nginx: expected a non-empty string", id="nginx empty"),
        pytest.param({"backup": "no"}, " (nginx): backup: expected true or false", id="backup a string"),
        pytest.param({"query": "back ends"}, " (nginx): query: expected a query name (no spaces or commas)",
                     id="query with a space"),
        pytest.param({"query": "a,b"}, " (nginx): query: expected a query name (no spaces or commas)",
                     id="query with a comma"),
        pytest.param({"query": None}, " (nginx): query: expected a query name (no spaces or commas)",
                     id="query null"),
    ],
)
def test_config_errors_exit_2_naming_the_option(ngx: Ngx, options: dict[str, Any], says: str) -> None:
    ngx.ok("member-join", member_line("web1", "10.0.0.1"))
    before = ngx.snapshot()
    ngx.write_yml(**options)
    for event, args in (("member-join", ()), (None, ("render",)), (None, ("status",)), (None, ("check",))):
        done = ngx.run(event, member_line("web2", "10.0.0.2"), args)
        lines = stderr_lines(done)
        assert done.returncode == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"serf-handle: error: {ngx.yml}: handlers[0]{says}"), lines
    assert ngx.snapshot() == before and ngx.reload_count() == 1


# --- kill -9 ------------------------------------------------------------------------------------------

POOL = [(f"node{i}", f"127.0.1.{i + 1}", 9000 + i) for i in range(6)]
CRASH_SECONDS = 9.0  # the random kills; the whole test stays around 15 s
CRASH_UPDATES = 80


def spawn(ngx: Ngx, event: str, stdin: bytes, stderr: Path) -> subprocess.Popen[bytes]:
    """One run in its own process group (a kill takes its `nginx -t` and reload too)."""
    with open(stderr, "wb") as err:
        run = subprocess.Popen([SERF_HANDLE, "--config", str(ngx.yml)], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=err, env=ngx.env(event), start_new_session=True)
    assert run.stdin is not None
    run.stdin.write(stdin)
    run.stdin.close()
    return run


def kill_group(run: subprocess.Popen[bytes]) -> None:
    if run.poll() is None:
        os.killpg(run.pid, signal.SIGKILL)  # the group still exists: its leader is not reaped yet
    run.wait(30)


def test_kill_9_at_random_points_then_one_reconcile(tmp_path: Path) -> None:
    pid = tmp_path / "nginx.pid"  # one for both sites, so that their configs can be byte-identical
    ngx = Ngx(tmp_path / "site", pid=pid)
    ngx.write_yml(reload=record_reload_argv(ngx.reloads, ngx.conf))  # each reload: the loaded config's hash
    ngx.ok(None, args=("render", "--write"))
    empty = ngx.conf.read_bytes()
    times = []
    for name, addr, port in POOL[:2]:
        for kind in ("member-join", "member-leave"):
            started = time.monotonic()
            ngx.ok(kind, member_line(name, addr, port=str(port)))
            times.append(time.monotonic() - started)
    typical = statistics.median(times)
    checked: dict[str, tuple[bool, str]] = {}
    rng = random.Random(19)
    model: set[str] = set()
    kills = 0
    deadline = time.monotonic() + CRASH_SECONDS
    for update in range(CRASH_UPDATES):
        if time.monotonic() > deadline:
            break
        name, addr, port = rng.choice(POOL)
        kind = "member-leave" if name in model else "member-join"
        model ^= {name}
        err = tmp_path / "stderr"
        run = spawn(ngx, kind, member_line(name, addr, port=str(port)), err)
        try:
            time.sleep(rng.uniform(0, typical))
            if run.poll() is None:
                kills += 1
            kill_group(run)
        finally:
            kill_group(run)
        if run.returncode != -signal.SIGKILL:
            assert run.returncode == 0, (update, err.read_text())
        # After every kill: a complete config nginx accepts, and a state file that loads.
        config = ngx.conf.read_bytes()
        key = sha(config)
        if key not in checked:
            (tmp_path / "checked.conf").write_bytes(config)
            checked[key] = nginx_t(tmp_path / "checked.conf")
        assert checked[key][0], (update, checked[key][1])
        if ngx.state.exists():
            _record.load(str(ngx.state))  # parses and validates, or raises
    assert kills >= 5, f"only {kills} runs were killed: the test proves little"

    # Events lost to kills are not redelivered by Serf: one reconcile is what heals.
    members = [(name, addr, "alive", {"role": "web", "port": str(port)}) for name, addr, port in POOL if name in model]
    ngx.fake_serf(members)
    ngx.ok(None, args=("reconcile",))
    clean = Ngx(tmp_path / "clean", pid=pid)
    clean.fake_serf(members)
    clean.ok(None, args=("reconcile",))
    assert ngx.conf.read_bytes() == clean.conf.read_bytes()
    assert ngx.kept() == clean.kept() and ngx.record()["reload_pending"] is None
    hashes = reload_lines(ngx.reloads)
    assert (hashes and hashes[-1] == sha(ngx.conf.read_bytes())) or (not hashes and ngx.conf.read_bytes() == empty), \
        "the config nginx was last told to load is not the installed one"
    assert ngx.run(None, args=("status",)).returncode == 0


def test_kill_between_install_and_reload_is_owed_and_paid_by_the_next_run(ngx: Ngx, tmp_path: Path) -> None:
    started = tmp_path / "reload-started"
    ngx.write_yml(reload=["sh", "-c", f'touch {started}; sleep 30; echo reload >> "$1"', "reload", str(ngx.reloads)])
    run = spawn(ngx, "member-join", member_line("web1", "10.0.0.1"), tmp_path / "stderr")
    try:
        deadline = time.monotonic() + 20
        while not started.exists():
            assert time.monotonic() < deadline and run.poll() is None, "the reload never started"
            time.sleep(0.01)
    finally:
        kill_group(run)
    accepted(ngx)
    assert [s.node for s in ngx.upstreams()["web"]] == ["web1"]
    status = ngx.run(None, args=("status",))
    assert status.returncode == 1 and "reload pending: installed; the reload did not run yet" in status.stdout.decode()

    ngx.write_yml(reload=["sh", "-c", COUNT, "reload", str(ngx.reloads)])
    before = ngx.snapshot()[:3]
    ngx.ok("member-join", member_line("web1", "10.0.0.1"))  # nothing to change, the reload still owed
    assert ngx.reload_count() == 1 and ngx.snapshot()[:3] == before
    assert ngx.run(None, args=("status",)).returncode == 0



@pytest.mark.parametrize(
    ("vars", "line"),
    [
        pytest.param({}, "keepalive_timeout 75s;", id="default"),
        pytest.param({"keepalive_timeout": "0"}, "keepalive_timeout 0;", id="no client keep-alive (nginx < 1.27.4)"),
    ],
)
def test_client_keepalive_is_a_variable(ngx: Ngx, vars: dict[str, str], line: str) -> None:
    ngx.write_yml(vars={**ngx.options["vars"], **vars})
    ngx.ok("member-join", member_line("web1", "10.0.0.1"))
    assert f"    {line}\n" in ngx.text() and "keepalive_min_timeout" not in ngx.text()
    accepted(ngx)
