"""The `type: template` handler through the real `serf-handle`, exactly as Serf runs it: a
config.yml in tmp_path, SERF_* in the environment, member lines on stdin.

- Member events render the file (`members`, `by_role`, `by_tag`, `node`, `vars`; `role`
  and `status` choose the members).
- Bad input (a broken template, an undefined variable, a candidate the check refuses,
  hostile member names and tags, a corrupt state file) leaves the destination
  byte-identical, with one error line and exit 1; a bad option is exit 2, naming it.
- A failed reload is remembered and retried by the next run even though the file is
  already current (consul-template#236, #1015); a reload runs only when the content changed.
- Mode, owner and group kept or set; `backup`; `render` (`--diff`, `--write`), `check`,
  `status` and `reconcile` (a fake `serf` on PATH).
- kill -9 at random points; a single-file bind mount (written in place).
"""

from __future__ import annotations

import errno
import grp
import hashlib
import json
import os
import pwd
import random
import re
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from serf_handlers._log import escape
from serf_handlers.pipeline import _record
from serf_handlers.pipeline._plan import PENDING
from support.processes import SERF_HANDLE
from support.site import clean_environ, member_line, stderr_lines
from tests.helpers import the_error

# Every member line: name, address:port, the tags but role and port, role, status.
TEMPLATE = """\
# hosts for {{ vars.domain }}, kept by {{ node.name }}
{% for m in members %}
{{ m.name }} {{ m.addr }}:{{ m.port }}{% for k, v in m.tags|dictsort if k not in ("role", "port") %} {{ k }}={{ v }}\
{% endfor %} role={{ m.role }} {{ m.status }}
{% endfor %}
# end
"""
# The check: a complete file (its last line), and no member tagged REFUSE in it.
CHECK_SCRIPT = (
    'tail -n 1 "$1" | grep -qx "# end" || { echo "incomplete file" >&2; exit 1; }; '
    'if grep -q REFUSE "$1"; then echo "REFUSE in the candidate" >&2; exit 1; fi'
)
# The reload: fails while the `down` file exists, else appends the SHA-256 of the file it loads.
RELOAD_SCRIPT = (
    'if test -e "$3"; then echo "service down" >&2; exit 1; fi; '
    'sha256sum < "$2" | cut -d " " -f 1 >> "$1"'
)
HANDLER = "template (handlers[0])"
WEB1 = member_line("web1", "10.0.0.1", port="80")
WEB2 = member_line("web2", "10.0.0.2", port="81")
NEW = member_line("web9", "10.0.0.9", port="89")  # a valid change, so every bad case has something to lose


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def line(name: str, addr: str, port: str = "None", role: str = "web", status: str = "alive", **tags: str) -> str:
    extra = "".join(f" {k}={v}" for k, v in sorted(tags.items()))
    return f"{name} {addr}:{port}{extra} role={role} {status}\n"


def hosts(*lines: str, node: str = "lb", domain: str = "example.com") -> str:
    """What TEMPLATE renders for these member lines."""
    return f"# hosts for {domain}, kept by {node}\n" + "".join(lines) + "# end\n"


class TemplateSite:
    """A template handler's files in one directory, and `serf-handle` runs against them.

    `options` are handlers[0]'s (None drops one); `more` adds handlers after it, each a
    complete option mapping (see `entry`).
    """

    def __init__(self, directory: Path, template: str | bytes = TEMPLATE, more: Sequence[Mapping[str, Any]] = (),
                 **options: Any) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.yml = directory / "config.yml"
        self.source = directory / "hosts.j2"
        self.cache = directory / "cache"
        self.bin = directory / "bin"
        self.write_template(template)
        first = self.entry("hosts")
        self.dest, self.state = Path(first["destination"]), Path(first["state"])
        self.reloads, self.down = directory / "hosts.reloads", directory / "hosts.down"
        self.options: dict[str, Any] = first
        self.more = [dict(m) for m in more]
        self.write_yml(**options)

    def entry(self, name: str, **options: Any) -> dict[str, Any]:
        """A template handler keeping `<dir>/<name>`, with its check and its reload (logged
        to `<name>.reloads`, failing while `<name>.down` exists)."""
        d = self.dir
        base: dict[str, Any] = {
            "type": "template",
            "source": str(self.source),
            "destination": str(d / name),
            "state": str(d / f"{name}.state.json"),
            "check": ["sh", "-c", CHECK_SCRIPT, "check", "{path}"],
            "reload": ["sh", "-c", RELOAD_SCRIPT, "reload", str(d / f"{name}.reloads"), str(d / name),
                       str(d / f"{name}.down")],
            "vars": {"domain": "example.com"},
        }
        base.update(options)
        return base

    def write_template(self, template: str | bytes) -> None:
        self.source.write_bytes(template.encode() if isinstance(template, str) else template)

    def write_yml(self, **changes: Any) -> None:
        """config.yml as JSON (which YAML reads). None drops an option."""
        self.options.update(changes)
        first = {k: v for k, v in self.options.items() if v is not None}
        self.yml.write_text(json.dumps({"handlers": [first, *self.more]}, indent=1) + "\n")

    def env(self, event: str | None = "member-join", **extra: str) -> dict[str, str]:
        env = clean_environ()
        env.update(SERF_HANDLERS_CACHE_DIR=str(self.cache), SERF_SELF_NAME="lb", SERF_SELF_ROLE="lb")
        if event is not None:
            env["SERF_EVENT"] = event
        if self.bin.exists():
            env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env.update(extra)
        return env

    def run(self, event: str | None = "member-join", stdin: bytes = b"", args: Sequence[str] = (),
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([SERF_HANDLE, "--config", str(self.yml), *args], input=stdin, capture_output=True,
                              env=dict(env) if env is not None else self.env(event), timeout=60, check=False)

    def ok(self, event: str | None = "member-join", *lines: bytes, args: Sequence[str] = ()) -> str:
        """A run that must exit 0; its stdout."""
        done = self.run(event, b"".join(lines), args)
        assert done.returncode == 0, (event, args, done.stdout, done.stderr)
        return done.stdout.decode()

    def fake_serf(self, alive: Sequence[tuple[str, str, Mapping[str, str]]],
                  failed: Sequence[tuple[str, str, Mapping[str, str]]] = (), raw: Sequence[object] = ()) -> None:
        """A `serf` first on PATH whose `members -format json` prints exactly these members."""
        self.bin.mkdir(exist_ok=True)
        members = [{"name": n, "addr": f"{a}:7946", "status": status, "tags": dict(t)}
                   for status, listed in (("alive", alive), ("failed", failed)) for n, a, t in listed]
        listing = self.dir / "members.json"
        listing.write_text(json.dumps({"members": [*members, *raw]}))
        serf = self.bin / "serf"
        serf.write_text(f"#!{sys.executable} -S\nimport sys\nsys.stdout.write(open({str(listing)!r}).read())\n")
        serf.chmod(0o755)

    def reconcile(self, alive: Sequence[tuple[str, str, Mapping[str, str]]],
                  failed: Sequence[tuple[str, str, Mapping[str, str]]] = ()) -> subprocess.CompletedProcess[bytes]:
        self.fake_serf(alive, failed)
        return self.run(None, args=["reconcile"])

    def reload_hashes(self, reloads: Path | None = None) -> list[str]:
        log = reloads or self.reloads
        return log.read_text().splitlines() if log.exists() else []

    def record(self) -> _record.Record:
        return _record.load(str(self.state))

    def temp_files(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir() if p.name.endswith(".tmp"))


def tags(port: str, role: str = "web", **more: str) -> dict[str, str]:
    return {"role": role, "port": port, **more}


# --- member events render the file ---------------------------------------------------------


def test_member_events_render_the_file_with_role_and_status_chosen(tmp_path: Path) -> None:
    site = TemplateSite(tmp_path)
    web = site.entry("web", role="web", status=["alive", "failed"])
    site.more = [web]
    site.write_yml()
    web_file, web_reloads = Path(web["destination"]), tmp_path / "web.reloads"
    api1 = member_line("api1", "10.0.1.1", "api", port="90")

    site.ok("member-join", WEB1, WEB2, api1)
    assert site.dest.read_text() == hosts(line("api1", "10.0.1.1", "90", "api"), line("web1", "10.0.0.1", "80"),
                                          line("web2", "10.0.0.2", "81"))  # sorted by name
    assert web_file.read_text() == hosts(line("web1", "10.0.0.1", "80"), line("web2", "10.0.0.2", "81"))

    site.ok("member-update", member_line("web2", "10.0.0.2", port="81", weight="5"))
    assert "web2 10.0.0.2:81 weight=5 role=web alive\n" in site.dest.read_text()
    assert "web2 10.0.0.2:81 weight=5 role=web alive\n" in web_file.read_text()

    site.ok("member-failed", WEB1)  # `status` [alive] (the default) drops it; [alive, failed] shows it
    assert "web1" not in site.dest.read_text()
    assert web_file.read_text() == hosts(line("web1", "10.0.0.1", "80", status="failed"),
                                         line("web2", "10.0.0.2", "81", weight="5"))

    site.ok("member-update", member_line("web2", "10.0.0.2", "api", port="81"))  # its role changed away from web
    assert "web2 10.0.0.2:81 role=api alive\n" in site.dest.read_text()
    assert web_file.read_text() == hosts(line("web1", "10.0.0.1", "80", status="failed"))

    site.ok("member-leave", api1)
    site.ok("member-reap", WEB1)
    assert site.dest.read_text() == hosts(line("web2", "10.0.0.2", "81", "api"))
    assert web_file.read_text() == hosts()

    site.ok("member-join", WEB1)  # back after being reaped
    assert web_file.read_text() == hosts(line("web1", "10.0.0.1", "80"))
    # Each file was reloaded once per change of its own content, with the content it has now.
    assert len(site.reload_hashes()) == 6 and site.reload_hashes()[-1] == sha(site.dest.read_bytes())
    assert len(site.reload_hashes(web_reloads)) == 6
    assert site.reload_hashes(web_reloads)[-1] == sha(web_file.read_bytes())
    assert site.temp_files() == []


CONTEXT_TEMPLATE = """\
node {{ node.name }} role={{ node.role }} dc={{ node.tags.dc }}
vars {{ vars.domain }} {{ vars.ports | join(",") }} {{ vars.nested.key }}
{% for m in members %}
member {{ m.name }} {{ m.addr }} port={{ m.port }} role={{ m.role }} status={{ m.status }} tags={{ m.tags | dictsort }}
{% endfor %}
{% for role, ms in by_role | dictsort %}
role {{ role }}: {{ ms | map(attribute="name") | join(" ") }}
{% endfor %}
{% for dc, ms in by_tag("dc") | dictsort %}
dc {{ dc }}: {{ ms | map(attribute="name") | join(" ") }}
{% endfor %}
no-such-tag: {{ by_tag("nope") | length }}
# end
"""


def test_the_template_context(tmp_path: Path) -> None:
    site = TemplateSite(tmp_path, CONTEXT_TEMPLATE, status=["alive", "failed"],
                        vars={"domain": "example.com", "ports": [80, 443], "nested": {"key": "value"}})
    members = [
        member_line("web2", "10.0.0.2", port="81", dc="ams"),
        member_line("web1", "10.0.0.1", port="80", dc="fra"),
        member_line("db1", "fd00::5", "db", dc="ams"),  # no port tag: port is None
        member_line("odd", "10.0.0.7", "web", port="99999"),  # not a valid port: None
    ]
    done = site.run("member-join", b"".join(members), env=site.env("member-join", SERF_TAG_DC="fra"))
    assert done.returncode == 0, done.stderr
    assert site.dest.read_text() == (
        "node lb role=lb dc=fra\n"
        "vars example.com 80,443 value\n"
        "member db1 fd00::5 port=None role=db status=alive tags=[('dc', 'ams'), ('role', 'db')]\n"
        "member odd 10.0.0.7 port=None role=web status=alive tags=[('port', '99999'), ('role', 'web')]\n"
        "member web1 10.0.0.1 port=80 role=web status=alive tags=[('dc', 'fra'), ('port', '80'), ('role', 'web')]\n"
        "member web2 10.0.0.2 port=81 role=web status=alive tags=[('dc', 'ams'), ('port', '81'), ('role', 'web')]\n"
        "role db: db1\n"
        "role web: odd web1 web2\n"
        "dc ams: db1 web2\n"
        "dc fra: web1\n"
        "no-such-tag: 0\n"
        "# end\n"
    )


# --- bad input: the destination byte-identical, one error line -------------------------------


def case(exit: int, says: list[str], **how: Any) -> dict[str, Any]:
    return {"exit": exit, "says": says, **how}


def corrupt(data: bytes) -> dict[str, Any]:
    return {"state": data}


BAD_INPUT = [
    # --- the template (exit 1; the event's members are kept for the run after the fix) --------
    pytest.param(case(1, ["template {dir}/hosts.j2 line 3: expected token 'name', got 'end of print statement'"],
                      template="# x\n{% for m in members %}\n{{ m.name | }}\n{% endfor %}\n# end\n", remembers=True),
                 id="template: syntax error"),
    pytest.param(case(1, ["template {dir}/hosts.j2 line", "Unexpected end of template"],
                      template=TEMPLATE + "{% if members %}\n", remembers=True),
                 id="template: unclosed block"),
    pytest.param(case(1, ["template {dir}/hosts.j2: UndefinedError: 'domian' is undefined"],
                      template=TEMPLATE.replace("{{ vars.domain }}", "{{ domian }}"), remembers=True),
                 id="template: undefined variable (StrictUndefined)"),
    pytest.param(case(1, ["template {dir}/hosts.j2: UndefinedError: ", "has no attribute 'nosuch'"],
                      template=TEMPLATE.replace("{{ vars.domain }}", "{{ vars.nosuch }}"), remembers=True),
                 id="template: undefined var key"),
    pytest.param(case(1, ["template {dir}/hosts.j2: UndefinedError: ", "'nosuch'"],
                      template=TEMPLATE.replace("{{ m.status }}", "{{ m.nosuch }}"), remembers=True),
                 id="template: undefined member attribute"),
    pytest.param(case(1, ["template {dir}/hosts.j2: ZeroDivisionError"],
                      template=TEMPLATE + "{{ 1 // 0 }}\n", remembers=True),
                 id="template: raises while rendering"),
    pytest.param(case(1, ["template {dir}/hosts.j2: not found", "nope.j2"],
                      template=TEMPLATE + '{% include "nope.j2" %}\n', remembers=True),
                 id="template: missing include"),
    pytest.param(case(1, ["template {dir}/hosts.j2: cannot read it"],
                      template=TEMPLATE.encode() + b"# \xff\n", remembers=True),
                 id="template: not UTF-8"),
    pytest.param(case(1, ["template {dir}/gone.j2: not found"], options={"source": "{dir}/gone.j2"},
                      remembers=True),
                 id="template: source file missing"),
    # --- the check refuses the candidate (exit 1) -----------------------------------------
    pytest.param(case(1, ["check command ['sh', '-c', ", "exited 1: REFUSE in the candidate"],
                      stdin=member_line("web9", "10.0.0.9", port="89", note="REFUSE"), remembers=True),
                 id="check: refuses the candidate"),
    pytest.param(case(1, ["check command ['sh', '-c', ", "exited 1: incomplete file"],
                      template=TEMPLATE.replace("# end\n", "# the end\n"), remembers=True),
                 id="check: refuses a truncated file"),
    pytest.param(case(1, ["check command '/nonexistent/check' not found"],
                      options={"check": ["/nonexistent/check", "{path}"]}, remembers=True),
                 id="check: command not found"),
    pytest.param(case(1, ["check command ['sh', '-c', 'exit 7', '", "exited 7: (no output)"],
                      options={"check": ["sh", "-c", "exit 7", "{path}"]}, remembers=True),
                 id="check: fails silently"),
    # --- the state file (exit 1; `serf-handle reconcile` rebuilds it) -----------------------
    pytest.param(case(1, ["state file {state}: ", "run `serf-handle reconcile`"], **corrupt(b"{not json")),
                 id="state: invalid JSON"),
    pytest.param(case(1, ["state file {state}: not a version 1 state object"],
                      **corrupt(b'{"version": 2, "members": {}}')), id="state: wrong version"),
    pytest.param(case(1, ["state file {state}: members.web1: expected addr, role and status"],
                      **corrupt(b'{"version": 1, "members": {"web1": {"addr": "x", "role": "web", "tags": {},'
                                b' "status": "dead"}}}')), id="state: bad member status"),
    # --- the options (exit 2, naming the option) -----------------------------------------
    pytest.param(case(2, ["{yml}: handlers[0] (template): destinaton: unknown option(s) (expected backup, check"],
                      options={"destinaton": "/tmp/x"}), id="option: unknown"),
    pytest.param(case(2, ["handlers[0] (template): destination: expected an absolute path, got 'hosts'"],
                      options={"destination": "hosts"}), id="option: relative destination"),
    pytest.param(case(2, ["handlers[0] (template): source: expected an absolute path, got 'hosts.j2'"],
                      options={"source": "hosts.j2"}), id="option: relative source"),
    pytest.param(case(2, ["handlers[0] (template): state: expected an absolute path, got 'state.json'"],
                      options={"state": "state.json"}), id="option: relative state"),
    pytest.param(case(2, ["handlers[0] (template): destination: required"], options={"destination": None}),
                 id="option: destination missing"),
    pytest.param(case(2, ["handlers[0] (template): source: required"], options={"source": None}),
                 id="option: source missing"),
    pytest.param(case(2, ["handlers[0] (template): mode: expected a file mode such as ", "got 1000"],
                      options={"mode": 1000}), id="option: mode out of range"),
    pytest.param(case(2, ["handlers[0] (template): mode: ", "got 'rw-r--r--'"], options={"mode": "rw-r--r--"}),
                 id="option: mode not a number"),
    pytest.param(case(2, ["handlers[0] (template): mode: ", "got '0999'"], options={"mode": "0999"}),
                 id="option: mode not octal"),
    pytest.param(case(2, ["handlers[0] (template): mode: ", "got True"], options={"mode": True}),
                 id="option: mode a boolean"),
    pytest.param(case(2, ["handlers[0] (template): status: expected some of alive, failed, got ['dead']"],
                      options={"status": ["dead"]}), id="option: unknown status"),
    pytest.param(case(2, ["handlers[0] (template): status: expected some of alive, failed, got []"],
                      options={"status": []}), id="option: no status"),
    pytest.param(case(2, ["handlers[0] (template): status: expected a list of names, got 'alive'"],
                      options={"status": "alive"}), id="option: status not a list"),
    pytest.param(case(2, ["handlers[0] (template): check: expected a command as a list of strings (argv, never a "
                          "shell string), or null, got 'sh -n {path}'"], options={"check": "sh -n {path}"}),
                 id="option: check a shell string"),
    pytest.param(case(2, ["handlers[0] (template): reload: expected a command as a list"], options={"reload": []}),
                 id="option: empty reload"),
    pytest.param(case(2, ["handlers[0] (template): backup: expected true or false, got 'yes'"],
                      options={"backup": "yes"}), id="option: backup not a boolean"),
    pytest.param(case(2, ["handlers[0] (template): vars: expected a mapping with string keys, got ['a']"],
                      options={"vars": ["a"]}), id="option: vars a list"),
    pytest.param(case(2, ["handlers[0] (template): owner: expected a non-empty string, got ''"],
                      options={"owner": ""}), id="option: empty owner"),
    pytest.param(case(2, ["handlers[0].role: expected a non-empty string, got int 5"], options={"role": 5}),
                 id="option: role not a string"),
]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site that has installed web1 and web2: its file, state and one reload."""
    directory = tmp_path_factory.mktemp("baseline")
    site = TemplateSite(directory)
    site.ok("member-join", WEB1, WEB2)
    assert site.reload_hashes() == [sha(site.dest.read_bytes())]
    return directory


def test_the_bad_input_table_is_large() -> None:
    assert len(BAD_INPUT) >= 30


@pytest.mark.parametrize("how", BAD_INPUT)
def test_bad_input_changes_nothing_and_says_what(baseline: Path, tmp_path: Path, how: dict[str, Any]) -> None:
    site = TemplateSite(tmp_path / "site")
    for name in ("hosts", "hosts.state.json", "hosts.reloads"):
        shutil.copy2(baseline / name, site.dir / name)
    places = {"dir": str(site.dir), "yml": str(site.yml), "state": str(site.state)}
    if "template" in how:
        site.write_template(how["template"])
    if "options" in how:
        site.write_yml(**{k: fill(v, places) for k, v in how["options"].items()})
    if "state" in how:
        site.state.write_bytes(how["state"])
    file_before, state_before = site.dest.read_bytes(), site.state.read_bytes()
    reloads_before, installed_before = site.reload_hashes(), _record.load(str(baseline / "hosts.state.json"))

    detail = the_error(site.run("member-join", how.get("stdin", NEW)), HANDLER, how["exit"])
    for part in how["says"]:
        assert fill(part, places) in detail, (part, detail)

    assert site.dest.read_bytes() == file_before, "the destination changed"
    assert site.reload_hashes() == reloads_before, "reloaded"
    assert site.temp_files() == []
    if how.get("remembers"):
        # The event itself was fine: its member is kept, and the record still names the old file.
        record = site.record()
        assert set(record.members) == {"web1", "web2", "web9"}
        assert record.installed == installed_before.installed == sha(file_before)
        assert record.reload_pending is None
        status = site.run(None, args=["status"])
        assert status.returncode == 1, status.stdout  # the file is behind the members: not healthy
    else:
        assert site.state.read_bytes() == state_before, "the state file changed"


def fill(value: Any, places: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, text in places.items():
            value = value.replace("{" + key + "}", text)
    return value


HOSTILE = [
    # (name, tags) the pipeline refuses: names and values only of letters, digits and _.:/@+=,-
    ("evil\nweb1 6.6.6.6:80 role=web alive", {}),
    ("semi;colon", {}),
    ("{{ 7*7 }}", {}),
    ("$(touch {canary})", {}),
    ("`touch {canary}`", {}),
    ("quote'd", {}),
    ('double"quoted', {}),
    ("tab\tname", {}),
    ("web5", {"note": "$(touch {canary})"}),
    ("web6", {"note": "a;b"}),
    ("web7", {"note": "x\ny 6.6.6.6:80 role=web alive"}),
    ("web8", {"note": "{{ 7*7 }}{% include '/etc/passwd' %}"}),
    ("web1", {"port": "80", "note": "'\"`"}),  # an update of a known member: its old form stays
]


def test_hostile_members_are_skipped_and_named_and_the_others_applied(baseline: Path, tmp_path: Path) -> None:
    site = TemplateSite(tmp_path / "site")
    for name in ("hosts", "hosts.state.json", "hosts.reloads"):
        shutil.copy2(baseline / name, site.dir / name)
    canary = tmp_path / "canary"
    hostile = [(n.replace("{canary}", str(canary)), {k: v.replace("{canary}", str(canary)) for k, v in t.items()})
               for n, t in HOSTILE]
    stdin = b"".join(member_line(n, f"10.0.2.{i}", **t) for i, (n, t) in enumerate(hostile, 1))
    stdin += member_line("web3", "10.0.0.3", port="83") + member_line("web4", "10.0.0.4", port="84", dc="a-1")

    detail = the_error(site.run("member-join", stdin), HANDLER)

    assert f"{len(hostile)} member(s) skipped: " in detail
    for name, _ in hostile:
        assert escape(repr(name)) in detail, name  # named (on one line: it escapes what it holds)
    assert site.dest.read_text() == hosts(line("web1", "10.0.0.1", "80"), line("web2", "10.0.0.2", "81"),
                                          line("web3", "10.0.0.3", "83"), line("web4", "10.0.0.4", "84", dc="a-1"))
    assert not list(tmp_path.glob("canary*")), "a member's data ran as a command"
    assert set(site.record().members) == {"web1", "web2", "web3", "web4"}
    assert site.record().members["web1"].tags == {"role": "web", "port": "80"}
    assert len(site.reload_hashes()) == 2  # one reload for the valid part of the change
    assert site.run(None, args=["status"]).returncode == 0  # the file is what the kept members render


# --- reloads ----------------------------------------------------------------------------------


def test_a_failed_reload_is_remembered_and_retried_though_the_file_is_current(tmp_path: Path) -> None:
    site = TemplateSite(tmp_path)
    site.ok("member-join", WEB1)
    assert len(site.reload_hashes()) == 1

    site.down.touch()  # the service is down: its reload fails
    detail = the_error(site.run("member-join", WEB2), HANDLER)
    assert "reload command ['sh', '-c', " in detail and "exited 1: service down" in detail
    assert "web2" in site.dest.read_text()  # installed; the reload is what failed
    status = site.run(None, args=["status"])
    assert status.returncode == 1
    assert "reload pending: reload command ['sh', '-c', " in status.stdout.decode()
    assert "service down (the next run retries it)" in status.stdout.decode()

    # The same event again (Serf may redeliver it): the file is current, the reload still owed.
    detail = the_error(site.run("member-join", WEB2), HANDLER)
    assert "service down" in detail
    assert len(site.reload_hashes()) == 1

    site.down.unlink()
    # Any next run, here one that changes nothing in the file, retries the owed reload.
    file_before = site.dest.read_bytes()
    site.ok("member-update", WEB2)
    assert site.dest.read_bytes() == file_before
    assert site.reload_hashes() == [site.reload_hashes()[0], sha(file_before)]
    status = site.run(None, args=["status"])
    assert status.returncode == 0, status.stdout
    assert "reload pending" not in status.stdout.decode() and site.record().reload_pending is None

    site.ok("member-update", WEB2)  # paid: not again
    assert len(site.reload_hashes()) == 2


def test_reload_only_when_the_content_changed(tmp_path: Path) -> None:
    site = TemplateSite(tmp_path, "{% for m in members %}\n{{ m.name }} {{ m.addr }}\n{% endfor %}\n# end\n")
    site.ok("member-join", WEB1)
    state_inode = site.state.stat().st_ino
    file_inode = site.dest.stat().st_ino
    assert len(site.reload_hashes()) == 1

    site.ok("member-join", WEB1)  # repeated identical event
    assert (site.state.stat().st_ino, site.dest.stat().st_ino) == (state_inode, file_inode)  # nothing rewritten
    site.ok("member-update", member_line("web1", "10.0.0.1", port="8080"))  # a tag the template does not render
    site.ok("member-failed", member_line("web9", "10.0.0.9"))  # a member it never knew
    site.ok("member-join")  # no members at all
    assert site.dest.stat().st_ino == file_inode
    assert len(site.reload_hashes()) == 1

    site.ok("member-leave", WEB1)
    assert site.dest.read_text() == "# end\n" and len(site.reload_hashes()) == 2


KILL_MY_PARENT = "import os, signal; os.kill(os.getppid(), signal.SIGKILL)"


def test_killed_between_install_and_reload_the_next_run_reloads(tmp_path: Path) -> None:
    site = TemplateSite(tmp_path)
    site.ok("member-join", WEB1)
    reload = site.options["reload"]
    site.write_yml(reload=[sys.executable, "-S", "-c", KILL_MY_PARENT])  # serf-handle dies while "reloading"
    done = site.run("member-join", WEB2)
    assert done.returncode == -signal.SIGKILL
    assert "web2" in site.dest.read_text() and len(site.reload_hashes()) == 1
    assert site.record().reload_pending == PENDING

    site.write_yml(reload=reload)
    site.ok("member-join", WEB2)  # the file is already current
    assert site.reload_hashes()[-1] == sha(site.dest.read_bytes()) and len(site.reload_hashes()) == 2
    assert site.record().reload_pending is None


# --- several templates sharing one reload command ------------------------------------------------

# Appends one line per run to its log; fails while the file after it exists.
SHARED_RELOAD = 'if test -e "$2"; then echo "caddy down" >&2; exit 1; fi; echo reload >> "$1"'


def sharing_site(tmp_path: Path, *argv_of: int) -> tuple[TemplateSite, list[Path]]:
    """Templates `hosts`, `a`, `b`, ... (one per entry of `argv_of`), each reloading with the
    reload argv numbered in `argv_of`: the same number, the same argv. Reload argv N logs
    to `N.reloads` and fails while `N.down` exists."""
    def argv(n: int) -> list[str]:
        return ["sh", "-c", SHARED_RELOAD, "reload", str(tmp_path / f"{n}.reloads"), str(tmp_path / f"{n}.down")]

    site = TemplateSite(tmp_path, reload=argv(argv_of[0]))
    site.more = [site.entry(name, reload=argv(n)) for name, n in zip("ab", argv_of[1:], strict=False)]
    site.write_yml()
    return site, [site.state, *(Path(e["state"]) for e in site.more)]


def reloads(tmp_path: Path, n: int) -> int:
    log = tmp_path / f"{n}.reloads"
    return len(log.read_text().splitlines()) if log.exists() else 0


def pending(states: list[Path]) -> list[str | None]:
    return [_record.load(str(state)).reload_pending for state in states]


@pytest.mark.parametrize(
    ("argv_of", "per_change"),
    [
        pytest.param((1, 1), {1: 1}, id="two templates, one reload argv: one reload per run"),
        pytest.param((1, 1, 1), {1: 1}, id="three templates, one reload argv: one reload per run"),
        pytest.param((1, 2, 1), {1: 1, 2: 1}, id="two reload argvs: each runs once"),
    ],
)
def test_templates_sharing_a_reload_command_reload_once_per_run(
    tmp_path: Path, argv_of: tuple[int, ...], per_change: dict[int, int]
) -> None:
    site, states = sharing_site(tmp_path, *argv_of)
    for runs, stdin in enumerate([WEB1, WEB2, member_line("web2", "10.0.0.2", port="82")], 1):
        site.ok("member-join", stdin)  # each changes every file
        assert {n: reloads(tmp_path, n) for n in per_change} == {n: c * runs for n, c in per_change.items()}
    site.ok("member-join", WEB1)  # nothing changes: no reload at all
    assert {n: reloads(tmp_path, n) for n in per_change} == {n: c * 3 for n, c in per_change.items()}
    assert pending(states) == [None] * len(states)
    assert site.run(None, args=["status"]).returncode == 0


def test_a_failed_shared_reload_is_owed_by_every_template_and_retried_once(tmp_path: Path) -> None:
    site, states = sharing_site(tmp_path, 1, 1, 1)
    site.ok("member-join", WEB1)
    assert reloads(tmp_path, 1) == 1
    (tmp_path / "1.down").touch()

    done = site.run("member-join", WEB2)

    lines = stderr_lines(done)
    assert done.returncode == 1 and b"Traceback" not in done.stderr, lines
    names = ["template (handlers[0])", "template (handlers[1])", "template (handlers[2])"]
    failures = [line for line in lines if " ERROR handler template (handlers[" in line]
    assert [name for name in names for line in failures if f"handler {name} failed: " in line] == names
    assert all("reload command ['sh', '-c', " in line and "exited 1: caddy down" in line for line in failures)
    assert lines[-1].startswith("serf-handle: error: handler template (handlers[0]) failed: ")
    assert all("web2" in Path(e["destination"]).read_text() for e in [site.options, *site.more])  # installed
    assert all(p is not None and "caddy down" in p for p in pending(states)), pending(states)
    status = site.run(None, args=["status"])
    assert status.returncode == 1 and status.stdout.decode().count("caddy down (the next run retries it)") == 3

    (tmp_path / "1.down").unlink()
    site.ok("member-join", WEB2)  # every file current: the one reload they all owe runs once
    assert reloads(tmp_path, 1) == 2 and pending(states) == [None] * 3
    assert site.run(None, args=["status"]).returncode == 0
    site.ok("member-join", WEB2)
    assert reloads(tmp_path, 1) == 2  # paid


def test_killed_before_the_shared_reload_every_template_owes_it_and_the_next_run_reloads_once(tmp_path: Path) -> None:
    site, states = sharing_site(tmp_path, 1, 1, 1)
    site.ok("member-join", WEB1)
    shared = site.options["reload"]
    killer = [sys.executable, "-S", "-c", KILL_MY_PARENT]  # serf-handle dies while "reloading"
    site.write_yml(reload=killer)
    site.more = [{**e, "reload": killer} for e in site.more]
    site.write_yml()

    done = site.run("member-join", WEB2)

    assert done.returncode == -signal.SIGKILL
    assert all("web2" in Path(e["destination"]).read_text() for e in [site.options, *site.more])
    assert pending(states) == [PENDING] * 3 and reloads(tmp_path, 1) == 1
    site.write_yml(reload=shared)
    site.more = [{**e, "reload": shared} for e in site.more]
    site.write_yml()
    site.ok("member-join", WEB2)  # every file already current
    assert reloads(tmp_path, 1) == 2 and pending(states) == [None] * 3


# --- mode, owner, group, backup ------------------------------------------------------------------


def nobody() -> tuple[str, str]:
    user = pwd.getpwuid(65534).pw_name if os.geteuid() == 0 else ""
    group = grp.getgrgid(65534).gr_name if os.geteuid() == 0 else ""
    return user, group


def test_mode_owner_and_group_are_kept_or_set(tmp_path: Path) -> None:
    site = TemplateSite(tmp_path)
    site.ok("member-join", WEB1)
    assert stat.S_IMODE(site.dest.stat().st_mode) == 0o644  # a new file
    os.chmod(site.dest, 0o640)
    user, group = nobody()
    if user:
        os.chown(site.dest, 65534, 65534)
    site.ok("member-join", WEB2)
    st = site.dest.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640 and "web2" in site.dest.read_text()  # kept
    if user:
        assert (st.st_uid, st.st_gid) == (65534, 65534)

    site.write_yml(mode="0600", **({"owner": "root", "group": grp.getgrgid(0).gr_name} if user else {}))
    site.ok("member-join", member_line("web3", "10.0.0.3"))
    st = site.dest.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    if user:
        assert (st.st_uid, st.st_gid) == (0, 0)
        site.write_yml(owner=user, group=group, mode=0o640)  # YAML's 0640 is the integer 416
        site.ok("member-leave", member_line("web3", "10.0.0.3"))
        st = site.dest.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 65534, 65534)


def test_an_unknown_owner_fails_naming_it_and_installs_nothing(tmp_path: Path) -> None:
    site = TemplateSite(tmp_path)
    site.ok("member-join", WEB1)
    before = site.dest.read_bytes()
    site.write_yml(owner="no-such-user-xyz")
    detail = the_error(site.run("member-join", WEB2), HANDLER)
    assert "'no-such-user-xyz'" in detail and "owner" in detail
    assert site.dest.read_bytes() == before and len(site.reload_hashes()) == 1
    assert site.record().reload_pending is None  # nothing was installed, so nothing is owed


def test_backup_keeps_the_previous_file(tmp_path: Path) -> None:
    site = TemplateSite(tmp_path, backup=True)
    backup = Path(f"{site.dest}.bak")
    site.ok("member-join", WEB1)
    assert not backup.exists()
    first = site.dest.read_bytes()
    os.chmod(site.dest, 0o640)
    site.ok("member-join", WEB2)
    assert backup.read_bytes() == first and stat.S_IMODE(backup.stat().st_mode) == 0o640
    second = site.dest.read_bytes()
    site.ok("member-join", WEB2)  # nothing changed: the backup is not replaced by the same file
    assert backup.read_bytes() == first
    site.ok("member-leave", WEB1)
    assert backup.read_bytes() == second
    assert site.temp_files() == []


# --- render, check, status, reconcile -----------------------------------------------------------


def test_render_diff_write_and_status(tmp_path: Path) -> None:
    site = TemplateSite(tmp_path)
    site.ok("member-join", WEB1, WEB2)
    installed = site.dest.read_text()
    assert site.ok(None, args=["render"]) == installed
    assert site.ok(None, args=["render", "--diff"]) == ""
    status = site.ok(None, args=["status"])
    assert status == ("# template (handlers[0])\nweb1 10.0.0.1 role=web alive\nweb2 10.0.0.2 role=web alive\n"
                      f"file: {site.dest}: as installed\n")

    site.dest.write_text(installed.replace("web2", "edited"))
    diff = site.run(None, args=["render", "--diff"])
    assert diff.returncode == 1
    assert f"--- {site.dest}\n+++ {site.dest} (rendered from {site.state})\n" in diff.stdout.decode()
    assert "-edited 10.0.0.2:81 role=web alive\n+web2 10.0.0.2:81 role=web alive\n" in diff.stdout.decode()
    status_run = site.run(None, args=["status"])
    assert status_run.returncode == 1 and b"changed since this handler installed it" in status_run.stdout

    assert site.ok(None, args=["render", "--write"]) == installed
    assert site.dest.read_text() == installed
    assert len(site.reload_hashes()) == 1  # --write never reloads
    site.ok(None, args=["status"])
    assert site.ok(None, args=["render", "--diff"]) == ""

    site.write_template(TEMPLATE.replace("{{ vars.domain }}", "{{ nosuch }}"))
    done = site.run(None, args=["render", "--diff"])
    assert done.returncode == 2 and "'nosuch' is undefined" in the_error(done, HANDLER, 2)  # diff(1): 2 is trouble
    done = site.run(None, args=["render"])
    assert done.returncode == 1 and b"'nosuch' is undefined" in done.stderr
    assert site.dest.read_text() == installed


def test_check_renders_a_candidate_and_installs_nothing(tmp_path: Path) -> None:
    site = TemplateSite(tmp_path)
    site.ok("member-join", WEB1)
    installed = site.dest.read_bytes()
    out = site.ok(None, args=["check"])
    size = len(installed)
    assert f"handler template (handlers[0]): renders {size} bytes for {site.dest}; the check accepts it\n" in out

    site.write_template(TEMPLATE.replace("# end", "# REFUSE"))
    done = site.run(None, args=["check"])
    assert done.returncode == 1
    assert "check command ['sh', '-c', " in done.stderr.decode() and "incomplete file" in done.stderr.decode()
    assert site.dest.read_bytes() == installed and site.temp_files() == []
    assert len(site.reload_hashes()) == 1

    site.write_yml(check=None)
    assert "(no check command)" in site.ok(None, args=["check"])


def test_a_missing_destination_directory_is_one_error_line(tmp_path: Path) -> None:
    site = TemplateSite(tmp_path)
    site.write_yml(destination=str(tmp_path / "nodir" / "hosts"))
    detail = the_error(site.run("member-join", WEB1), HANDLER)
    assert f"cannot write {tmp_path}/nodir/hosts: No such file or directory" in detail
    done = site.run(None, args=["check"])
    assert done.returncode == 1 and b"Traceback" not in done.stderr
    assert stderr_lines(done) == [f"serf-handle: error: template (handlers[0]): cannot write a candidate in "
                                  f"{tmp_path}/nodir: No such file or directory"]


def test_render_write_on_a_fresh_site_then_events_work(tmp_path: Path) -> None:
    """As an image does before the service starts: `render --write` with no state yet."""
    site = TemplateSite(tmp_path)
    assert site.ok(None, args=["render", "--write"]) == hosts(node="")  # no event yet: no node
    assert site.dest.read_text() == hosts(node="") and site.reload_hashes() == []
    assert site.ok(None, args=["status"]).endswith(f"file: {site.dest}: as installed\n")
    site.ok("member-join", WEB1)
    assert site.dest.read_text() == hosts(line("web1", "10.0.0.1", "80"))
    assert len(site.reload_hashes()) == 1


def test_render_write_after_a_config_change_is_recorded_as_installed(tmp_path: Path) -> None:
    """An operator changes `vars` and installs the result now: `status` must not call the
    handler's own file "changed since this handler installed it"."""
    site = TemplateSite(tmp_path)
    site.ok("member-join", WEB1)
    site.write_yml(vars={"domain": "example.org"})
    assert site.run(None, args=["render", "--diff"]).returncode == 1
    site.ok(None, args=["render", "--write"])
    assert site.dest.read_text() == hosts(line("web1", "10.0.0.1", "80"), domain="example.org")
    status = site.run(None, args=["status"])
    assert status.returncode == 0 and status.stdout.decode().endswith(f"file: {site.dest}: as installed\n")
    assert len(site.reload_hashes()) == 1  # --write never reloads
    site.ok("member-join", WEB1)  # the next identical event: nothing changed, nothing to reload
    assert len(site.reload_hashes()) == 1


def test_with_no_state_file_an_empty_or_memberless_file_does_not_block_events(tmp_path: Path) -> None:
    site = TemplateSite(tmp_path)
    site.dest.write_text("")  # an operator's placeholder
    assert site.ok(None, args=["status"]).endswith(f"file: {site.dest}: not written yet\n")
    site.ok("member-join", WEB1)
    assert site.dest.read_text() == hosts(line("web1", "10.0.0.1", "80"))


def test_reconcile_writes_exactly_the_members_serf_lists(tmp_path: Path) -> None:
    site = TemplateSite(tmp_path, status=["alive", "failed"], role="web")
    site.ok("member-join", WEB1, member_line("gone", "10.0.0.66", port="1"))  # `gone` left while we were down
    alive = [("web1", "10.0.0.1", tags("80")), ("web2", "10.0.0.2", tags("81", dc="x")),
             ("api1", "10.0.1.1", tags("90", role="api"))]  # another role: not this handler's
    failed = [("web3", "10.0.0.3", tags("83")), ("api2", "10.0.1.2", tags("91", role="api"))]
    done = site.reconcile(alive, failed)
    assert done.returncode == 0, done.stderr
    assert site.dest.read_text() == hosts(line("web1", "10.0.0.1", "80"), line("web2", "10.0.0.2", "81", dc="x"),
                                          line("web3", "10.0.0.3", "83", status="failed"))
    assert len(site.reload_hashes()) == 2
    assert site.reconcile(alive, failed).returncode == 0
    assert len(site.reload_hashes()) == 2  # the same list again: no reload


def test_reconcile_skips_hostile_members_and_applies_the_others(tmp_path: Path) -> None:
    site = TemplateSite(tmp_path)
    site.fake_serf([("web1", "10.0.0.1", tags("80")), ("semi;colon", "10.0.0.2", tags("81")),
                    ("web3", "10.0.0.3", tags("83", note="$(reboot)"))],
                   raw=[{"name": "badaddr", "addr": "not-an-ip:7946", "status": "alive", "tags": {}}])
    done = site.run(None, args=["reconcile"])
    assert done.returncode == 1
    err = done.stderr.decode()
    assert "'semi;colon'" in err and "tag 'note'='$(reboot)'" in err and "badaddr" in err
    assert b"Traceback" not in done.stderr
    assert site.dest.read_text() == hosts(line("web1", "10.0.0.1", "80"), node="")  # reconcile knows no node


def test_with_no_state_file_an_event_refuses_and_reconcile_rebuilds(tmp_path: Path) -> None:
    site = TemplateSite(tmp_path)
    site.ok("member-join", WEB1, WEB2)
    installed = site.dest.read_bytes()
    site.state.unlink()  # lost (a new container with the old /etc, say)

    detail = the_error(site.run("member-join", member_line("web3", "10.0.0.3", port="83")), HANDLER)
    assert f"{site.state}: no state file while {site.dest} exists; run `serf-handle reconcile`" in detail
    assert site.dest.read_bytes() == installed and not site.state.exists()
    status = site.run(None, args=["status"])
    assert status.returncode == 1 and b"no state file" in status.stdout

    members = [("web1", "10.0.0.1", tags("80")), ("web2", "10.0.0.2", tags("81")), ("web3", "10.0.0.3", tags("83"))]
    assert site.reconcile(members).returncode == 0
    clean = TemplateSite(tmp_path / "clean")
    assert clean.reconcile(members).returncode == 0
    assert site.dest.read_bytes() == clean.dest.read_bytes()
    site.ok("member-leave", WEB1)  # events work again
    assert site.dest.read_text() == hosts(line("web2", "10.0.0.2", "81"), line("web3", "10.0.0.3", "83"))


def test_a_corrupt_state_file_is_rebuilt_by_reconcile(tmp_path: Path) -> None:
    site = TemplateSite(tmp_path)
    site.ok("member-join", WEB1)
    site.state.write_text('{"version": 1, "members": ')
    assert site.run(None, args=["status"]).returncode == 1
    done = site.reconcile([("web1", "10.0.0.1", tags("80"))])
    assert done.returncode == 0, done.stderr
    assert b"rebuilding it" in done.stderr
    assert set(site.record().members) == {"web1"}
    site.ok(None, args=["status"])


def test_a_hand_edited_file_is_restored_by_reconcile_and_nothing_stays_owed(tmp_path: Path) -> None:
    site = TemplateSite(tmp_path)
    site.ok("member-join", WEB1)
    installed = site.dest.read_bytes()
    site.dest.write_text("edited by hand\n")
    assert site.reconcile([("web1", "10.0.0.1", tags("80"))]).returncode == 0
    assert site.dest.read_bytes() == installed
    assert site.reload_hashes() == [sha(installed)] * 2
    status = site.run(None, args=["status"])
    assert status.returncode == 0, status.stdout
    assert site.record().reload_pending is None


# --- kill -9 at random points ------------------------------------------------------------------

SEED = 19
UPDATES = 60
POOL = [(f"node{i}", f"10.0.3.{i + 1}", str(7000 + i)) for i in range(6)]
TEMP_NAME = r"^\.(hosts|hosts\.state\.json)\.\d+\.[0-9a-f]{8}\.tmp$"


def complete_and_accepted(data: bytes) -> bool:
    """What the check accepts, and nothing but lines of the pool: a complete file."""
    lines = data.decode().splitlines()
    pool = {line(n, a, p).rstrip("\n") for n, a, p in POOL}
    return (len(lines) >= 2 and lines[0] == "# hosts for example.com, kept by lb" and lines[-1] == "# end"
            and set(lines[1:-1]) <= pool and b"REFUSE" not in data)


def test_kill_9_at_random_points_during_updates(tmp_path: Path) -> None:
    site = TemplateSite(tmp_path / "site")
    rng = random.Random(SEED)
    times = []
    for name, addr, port in POOL[:2]:
        for kind in ("member-join", "member-leave"):
            started = time.monotonic()
            site.ok(kind, member_line(name, addr, port=port))
            times.append(time.monotonic() - started)
    typical = statistics.median(times)
    model: set[str] = set()
    outcomes = {"finished": 0, "killed": 0, "killed with a reload owed": 0}
    for update in range(UPDATES):
        name, addr, port = rng.choice(POOL)
        kind = "member-leave" if name in model else "member-join"
        model ^= {name}
        err = tmp_path / "stderr"
        with open(err, "wb") as stderr:
            run = subprocess.Popen([SERF_HANDLE, "--config", str(site.yml)], stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, stderr=stderr, env=site.env(kind),
                                   start_new_session=True)  # its own group: a kill takes the check and reload too
        assert run.stdin is not None
        run.stdin.write(member_line(name, addr, port=port))
        run.stdin.close()
        deadline = time.monotonic() + rng.uniform(0, typical * 1.5)
        killed = False
        try:
            time.sleep(max(0.0, deadline - time.monotonic()))
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                killed = True
            code = run.wait(30)
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait(10)

        record = site.record()  # loads (or raises): never half written
        if site.dest.exists():
            assert complete_and_accepted(site.dest.read_bytes()), (update, site.dest.read_text())
            checked = subprocess.run(["sh", "-c", CHECK_SCRIPT, "check", str(site.dest)], capture_output=True,
                                     check=False)
            assert checked.returncode == 0, (update, checked.stderr)
        reloaded = site.reload_hashes()[-1:]
        current = [sha(site.dest.read_bytes())] if site.dest.exists() else []
        if not killed:
            assert code == 0, (update, err.read_text())
            outcomes["finished"] += 1
            assert record.reload_pending is None and reloaded == current, update
        else:
            outcomes["killed"] += 1
            # The file the service runs is the one on disk, or the record says a reload is owed.
            assert reloaded == current or record.reload_pending is not None, update
            outcomes["killed with a reload owed"] += record.reload_pending is not None

    # Events lost to kills are not redelivered by Serf: one reconcile is what heals, and it
    # also pays any reload still owed.
    members = [(n, a, tags(p)) for n, a, p in POOL if n in model]
    healed = site.reconcile(members)
    assert healed.returncode == 0, healed.stderr
    clean = TemplateSite(tmp_path / "clean")
    clean.ok("member-join")  # an event with no members: the node the template names
    assert clean.reconcile(members).returncode == 0
    assert site.dest.read_bytes() == clean.dest.read_bytes()
    assert set(site.record().members) == model and site.record().reload_pending is None
    assert site.reload_hashes()[-1] == sha(site.dest.read_bytes()), "the service runs an old file"
    assert all(re.match(TEMP_NAME, name) for name in site.temp_files()), site.temp_files()
    print(f"\ntemplate crash-safety: {UPDATES} updates, typical run {typical * 1000:.0f} ms, {outcomes}")
    assert outcomes["killed"] >= UPDATES // 4, outcomes
    assert outcomes["killed with a reload owed"] > 0, outcomes  # the window that matters was hit


# --- a destination that cannot be replaced by rename ------------------------------------------


def test_a_single_file_bind_mount_is_written_in_place(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    site = TemplateSite(tmp_path / "site")
    site.ok("member-join", WEB1)
    outside = tmp_path / "outside"  # what a container's single-file bind mount shares with the host
    outside.write_bytes(site.dest.read_bytes())
    mounted = subprocess.run(["mount", "--bind", str(outside), str(site.dest)], capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"mount --bind is not permitted here: {mounted.stderr.decode().strip()}")
    try:
        done = site.run("member-join", WEB2)
        assert done.returncode == 0, done.stderr
        warnings = [line for line in stderr_lines(done) if " WARNING " in line]
        assert len(warnings) == 1, stderr_lines(done)
        assert f"{site.dest} cannot be replaced by rename ({os.strerror(errno.EBUSY)}); written in place" in warnings[0]
        expected = hosts(line("web1", "10.0.0.1", "80"), line("web2", "10.0.0.2", "81"))
        assert site.dest.read_text() == expected and outside.read_text() == expected
        assert site.reload_hashes()[-1] == sha(expected.encode())

        # Still checked before it is written: a refused candidate changes nothing.
        detail = the_error(site.run("member-join", member_line("web9", "10.0.0.9", note="REFUSE")), HANDLER)
        assert "REFUSE in the candidate" in detail
        assert outside.read_text() == expected and site.temp_files() == []
    finally:
        subprocess.run(["umount", str(site.dest)], check=False)
