"""Real processes on loopback for the tests, the demo and the benchmarks: serf agents,
nginx, haproxy.

Every process is started through a `Processes` group, which stops exactly the PIDs it
started (SIGINT first, so serf agents leave gracefully; SIGKILL if they linger). A
daemonized haproxy forks away from us: it is found through the pidfile we gave it (and
our own directory in its command line) and stopped by PID too (see `stop_daemon`).
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
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

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


def eventually(predicate: Callable[[], object], timeout: float, interval: float = 0.2) -> bool:
    """Whether `predicate` becomes true within `timeout` (the caller asserts, with a message)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


class Processes:
    """Starts processes with logs in `workdir`, and stops exactly those, by PID."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[subprocess.Popen[bytes]] = []
        self.daemons: list[Path] = []  # pidfiles of daemonized processes we started (start_haproxy_daemon)

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{name}.log", "ab") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.workdir
            )
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

    def stop_all(self, together: bool = False, timeout: float = 10.0) -> None:
        """Stop the daemons, then every process, newest first: one after the other (SIGINT:
        serf agents leave gracefully), or with `together` SIGTERM to all at once and then one
        wait, SIGKILL for stragglers. SIGTERM because a test's clean-up needs no graceful leave:
        SIGINT makes every serf agent spend about 3 s on one, alone or not (measured)."""
        for pidfile in self.daemons:
            stop_daemon(pidfile)
        if not together:
            for proc in reversed(self.started):
                self.stop(proc, timeout=timeout)
            return
        running = [p for p in reversed(self.started) if p.poll() is None]
        for proc in running:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def stop_daemon(pidfile: Path, marker: str | None = None) -> None:
    """Stop a daemonized haproxy we started: the PIDs in its pidfile, then any of its old
    (soft-stopping) processes, recognised by our own unique directory (`marker`, by default
    the pidfile's) in their command line."""
    marker = marker or str(pidfile.parent)
    pids: set[int] = set()
    try:
        pids.update(int(p) for p in pidfile.read_text().split())
    except (OSError, ValueError):
        pass
    pids.update(_pids_with(marker, "haproxy"))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _pids_with(marker: str, program: str) -> list[int]:
    """PIDs of `program` processes whose command line holds `marker` (our temp dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0].decode(errors="replace")) == program and any(
            marker.encode() in a for a in argv
        ):
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


class Agent:
    """A serf agent on loopback with its own gossip and RPC ports.

    `handler` and then each of `handlers` is an -event-handler; with `wait=False` the
    constructor returns right after starting the agent (see `wait_ready`).
    """

    def __init__(
        self,
        procs: Processes,
        name: str,
        tags: dict[str, str] | None = None,
        join: Agent | None = None,
        handler: str | None = None,
        env: dict[str, str] | None = None,
        extra: Sequence[str] = (),
        rpc_auth: str | None = None,
        handlers: Sequence[str] = (),
        wait: bool = True,
        log_level: str = "debug",
    ) -> None:
        self.name = name
        self.rpc_auth = rpc_auth
        self.leaving = False
        self.bind = free_port()
        self.rpc = f"127.0.0.1:{free_port()}"
        argv = ["serf", "agent", "-node", name, "-bind", f"127.0.0.1:{self.bind}", "-rpc-addr", self.rpc]
        argv += ["-log-level", log_level]
        for key, value in (tags or {}).items():
            argv += ["-tag", f"{key}={value}"]
        if join is not None:
            argv += ["-join", f"127.0.0.1:{join.bind}"]
        for each in ([handler] if handler is not None else []) + list(handlers):
            argv += ["-event-handler", each]
        argv += list(extra)
        self.procs = procs
        log_name = f"serf-{name}".replace(" ", "_").replace("/", "_")
        self.proc = procs.start(log_name, argv, env={**os.environ, **(env or {})})
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        wait_until(self._answers, timeout=10, what=f"serf agent {self.name} RPC")

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

    def leave(self, wait: bool = True) -> None:
        """Graceful: peers see member-leave. `wait=False`: only send the SIGINT."""
        self.leaving = True
        if wait:
            self.procs.stop(self.proc, signal.SIGINT)
        elif self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

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


def start_nginx(
    procs: Processes,
    name: str,
    port: int,
    body: str | None = None,
    worker_connections: int = 1024,
    keepalive_requests: int = 100000,
) -> subprocess.Popen[bytes]:
    """nginx in the foreground on 127.0.0.1:port, answering every request with `body` (default: `name`),
    except `/healthz`: 200 `ok`, or 500 while `set_healthy(procs, port, False)` says so."""
    root = procs.workdir / f"nginx-{port}"  # not the name: nginx.conf paths are unquoted
    root.mkdir(exist_ok=True)
    conf = root / "nginx.conf"
    text = body if body is not None else name
    (root / "health.conf").write_text(_HEALTH[True])
    server = (
        f"        listen 127.0.0.1:{port};\n"
        f'        location / {{ default_type text/plain; return 200 "{text}\\n"; }}\n'
        f"        location = /healthz {{ default_type text/plain; include {root}/health.conf; }}\n"
    )
    conf.write_text(nginx_conf(root, server, worker_connections, keepalive_requests))
    proc = procs.start(f"nginx-{port}", ["nginx", "-p", str(root), "-c", str(conf)])
    wait_until(lambda: connects(port), timeout=10, what=f"nginx {name} on port {port}")
    return proc


def nginx_conf(root: Path, server: str, worker_connections: int = 1024, keepalive_requests: int = 100000) -> str:
    """An nginx.conf for a foreground nginx whose files all live in `root`, with one
    `server` block holding `server` (its listen and location lines)."""
    return f"""daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_requests {keepalive_requests};
    server {{
{server}    }}
}}
"""


# What `/healthz` answers (nginx's workers run as nobody and cannot see into our
# directories, so the switch is an included file that the master re-reads on SIGHUP).
_HEALTH = {True: 'return 200 "ok\\n";\n', False: 'return 500 "unhealthy\\n";\n'}


def set_healthy(procs: Processes, port: int | str, healthy: bool) -> None:
    """Make the nginx `start_nginx` started on `port` answer `/healthz` with 200 (healthy) or
    500 (its application reports a fault), every other path still 200; returns once it does.
    A graceful nginx reload (SIGHUP to the master we started): no request is dropped."""
    root = procs.workdir / f"nginx-{port}"
    (root / "health.conf").write_text(_HEALTH[healthy])
    master = next(p for p in procs.started if p.args[0] == "nginx" and str(root) in p.args)  # type: ignore[index,operator]
    old_workers = children(master.pid)
    master.send_signal(signal.SIGHUP)
    want = 200 if healthy else 500
    # Until the old worker has gone, it may still accept a connection and answer the old way.
    wait_until(lambda: not any(alive(pid) for pid in old_workers) and get(int(port), path="/healthz")[0] == want,
               timeout=10, interval=0.02, what=f"nginx on port {port} answering /healthz with {want}")


def children(pid: int) -> list[int]:
    """The PIDs whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(") ", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return found


def start_haproxy(procs: Processes, config: Path, pidfile: Path, name: str = "haproxy") -> subprocess.Popen[bytes]:
    """HAProxy in master-worker mode in the foreground; reload with `kill -USR2 <master>`.
    Returns once it has written its pidfile."""
    proc = procs.start(name, ["haproxy", "-W", "-db", "-f", str(config), "-p", str(pidfile)])
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), what="haproxy pidfile")
    return proc


def start_haproxy_daemon(procs: Processes, config: Path, pidfile: Path) -> None:
    """The naive way: `haproxy -D -f cfg -p pid` (reloaded with `-sf $(cat pid)`). It forks
    away; `procs.stop_all()` stops it through its pidfile (`stop_daemon`)."""
    procs.daemons.append(pidfile)
    subprocess.run(["haproxy", "-D", "-f", str(config), "-p", str(pidfile)], check=True, timeout=30,
                   stdin=subprocess.DEVNULL, capture_output=True)
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), what="haproxy pidfile")


def connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def get(port: int, host: str | None = None, timeout: float = 3.0, path: str = "/") -> tuple[int, str]:
    """One request for `path` through a fresh connection: (status, body), or (0, '<error>')."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Connection": "close", **({"Host": host} if host else {})}
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace").strip()
    except OSError as exc:
        return 0, f"<{type(exc).__name__}>"
    finally:
        conn.close()
