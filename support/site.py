"""A haproxy-handler site in one directory, driven through the real `serf-handle` exactly as
Serf runs it; optionally with HAProxy in front of it (`serve`) and a serf agent running it
(`start_agent`): a load balancer (`load_balancer`).

The reload commands here are fixed argv lists, as an operator would configure them. Every one
appends one line to the site's `reloads` file per reload, and that file is the one reload
counter (`reload_count`): `record_reload_argv` writes the SHA-256 of the config HAProxy would
load, so a test can tell which config "HAProxy" runs, not just how many reloads happened.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from support.processes import (
    SERF_HANDLE,
    Agent,
    Processes,
    free_port,
    get,
    require,
    start_haproxy,
    start_haproxy_daemon,
    start_nginx,
    wait_until,
)

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
# What a load balancer's HAProxy is reloaded with (`Site.serve`): one shell, no Python start-up.
_MASTER_WORKER = 'read pid rest < "$2" && kill -USR2 "$pid" && echo reload >> "$1"'
_NAIVE = 'haproxy -D -f "$2" -p "$3" -sf $(cat "$3") && echo reload >> "$1"'  # a fixed string, no member data
MODES = ("runtime", "reload", "naive")


def record_reload_argv(log: Path, config: Path) -> list[str]:
    return [sys.executable, "-S", "-c", _RECORD, str(log), str(config)]


def usr2_reload_argv(log: Path, config: Path, pidfile: Path) -> list[str]:
    return [sys.executable, "-S", "-c", _USR2, str(log), str(config), str(pidfile)]


def count_reload_argv(log: Path) -> list[str]:
    """A reload that only appends `reload` to `log` (no HAProxy): one shell, no Python start-up."""
    return ["sh", "-c", 'echo reload >> "$1"', "reload", str(log)]


def reload_lines(log: Path) -> list[str]:
    """The reload counter: every reload command here appends one line per reload to `log`."""
    return log.read_text().splitlines() if log.exists() else []


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
    """A haproxy handler's files in one directory, and `serf-handle` runs against them.

    `options` are the haproxy handler's (None drops one); `log` the config's `log:` section;
    `serf_handle` which install runs (the benchmarks pass their throwaway one). `serve` puts
    HAProxy in front of it, `start_agent` a serf agent running it, `add_web` web nodes.
    """

    def __init__(
        self, directory: Path, *, serf_handle: str = SERF_HANDLE, log: Mapping[str, Any] | None = None, **options: Any
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.serf_handle = serf_handle
        self.yml = directory / "config.yml"
        self.config = directory / "haproxy.cfg"
        self.state = directory / "state.json"
        self.reloads = directory / "reloads"
        self.cache = directory / "cache"
        self.bin = directory / "bin"
        self.log_settings: dict[str, Any] = dict(log or {})
        self.extra_env: dict[str, str] = {}  # for every run and for the serf agent
        self.metrics: Path | None = None  # config.yml's top-level `metrics:` file, when set
        self.more_handlers: list[dict[str, Any]] = []  # entries after the haproxy handler's
        self.options: dict[str, Any] = {
            "config": str(self.config),
            "state": str(self.state),
            "haproxy": HAPROXY,
            "check": True,
            "reload": record_reload_argv(self.reloads, self.config),
            "vars": dict(FIXED_VARS),
        }
        self.options.update(options)
        # Set by `serve`:
        self.procs: Processes | None = None
        self.mode: str | None = None
        self.port = 0
        self.pidfile = directory / "haproxy.pid"
        self.admin_socket = directory / "admin.sock"  # HAProxy's stats socket (in the template's vars)
        self.agent: Agent | None = None
        self.webs: dict[str, Agent] = {}
        self.write_yml()

    def write_yml(self, log: Mapping[str, Any] | None = None, **changes: Any) -> None:
        """The config file, as JSON (which YAML reads): no quoting surprises. None drops an option."""
        if log is not None:
            self.log_settings = dict(log)
        self.options.update(changes)
        data: dict[str, Any] = {"log": self.log_settings, "handlers": self.handler_entries()}
        if self.metrics is not None:
            data["metrics"] = str(self.metrics)
        self.yml.write_text(json.dumps(data, indent=1, default=str) + "\n")  # default: Path values

    def handler_entries(self) -> list[dict[str, Any]]:
        """config.yml's `handlers:` list: the haproxy handler, then `more_handlers`."""
        return [{"type": "haproxy", **{k: v for k, v in self.options.items() if v is not None}}, *self.more_handlers]

    def env(self, event: str | None = "member-join", **extra: str) -> dict[str, str]:
        env = clean_environ()
        env["SERF_HANDLERS_CACHE_DIR"] = str(self.cache)
        env["SERF_SELF_NAME"] = "lb"
        env["SERF_SELF_ROLE"] = "lb"
        if event is not None:
            env["SERF_EVENT"] = event
        if self.bin.exists():
            env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env.update(self.extra_env)
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
            [self.serf_handle, "--config", str(yml or self.yml), *args],
            input=stdin,
            capture_output=True,
            env=dict(env) if env is not None else self.env(event),
            timeout=timeout,
            check=False,
        )

    def must(self, *args: str, event: str | None = None, stdin: bytes = b"", timeout: float = 120) -> None:
        """`run`, raising RuntimeError unless it exits 0 (for set-up, not for what is tested)."""
        done = self.run(event, stdin, args, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"serf-handle {' '.join(args) or event}: exit {done.returncode}: "
                               f"{done.stderr.decode(errors='replace')[-800:]}")

    def spawn(self, event: str, stdin: bytes, stderr: Path) -> subprocess.Popen[bytes]:
        """Start one run without waiting, in its own process group (so a kill takes its
        `haproxy -c` and reload too); `stdin` is written and closed."""
        with open(stderr, "wb") as err:
            run = subprocess.Popen(
                [self.serf_handle, "--config", str(self.yml)],
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

    # --- HAProxy in front, a serf agent running the handler, web nodes -----------------------

    def serve(self, procs: Processes, mode: str = "reload", vars: Mapping[str, Any] | None = None) -> None:
        """Start HAProxy for this site, from the config `render --write` installs (an empty
        backend, as an image does before any member), and wait until it answers 503.

        How a membership change reaches HAProxy (`mode`):
        - "runtime": master-worker HAProxy, the handler's `socket` set: the runtime API, with
          a reload only as the fallback;
        - "reload": master-worker HAProxy, no socket: rewrite + `kill -USR2 <master>`;
        - "naive": daemonized HAProxy (`-D`), rewrite + `haproxy -D -f cfg -p pid -sf $(cat pid)`.

        `vars`: more template variables (TLS termination, say).
        """
        require("haproxy")
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {MODES}")
        self.procs, self.mode, self.port = procs, mode, free_port()
        self.write_yml(
            vars={"bind": f"127.0.0.1:{self.port}", "socket": str(self.admin_socket), **(vars or {})},
            reload=self.reload_argv(),
            socket=str(self.admin_socket) if mode == "runtime" else None,
        )
        self.must("render", "--write")
        if mode == "naive":
            start_haproxy_daemon(procs, self.config, self.pidfile)
        else:
            name = "haproxy" if self.dir == procs.workdir else f"haproxy-{self.dir.name}"
            start_haproxy(procs, self.config, self.pidfile, name=name)
        wait_until(lambda: get(self.port)[0] == 503, what="haproxy serving (no servers yet: 503)")

    def reload_argv(self) -> list[str]:
        """The handler's reload command for `serve`'s mode; each reload appends to `reloads`."""
        if self.mode == "naive":
            return ["sh", "-c", _NAIVE, "reload", str(self.reloads), str(self.config), str(self.pidfile)]
        return ["sh", "-c", _MASTER_WORKER, "reload", str(self.reloads), str(self.pidfile)]

    def handler_command(self) -> str:
        """The -event-handler value for the load balancer's serf agent."""
        return f"{self.serf_handle} --config {self.yml}"

    def start_agent(
        self,
        name: str = "lb",
        join: Agent | None = None,
        wait: bool = True,
        before: Sequence[str] = (),
        log_level: str = "debug",
    ) -> Agent:
        """The serf agent with role=lb, running the `before` handlers and then serf-handle."""
        assert self.procs is not None, "serve() first"
        env = {"SERF_HANDLERS_CACHE_DIR": str(self.cache), **self.extra_env}
        self.agent = Agent(self.procs, name, {"role": "lb"}, join=join, handlers=[*before, self.handler_command()],
                           env=env, wait=wait, log_level=log_level)
        return self.agent

    def add_web(self, name: str, body: str, **tags: str) -> Agent:
        """A web node: nginx answering `body`, and a serf agent with role=web and port=<nginx>."""
        assert self.procs is not None and self.agent is not None, "serve() and start_agent() first"
        port = free_port()
        start_nginx(self.procs, body, port, body)
        agent = Agent(self.procs, name, {"role": "web", "port": str(port), **tags}, join=self.agent)
        self.webs[name] = agent
        return agent

    # --- what the runs left behind -----------------------------------------------------

    def state_data(self) -> dict[str, Any] | None:
        return json.loads(self.state.read_bytes()) if self.state.exists() else None

    def servers(self) -> set[str]:
        data = self.state_data()
        return set(data["servers"]) if data else set()

    state_nodes = servers

    def applied(self) -> set[str] | None:
        """The nodes HAProxy is known to have (None: unknown). "servers" means: all of them."""
        data = self.state_data()
        if data is None or data["applied"] is None:
            return None
        return set(data["servers"] if data["applied"] == "servers" else data["applied"])

    def server_lines(self) -> list[str]:
        return [line.strip() for line in self.config.read_text().splitlines() if line.startswith("    server ")]

    def reload_hashes(self) -> list[str]:
        """One line per reload (a config's hash for `record_reload_argv`)."""
        return reload_lines(self.reloads)

    def reload_count(self) -> int:
        return len(reload_lines(self.reloads))

    def temp_files(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir() if p.name.endswith(".tmp"))

    @property
    def log(self) -> Path | None:
        """The handler's log file, if config.yml names one."""
        file = self.log_settings.get("file")
        return Path(file) if file else None

    def log_lines(self) -> list[str]:
        log = self.log
        return log.read_text(errors="replace").splitlines() if log is not None and log.exists() else []

    def records(self) -> list[dict[str, object]]:
        """The log's records (`format: json`)."""
        return [json.loads(line) for line in self.log_lines()]


def load_balancer(procs: Processes, live: bool = False) -> Site:
    """HAProxy plus a serf agent `lb` whose event handler is `serf-handle` with a haproxy handler,
    in `procs`' directory, logging JSON records: with `live` through the runtime API, else by
    reloads."""
    require("serf", "haproxy", "nginx")
    site = Site(procs.workdir, log={"level": "info", "format": "json", "file": str(procs.workdir / "handler.jsonl")})
    site.serve(procs, "runtime" if live else "reload")
    site.start_agent()
    return site


def bodies(lb: Site, n: int = 24) -> set[str]:
    """What `n` fresh requests through HAProxy got back (roundrobin: enough to see every server)."""
    return {body if status == 200 else f"<{status}>" for status, body in (get(lb.port) for _ in range(n))}


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
