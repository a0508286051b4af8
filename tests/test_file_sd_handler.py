"""The `file_sd` handler end to end through the real `serf-handle`, as Serf runs it (SERF_*
environment, members on stdin), with a config.yml in tmp_path: the Prometheus file_sd JSON it
writes, its options, hostile and invalid members, failed and leaving members, a missing state
file, the temporary file while writing, and `status`, `render` and `render --diff`.
Prometheus itself reads the file in tests/integration/test_file_sd_prometheus.py."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from serf_handlers.handlers.file_sd._handler import label_name
from support.processes import SERF_HANDLE
from support.site import clean_environ, member_line, stderr_lines
from tests.helpers import the_error

HANDLER = "file_sd (handlers[0])"
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")  # Prometheus' legacy label name charset


class SD:
    """A file_sd handler's files in one directory and `serf-handle` runs against them."""

    def __init__(self, directory: Path, **options: Any) -> None:
        self.dir = directory
        self.targets_dir = directory / "targets"
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        self.dest = self.targets_dir / "serf.json"
        self.state = directory / "state.json"
        self.yml = directory / "config.yml"
        self.bin = directory / "bin"
        self.extra_env: dict[str, str] = {}
        self.write_yml(**options)

    def write_yml(self, **options: Any) -> None:
        entry = {"type": "file_sd", "destination": str(self.dest), "state": str(self.state), **options}
        self.yml.write_text(json.dumps({"handlers": [entry]}, indent=1) + "\n")  # JSON is YAML

    def run(self, event: str | None, stdin: bytes = b"", args: tuple[str, ...] = ()
            ) -> subprocess.CompletedProcess[bytes]:
        env = clean_environ()
        env["SERF_HANDLERS_CACHE_DIR"] = str(self.dir / "cache")
        env["SERF_SELF_NAME"], env["SERF_SELF_ROLE"] = "prom", "monitor"
        if event is not None:
            env["SERF_EVENT"] = event
        if self.bin.exists():
            env["PATH"] = f"{self.bin}:{env.get('PATH', '')}"
        env.update(self.extra_env)
        return subprocess.run([SERF_HANDLE, "--config", str(self.yml), *args], input=stdin, capture_output=True,
                              env=env, timeout=60, check=False)

    def ok(self, event: str | None, *lines: bytes, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[bytes]:
        done = self.run(event, b"".join(lines), args)
        assert done.returncode == 0, stderr_lines(done)
        return done

    def groups(self) -> list[dict[str, Any]]:
        data = json.loads(self.dest.read_bytes())
        assert isinstance(data, list)
        return data

    def targets(self) -> dict[str, str]:
        """node label → its one target."""
        return {g["labels"]["node"]: g["targets"][0] for g in self.groups()}

    def kept(self) -> dict[str, dict[str, Any]]:
        return json.loads(self.state.read_bytes())["members"]

    def fake_serf(self, members: list[tuple[str, str, str, Mapping[str, str]]]) -> None:
        """A `serf` first on PATH whose `members -format json` prints these (name, addr, status, tags)."""
        self.bin.mkdir(exist_ok=True)
        listing = self.dir / "members.json"
        listing.write_text(json.dumps({"members": [
            {"name": name, "addr": f"[{addr}]:7946" if ":" in addr else f"{addr}:7946", "port": 7946,
             "status": status, "tags": dict(tags)} for name, addr, status, tags in members]}))
        serf = self.bin / "serf"
        serf.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write(open({str(listing)!r}).read())\n")
        serf.chmod(0o755)

    def snapshot(self) -> tuple[object, ...]:
        """What must stay untouched: the destination's inode, mtime and bytes, and the state."""
        st = self.dest.stat()
        state = self.state.read_bytes() if self.state.exists() else None
        return st.st_ino, st.st_mtime_ns, self.dest.read_bytes(), state

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in (*self.dir.iterdir(), *self.targets_dir.iterdir()) if p.name.endswith(".tmp"))


def group(addr_port: str, **labels: str) -> dict[str, Any]:
    return {"labels": labels, "targets": [addr_port]}


@pytest.fixture
def sd(tmp_path: Path) -> SD:
    return SD(tmp_path, labels=["dc"])


# --- the file Prometheus reads -----------------------------------------------------------


def test_the_json_is_a_list_of_target_groups_as_prometheus_expects(sd: SD) -> None:
    sd.ok("member-join",
          member_line("web2", "10.0.0.2", metrics_port="9200", dc="fra"),
          member_line("web1", "10.0.0.1", dc="ams"),
          member_line("web6", "fd00::6", metrics_port="9106"),
          member_line("lb", "10.0.0.9", role="lb"))

    raw = sd.dest.read_text()
    assert raw.endswith("]\n")
    # Exactly [{"targets": ["host:port"], "labels": {name: string}}, ...], sorted by node:
    # the group order (Prometheus keys groups by file:index) does not depend on the events' order.
    assert sd.groups() == [
        group("10.0.0.9:9100", node="lb", role="lb"),
        group("10.0.0.1:9100", node="web1", role="web", dc="ams"),
        group("10.0.0.2:9200", node="web2", role="web", dc="fra"),
        group("[fd00::6]:9106", node="web6", role="web"),
    ]
    for g in sd.groups():
        assert set(g) == {"targets", "labels"} and len(g["targets"]) == 1
        assert all(isinstance(v, str) and LABEL.fullmatch(k) for k, v in g["labels"].items())
    assert sd.dest.stat().st_mode & 0o777 == 0o644  # Prometheus runs as its own user
    assert json.loads(sd.state.read_bytes())["version"] == 1

    # The same members again, in another order: nothing is rewritten.
    before = sd.snapshot()
    sd.ok("member-update", member_line("web1", "10.0.0.1", dc="ams"), member_line("lb", "10.0.0.9", role="lb"))
    assert sd.snapshot() == before


@pytest.mark.parametrize(
    ("options", "tags", "target"),
    [
        pytest.param({}, {}, "10.0.0.1:9100", id="no tag: the default port 9100"),
        pytest.param({}, {"metrics_port": "9256"}, "10.0.0.1:9256", id="metrics_port tag"),
        pytest.param({}, {"port": "8080"}, "10.0.0.1:9100", id="the service's port tag is not the metrics port"),
        pytest.param({"port": 9999}, {}, "10.0.0.1:9999", id="port option"),
        pytest.param({"port": 9999}, {"metrics_port": "9256"}, "10.0.0.1:9256", id="the tag wins over port"),
        pytest.param({"port_tag": "prom"}, {"prom": "7070", "metrics_port": "9256"}, "10.0.0.1:7070",
                     id="port_tag option"),
        pytest.param({"port_tag": "prom"}, {"metrics_port": "9256"}, "10.0.0.1:9100", id="port_tag absent: port"),
        pytest.param({}, {"metrics_port": "0080"}, "10.0.0.1:80", id="leading zeros: written as the number"),
        pytest.param({}, {"metrics_port": "65535"}, "10.0.0.1:65535", id="the highest port"),
    ],
)
def test_the_port_comes_from_port_tag_else_port(tmp_path: Path, options: dict[str, Any], tags: dict[str, str],
                                                 target: str) -> None:
    sd = SD(tmp_path, **options)
    sd.ok("member-join", member_line("web1", "10.0.0.1", **tags))
    assert sd.targets() == {"web1": target}


@pytest.mark.parametrize(
    ("addr", "target"),
    [
        pytest.param("10.1.2.3", "10.1.2.3:9100", id="IPv4 as it is"),
        pytest.param("::1", "[::1]:9100", id="IPv6 loopback bracketed"),
        pytest.param("2001:db8::7", "[2001:db8::7]:9100", id="IPv6 bracketed"),
        pytest.param("2001:0DB8:0:0::7", "[2001:db8::7]:9100", id="IPv6 as the event parser writes it"),
    ],
)
def test_addresses(sd: SD, addr: str, target: str) -> None:
    sd.ok("member-join", member_line("web1", addr))
    assert sd.targets() == {"web1": target}


# --- labels --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "label"),
    [
        pytest.param("dc", "dc", id="valid as it is"),
        pytest.param("app-version", "app_version", id="dash"),
        pytest.param("a.b", "a_b", id="dot"),
        pytest.param("x:y/z@w", "x_y_z_w", id="other separators"),
        pytest.param("1x", "_1x", id="leading digit"),
        pytest.param("9", "_9", id="only a digit"),
        pytest.param("__meta", "tag__meta", id="reserved __ prefix"),
        pytest.param("__name__", "tag__name__", id="the metric name label"),
        pytest.param("-x", "_x", id="one leading dash: one underscore, allowed"),
        pytest.param("--x", "tag__x", id="two leading dashes would be reserved"),
        pytest.param("_private", "_private", id="one leading underscore kept"),
        pytest.param("Zone_2", "Zone_2", id="case and digits kept"),
    ],
)
def test_label_name(tag: str, label: str) -> None:
    assert label_name(tag) == label
    assert LABEL.fullmatch(label) and not label.startswith("__")


def test_labels_copy_the_chosen_tags_under_valid_names(tmp_path: Path) -> None:
    sd = SD(tmp_path, labels=["dc", "app-version", "1x", "__meta", "a.b"])
    sd.ok("member-join",
          member_line("web1", "10.0.0.1", dc="ams", **{"app-version": "1.2.3", "1x": "y", "__meta": "m", "a.b": "c"},
                      rack="r1"),
          member_line("web2", "10.0.0.2", dc="fra"))
    assert sd.groups() == [
        group("10.0.0.1:9100", node="web1", role="web", dc="ams", app_version="1.2.3", _1x="y", tag__meta="m",
              a_b="c"),  # rack: not chosen
        group("10.0.0.2:9100", node="web2", role="web", dc="fra"),  # a missing tag: no label, not an empty one
    ]
    # A changed tag value is a changed label.
    sd.ok("member-update", member_line("web2", "10.0.0.2", dc="par"))
    assert sd.groups()[1]["labels"] == {"node": "web2", "role": "web", "dc": "par"}


# --- which members ---------------------------------------------------------------------------


def test_role_selects_the_members(tmp_path: Path) -> None:
    sd = SD(tmp_path, role="web")
    sd.ok("member-join", member_line("web1", "10.0.0.1"), member_line("db1", "10.0.0.5", role="db"),
          member_line("web2", "10.0.0.2"))
    assert sd.targets() == {"web1": "10.0.0.1:9100", "web2": "10.0.0.2:9100"}
    assert all(g["labels"]["role"] == "web" for g in sd.groups())
    # A member whose role changes away is dropped; back again, it is a target again.
    sd.ok("member-update", member_line("web2", "10.0.0.2", role="db"))
    assert sd.targets() == {"web1": "10.0.0.1:9100"}
    sd.ok("member-update", member_line("web2", "10.0.0.2", role="web"))
    assert set(sd.targets()) == {"web1", "web2"}
    # Without `role`: every role, each labelled with its own.
    every = SD(tmp_path / "every")
    every.ok("member-join", member_line("web1", "10.0.0.1"), member_line("db1", "10.0.0.5", role="db"))
    assert {g["labels"]["node"]: g["labels"]["role"] for g in every.groups()} == {"web1": "web", "db1": "db"}


def test_failed_members_are_not_targets_and_leave_removes(sd: SD) -> None:
    sd.ok("member-join", member_line("web1", "10.0.0.1"), member_line("web2", "10.0.0.2"),
          member_line("web3", "10.0.0.3"))
    sd.ok("member-failed", member_line("web2", "10.0.0.2"))
    assert set(sd.targets()) == {"web1", "web3"}
    assert sd.kept()["web2"]["status"] == "failed"  # remembered, not a target
    status = sd.run(None, args=("status",))
    assert "web2 10.0.0.2 role=web failed" in status.stdout.decode()

    sd.ok("member-join", member_line("web2", "10.0.0.2"))  # it came back
    assert set(sd.targets()) == {"web1", "web2", "web3"}

    sd.ok("member-leave", member_line("web1", "10.0.0.1"))
    assert set(sd.targets()) == {"web2", "web3"} and "web1" not in sd.kept()
    sd.ok("member-failed", member_line("web3", "10.0.0.3"))
    sd.ok("member-reap", member_line("web3", "10.0.0.3"))
    assert set(sd.targets()) == {"web2"} and set(sd.kept()) == {"web2"}
    sd.ok("member-leave", member_line("web2", "10.0.0.2"))
    assert sd.groups() == []  # the last one gone: an empty list, still a valid file
    assert sd.leftovers() == []


def test_a_failed_member_never_seen_alive_is_not_added(sd: SD) -> None:
    sd.ok("member-join", member_line("web1", "10.0.0.1"))
    sd.ok("member-failed", member_line("ghost", "10.0.0.66"))
    assert sd.targets() == {"web1": "10.0.0.1:9100"} and set(sd.kept()) == {"web1"}


# --- invalid and hostile members ---------------------------------------------------------------


@pytest.mark.parametrize("port", ["http", "0", "65536", "80 backup", "-1", "9100,9200"])
def test_a_member_with_an_invalid_port_tag_is_skipped_by_name_and_the_others_apply(sd: SD, port: str) -> None:
    done = sd.run("member-join", member_line("web1", "10.0.0.1") + member_line("bad", "10.0.0.66", metrics_port=port)
                  + member_line("web2", "10.0.0.2", metrics_port="9200"))
    error = the_error(done, HANDLER)
    assert "1 member(s) skipped: member 'bad': tag " in error and "metrics_port" in error
    skipped = [line for line in stderr_lines(done) if f" ERROR file_sd {sd.dest}: member skipped: member 'bad'" in line]
    assert len(skipped) == 1, stderr_lines(done)  # one record for the member, then the handler's failure
    assert sd.targets() == {"web1": "10.0.0.1:9100", "web2": "10.0.0.2:9200"}
    assert "bad" not in sd.kept()


def test_an_invalid_port_in_an_update_keeps_the_members_old_form(sd: SD) -> None:
    sd.ok("member-join", member_line("web1", "10.0.0.1", metrics_port="9101"))
    done = sd.run("member-update", member_line("web1", "10.0.0.1", metrics_port="nine"))
    assert "member 'web1': tag metrics_port='nine': expected a port number, 1-65535" in the_error(done, HANDLER)
    assert sd.targets() == {"web1": "10.0.0.1:9101"}


def test_a_kept_member_invalid_under_a_new_port_tag_is_not_written(sd: SD) -> None:
    """Accepted under one port_tag, the config then names another tag the member has with a
    bad value: the member is left out, never written as `addr:nonsense`."""
    sd.ok("member-join", member_line("web1", "10.0.0.1", prom="x"), member_line("web2", "10.0.0.2", prom="9300"))
    sd.write_yml(port_tag="prom")
    sd.ok("member-join", member_line("web3", "10.0.0.3"))
    assert sd.targets() == {"web2": "10.0.0.2:9300", "web3": "10.0.0.3:9100"}


HOSTILE_NAMES = [
    "new\nline",
    "tab\there",
    "$(touch {canary})",
    "`touch {canary}`",
    'quote"name',
    "brace}{",
    "space name",
    "ünïcödé",
    "x" * 300,
]
HOSTILE_TAGS = [
    {"dc": '"}]}{"targets":["6.6.6.6:80"]'},  # (no comma: Serf's tag separator)
    {"dc": "$(touch {canary})"},
    {"metrics_port": "9100\n6.6.6.6"},
    {"other": "a b"},  # not even a chosen label: the whole member is refused
    {"q'uote": "1"},
]


def test_hostile_names_and_tags_are_refused_by_name(sd: SD, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    good = [member_line("web1", "10.0.0.1", dc="ams"), member_line("web2", "::2", metrics_port="9200")]
    bad = [member_line(name.replace("{canary}", str(canary)), "10.0.0.66") for name in HOSTILE_NAMES]
    bad += [member_line(f"tagged{i}", "10.0.0.77", **{k: v.replace("{canary}", str(canary)) for k, v in tags.items()})
            for i, tags in enumerate(HOSTILE_TAGS)]
    done = sd.run("member-join", b"".join([good[0], *bad, good[1]]))

    error = the_error(done, HANDLER)
    assert f"{len(bad)} member(s) skipped: " in error
    for i in range(len(HOSTILE_TAGS)):
        assert f"member 'tagged{i}': tag " in error
    assert sd.groups() == [group("10.0.0.1:9100", node="web1", role="web", dc="ams"),
                           group("[::2]:9200", node="web2", role="web")]
    assert set(sd.kept()) == {"web1", "web2"}
    text = sd.dest.read_text()
    for fragment in ("6.6.6.6", "$(", "`", "canary", "tagged", "'"):
        assert fragment not in text, fragment
    assert not list(tmp_path.glob("canary*")), "a member's data reached a shell"


# --- configuration errors ---------------------------------------------------------------------

IN = "handlers[0] (file_sd): "


@pytest.mark.parametrize(
    ("options", "says"),
    [
        pytest.param({"frobnicate": True}, IN + "frobnicate: unknown option(s)", id="unknown option"),
        pytest.param({"labels": ["a-b", "a_b"]}, IN + "labels: a_b: two labels would have this name", id="label clash"),
        pytest.param({"labels": ["role"]}, IN + "labels: role: two labels would have this name", id="clash with role"),
        pytest.param({"labels": ["node"]}, IN + "labels: node: two labels would have this name", id="clash with node"),
        pytest.param({"labels": "dc"}, IN + "labels: expected a list of names", id="labels not a list"),
        pytest.param({"labels": [""]}, IN + "labels: expected a list of names", id="empty label"),
        pytest.param({"port": 0}, IN + "port: expected a port number, 1-65535", id="port 0"),
        pytest.param({"port": "9100"}, IN + "port: expected a port number, 1-65535", id="port as a string"),
        pytest.param({"port_tag": ""}, IN + "port_tag: expected a non-empty string", id="empty port_tag"),
        pytest.param({"role": ["web"]}, "handlers[0].role: expected a non-empty", id="role: the config's check"),
        pytest.param({"destination": "t/serf.json"}, IN + "destination: expected an absolute path", id="relative"),
        pytest.param({"destination": None}, IN + "destination: expected an absolute path", id="no destination"),
        pytest.param({"state": 3}, IN + "state: expected an absolute path", id="state not a path"),
    ],
)
def test_config_errors_exit_2_naming_the_option(sd: SD, options: dict[str, Any], says: str) -> None:
    sd.ok("member-join", member_line("web1", "10.0.0.1"))
    before = sd.snapshot()
    sd.write_yml(**options)
    for event, args in (("member-join", ()), (None, ("render",)), (None, ("status",))):
        done = sd.run(event, member_line("web2", "10.0.0.2"), args)
        lines = stderr_lines(done)
        assert done.returncode == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"serf-handle: error: {sd.yml}: {says}"), lines
    assert sd.snapshot() == before


# --- no state file -------------------------------------------------------------------------------


def test_without_a_state_file_an_event_leaves_a_file_with_targets_and_reconcile_rebuilds(sd: SD) -> None:
    sd.ok("member-join", member_line("web1", "10.0.0.1", dc="ams"), member_line("web2", "10.0.0.2"))
    sd.state.unlink()  # lost (a new disk, a wiped /var/lib); Prometheus' file is still there
    before = sd.snapshot()

    done = sd.run("member-join", member_line("web3", "10.0.0.3"))

    error = the_error(done, HANDLER)
    assert f"{sd.state}: no state file while {sd.dest} exists; run `serf-handle reconcile`" in error
    assert sd.snapshot() == before and not sd.state.exists()  # web1 and web2 are not dropped

    sd.fake_serf([("web1", "10.0.0.1", "alive", {"role": "web", "dc": "ams"}),
                  ("web3", "10.0.0.3", "alive", {"role": "web", "metrics_port": "9103"}),
                  ("web2", "10.0.0.2", "failed", {"role": "web"}),
                  ("web6", "fd00::6", "alive", {"role": "web"})])
    sd.ok(None, args=("reconcile",))
    assert sd.groups() == [group("10.0.0.1:9100", node="web1", role="web", dc="ams"),
                           group("10.0.0.3:9103", node="web3", role="web"),
                           group("[fd00::6]:9100", node="web6", role="web")]
    assert sd.kept()["web2"]["status"] == "failed"  # known, so a later failed → join is seen
    sd.ok("member-leave", member_line("web6", "fd00::6"))  # events work again
    assert set(sd.targets()) == {"web1", "web3"}
    assert sd.run(None, args=("status",)).returncode == 0


def test_reconcile_reports_an_invalid_member_and_applies_the_rest(sd: SD) -> None:
    sd.fake_serf([("web1", "10.0.0.1", "alive", {"role": "web"}),
                  ("bad", "10.0.0.66", "alive", {"role": "web", "metrics_port": "x"})])
    done = sd.run(None, args=("reconcile",))
    assert done.returncode == 1 and "member 'bad': tag metrics_port='x'" in done.stderr.decode()
    assert sd.targets() == {"web1": "10.0.0.1:9100"}


@pytest.mark.parametrize("content", [b"", b"\n", b"[]\n"], ids=["empty", "a newline", "no targets"])
def test_without_a_state_file_a_file_without_targets_does_not_block_events(sd: SD, content: bytes) -> None:
    """What `render --write` installs before any member (or an operator's empty file) has no
    target to lose: the first event writes the file and starts the state."""
    sd.dest.write_bytes(content)
    sd.ok("member-join", member_line("web1", "10.0.0.1"))
    assert sd.targets() == {"web1": "10.0.0.1:9100"} and set(sd.kept()) == {"web1"}


def test_render_write_before_any_event_then_events(sd: SD) -> None:
    """As an image does before Prometheus starts: the file exists (no target), then the first join."""
    done = sd.ok(None, args=("render", "--write"))
    assert done.stdout == b"[]\n" and sd.dest.read_bytes() == b"[]\n"
    sd.ok("member-join", member_line("web1", "10.0.0.1"))
    assert sd.targets() == {"web1": "10.0.0.1:9100"}


# --- the temporary file ----------------------------------------------------------------------------

# Loaded by the real `serf-handle` (PYTHONPATH): records every rename the run makes.
RENAMES = """\
import os, sys
def hook(event, args):
    if event == "os.rename":
        with open(os.environ["RENAME_LOG"], "a") as log:
            log.write(f"{os.fsdecode(args[0])}\\t{os.fsdecode(args[1])}\\n")
sys.addaudithook(hook)
"""


def test_the_temporary_file_never_matches_the_json_glob(sd: SD, tmp_path: Path) -> None:
    """Prometheus re-reads every file its `files:` glob matches when the directory changes: a
    half-written candidate must never match `*.json` (Go's `*` matches a leading dot too, like
    fnmatch's)."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(RENAMES)
    renames = tmp_path / "renames"
    sd.extra_env = {"PYTHONPATH": str(hooks), "RENAME_LOG": str(renames)}

    sd.ok("member-join", member_line("web1", "10.0.0.1"))
    sd.ok("member-join", member_line("web2", "::2"))
    sd.ok(None, args=("render", "--write"))  # nothing to change: no rename
    sd.ok("member-leave", member_line("web1", "10.0.0.1"))

    into_dest = [line.split("\t") for line in renames.read_text().splitlines() if line.endswith(f"\t{sd.dest}")]
    assert len(into_dest) == 3, renames.read_text()  # one per change, each by rename
    for candidate, _ in into_dest:
        path = Path(candidate)
        assert path.parent == sd.targets_dir  # same directory: a rename, atomic
        for glob in ("*.json", "serf*.json", ".*.json", "*serf.json"):
            assert not fnmatch.fnmatchcase(path.name, glob), (path.name, glob)
        assert path.name.startswith(".") and path.name.endswith(".tmp")
    assert sorted(p.name for p in sd.targets_dir.iterdir()) == ["serf.json"]  # nothing left behind


# --- status, render, render --diff -------------------------------------------------------------


def test_status_render_and_diff(sd: SD) -> None:
    # Before anything: no state, no file.
    status = sd.run(None, args=("status",))
    assert status.returncode == 0 and f"file: {sd.dest}: not written yet" in status.stdout.decode()

    sd.ok("member-join", member_line("web1", "10.0.0.1", dc="ams"), member_line("web2", "::2"))
    installed = sd.dest.read_bytes()

    status = sd.run(None, args=("status",))
    assert status.returncode == 0, stderr_lines(status)
    assert status.stdout.decode().splitlines() == [
        f"# {HANDLER}", "web1 10.0.0.1 role=web alive", "web2 ::2 role=web alive", f"file: {sd.dest}: as installed"]
    render = sd.ok(None, args=("render",))
    assert render.stdout == installed
    diff = sd.run(None, args=("render", "--diff"))
    assert diff.returncode == 0 and diff.stdout == b""

    # Changed behind our back (Prometheus would now scrape 6.6.6.6).
    sd.dest.write_text(json.dumps([group("6.6.6.6:80", node="evil", role="web")], indent=1) + "\n")
    status = sd.run(None, args=("status",))
    assert status.returncode == 1 and "changed since this handler installed it" in status.stdout.decode()
    diff = sd.run(None, args=("render", "--diff"))
    assert diff.returncode == 1
    text = diff.stdout.decode()
    assert text.startswith(f"--- {sd.dest}\n+++ {sd.dest} (rendered from {sd.state})\n")
    assert '-   "6.6.6.6:80"' in text and '+   "10.0.0.1:9100"' in text and '+   "[::2]:9100"' in text
    assert sd.dest.read_bytes() != installed  # --diff writes nothing

    sd.ok(None, args=("render", "--write"))
    assert sd.dest.read_bytes() == installed
    assert sd.run(None, args=("render", "--diff")).returncode == 0
    assert sd.run(None, args=("status",)).returncode == 0

    # Deleted: status says so, and the next event writes it again.
    sd.dest.unlink()
    status = sd.run(None, args=("status",))
    assert status.returncode == 1 and "not written yet" in status.stdout.decode()
    sd.ok("member-join", member_line("web3", "10.0.0.3"))
    assert set(sd.targets()) == {"web1", "web2", "web3"}


# --- kill -9 anywhere ------------------------------------------------------------------------------


def test_kill_9_at_random_points_leaves_a_whole_file_and_reconcile_gives_the_clean_result(tmp_path: Path) -> None:
    """40 runs, each killed (SIGKILL) at a random moment within its typical duration or let
    finish: after each, the destination is a complete JSON list Prometheus can read and the
    record loads; no temporary file matches `*.json`; one reconcile then writes exactly what
    a clean run writes."""
    import os
    import random
    import signal
    import time

    site = SD(tmp_path / "sd")
    pool = [(f"web{i}", f"10.0.0.{i}") for i in range(1, 7)]
    started = time.monotonic()
    site.ok("member-join", member_line(*pool[0]))
    typical = time.monotonic() - started
    rng = random.Random(18)
    model: set[str] = {pool[0][0]}
    killed = 0
    for _ in range(40):
        name, addr = rng.choice(pool)
        kind = "member-leave" if name in model else "member-join"
        env = {**clean_environ(), "SERF_EVENT": kind, "SERF_SELF_NAME": "prom",
               "SERF_HANDLERS_CACHE_DIR": str(site.dir / "cache")}
        run = subprocess.Popen([SERF_HANDLE, "--config", str(site.yml)], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        assert run.stdin is not None
        run.stdin.write(member_line(name, addr))
        run.stdin.close()
        try:
            run.wait(timeout=rng.uniform(0, typical * 1.2))
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(timeout=10)
            killed += 1
        if run.returncode == 0:
            model ^= {name}
        assert isinstance(json.loads(site.dest.read_bytes()), list)  # whole, never half-written
        json.loads(site.state.read_bytes())
        assert not [p for p in site.targets_dir.iterdir() if fnmatch.fnmatch(p.name, "*.json") and p != site.dest]
    assert killed >= 5, killed  # the test really killed runs mid-way
    clean = SD(tmp_path / "clean")
    chosen = [(n, a) for n, a in pool if rng.random() < 0.5] or pool[:1]
    alive = [(n, a, "alive", {"role": "web"}) for n, a in chosen]
    for s in (site, clean):
        s.fake_serf(alive)
        s.ok(None, args=("reconcile",))
    assert site.dest.read_bytes() == clean.dest.read_bytes()
    assert site.leftovers() == []
