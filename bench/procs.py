"""Real processes on loopback for the benchmarks: a throwaway install, haproxy, nginx, serf.

Everything is started through a `Group`, which stops exactly the PIDs it started (SIGINT
first, so serf agents leave gracefully; SIGKILL if they linger), in the caller's `finally`.
Daemonized haproxy (the naive reload mode) forks away from us; its processes are found
through the pidfile we gave it and stopped by PID too (see `stop_daemon`).
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (serf gossips over both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


def wait_until(predicate: Callable[[], T], timeout: float = 15.0, interval: float = 0.02, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        time.sleep(interval)


def require(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        raise RuntimeError(f"missing programs {missing}: run `make deps` (Debian packages)")


def make_install(workdir: Path) -> Path:
    """A throwaway, non-editable venv with the package; returns its bin/ directory.

    The editable install's import finder adds imports to every start, so start-up is
    measured on a regular install. The source is copied first, without build/ and
    caches, so a stale build directory in the repo cannot leak old modules in.
    """
    source = workdir / "src"
    top_level = {".venv", "build", "dist", ".git", ".hypothesis", "docker", "tests", "bench", "demo"}

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n == "__pycache__" or n.endswith((".egg-info", "_cache"))}
        if Path(directory) == REPO:
            skipped |= top_level & set(names)
        return skipped

    shutil.copytree(REPO, source, ignore=ignore)
    venv = workdir / "venv"
    base = _base_python()
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(source)],
        check=True, timeout=300, capture_output=True,
    )
    return venv / "bin"


def _base_python() -> str:
    """The interpreter behind this venv (so the throwaway venv runs the same Python)."""
    return getattr(sys, "_base_executable", None) or shutil.which("python3") or "python3"


class Group:
    """Processes started for one benchmark, stopped by PID."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[subprocess.Popen[bytes]] = []
        self.daemons: list[Path] = []  # pidfiles of daemonized haproxy we started

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")
        try:
            proc = subprocess.Popen(
                list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=self.workdir,
            )
        finally:
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

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGINT to every process still running (newest first), then wait; SIGKILL stragglers."""
        for pidfile in self.daemons:
            stop_daemon(pidfile)
        running = [p for p in reversed(self.started) if p.poll() is None]
        for proc in running:
            try:
                proc.send_signal(signal.SIGINT)
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
    (soft-stopping) processes, recognised by our own unique config path in /proc."""
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
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
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


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def http_get(port: int, timeout: float = 2.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace").strip()
    except OSError as exc:
        return 0, f"<{type(exc).__name__}>"
    finally:
        conn.close()


def start_nginx(group: Group, name: str, port: int, body: str) -> subprocess.Popen[bytes]:
    """nginx in the foreground on 127.0.0.1:port, answering every request with `body`."""
    root = group.workdir / f"nginx-{name}"
    root.mkdir(exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(
        f"""daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "{body}\\n"; }}
    }}
}}
"""
    )
    proc = group.start(f"nginx-{name}", ["nginx", "-p", str(root), "-c", str(conf)])
    wait_until(lambda: connects(port), timeout=10, what=f"nginx {name} on port {port}")
    return proc


def start_haproxy_mw(group: Group, config: Path, pidfile: Path, name: str = "haproxy") -> subprocess.Popen[bytes]:
    """HAProxy master-worker in the foreground; reload with `kill -USR2 <master pid>`."""
    proc = group.start(name, ["haproxy", "-W", "-db", "-f", str(config), "-p", str(pidfile)])
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=10, what="haproxy pidfile")
    return proc


def start_haproxy_daemon(group: Group, config: Path, pidfile: Path) -> None:
    """The naive way: `haproxy -D -f cfg -p pid`, reloaded with `-sf $(cat pid)`."""
    group.daemons.append(pidfile)
    subprocess.run(["haproxy", "-D", "-f", str(config), "-p", str(pidfile)], check=True, timeout=30,
                   stdin=subprocess.DEVNULL, capture_output=True)
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=10, what="haproxy pidfile")


class Agent:
    """A serf agent on loopback with its own gossip and RPC ports."""

    def __init__(
        self,
        group: Group,
        name: str,
        tags: dict[str, str],
        join: "Agent | None" = None,
        handlers: Sequence[str] = (),
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> None:
        self.name = name
        self.group = group
        self.leaving = False
        self.bind = free_port()
        self.rpc = f"127.0.0.1:{free_port()}"
        argv = ["serf", "agent", "-node", name, "-bind", f"127.0.0.1:{self.bind}", "-rpc-addr", self.rpc]
        for key, value in tags.items():
            argv += ["-tag", f"{key}={value}"]
        if join is not None:
            argv += ["-join", f"127.0.0.1:{join.bind}"]
        for handler in handlers:
            argv += ["-event-handler", handler]
        self.started_at = time.time()
        self.proc = group.start(f"serf-{name}", argv, env={**os.environ, **(env or {})})
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        wait_until(lambda: self.serf("members", check=False).returncode == 0, timeout=10, what=f"serf {self.name}")

    def serf(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["serf", args[0], f"-rpc-addr={self.rpc}", *args[1:]],
                              capture_output=True, text=True, timeout=15, check=check)

    def alive(self) -> set[str]:
        import json

        out = self.serf("members", "-status", "alive", "-format", "json", check=False).stdout
        try:
            return {m["name"] for m in json.loads(out)["members"] or []}
        except (ValueError, KeyError, TypeError):
            return set()

    def leave(self, wait: bool = True) -> None:
        """SIGINT: a graceful leave (peers see member-leave)."""
        self.leaving = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            if wait:
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)


def tool_versions(python: str) -> dict[str, str]:
    def first_line(argv: Sequence[str]) -> str:
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
        except OSError:
            return "(not installed)"
        return ((done.stdout or "") + (done.stderr or "")).strip().splitlines()[0]

    versions = {
        "python": first_line([python, "--version"]),
        "serf": first_line(["serf", "version"]) + " (Debian package)",
        "haproxy": first_line(["haproxy", "-v"]),
        "nginx": first_line(["nginx", "-v"]),
        "wrk": first_line(["wrk", "-v"]).split(" Copyright")[0],
        "ruby": first_line(["ruby", "-v"]),
    }
    return versions


def tempdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"serf-bench-{prefix}-"))
