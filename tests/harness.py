"""Real processes on loopback for integration tests and the demo: serf agents, nginx, haproxy.

Every process is started through a `Processes` group, which stops exactly the PIDs it
started (SIGINT first, so serf agents leave gracefully; SIGKILL if they linger).
"""

from __future__ import annotations

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
        import json

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
    root = procs.workdir / f"nginx-{name}"
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
    proc = procs.start(f"nginx-{name}", ["nginx", "-p", str(root), "-c", str(conf)])
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


def http_get(port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, str]:
    """One request over a fresh connection: (status, body)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()
