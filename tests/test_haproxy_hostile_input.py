"""Malformed and hostile input through the real `serf-handle` against an installed HAProxy config.

1. A table of malformed events, configs, templates and state files. Every one exits
   non-zero with one error line saying what and where, and leaves the installed haproxy.cfg
   byte-identical, the state file unchanged (a template error keeps the event's membership
   for the next run, by design) and HAProxy un-reloaded.
2. One member event carrying every kind of hostile node name and tag Serf can deliver: the
   valid members are applied under safe names, each bad one is named in the error, and the
   installed config holds nothing a member wrote beyond a sanitised name, an address, a port
   and a weight.

The parser's property tests are in test_properties.py; single hostile names and tags at the
unit level in test_haproxy_servers.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from serf_handlers.handlers.haproxy._jinja import BUILTIN_TEMPLATE
from serf_handlers.handlers.haproxy._servers import server_name
from support.admin import answers, live_servers
from support.processes import Processes, free_port, start_haproxy, wait_until
from support.site import HAPROXY, Site, member_line, sha, stderr_lines, usr2_reload_argv

pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")

GOOD_TEMPLATE = Path(BUILTIN_TEMPLATE).read_text()
NEW = member_line("web9", "127.0.0.9", port="8089")  # a valid change, so every case has something to lose
HANDLER_FAILED = "serf-handle: error: handler haproxy (handlers[0]) failed: "
RECORD = re.compile(r"^\d{4}-\d\d-\d\dT\S+ (INFO|WARNING|ERROR) ")


class Regex(str):
    """An expected part of an error matched as a regular expression, not as a substring."""


CANDIDATE = Regex(r"\.haproxy\.cfg\.\d+\.[0-9a-f]{8}\.tmp:\d+\]")  # haproxy names the rejected candidate and line


def case(exit: int, says: list[str], **how: Any) -> dict[str, Any]:
    return {"exit": exit, "says": says, **how}


def state_with(**servers: dict[str, Any]) -> bytes:
    entry = {"name": "web1", "addr": "127.0.0.1", "port": 8081, "weight": 1, "backend": "web", "tags": {}}
    full = {node: {**entry, **fields} for node, fields in servers.items()}
    return json.dumps({"version": 1, "servers": full, "applied": full, "pending": []}).encode()


MALFORMED = [
    # --- events: parsed before any handler runs (exit 2) -------------------------------
    pytest.param(case(2, ["SERF_EVENT is not set"], event=None), id="event: SERF_EVENT missing"),
    pytest.param(
        case(2, ["SERF_EVENT: unknown event type 'member-explode'"], event="member-explode"), id="event: unknown type"
    ),
    pytest.param(
        case(2, ["stdin line 1: expected 4 tab-separated fields, got 2"], stdin=b"web9\t127.0.0.9\n"),
        id="event: too few fields",
    ),
    pytest.param(
        case(2, ["stdin line 1: expected 4 tab-separated fields, got 5"], stdin=NEW[:-1] + b"\textra\n"),
        id="event: too many fields",
    ),
    pytest.param(
        case(2, ["stdin line 2: expected 4 tab-separated fields, got 1"], stdin=NEW + b"garbage\n"),
        id="event: a bad line after a good one applies neither",
    ),
    pytest.param(
        case(2, ["stdin line 2: expected 4 tab-separated fields, got 1"], stdin=NEW + b"\n" + NEW),
        id="event: blank line between members",
    ),
    pytest.param(
        case(2, ["stdin line 1: empty member name"], stdin=member_line("", "127.0.0.9")), id="event: empty name"
    ),
    pytest.param(case(2, ["stdin line 1: empty address"], stdin=member_line("web9", "")), id="event: empty address"),
    pytest.param(
        case(2, ["stdin line 1: invalid IP address '999.0.0.1'"], stdin=member_line("web9", "999.0.0.1")),
        id="event: IPv4 out of range",
    ),
    pytest.param(
        case(2, ["stdin line 1: invalid IP address 'example.com'"], stdin=member_line("web9", "example.com")),
        id="event: hostname as address",
    ),
    pytest.param(
        case(2, ["stdin line 1: invalid IP address '127.0.0.9:80'"], stdin=member_line("web9", "127.0.0.9:80")),
        id="event: address with a port",
    ),
    pytest.param(
        case(2, ["stdin line 1: invalid IP address '127.0.0.9 backup'"], stdin=member_line("web9", "127.0.0.9 backup")),
        id="event: address with a server option",
    ),
    pytest.param(
        case(
            2, ["stdin line 1: invalid IP address 'fe80::1%eth0' (zone ids"], stdin=member_line("web9", "fe80::1%eth0")
        ),
        id="event: IPv6 zone id",
    ),
    pytest.param(
        case(2, ["stdin line 1: member data is not valid UTF-8 (byte 3)"], stdin=b"web\xff9\t127.0.0.9\tweb\t\n"),
        id="event: not UTF-8",
    ),
    pytest.param(
        case(2, ["stdin line 1: tag 'port' has no '='"], stdin=b"web9\t127.0.0.9\tweb\tport,role=web\n"),
        id="event: tag without =",
    ),
    pytest.param(
        case(2, ["stdin line 1: tag with an empty key in '=8089'"], stdin=b"web9\t127.0.0.9\tweb\t=8089\n"),
        id="event: tag with an empty key",
    ),
    pytest.param(
        case(2, ["SERF_USER_EVENT is not set for a user event"], event="user", stdin=b"payload"),
        id="event: user event without a name",
    ),
    pytest.param(
        case(
            2,
            ["SERF_USER_LTIME: expected a non-negative integer, got '-1'"],
            event="user",
            env={"SERF_USER_EVENT": "deploy", "SERF_USER_LTIME": "-1"},
        ),
        id="event: negative user event ltime",
    ),
    pytest.param(
        case(
            2, ["SERF_QUERY_LTIME is not set for query 'backends'"], event="query", env={"SERF_QUERY_NAME": "backends"}
        ),
        id="event: query without ltime",
    ),
    # --- events the handler refuses member by member (exit 1; nothing else to apply) ---
    pytest.param(
        case(
            1,
            ["1 member(s) skipped: member 'web9': tag port='8089", "is not an integer from 1 to 65535"],
            stdin=NEW.replace(b"\n", b"\r\n"),
        ),
        id="event: CRLF line ending",
    ),
    pytest.param(
        case(
            1,
            ["member 'web9': tag backend='web backup' is not a valid backend name"],
            stdin=member_line("web9", "127.0.0.9", backend="web backup"),
        ),
        id="event: backend tag with a space",
    ),
    # --- the config file (exit 2: nothing runs) ----------------------------------------
    pytest.param(
        case(2, ["{dir}/missing.yml: config file not found"], config_path="missing.yml"), id="config: missing"
    ),
    pytest.param(
        case(2, ["{dir}/sub: cannot read config file: Is a directory"], config_path="sub"), id="config: a directory"
    ),
    pytest.param(
        case(2, ["{yml}: line 4, column 1: invalid YAML"], yml="handlers:\n  - type: haproxy\n    port: [80\n"),
        id="config: invalid YAML",
    ),
    pytest.param(
        case(2, ["{yml}: ", "invalid YAML", "invalid start byte"], yml=b"handlers: []\n# \xff\xfe\n"),
        id="config: not UTF-8",
    ),
    pytest.param(
        case(2, ["{yml}: handlers[0].type: missing"], yml="handlers:\n  - port: 80\n"), id="config: entry without type"
    ),
    pytest.param(
        case(2, ["{yml}: handlers[0] (haproxi): unknown handler type 'haproxi'"], yml="handlers:\n  - type: haproxi\n"),
        id="config: misspelt handler type",
    ),
    pytest.param(
        case(
            2,
            ["{yml}: handlers[0].events: unknown event selector 'member-explode'"],
            options={"events": ["member-explode"]},
        ),
        id="config: unknown event selector",
    ),
    pytest.param(
        case(2, ["{yml}: handlers[0] (haproxy): colour: unknown option(s)"], options={"colour": "red"}),
        id="config: unknown haproxy option",
    ),
    pytest.param(
        case(
            2, ["{yml}: handlers[0] (haproxy): port: expected an integer from 1 to 65535, got 0"], options={"port": 0}
        ),
        id="config: port 0",
    ),
    pytest.param(
        case(2, ["handlers[0] (haproxy): port: expected an integer from 1 to 65535, got '80'"], options={"port": "80"}),
        id="config: port as a string",
    ),
    pytest.param(
        case(2, ["handlers[0] (haproxy): backend: expected 1-63 characters"], options={"backend": "web\nlisten x"}),
        id="config: backend with a newline",
    ),
    pytest.param(
        case(
            2,
            ["handlers[0] (haproxy): config: expected a non-empty path without spaces"],
            options={"config": "/tmp/ha proxy.cfg"},
        ),
        id="config: config path with a space",
    ),
    pytest.param(
        case(2, ["handlers[0] (haproxy): state: expected a non-empty path"], options={"state": "/tmp/st'ate.json"}),
        id="config: state path with a quote",
    ),
    pytest.param(
        case(2, ["handlers[0] (haproxy): check: expected true or false, got 'yes'"], options={"check": "yes"}),
        id="config: check not a boolean",
    ),
    pytest.param(
        case(
            2,
            ["handlers[0] (haproxy): reload: expected an argv list"],
            options={"reload": "kill -USR2 $(cat /run/haproxy.pid)"},
        ),
        id="config: reload as a shell string",
    ),
    pytest.param(
        case(
            2,
            ["handlers[0] (haproxy): reload: expected a non-empty list of non-empty strings"],
            options={"reload": ["kill", "-USR2", 1234]},
        ),
        id="config: reload with a number",
    ),
    pytest.param(
        case(
            2,
            ["handlers[0] (haproxy): vars.bind: expected a non-empty, single-line string"],
            options={"vars": {"bind": "*:80\n    bind :1"}},
        ),
        id="config: vars.bind injects a line",
    ),
    pytest.param(
        case(
            2,
            ["handlers[0] (haproxy): vars.socket: expected a non-empty word"],
            options={"vars": {"socket": "/run/a b.sock level admin"}},
        ),
        id="config: vars.socket with words",
    ),
    pytest.param(
        case(2, ["handlers[0] (haproxy): vars.servers: reserved"], options={"vars": {"servers": []}}),
        id="config: vars shadows a reserved name",
    ),
    pytest.param(
        case(
            2,
            ["handlers[0] (haproxy): template: {dir}/missing.j2: no such file"],
            options={"template": "{dir}/missing.j2"},
        ),
        id="config: template missing",
    ),
    pytest.param(
        case(
            2,
            ["handlers[0] (haproxy): on_failed: expected one of remove, maint, got 'drop'"],
            options={"on_failed": "drop"},
        ),
        id="config: on_failed unknown",
    ),
    pytest.param(
        case(2, ["{yml}: log.file: cannot open '/nonexistent/dir/x.log'"], log={"file": "/nonexistent/dir/x.log"}),
        id="config: log file unwritable",
    ),
    # --- the operator's template (exit 1; the event's membership is kept for later) ----
    pytest.param(
        case(
            1,
            [Regex("template {template} line \\d+: Unexpected end of template")],
            template=GOOD_TEMPLATE + "{% for s in servers %}\n",
        ),
        id="template: unclosed block",
    ),
    pytest.param(
        case(
            1,
            ["template {template}: UndefinedError: 'nosuchvar' is undefined"],
            template=GOOD_TEMPLATE + "{{ nosuchvar }}\n",
        ),
        id="template: undefined variable",
    ),
    pytest.param(
        case(
            1,
            [Regex("template {template} line \\d+: No filter named 'nosuchfilter'")],
            template=GOOD_TEMPLATE + "{{ servers | nosuchfilter }}\n",
        ),
        id="template: unknown filter",
    ),
    pytest.param(
        case(
            1,
            ["template {template}: ZeroDivisionError: integer division or modulo by zero"],
            template=GOOD_TEMPLATE + "{{ 1 // 0 }}\n",
        ),
        id="template: raises while rendering",
    ),
    pytest.param(
        case(1, ["template {template}: not found", "nope.j2"], template=GOOD_TEMPLATE + '{% include "nope.j2" %}\n'),
        id="template: missing include",
    ),
    pytest.param(
        case(
            1,
            ["template {template}: cannot read it", "can't decode byte 0xff"],
            template=GOOD_TEMPLATE.encode() + b"# \xff\n",
        ),
        id="template: not UTF-8",
    ),
    pytest.param(
        case(
            1,
            ["haproxy rejected the new config, old config kept: [ALERT]", CANDIDATE, "unknown keyword 'frobnicate'"],
            template=GOOD_TEMPLATE.replace("{{ server.options }}", "{{ server.options }} frobnicate"),
        ),
        id="template: haproxy rejects a server keyword",
    ),
    pytest.param(
        case(
            1,
            ["haproxy rejected the new config, old config kept: [ALERT]", "default_backend", "'nosuch'"],
            template=GOOD_TEMPLATE.replace("default_backend {{ default_backend }}", "default_backend nosuch"),
        ),
        id="template: haproxy rejects an unknown backend",
    ),
    pytest.param(
        case(
            1,
            ["haproxy rejected the new config, old config kept: [ALERT]", CANDIDATE, "backend 'web'"],
            template=GOOD_TEMPLATE + "backend web\n",
        ),
        id="template: haproxy rejects a duplicate backend",
    ),
    pytest.param(
        case(
            1,
            ["haproxy rejected the new config, old config kept:", "will not start (no listener)"],
            template="global\n    maxconn 10\n",
        ),
        id="template: haproxy rejects a config without listener",
    ),
    # --- the state file (exit 1; `serf-handle reconcile` rebuilds it) ------------------
    pytest.param(
        case(1, ["state file {state}: invalid JSON", "run `serf-handle reconcile`"], state=b"{not json"),
        id="state: invalid JSON",
    ),
    pytest.param(case(1, ["state file {state}: invalid JSON"], state=state_with(web1={})[:60]), id="state: truncated"),
    pytest.param(
        case(1, ["state file {state}: not a version 1 state object"], state=b'{"version": 2, "servers": {}}'),
        id="state: wrong version",
    ),
    pytest.param(
        case(
            1,
            ["state file {state}: server for node 'web1': invalid server name 'x\\\\n    server evil 6.6.6.6:80'"],
            state=state_with(web1={"name": "x\n    server evil 6.6.6.6:80"}),
        ),
        id="state: hostile server name",
    ),
    pytest.param(
        case(
            1,
            ["state file {state}: server for node 'web1': invalid port 70000"],
            state=state_with(web1={"port": 70000}),
        ),
        id="state: port out of range",
    ),
    pytest.param(
        case(
            1,
            ["state file {state}: server for node 'web1': address '6.6.6.6 backup' is not an IP address"],
            state=state_with(web1={"addr": "6.6.6.6 backup"}),
        ),
        id="state: address with an option",
    ),
    pytest.param(
        case(
            1,
            ["state file {state}: servers: two nodes have the same server name"],
            state=state_with(web1={}, web2={"addr": "127.0.0.2"}),
        ),
        id="state: two nodes, one server name",
    ),
    pytest.param(
        case(1, ["IsADirectoryError", "Is a directory: '{state}'"], state_is_a_directory=True),
        id="state: a directory",
    ),
]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site that has applied web1 and web2: an installed haproxy.cfg, a state, one reload."""
    directory = tmp_path_factory.mktemp("baseline")
    site = Site(directory)
    done = site.join(member_line("web1", "127.0.0.1", port="8081"), member_line("web2", "127.0.0.2", port="8082"))
    assert done.returncode == 0, done.stderr
    assert site.reload_hashes() == [sha(site.config.read_bytes())] and site.applied() == {"web1", "web2"}
    return directory


def test_the_table_has_at_least_30_cases() -> None:
    assert len(MALFORMED) >= 30


@pytest.mark.parametrize("how", MALFORMED)
def test_malformed_input_changes_nothing_and_says_what_and_where(
    baseline: Path, tmp_path: Path, how: dict[str, Any]
) -> None:
    site = Site(tmp_path / "site")
    for name in ("haproxy.cfg", "state.json", "reloads"):
        shutil.copy2(baseline / name, site.dir / name)
    places = {"dir": str(site.dir), "yml": str(site.yml), "state": str(site.state), "template": str(site.dir / "t.j2")}

    if "template" in how:
        data = how["template"]
        (site.dir / "t.j2").write_bytes(data.encode() if isinstance(data, str) else data)
        site.write_yml(template=places["template"])
    if "options" in how:
        site.write_yml(**{k: _fill(v, places) for k, v in how["options"].items()})
    if "log" in how:
        site.write_yml(log=how["log"])
    if "yml" in how:
        data = how["yml"]
        site.yml.write_bytes(data.encode() if isinstance(data, str) else data)
    if "state" in how:
        site.state.write_bytes(how["state"])
    if how.get("state_is_a_directory"):
        site.state.unlink()
        site.state.mkdir()
    (site.dir / "sub").mkdir()
    config_before = site.config.read_bytes()
    state_before = site.state.read_bytes() if site.state.is_file() else None
    reloads_before = site.reload_hashes()

    yml = site.dir / how["config_path"] if "config_path" in how else None
    env = site.env(how.get("event", "member-join"), **how.get("env", {}))
    done = site.run(stdin=how.get("stdin", NEW), env=env, yml=yml)

    detail = _the_error_line(done, how["exit"])
    for part in how["says"]:
        if isinstance(part, Regex):
            assert re.search(_fill(part, {k: re.escape(v) for k, v in places.items()}), detail), (part, detail)
        else:
            assert _fill(part, places) in detail, (part, detail)

    assert site.config.read_bytes() == config_before, "the installed haproxy.cfg changed"
    assert site.reload_hashes() == reloads_before, "HAProxy was reloaded"
    assert site.temp_files() == []
    if how.get("state_is_a_directory"):
        assert site.state.is_dir()
    elif "template" in how:
        # The event itself was fine: it is remembered, and HAProxy is known not to have it yet.
        data = site.state_data()
        assert data is not None and set(data["servers"]) == {"web1", "web2", "web9"}
        assert site.applied() == {"web1", "web2"}
    elif site.state.read_bytes() != state_before:
        # A member skipped for its values is remembered (so it is reported once per
        # change); nothing else in the state may change.
        data = site.state_data()
        assert state_before is not None and data is not None, "the state file changed"
        skipped = data.pop("skipped")
        assert json.loads(state_before) == data and list(skipped) == ["web9"], "the state file changed"


def _fill(value: Any, places: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, text in places.items():
            value = value.replace("{" + key + "}", text)
    return value


def _the_error_line(done: subprocess.CompletedProcess[bytes], code: int) -> str:
    """Exit 2: stderr is exactly one `serf-handle: error:` line. Exit 1: one ERROR record
    carrying the detail, then the one-line summary naming the failed handler."""
    lines = stderr_lines(done)
    assert done.returncode == code, lines
    assert b"Traceback" not in done.stderr
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("serf-handle: error: "), lines
        return lines[0]
    assert lines[-1].startswith(HANDLER_FAILED), lines
    assert all(RECORD.match(line) for line in lines[:-1]), lines  # every record is one line
    (failed,) = [line for line in lines if " ERROR handler haproxy (handlers[0]) failed: " in line]
    return failed


# --- hostile names and tags in one event -----------------------------------------------

# Members whose data is valid: each must be applied, under a safe server name.
HOSTILE_NAMES = [
    "newline\n    server evil 6.6.6.6:80 backup",
    "#comment",
    "$(touch {canary}.dollar)",
    "`touch {canary}.backtick`",
    "web;del server web/web1;shutdown sessions",
    "quotes'\"'",
    "tab\tbackend evil",
    "{{ 7*7 }}{% include '/etc/passwd' %}",
    "x" * 300,
    "--help",  # clean characters, kept as they are: a server name, never an argv element
    "-c",
    "ünïcödé-日本-😀",
    "collide 1",
    "collide\t1",
    "collide_1",
    server_name("collide 1"),  # a clean name that looks like another node's hashed one
    "back\\slash\\",  # (a literal backslash-n would read back as a newline: Serf escapes no backslash)
]
# Tags the built-in template never renders: stored in the state, never in haproxy.cfg.
HOSTILE_TAGS = {"note": "$(reboot)", "evil": "x\n    server evil 6.6.6.6:80", "q": "'\"`;#"}

# Members the handler must refuse, named in the error: (name, address, tags, what it says).
BAD_MEMBERS = [
    ("bad-port-0", {"port": "0"}, "tag port='0' is not an integer from 1 to 65535"),
    ("bad-port-65536", {"port": "65536"}, "tag port='65536' is not an integer from 1 to 65535"),
    ("bad-port-minus-1", {"port": "-1"}, "tag port='-1' is not an integer from 1 to 65535"),
    ("bad-port-option", {"port": "80 backup"}, "tag port='80 backup' is not an integer"),
    ("bad-weight-abc", {"weight": "abc"}, "tag weight='abc' is not an integer from 0 to 256"),
    ("bad-weight-big", {"weight": "99999999"}, "tag weight='99999999' is not an integer from 0 to 256"),
    ("bad-backend-newline", {"backend": "web\n    server evil 6.6.6.6:80"}, "tag backend="),
    ("bad-backend-space", {"backend": "web backup"}, "tag backend='web backup' is not a valid backend name"),
    ("bad-backend-semicolon", {"backend": "web;shutdown"}, "tag backend='web;shutdown' is not a valid backend name"),
    ("bad-backend-hash", {"backend": "web#x"}, "tag backend='web#x' is not a valid backend name"),
    ("bad-backend-shell", {"backend": "$(reboot)"}, "tag backend='$(reboot)' is not a valid backend name"),
    ("bad-backend-long", {"backend": "b" * 64}, f"tag backend='{'b' * 64}' is not a valid backend name"),
    ("bad\nname; $(reboot)", {"port": "0"}, "tag port='0'"),
]

SAFE = r"[A-Za-z0-9_.-]{1,63}"
SERVER_LINE = re.compile(
    rf"^    server ({SAFE}) (\d{{1,3}}(?:\.\d{{1,3}}){{3}}|\[[0-9a-f:]+\]):(\d{{1,5}}) (?:id \d{{1,10}} )?"
    r"weight (\d{1,3}) check inter 500ms fall 1 rise 1$"
)
BACKEND_LINE = re.compile(rf"^backend ({SAFE})$")
USE_BACKEND_LINE = re.compile(
    rf"^    use_backend ({SAFE}) if {{ req\.hdr\(host\),field\(1,:\),lower -m str ({SAFE}) }}$"
)


def hostile_batch(canary: Path, with_backend_tag: bool) -> tuple[bytes, dict[str, tuple[str, int, int]]]:
    """The event's stdin, and the servers expected from it: node -> (address, port, weight)."""
    good: list[tuple[str, str, dict[str, str]]] = [
        ("web1", "127.0.0.1", {"port": "8081"}),
        ("web2", "::1", {"port": "8082", "weight": "5"}),
        ("web3", "127.0.0.3", {"weight": "0", **HOSTILE_TAGS}),
    ]
    good += [
        (n.replace("{canary}", str(canary)), f"127.0.1.{i + 1}", {"port": str(9000 + i)})
        for i, n in enumerate(HOSTILE_NAMES)
    ]
    if with_backend_tag:
        good.append(("api1", "127.0.0.4", {"port": "9100", "backend": "api.example.com"}))
    lines = [member_line(name, addr, **tags) for name, addr, tags in good]
    lines += [member_line(name, f"127.0.2.{i + 1}", **tags) for i, (name, tags, _) in enumerate(BAD_MEMBERS)]
    lines.insert(4, lines.pop())  # bad members are not all at the end
    expected = {
        name: (f"[{addr}]" if ":" in addr else addr, int(tags.get("port", "80")), int(tags.get("weight", "1")))
        for name, addr, tags in good
    }
    return b"".join(lines), expected


def assert_no_injection(config: bytes, empty: bytes, expected: dict[str, tuple[str, int, int]]) -> None:
    """Every line is a line of the config with no members, or one of the shapes members can produce,
    carrying only the expected sanitised values."""
    text = config.decode("ascii")  # also: no unicode from a member name got in
    fixed = set(empty.decode().splitlines())
    servers, backends = {}, set()
    for line in text.splitlines():
        if line in fixed:
            continue
        if match := SERVER_LINE.match(line):
            name, address, port, weight = match.groups()
            assert name not in servers, f"duplicate server name {name}"
            servers[name] = (address, int(port), int(weight))
        elif match := BACKEND_LINE.match(line):
            backends.add(match.group(1))
        elif match := USE_BACKEND_LINE.match(line):
            assert match.group(1).lower() == match.group(2)
            backends.add(match.group(1))
        else:
            raise AssertionError(f"unexpected line in the installed config: {line!r}")
    assert servers == {server_name(node): value for node, value in expected.items()}
    # Clean names are kept; every other name is sanitised and hashed.
    for node in expected:
        assert server_name(node) == node or re.fullmatch(r"[A-Za-z0-9_.-]{1,51}--[0-9a-f]{10}", server_name(node))
    # Outside the server-name field (safe characters only, checked above), nothing a member wrote.
    rest = "\n".join(
        SERVER_LINE.sub(lambda m: m.group(0).replace(m.group(1), "NAME", 1), line)
        for line in text.splitlines()
        if line not in fixed
    )
    for fragment in ("6.6.6.6", "evil", "$(", "`", ";", "reboot", "backup", "'", '"', "{{", "{%", "passwd", "canary"):
        assert fragment not in rest, fragment
    assert "#" not in rest  # no comment, so nothing was cut off a line


def assert_bad_members_named(done: subprocess.CompletedProcess[bytes]) -> None:
    lines = stderr_lines(done)
    assert done.returncode == 1 and lines[-1].startswith(HANDLER_FAILED), lines
    # One record per skipped member, then the handler's failure naming them all.
    assert len([line for line in lines if " ERROR haproxy: member skipped: " in line]) == len(BAD_MEMBERS)
    (error,) = [line for line in lines if " ERROR handler haproxy (handlers[0]) failed: " in line]
    assert f"{len(BAD_MEMBERS)} member(s) skipped: " in error
    for name, _tags, says in BAD_MEMBERS:
        named = repr(name).replace("\\", "\\\\")  # the log escapes backslashes, so the record stays one line
        assert f"member {named}: {says}" in error, name
    assert all(RECORD.match(line) for line in lines[:-1]), lines


def test_hostile_names_and_tags_in_one_event(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    assert site.run(None, args=["render", "--write"]).returncode == 0  # as an image does before HAProxy starts
    empty = site.config.read_bytes()
    canary = tmp_path / "canary"
    stdin, expected = hostile_batch(canary, with_backend_tag=True)

    done = site.join(stdin)

    assert_bad_members_named(done)
    config = site.config.read_bytes()
    assert_no_injection(config, empty, expected)
    check = subprocess.run(
        [HAPROXY or "haproxy", "-c", "-f", str(site.config)], capture_output=True, timeout=30, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    data = site.state_data()
    assert data is not None and set(data["servers"]) == set(expected) and site.applied() == set(expected)
    assert data["servers"]["web3"]["tags"]["evil"] == HOSTILE_TAGS["evil"]  # kept exactly, never rendered
    assert site.reload_hashes() == [sha(config)]  # one reload, of exactly this config
    assert not list(tmp_path.glob("canary*")), "a member name reached a shell"
    assert site.temp_files() == []

    # The same event again: nothing happens, and the bad members, already reported, are not
    # reported as a failure again (`status` still lists them).
    again = site.join(stdin)
    assert again.returncode == 0, stderr_lines(again)
    assert site.config.read_bytes() == config and site.reload_hashes() == [sha(config)]
    assert set(site.state_data()["skipped"]) == {name for name, _tags, _says in BAD_MEMBERS}


@pytest.mark.integration
def test_hostile_names_through_the_runtime_api_of_a_real_haproxy(
    tmp_path: Path, short_dir: Path, procs: Processes
) -> None:
    """The same batch with a running HAProxy and its admin socket: servers are added live
    (no reload) under the same safe names, and HAProxy's own list is exactly the valid members."""
    sock, pidfile = short_dir / "admin.sock", tmp_path / "haproxy.pid"
    site = Site(tmp_path / "site", socket=str(sock))
    site.write_yml(
        reload=usr2_reload_argv(site.reloads, site.config, pidfile),
        vars={
            "bind": f"127.0.0.1:{free_port()}",
            "socket": str(sock),
            "server_state_file": str(tmp_path / "server-state"),
        },
    )
    assert site.run(None, args=["render", "--write"]).returncode == 0
    empty = site.config.read_bytes()
    start_haproxy(procs, site.config, pidfile)
    wait_until(lambda: sock.exists() and answers(sock), what="haproxy socket")

    stdin, expected = hostile_batch(tmp_path / "canary", with_backend_tag=False)  # a new backend needs a reload
    done = site.join(stdin)

    assert_bad_members_named(done)
    assert site.reload_hashes() == []
    assert_no_injection(site.config.read_bytes(), empty, expected)
    live = live_servers(sock)
    assert {name: (addr, port, weight) for name, (addr, port, weight, _admin) in live.items()} == {
        server_name(node): (address.strip("[]"), str(port), str(weight))
        for node, (address, port, weight) in expected.items()
    }
    assert all(state == "0" for *_rest, state in live.values())  # all enabled, none left in maintenance
    assert not list(tmp_path.glob("canary*"))
