"""Real processes on loopback for integration tests and the demo: serf agents, nginx, haproxy.

Every process is started through a `Processes` group, which stops exactly the PIDs it
started (SIGINT first, so serf agents leave gracefully; SIGKILL if they linger).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

T = TypeVar("T")

VENV_BIN = Path(sys.executable).parent
SERF_HANDLE = str(VENV_BIN / "serf-handle")


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (serf gossips over both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return int(port)


def wait_until(predicate: Callable[[], T], timeout: float = 15.0, interval: float = 0.1, what: str = "") -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        time.sleep(interval)


class Processes:
    """Starts processes with logs in `workdir`, and stops exactly those, by PID."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.workdir
        )
        log.close()
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, timeout: float = 10.0) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            self.stop(proc)


class Agent:
    """A serf agent on loopback with its own gossip and RPC ports."""

    def __init__(
        self,
        procs: Processes,
        name: str,
        tags: dict[str, str] | None = None,
        join: "Agent | None" = None,
        handler: str | None = None,
        env: dict[str, str] | None = None,
        extra: Sequence[str] = (),
        rpc_auth: str | None = None,
    ) -> None:
        self.name = name
        self.rpc_auth = rpc_auth
        self.bind = free_port()
        self.rpc = f"127.0.0.1:{free_port()}"
        argv = ["serf", "agent", "-node", name, "-bind", f"127.0.0.1:{self.bind}", "-rpc-addr", self.rpc]
        argv += ["-log-level", "debug"]
        for key, value in (tags or {}).items():
            argv += ["-tag", f"{key}={value}"]
        if join is not None:
            argv += ["-join", f"127.0.0.1:{join.bind}"]
        if handler is not None:
            argv += ["-event-handler", handler]
        argv += list(extra)
        self.procs = procs
        self.proc = procs.start(f"serf-{name}".replace(" ", "_").replace("/", "_"), argv, env={**os.environ, **(env or {})})
        wait_until(self._answers, timeout=10, what=f"serf agent {name} RPC")

    def _answers(self) -> bool:
        return self.serf("members", check=False).returncode == 0

    def serf(self, *args: str, check: bool = True, timeout: float = 15) -> subprocess.CompletedProcess[str]:
        auth = [f"-rpc-auth={self.rpc_auth}"] if self.rpc_auth else []
        return subprocess.run(
            ["serf", args[0], f"-rpc-addr={self.rpc}", *auth, *args[1:]],
            capture_output=True, text=True, timeout=timeout, check=check,
        )

    def alive_names(self) -> set[str]:
        out = self.serf("members", "-status", "alive", "-format", "json").stdout
        return {m["name"] for m in json.loads(out)["members"] or []}

    def leave(self) -> None:
        """Graceful: peers see member-leave."""
        self.procs.stop(self.proc, signal.SIGINT)

    def crash(self) -> None:
        """kill -9: peers see member-failed after about 7 s."""
        self.procs.stop(self.proc, signal.SIGKILL)


def cluster_sees(agent: Agent, names: Iterable[str]) -> Callable[[], bool]:
    wanted = set(names)
    return lambda: agent.alive_names() == wanted


def require(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        raise RuntimeError(f"missing programs {missing}: run `make deps` (Debian packages)")


def start_nginx(procs: Processes, name: str, port: int, body: str | None = None) -> subprocess.Popen[bytes]:
    """nginx in the foreground on 127.0.0.1:port, answering every request with `body`."""
    root = procs.workdir / f"nginx-{port}"  # not the name: nginx.conf paths are unquoted
    root.mkdir(exist_ok=True)
    conf = root / "nginx.conf"
    text = body if body is not None else name
    conf.write_text(
        f"""daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "{text}\\n"; }}
    }}
}}
"""
    )
    proc = procs.start(f"nginx-{port}", ["nginx", "-p", str(root), "-c", str(conf)])
    wait_until(lambda: _connects(port), timeout=10, what=f"nginx {name} on port {port}")
    return proc


def start_haproxy(procs: Processes, config: Path, pidfile: Path) -> subprocess.Popen[bytes]:
    """HAProxy in master-worker mode in the foreground; reload with `kill -USR2 <master>`."""
    return procs.start("haproxy", ["haproxy", "-W", "-db", "-f", str(config), "-p", str(pidfile)])


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# --- a load balancer: HAProxy (master-worker) + serf agent `lb` running serf-handle -----------

RELOAD_SCRIPT = (
    "import os, signal, sys; open(sys.argv[1], 'a').write('reload\\n');"
    "os.kill(int(open(sys.argv[2]).read().split()[0]), signal.SIGUSR2)"
)


class LoadBalancer:
    """HAProxy plus a serf agent `lb` whose event handler is `serf-handle` with a haproxy handler."""

    def __init__(self, procs: Processes, live: bool) -> None:
        require("serf", "haproxy", "nginx")
        self.procs = procs
        d = procs.workdir
        self.dir = d
        self.config = d / "haproxy.cfg"
        self.state = d / "state.json"
        self.yml = d / "config.yml"
        self.log = d / "handler.jsonl"
        self.reloads = d / "reloads"
        self.pidfile = d / "haproxy.pid"
        self.socket = d / "admin.sock" if live else None
        self.port = free_port()
        self.template: Path | None = None
        self.write_yml()
        # As an image does: an empty but valid config first, so HAProxy starts before any member.
        subprocess.run([SERF_HANDLE, "render", "--write", "--config", str(self.yml)], check=True, capture_output=True)
        self.haproxy = start_haproxy(procs, self.config, self.pidfile)
        wait_until(lambda: self.pidfile.exists() and self.pidfile.read_text().strip(), what="haproxy pidfile")
        wait_until(lambda: get(self.port)[0] == 503, what="haproxy serving (no servers yet: 503)")
        env = {"SERF_HANDLERS_CACHE_DIR": str(d / "cache")}
        self.agent = Agent(procs, "lb", {"role": "lb"}, handler=f"{SERF_HANDLE} --config {self.yml}", env=env)
        self.webs: dict[str, Agent] = {}

    def write_yml(self, template: Path | None = None) -> None:
        reload = [sys.executable, "-c", RELOAD_SCRIPT, str(self.reloads), str(self.pidfile)]
        lines = [
            f"log: {{level: info, format: json, file: {self.log}}}",
            "handlers:",
            "  - type: haproxy",
            f"    config: {self.config}",
            f"    state: {self.state}",
            f"    haproxy: {shutil.which('haproxy')}",
            f"    vars: {{bind: '127.0.0.1:{self.port}', socket: {self.dir / 'admin.sock'}}}",
            f"    reload: {json.dumps(reload)}",
        ]
        if self.socket is not None:
            lines.append(f"    socket: {self.socket}")
        if template is not None:
            lines.append(f"    template: {template}")
        self.yml.write_text("\n".join(lines) + "\n")

    def add_web(self, name: str, body: str, **tags: str) -> Agent:
        """A web node: nginx answering `body`, and a serf agent with role=web and port=<nginx>."""
        port = free_port()
        start_nginx(self.procs, body, port, body)
        agent = Agent(self.procs, name, {"role": "web", "port": str(port), **tags}, join=self.agent)
        self.webs[name] = agent
        return agent

    def reload_count(self) -> int:
        return len(self.reloads.read_text().splitlines()) if self.reloads.exists() else 0

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def state_nodes(self) -> set[str]:
        return set(json.loads(self.state.read_text())["servers"]) if self.state.exists() else set()


def get(port: int, host: str | None = None) -> tuple[int, str]:
    """One request through a fresh connection: (status, body), or (0, '<error>')."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        headers = {"Connection": "close", **({"Host": host} if host else {})}
        conn.request("GET", "/", headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace").strip()
    except OSError as exc:
        return 0, f"<{type(exc).__name__}>"
    finally:
        conn.close()


def bodies(lb: LoadBalancer, n: int = 24) -> set[str]:
    """What `n` fresh requests through HAProxy got back (roundrobin: enough to see every server)."""
    return {body if status == 200 else f"<{status}>" for status, body in (get(lb.port) for _ in range(n))}
