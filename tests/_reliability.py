"""Helpers for the reliability tests (issue 6): a haproxy-handler site in one directory,
driven through the real `serf-handle` console script exactly as Serf runs it.

The reload commands here are fixed argv lists, as an operator would configure them. They
record the SHA-256 of the config HAProxy would load, one line per reload, so a test can
tell which config "HAProxy" runs, not just how many reloads happened.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from tests.harness import SERF_HANDLE

HAPROXY = shutil.which("haproxy")

# Template paths that depend on no test directory, so that two sites render identical bytes.
# Nothing ever creates them: without a socket the handler only reads the state file.
FIXED_VARS = {
    "bind": "127.0.0.1:18080",
    "socket": "/nonexistent/serf-handlers-tests/admin.sock",
    "server_state_file": "/nonexistent/serf-handlers-tests/server-state",
}

_RECORD = (
    "import hashlib, sys\n"
    "data = open(sys.argv[2], 'rb').read()\n"
    "open(sys.argv[1], 'a').write(hashlib.sha256(data).hexdigest() + '\\n')\n"
)
# `kill -USR2 <master pid>` plus the record; fails, as the real one does, when HAProxy is not running.
_USR2 = (
    "import hashlib, os, signal, sys\n"
    "log, config, pidfile = sys.argv[1:4]\n"
    "try:\n"
    "    os.kill(int(open(pidfile).read().split()[0]), signal.SIGUSR2)\n"
    "except (OSError, ValueError, IndexError) as exc:\n"
    "    sys.exit(f'haproxy is not running: {exc}')\n"
    "open(log, 'a').write(hashlib.sha256(open(config, 'rb').read()).hexdigest() + '\\n')\n"
)


def record_reload_argv(log: Path, config: Path) -> list[str]:
    return [sys.executable, "-S", "-c", _RECORD, str(log), str(config)]


def usr2_reload_argv(log: Path, config: Path, pidfile: Path) -> list[str]:
    return [sys.executable, "-S", "-c", _USR2, str(log), str(config), str(pidfile)]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def serf_escape(value: str) -> str:
    """What Serf does to names, roles and tags before writing a member line."""
    return value.replace("\t", "\\t").replace("\n", "\\n")


def member_line(name: str, addr: str, role: str = "web", **tags: str) -> bytes:
    """One member line as Serf writes it: NAME, ADDR, ROLE, TAGS (k=v,k=v), tab-separated."""
    tag_text = ",".join(f"{key}={value}" for key, value in {"role": role, **tags}.items())
    return ("\t".join(serf_escape(field) for field in (name, addr, role, tag_text)) + "\n").encode("utf-8")


def clean_environ() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("SERF_")}


class Site:
    """A haproxy handler's files in one directory, and `serf-handle` runs against them."""

    def __init__(self, directory: Path, **options: Any) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.yml = directory / "config.yml"
        self.config = directory / "haproxy.cfg"
        self.state = directory / "state.json"
        self.reloads = directory / "reloads"
        self.cache = directory / "cache"
        self.bin = directory / "bin"
        self.options: dict[str, Any] = {
            "config": str(self.config),
            "state": str(self.state),
            "haproxy": HAPROXY,
            "check": True,
            "reload": record_reload_argv(self.reloads, self.config),
            "vars": dict(FIXED_VARS),
        }
        self.options.update(options)
        self.write_yml()

    def write_yml(self, log: Mapping[str, Any] | None = None, **changes: Any) -> None:
        """The config file, as JSON (which YAML reads): no quoting surprises. None drops an option."""
        self.options.update(changes)
        entry = {"type": "haproxy", **{k: v for k, v in self.options.items() if v is not None}}
        self.yml.write_text(json.dumps({"log": dict(log or {}), "handlers": [entry]}, indent=1) + "\n")

    def env(self, event: str | None = "member-join", **extra: str) -> dict[str, str]:
        env = clean_environ()
        env["SERF_HANDLERS_CACHE_DIR"] = str(self.cache)
        env["SERF_SELF_NAME"] = "lb"
        env["SERF_SELF_ROLE"] = "lb"
        if event is not None:
            env["SERF_EVENT"] = event
        if self.bin.exists():
            env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env.update(extra)
        return env

    def run(
        self,
        event: str | None = "member-join",
        stdin: bytes = b"",
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
        yml: Path | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """One `serf-handle --config YML [args]` run, as Serf starts it."""
        return subprocess.run(
            [SERF_HANDLE, "--config", str(yml or self.yml), *args],
            input=stdin,
            capture_output=True,
            env=dict(env) if env is not None else self.env(event),
            timeout=timeout,
            check=False,
        )

    def spawn(self, event: str, stdin: bytes, stderr: Path) -> subprocess.Popen[bytes]:
        """Start one run without waiting, in its own process group (so a kill takes its
        `haproxy -c` and reload too); `stdin` is written and closed."""
        with open(stderr, "wb") as err:
            run = subprocess.Popen(
                [SERF_HANDLE, "--config", str(self.yml)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=self.env(event),
                start_new_session=True,
            )
        assert run.stdin is not None
        run.stdin.write(stdin)
        run.stdin.close()
        return run

    def join(self, *lines: bytes) -> subprocess.CompletedProcess[bytes]:
        return self.run("member-join", b"".join(lines))

    def reconcile(self, members: Sequence[tuple[str, str, Mapping[str, str]]]) -> subprocess.CompletedProcess[bytes]:
        """`serf-handle reconcile` against a fake `serf` printing exactly these alive members."""
        self.fake_serf(members)
        return self.run(None, args=["reconcile"])

    def fake_serf(self, members: Sequence[tuple[str, str, Mapping[str, str]]]) -> None:
        """A `serf` first on this site's PATH whose `members` prints exactly these alive members."""
        self.bin.mkdir(exist_ok=True)
        listing = self.dir / "members.json"
        listing.write_text(
            json.dumps(
                {
                    "members": [
                        {"name": name, "addr": f"{addr}:7946", "status": "alive", "tags": dict(tags)}
                        for name, addr, tags in members
                    ]
                }
            )
        )
        serf = self.bin / "serf"
        serf.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write(open({str(listing)!r}).read())\n")
        serf.chmod(0o755)

    # --- what the run left behind ------------------------------------------------------

    def state_data(self) -> dict[str, Any] | None:
        return json.loads(self.state.read_bytes()) if self.state.exists() else None

    def servers(self) -> set[str]:
        data = self.state_data()
        return set(data["servers"]) if data else set()

    def applied(self) -> set[str] | None:
        """The nodes HAProxy is known to have (None: unknown). "servers" means: all of them."""
        data = self.state_data()
        if data is None or data["applied"] is None:
            return None
        return set(data["servers"] if data["applied"] == "servers" else data["applied"])

    def server_lines(self) -> list[str]:
        return [line.strip() for line in self.config.read_text().splitlines() if line.startswith("    server ")]

    def reload_hashes(self) -> list[str]:
        return self.reloads.read_text().split() if self.reloads.exists() else []

    def temp_files(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir() if p.name.endswith(".tmp"))


def stderr_lines(done: subprocess.CompletedProcess[Any]) -> list[str]:
    err = done.stderr.decode("utf-8", "replace") if isinstance(done.stderr, bytes) else done.stderr
    return err.splitlines()


class HAProxyCheck:
    """`haproxy -c` on a config's bytes, remembered by content (it costs about 40 ms a run)."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.results: dict[str, tuple[bool, str]] = {}
        self.runs = 0

    def __call__(self, data: bytes) -> tuple[bool, str]:
        key = sha(data)
        if key not in self.results:
            assert HAPROXY is not None
            path = self.scratch / "checked.cfg"
            path.write_bytes(data)
            done = subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, timeout=30, check=False)
            self.runs += 1
            self.results[key] = (done.returncode == 0, (done.stdout + done.stderr).decode("utf-8", "replace"))
        return self.results[key]


def admin(path: Path | str, command: str, timeout: float = 2.0) -> str:
    """One runtime API command to a real HAProxy admin socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(command.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def live_servers(path: Path | str, backend: str = "web") -> dict[str, tuple[str, str, str, str]]:
    """HAProxy's own view: server name -> (addr, port, weight, admin state) from `show servers state`."""
    try:
        text = admin(path, f"show servers state {backend}")
    except OSError:
        return {}
    lines = text.splitlines()
    header = next((line for line in lines if line.startswith("# be_id")), None)
    if header is None:
        return {}
    columns = header[2:].split()
    servers = {}
    for line in lines:
        fields = line.split()
        if line.startswith("#") or len(fields) != len(columns):
            continue
        row = dict(zip(columns, fields))
        servers[row["srv_name"]] = (row["srv_addr"], row["srv_port"], row["srv_uweight"], row["srv_admin_state"])
    return servers
