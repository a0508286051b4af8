"""docker-compose.yml's `nginx-lb` profile, run for real with Debian 12's Compose (1.29):

    docker-compose --profile nginx-lb up -d --build --scale web=3
    traffic through nginx-lb (nginx, the `nginx` handler) reaches all three web nodes
    docker-compose --profile nginx-lb up -d --scale web=1    # under load through nginx-lb:
                                                   # 0 failed requests; each removed node
                                                   # logged that both load balancers (lb and
                                                   # nginx-lb) had drained it before it left
    docker-compose --profile nginx-lb down         # nothing it created is left

nginx-lb has role=lb, so a stopping web node asks it too whether it has drained the node
(docker/common/serf-drain.sh, the `backends` query); the image answers that query
(docker/nginx-lb/drained.py). Without an answer every stop would wait SERF_DRAIN_TIMEOUT
(15 s) and then SERF_LEAVE_GRACE: the scale-down is bounded well below that here.
The load is one request per connection (urllib: Connection: close). Clients that keep a
connection alive are another matter: nginx's old workers close idle keep-alive connections at
each reload, and a request sent on one just then fails (HAProxy's runtime API needs no reload).

As test_compose.py: a unique project name (-p), an empty --env-file, ports on 127.0.0.1 only,
and a finalizer that runs `down` and removes whatever carries the project's label, even when
a step fails.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.docker.helpers import (
    LB_IMAGE,
    REPO,
    WEB_IMAGE,
    Load,
    container_logs,
    free_port,
    image_id,
    run,
    wait_for,
    wait_for_rotation,
)

pytestmark = pytest.mark.docker

NGINX_LB_IMAGE = "serf-handlers/nginx-lb"
PROFILE = "nginx-lb"
PROJECT = f"shnginxlb{secrets.token_hex(4)}"
LABEL = f"com.docker.compose.project={PROJECT}"
LOADERS = 4  # concurrent sequential clients during the scale-down
LOAD_SECONDS = 90  # the bound on the load, whatever happens
# A load balancer that does not answer the drain query costs every stopping web node
# SERF_DRAIN_TIMEOUT (15 s) plus SERF_LEAVE_GRACE (3 s): about 23 s for the whole scale-down
# (measured with the image's query handler taken out). Answered, it takes about 7 s; Serf's
# coalescing (up to 5 s) and a busy machine can add several seconds.
MAX_SCALE_DOWN_SECONDS = 20
SERVER_LINE = re.compile(r"^\s*server \S+ .*;  # (.+)$", re.MULTILINE)


@dataclass
class Compose:
    binary: str
    env_file: Path
    env: dict[str, str]
    port: int  # nginx-lb's port on 127.0.0.1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def __call__(self, *args: str, timeout: float = 180) -> str:
        argv = (
            self.binary, "--no-ansi", "--env-file", str(self.env_file), "-p", PROJECT, "--profile", PROFILE,
            "-f", str(REPO / "docker-compose.yml"), "--project-directory", str(REPO), *args,
        )  # fmt: skip
        return run(*argv, cwd=REPO, env=self.env, timeout=timeout).stdout

    def containers(self, service: str) -> list[str]:
        return self("ps", "-q", service).split()

    def hostnames(self, service: str) -> set[str]:
        """What each container's page names as its node (SERF_NODE defaults to the hostname)."""
        inspect = ("docker", "inspect", "-f", "{{.Config.Hostname}}")
        return {run(*inspect, c).stdout.strip() for c in self.containers(service)}

    def nginx_lb(self) -> str:
        (container,) = self.containers("nginx-lb")
        return container

    def logs(self) -> str:
        return container_logs(left_behind()[0])


def upstream_nodes(container: str) -> dict[str, bool]:
    """node -> True when `down`, from the nginx.conf the handler installed in `container`."""
    conf = run("docker", "exec", container, "cat", "/etc/nginx/nginx.conf").stdout
    return {m.group(1): " down;" in m.group(0) for m in SERVER_LINE.finditer(conf)}


@contextmanager
def following(container: str, path: Path) -> Iterator[Path]:
    """`docker logs -f` of a container into `path` (it ends when the container is removed);
    stopped by its PID at the end."""
    with open(path, "wb") as out:
        proc = subprocess.Popen(["docker", "logs", "-f", container], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        yield path
    finally:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(10)


def left_behind() -> tuple[list[str], list[str], list[str]]:
    """Containers, networks and volumes of the test's project."""
    return (
        run("docker", "ps", "-aq", "--filter", f"label={LABEL}").stdout.split(),
        run("docker", "network", "ls", "-q", "--filter", f"label={LABEL}").stdout.split(),
        run("docker", "volume", "ls", "-q", "--filter", f"label={LABEL}").stdout.split(),
    )


@pytest.fixture(scope="module")
def compose(docker_compose: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    env_file = tmp_path_factory.mktemp("compose-nginx-lb") / "empty.env"
    env_file.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    port = free_port()
    env.update(
        NGINX_LB_HOST_PORT=str(port),
        LB_HOST_PORT=str(free_port()),
        LB_STATS_HOST_PORT=str(free_port()),
        SERF_ENCRYPT_KEY=base64.b64encode(os.urandom(32)).decode(),
        SERF_RPC_AUTH=secrets.token_urlsafe(16),
    )
    c = Compose(binary=docker_compose, env_file=env_file, env=env, port=port)
    try:
        yield c
    finally:
        containers, networks, _ = left_behind()
        if containers or networks:
            try:
                c("down", "--remove-orphans", "-v", "-t", "30", timeout=300)
            except (AssertionError, OSError) as exc:
                print(f"docker-compose down failed: {exc}")
        containers, networks, volumes = left_behind()
        for container in containers:
            run("docker", "rm", "-f", "-v", container, check=False, timeout=60)
        for network in networks:
            run("docker", "network", "rm", network, check=False, timeout=60)
        for volume in volumes:
            run("docker", "volume", "rm", "-f", volume, check=False, timeout=60)


def test_up_with_the_profile_serves_every_web_node_through_nginx(compose: Compose) -> None:
    images = (LB_IMAGE, WEB_IMAGE, NGINX_LB_IMAGE)
    before = {image: image_id(image) for image in images}
    started = time.monotonic()
    compose("up", "-d", "--build", "--scale", "web=3", timeout=900)
    print(f"docker-compose --profile {PROFILE} up -d --build --scale web=3 took {time.monotonic() - started:.1f} s")
    for image, old in before.items():
        if old and image_id(image) != old:
            # The build replaced the tag; drop the old image unless something still uses it.
            run("docker", "image", "rm", old, check=False)

    assert len(compose.containers("nginx-lb")) == 1
    assert len(compose.containers("lb")) == 1  # a service without a profile starts too
    webs = compose.hostnames("web")
    assert len(webs) == 3
    wait_for_rotation(compose.url, webs, timeout=90, logs=compose.logs)
    print(f"all three web nodes in rotation through nginx-lb {time.monotonic() - started:.1f} s after `up`")

    lb = compose.nginx_lb()
    assert upstream_nodes(lb) == dict.fromkeys(webs, False)
    # The handler's file is as installed, current with the members, and no reload is owed.
    status = run("docker", "exec", lb, "serf-handle", "status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    # It answers a draining web node's question, as the HAProxy load balancer does.
    web = sorted(webs)[0]
    out = run("docker", "exec", lb, "serf", "query", "-format", "json", "-tag", "role=^lb$", "-timeout", "5s",
              "backends", f"drained {web}").stdout
    replies = {node: reply.strip() for node, reply in (json.loads(out)["Responses"] or {}).items()}
    lb_node = run("docker", "inspect", "-f", "{{.Config.Hostname}}", lb).stdout.strip()
    assert replies.get(lb_node) == "drained=no state=ready", replies
    assert len(replies) == 2 and set(replies.values()) == {"drained=no state=ready"}, replies


def test_scaling_down_to_one_under_load_fails_no_request(compose: Compose, tmp_path: Path) -> None:
    before = compose.hostnames("web")
    assert len(before) == 3
    logs: dict[str, Path] = {}
    with ExitStack() as stack:
        for container in compose.containers("web"):
            hostname = run("docker", "inspect", "-f", "{{.Config.Hostname}}", container).stdout.strip()
            logs[hostname] = stack.enter_context(following(container, tmp_path / f"{hostname}.log"))
        loads = [stack.enter_context(Load(compose.url, max_seconds=LOAD_SECONDS)) for _ in range(LOADERS)]
        time.sleep(2)
        started = time.monotonic()
        compose("up", "-d", "--no-build", "--no-recreate", "--scale", "web=1", timeout=120)
        scaled = time.monotonic()
        time.sleep(3)
    answers = [a for load in loads for a in load.answers]
    failures = [f for load in loads for f in load.failures]
    during = [node for t, node in answers if started <= t <= scaled]
    after = compose.hostnames("web")
    gone = before - after
    last = {node: max((t for t, n in answers if n == node), default=started) - started for node in gone}
    print(
        f"scale 3 -> 1 through nginx-lb took {scaled - started:.1f} s; {len(answers)} requests, "
        f"{len(failures)} failed, {len(during)} during the scale-down, from {LOADERS} clients; "
        "last answer from each removed node: "
        + ", ".join(f"{node} +{seconds:.1f} s" for node, seconds in sorted(last.items()))
    )
    assert failures == [], f"{len(failures)} failed requests, first: {failures[:3]}\n{compose.logs()}"
    assert len(after) == 1 and len(gone) == 2
    assert len(during) >= 50, f"only {len(during)} requests were made during the scale-down"
    assert not [node for t, node in answers if t > scaled and node in gone]
    # Each removed node waited, before serf left, until both load balancers (lb, HAProxy, and
    # nginx-lb) said they had drained it: none timed out waiting for nginx-lb.
    drains = {node: [line for line in logs[node].read_text(errors="replace").splitlines() if "serf-drain:" in line]
              for node in gone}
    print("\n".join(f"{node}: {' | '.join(lines)}" for node, lines in sorted(drains.items())))
    lb = compose.nginx_lb()
    lbs = {service: sorted(compose.hostnames(service)) for service in ("lb", "nginx-lb")}
    for node, lines in drains.items():
        assert any("drained by 2 of 2 load balancer(s) after" in line for line in lines), (
            f"{node}: {lines}; load balancers: {lbs}\n"
            f"{container_logs([*compose.containers('lb'), lb], tail=200)}"
        )
    assert scaled - started < MAX_SCALE_DOWN_SECONDS, f"the scale-down took {scaled - started:.1f} s"

    # nginx-lb forgets them: its nginx.conf serves the one node left, its state is current.
    wait_for("nginx-lb's nginx.conf to list only the node left",
             lambda: upstream_nodes(lb) == dict.fromkeys(after, False), timeout=15)
    status = run("docker", "exec", lb, "serf-handle", "status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    out = run("docker", "exec", lb, "serf", "members", "-format", "json").stdout
    members = {m["name"]: m["status"] for m in json.loads(out)["members"] or []}
    assert {members.get(node) for node in gone} <= {"left", "failed"}, members
    wait_for_rotation(compose.url, after, timeout=10, logs=compose.logs)


def test_down_removes_everything_it_created(compose: Compose) -> None:
    started = time.monotonic()
    compose("down", "--remove-orphans", "-v", timeout=300)
    print(f"docker-compose --profile {PROFILE} down took {time.monotonic() - started:.1f} s")
    assert left_behind() == ([], [], [])
