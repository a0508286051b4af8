"""The Docker images, built and run for real: one load balancer and several web nodes.

The daemon, the base image and the images come from conftest.py's fixtures. Every
container and network gets a random suffix and is removed by a finalizer, even when a
step fails. Test traffic goes to 127.0.0.1 only.

The tests in this module are steps of one scenario and run in file order, once for each
LB_MODE of the load balancer: `handler` (the agent runs `serf-handle` per event) and
`watch` (one `serf-handle watch` on the agent's RPC stream).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from dataclasses import dataclass, field

import pytest

from tests.docker.helpers import (
    LB_IMAGE,
    WEB_IMAGE,
    Load,
    container_logs,
    free_port,
    run,
    wait_for,
    wait_for_rotation,
)

pytestmark = pytest.mark.docker

SUFFIX = secrets.token_hex(4)
# The load balancer's periodic `serf-handle reconcile`, shortened for the test.
RECONCILE_INTERVAL = 4
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


@dataclass
class Cluster:
    network: str
    port: int
    encrypt_key: str
    rpc_auth: str
    mode: str = "handler"  # the load balancer's LB_MODE
    lb: str = ""
    webs: dict[str, bool] = field(default_factory=dict)  # name -> running
    containers: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def live_webs(self) -> set[str]:
        return {name for name, running in self.webs.items() if running}

    def start_lb(self) -> None:
        self.lb = f"sh-test-{self.mode}-lb-{SUFFIX}"
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
            "-e", f"LB_MODE={self.mode}",
            LB_IMAGE,
        )  # fmt: skip

    def start_web(self, n: int) -> str:
        name = f"sh-test-{self.mode}-web{n}-{SUFFIX}"
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
        return container_logs(self.containers)


@pytest.fixture(scope="module", params=["handler", "watch"])
def cluster(images: None, request: pytest.FixtureRequest) -> Cluster:
    network = f"sh-test-{request.param}-net-{SUFFIX}"
    c = Cluster(
        network=network,
        port=free_port(),
        encrypt_key=base64.b64encode(os.urandom(32)).decode(),
        rpc_auth=secrets.token_urlsafe(16),
        mode=request.param,
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


# ---------------------------------------------------------------- the scenario


def test_all_three_web_nodes_are_in_rotation(cluster: Cluster) -> None:
    wait_for_rotation(cluster.url, cluster.live_webs(), logs=cluster.logs, timeout=60)


def test_the_load_balancer_gets_events_the_way_its_mode_says(cluster: Cluster) -> None:
    info = json.loads(run("docker", "exec", cluster.lb, "serf", "info", "-format", "json").stdout)
    watch = run("docker", "exec", cluster.lb, "supervisorctl", "status", "watch", check=False).stdout.split()
    if cluster.mode == "handler":
        assert list(info["event_handlers"].values()) == ['serf-handle --config "$SERF_HANDLERS_CONFIG"']
        assert watch[1] == "EXITED", watch
    else:
        # No -event-handler: a slow script would delay the RPC stream (one goroutine feeds both).
        assert info["event_handlers"] == {}
        assert watch[1] == "RUNNING", watch
        logs = run("docker", "logs", cluster.lb)
        assert "watch: connected to the serf agent at 127.0.0.1:7373" in logs.stdout + logs.stderr


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
    wait_for_rotation(cluster.url, cluster.live_webs(), logs=cluster.logs, timeout=10)


def test_a_new_web_node_joins_the_rotation(cluster: Cluster) -> None:
    cluster.start_web(4)
    wait_for_rotation(cluster.url, cluster.live_webs(), logs=cluster.logs, timeout=30)


def test_a_restarted_load_balancer_serves_every_live_web_node(cluster: Cluster) -> None:
    run("docker", "restart", "-t", "30", cluster.lb, timeout=90)
    restarted = time.monotonic()
    wait_for_rotation(cluster.url, cluster.live_webs(), logs=cluster.logs, timeout=30)
    print(f"every live web node in rotation {time.monotonic() - restarted:.1f} s after the restart")
    members = cluster.members(cluster.lb)
    assert {name for name, status in members.items() if status == "alive"} >= cluster.live_webs()


def test_an_idle_periodic_reconcile_logs_nothing(cluster: Cluster) -> None:
    wait_for_rotation(cluster.url, cluster.live_webs(), logs=cluster.logs, timeout=30)
    time.sleep(RECONCILE_INTERVAL)  # the (re)start's own lines
    since = time.time()
    time.sleep(2.2 * RECONCILE_INTERVAL)  # two rounds or more
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
    wait_for_rotation(cluster.url, cluster.live_webs(), logs=cluster.logs, timeout=10)
