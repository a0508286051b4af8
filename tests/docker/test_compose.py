"""docker-compose.yml, run for real with Debian 12's Compose (`docker-compose`, 1.29):

    docker-compose up -d --build --scale web=3     # as the README gives it
    traffic reaches all three web nodes
    docker-compose up -d --scale web=1             # under load: 0 failed requests; each
                                                   # removed node logged that the load
                                                   # balancer had drained it before it left
    docker-compose down                            # nothing it created is left

The images build from the local debian:bookworm-slim (conftest.py makes it when there is
no registry). A unique project name (-p) keeps the test's containers and network apart,
an empty --env-file keeps a user's .env out, and the load balancer is published on
127.0.0.1 only (the compose file's ports). A finalizer runs `down` and removes whatever
carries the project's label, even when a step fails.
"""

from __future__ import annotations

import base64
import json
import os
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
    wait_for_rotation,
)

pytestmark = pytest.mark.docker

PROJECT = f"shcompose{secrets.token_hex(4)}"
LABEL = f"com.docker.compose.project={PROJECT}"
LOADERS = 4  # concurrent sequential clients during the scale-down
LOAD_SECONDS = 90  # the bound on the load, whatever happens


@dataclass
class Compose:
    binary: str
    env_file: Path
    env: dict[str, str]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def __call__(self, *args: str, timeout: float = 180) -> str:
        argv = (
            self.binary, "--no-ansi", "--env-file", str(self.env_file), "-p", PROJECT,
            "-f", str(REPO / "docker-compose.yml"), "--project-directory", str(REPO), *args,
        )  # fmt: skip
        return run(*argv, cwd=REPO, env=self.env, timeout=timeout).stdout

    def containers(self, service: str) -> list[str]:
        return self("ps", "-q", service).split()

    def hostnames(self, service: str) -> set[str]:
        """What each container's page names as its node (SERF_NODE defaults to the hostname)."""
        inspect = ("docker", "inspect", "-f", "{{.Config.Hostname}}")
        return {run(*inspect, c).stdout.strip() for c in self.containers(service)}

    def logs(self) -> str:
        return container_logs(left_behind()[0])


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
    env_file = tmp_path_factory.mktemp("compose") / "empty.env"
    env_file.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    port = free_port()
    env.update(
        LB_HOST_PORT=str(port),
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


def test_up_with_three_web_nodes_serves_all_three(compose: Compose) -> None:
    before = {image: image_id(image) for image in (LB_IMAGE, WEB_IMAGE)}
    started = time.monotonic()
    compose("up", "-d", "--build", "--scale", "web=3", timeout=900)
    print(f"docker-compose up -d --build --scale web=3 took {time.monotonic() - started:.1f} s")
    for image, old in before.items():
        if old and image_id(image) != old:
            # The build replaced the tag; drop the old image unless something still uses it.
            run("docker", "image", "rm", old, check=False)

    assert len(compose.containers("lb")) == 1
    webs = compose.hostnames("web")
    assert len(webs) == 3
    wait_for_rotation(compose.url, webs, timeout=90, logs=compose.logs)
    print(f"all three web nodes in rotation {time.monotonic() - started:.1f} s after `up`")


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
    print(
        f"scale 3 -> 1 took {scaled - started:.1f} s; {len(answers)} requests, {len(failures)} failed, "
        f"{len(during)} during the scale-down, from {LOADERS} clients"
    )
    assert failures == [], f"{len(failures)} failed requests, first: {failures[:3]}\n{compose.logs()}"
    assert len(after) == 1 and len(gone) == 2
    assert len(during) >= 50, f"only {len(during)} requests were made during the scale-down"
    assert gone <= set(during), "the removed nodes served nothing while they were stopping"
    assert not [node for t, node in answers if t > scaled and node in gone]
    assert scaled - started < 30, f"the scale-down took {scaled - started:.1f} s"
    # Each removed node waited, before serf left, until the load balancer said it had drained it.
    drains = {node: [line for line in logs[node].read_text(errors="replace").splitlines() if "serf-drain:" in line]
              for node in gone}
    print("\n".join(f"{node}: {' | '.join(lines)}" for node, lines in sorted(drains.items())))
    for node, lines in drains.items():
        assert any("drained by 1 of 1 load balancer(s) after" in line for line in lines), (node, lines)
    # They are gone from the cluster, and the load balancer serves the one that is left. Most
    # leave gracefully; on a loaded machine Serf may give up on a leave ("Shutdown without a
    # Leave") and report the node failed instead: no request may fail either way (above).
    lb = compose.containers("lb")[0]
    out = run("docker", "exec", lb, "serf", "members", "-format", "json").stdout
    status = {m["name"]: m["status"] for m in json.loads(out)["members"] or []}
    assert {status.get(node) for node in gone} <= {"left", "failed"}, status
    wait_for_rotation(compose.url, after, timeout=10, logs=compose.logs)


def test_down_removes_everything_it_created(compose: Compose) -> None:
    started = time.monotonic()
    compose("down", "--remove-orphans", "-v", timeout=300)
    print(f"docker-compose down took {time.monotonic() - started:.1f} s")
    assert left_behind() == ([], [], [])
