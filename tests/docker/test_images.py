"""The Docker images, built and run for real: one load balancer and several web nodes.

Sets itself up on a fresh Debian 12 (as root, or with password-less sudo): installs docker.io and debootstrap when
missing, starts a dockerd when none answers (and stops only that one at the end), and
makes debian:bookworm-slim with scripts/docker-base-image.sh when there is no registry.

Every container and network gets a random suffix and is removed by a finalizer, even
when a step fails. The images keep their tags (serf-handlers/haproxy, serf-handlers/nginx)
so the next run reuses the layer cache. Test traffic goes to 127.0.0.1 only.

The tests in this module are steps of one scenario and run in file order.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
LB_IMAGE = "serf-handlers/haproxy"
WEB_IMAGE = "serf-handlers/nginx"
SUFFIX = secrets.token_hex(4)
NODE_RE = re.compile(r'<span id="node">([^<]*)</span>')
# The load balancer's periodic `serf-handle reconcile`, shortened for the test.
RECONCILE_INTERVAL = 5
# One command to HAProxy's admin socket inside the load balancer (the image has no socat).
ADMIN_COMMAND = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "s.settimeout(5)\n"
    "s.connect('/run/haproxy/admin.sock')\n"
    "s.sendall(sys.argv[1].encode() + b'\\n')\n"
    "out = b''\n"
    "while chunk := s.recv(65536):\n"
    "    out += chunk\n"
    "sys.stdout.write(out.decode())\n"
)


def run(*argv: str, timeout: float = 60, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return run("docker", "info", "--format", "{{.ServerVersion}}", timeout=20, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def wait_for(what: str, predicate: Callable[[], bool], timeout: float, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def as_root(*argv: str) -> tuple[str, ...]:
    """argv as root: itself when we are root, else through password-less sudo, else skip."""
    if os.geteuid() == 0:
        return argv
    if shutil.which("sudo") and run("sudo", "-n", "true", check=False, timeout=20).returncode == 0:
        return ("sudo", "-n", *argv)
    pytest.skip(f"needs root (or password-less sudo) to run {argv[0]}")


def apt_install(*packages: str) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    apt = ("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q", "--no-install-recommends")
    argv = as_root(*apt, *packages)
    if run(*argv, timeout=900, check=False, env=env).returncode != 0:
        run(*as_root("apt-get", "update", "-q"), timeout=300, env=env)
        run(*argv, timeout=900, env=env)


# ---------------------------------------------------------------- set-up fixtures


@pytest.fixture(scope="session")
def docker_daemon(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A Docker daemon that answers. Starts one (and later stops only that one) if needed."""
    if docker_answers():
        return
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        apt_install("docker.io")
    if docker_answers():  # the package's own service may have started one
        return
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen(as_root("dockerd"), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def stop_daemon() -> None:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=10)

    request.addfinalizer(stop_daemon)

    def answers() -> bool:
        if daemon.poll() is not None:
            raise AssertionError(f"dockerd exited with status {daemon.returncode}")
        return docker_answers()

    try:
        wait_for("dockerd to answer", answers, timeout=60, interval=1)
    except AssertionError as exc:
        raise AssertionError(f"dockerd (pid {daemon.pid}) did not come up: {exc}\n{log.read_text()[-3000:]}") from None


@pytest.fixture(scope="module")
def images(docker_daemon: None) -> None:
    """The base image (debootstrap'ed when there is no registry), then both images."""
    if run("docker", "image", "inspect", "debian:bookworm-slim", check=False).returncode != 0:
        if shutil.which("debootstrap") is None and not os.path.exists("/usr/sbin/debootstrap"):
            apt_install("debootstrap")
        run(*as_root(str(REPO / "scripts" / "docker-base-image.sh")), timeout=900)
    for image, dockerfile in ((LB_IMAGE, "docker/haproxy/Dockerfile"), (WEB_IMAGE, "docker/nginx/Dockerfile")):
        before = image_id(image)
        run("docker", "build", "-q", "-f", dockerfile, "-t", image, ".", cwd=REPO, timeout=900)
        after = image_id(image)
        if before and before != after:
            # The previous build lost its tag; drop it unless something still uses it.
            run("docker", "image", "rm", before, check=False)


def image_id(image: str) -> str:
    result = run("docker", "image", "inspect", "-f", "{{.Id}}", image, check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    network: str
    port: int
    encrypt_key: str
    rpc_auth: str
    lb: str = ""
    webs: dict[str, bool] = field(default_factory=dict)  # name -> running
    containers: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def live_webs(self) -> set[str]:
        return {name for name, running in self.webs.items() if running}

    def start_lb(self) -> None:
        self.lb = f"sh-test-lb-{SUFFIX}"
        self.containers.append(self.lb)
        run(
            "docker", "run", "-d", "--name", self.lb, "--hostname", self.lb,
            "--network", self.network, "--network-alias", "lb",
            "-p", f"127.0.0.1:{self.port}:80",
            "-e", f"SERF_NODE={self.lb}",
            "-e", "SERF_JOIN=web",
            "-e", f"SERF_ENCRYPT_KEY={self.encrypt_key}",
            "-e", f"SERF_RPC_AUTH={self.rpc_auth}",
            "-e", f"LB_RECONCILE_INTERVAL={RECONCILE_INTERVAL}",
            LB_IMAGE,
        )  # fmt: skip

    def start_web(self, n: int) -> str:
        name = f"sh-test-web{n}-{SUFFIX}"
        self.containers.append(name)
        run(
            "docker", "run", "-d", "--name", name, "--hostname", name,
            "--network", self.network, "--network-alias", "web",
            "-e", f"SERF_NODE={name}",
            "-e", "SERF_JOIN=lb",
            "-e", "SERF_TAGS=port=80,weight=10",
            "-e", f"SERF_ENCRYPT_KEY={self.encrypt_key}",
            "-e", f"SERF_RPC_AUTH={self.rpc_auth}",
            WEB_IMAGE,
        )  # fmt: skip
        self.webs[name] = True
        return name

    def members(self, container: str) -> dict[str, str]:
        out = run("docker", "exec", container, "serf", "members", "-format", "json").stdout
        return {m["name"]: m["status"] for m in json.loads(out)["members"] or []}

    def admin(self, command: str) -> str:
        return run("docker", "exec", self.lb, "python3", "-c", ADMIN_COMMAND, command).stdout

    def admin_states(self) -> dict[str, int]:
        """Server name -> srv_admin_state of backend `web`, live from HAProxy."""
        lines = self.admin("show servers state web").splitlines()
        header = next(line[2:].split() for line in lines if line.startswith("# "))
        name, admin = header.index("srv_name"), header.index("srv_admin_state")
        rows = [line.split() for line in lines[1:] if line and not line.startswith("#")]
        return {row[name]: int(row[admin]) for row in rows}

    def logs(self) -> str:
        parts = []
        for name in self.containers:
            result = run("docker", "logs", "--tail", "60", name, check=False)
            parts.append(f"===== {name}\n{result.stdout}{result.stderr}")
        return "\n".join(parts)


@pytest.fixture(scope="module")
def cluster(images: None, request: pytest.FixtureRequest) -> Cluster:
    network = f"sh-test-net-{SUFFIX}"
    c = Cluster(
        network=network,
        port=free_port(),
        encrypt_key=base64.b64encode(os.urandom(32)).decode(),
        rpc_auth=secrets.token_urlsafe(16),
    )

    def remove_all() -> None:
        for name in reversed(c.containers):
            run("docker", "rm", "-f", "-v", name, check=False, timeout=60)
        run("docker", "network", "rm", network, check=False, timeout=60)

    request.addfinalizer(remove_all)
    run("docker", "network", "create", network)
    c.start_lb()
    for n in (1, 2, 3):
        c.start_web(n)
    return c


# ---------------------------------------------------------------- HTTP helpers


def fetch(url: str, timeout: float = 3) -> str:
    """The node that answered, or raises."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = response.read().decode()
    match = NODE_RE.search(body)
    if response.status != 200 or match is None:
        raise AssertionError(f"unexpected answer {response.status}: {body[:200]!r}")
    return match.group(1)


def seen_nodes(url: str, requests: int) -> tuple[set[str], list[str]]:
    seen: set[str] = set()
    errors: list[str] = []
    for _ in range(requests):
        try:
            seen.add(fetch(url))
        except (OSError, AssertionError) as exc:
            errors.append(repr(exc))
    return seen, errors


def wait_for_rotation(cluster: Cluster, expected: set[str], timeout: float) -> None:
    """Until a run of requests succeeds and reaches exactly `expected`."""
    last: list[tuple[set[str], list[str]]] = []

    def converged() -> bool:
        seen, errors = seen_nodes(cluster.url, 4 * len(expected) + 4)
        last[:] = [(seen, errors)]
        return seen == expected and not errors

    try:
        wait_for(f"rotation {sorted(expected)}", converged, timeout=timeout, interval=1)
    except AssertionError as exc:
        seen, errors = last[0] if last else (set(), [])
        raise AssertionError(f"{exc}; last saw {sorted(seen)}, errors {errors[:3]}\n{cluster.logs()}") from None


class Load:
    """Sequential requests in a thread, each with a timeout, for a bounded time."""

    def __init__(self, url: str, max_seconds: float) -> None:
        self.url = url
        self.max_seconds = max_seconds
        self.answers: list[tuple[float, str]] = []
        self.failures: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            now = time.monotonic()
            try:
                self.answers.append((now, fetch(self.url)))
            except (OSError, AssertionError) as exc:
                self.failures.append((now, repr(exc)))
            time.sleep(0.01)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.max_seconds + 10)


# ---------------------------------------------------------------- the scenario


def test_all_three_web_nodes_are_in_rotation(cluster: Cluster) -> None:
    wait_for_rotation(cluster, cluster.live_webs(), timeout=60)


def test_containers_become_healthy(cluster: Cluster) -> None:
    def healthy() -> bool:
        states = [
            run("docker", "inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip()
            for name in [cluster.lb, *cluster.live_webs()]
        ]
        return all(state == "healthy" for state in states)

    wait_for("every container to report healthy", healthy, timeout=60, interval=2)


def test_services_run_unprivileged_and_files_are_not_world_writable(cluster: Cluster) -> None:
    def users_of(container: str, program: str) -> set[str]:
        script = (
            f'for p in /proc/[0-9]*; do grep -qa "^{program}" "$p/cmdline" 2>/dev/null && stat -c %U "$p"; done; true'
        )
        return set(run("docker", "exec", container, "sh", "-c", script).stdout.split())

    # The master processes stay root (they bind ports and reload); the workers do not.
    assert users_of(cluster.lb, "/usr/sbin/haproxy") == {"root", "haproxy"}
    web = sorted(cluster.live_webs())[0]
    assert "www-data" in users_of(web, "nginx: worker")
    assert users_of(web, "nginx: worker") == {"www-data"}

    paths = "/opt/serf-handlers /etc/serf-handlers /var/lib/serf-handlers /etc/serf /etc/supervisor /usr/local/bin"
    found = run("docker", "exec", cluster.lb, "sh", "-c", f"find {paths} -perm -o+w ! -type l").stdout
    assert found == ""
    assert run("docker", "exec", cluster.lb, "stat", "-c", "%a %U", "/run/haproxy/admin.sock").stdout.split() == [
        "600",
        "root",
    ]


def test_docker_stop_takes_a_web_node_out_without_failed_requests(cluster: Cluster) -> None:
    victim = sorted(cluster.live_webs())[1]
    with Load(cluster.url, max_seconds=45) as load:
        time.sleep(2)
        started = time.monotonic()
        run("docker", "stop", "-t", "30", victim, timeout=60)
        stopped = time.monotonic()
        cluster.webs[victim] = False
        time.sleep(3)
    during = [node for t, node in load.answers if started <= t <= stopped]
    print(f"docker stop took {stopped - started:.1f} s; {len(load.answers)} answers, {len(during)} during the stop")
    assert load.failures == [], f"{len(load.failures)} failed requests, first: {load.failures[:3]}\n{cluster.logs()}"
    assert len(during) >= 20, f"only {len(during)} requests were made during the stop"
    assert not [node for t, node in load.answers if t > stopped and node == victim]
    assert stopped - started < 15, f"docker stop took {stopped - started:.1f} s"
    # A graceful leave, not a failure.
    assert cluster.members(cluster.lb)[victim] == "left"
    wait_for_rotation(cluster, cluster.live_webs(), timeout=10)


def test_a_new_web_node_joins_the_rotation(cluster: Cluster) -> None:
    cluster.start_web(4)
    wait_for_rotation(cluster, cluster.live_webs(), timeout=30)


def test_a_restarted_load_balancer_serves_every_live_web_node(cluster: Cluster) -> None:
    run("docker", "restart", "-t", "30", cluster.lb, timeout=90)
    restarted = time.monotonic()
    wait_for_rotation(cluster, cluster.live_webs(), timeout=30)
    print(f"every live web node in rotation {time.monotonic() - restarted:.1f} s after the restart")
    members = cluster.members(cluster.lb)
    assert {name for name, status in members.items() if status == "alive"} >= cluster.live_webs()


def test_an_idle_periodic_reconcile_logs_nothing(cluster: Cluster) -> None:
    wait_for_rotation(cluster, cluster.live_webs(), timeout=30)
    time.sleep(RECONCILE_INTERVAL)  # the (re)start's own lines
    since = time.time()
    time.sleep(2.5 * RECONCILE_INTERVAL)  # two rounds or more
    result = run("docker", "logs", "--since", f"{since:.3f}", cluster.lb)
    # Neither the loop, nor a reconcile with nothing to do, nor the agent's RPC log.
    assert (result.stdout + result.stderr).splitlines() == []


def test_the_periodic_reconcile_repairs_a_server_drained_behind_its_back(cluster: Cluster) -> None:
    victim = sorted(cluster.live_webs())[0]
    assert cluster.admin_states().get(victim) == 0, cluster.admin_states()
    cluster.admin(f"set server web/{victim} state drain")
    drained = time.monotonic()
    assert cluster.admin_states()[victim] != 0
    try:
        wait_for(
            f"a reconcile to undrain {victim}",
            lambda: cluster.admin_states()[victim] == 0,
            timeout=3 * RECONCILE_INTERVAL,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {cluster.admin_states()}\n{cluster.logs()}") from None
    print(f"{victim} back in service {time.monotonic() - drained:.1f} s after the drain")
    wait_for_rotation(cluster, cluster.live_webs(), timeout=10)
