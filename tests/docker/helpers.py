"""Helpers shared by the Docker tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from support.background import Background
from support.processes import eventually

REPO = Path(__file__).resolve().parents[2]
LB_IMAGE = "serf-handlers/haproxy"
WEB_IMAGE = "serf-handlers/nginx"
NODE_RE = re.compile(r'<span id="node">([^<]*)</span>')


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
    if not eventually(predicate, timeout, interval):
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


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


def image_id(image: str) -> str:
    result = run("docker", "image", "inspect", "-f", "{{.Id}}", image, check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def container_logs(containers: list[str], tail: int = 60) -> str:
    parts = []
    for name in containers:
        result = run("docker", "logs", "--tail", str(tail), name, check=False)
        parts.append(f"===== {name}\n{result.stdout}{result.stderr}")
    return "\n".join(parts)


# ---------------------------------------------------------------- HTTP


def fetch(url: str, timeout: float = 3, host: str | None = None) -> str:
    """The node that answered (`host`: the Host header to send), or raises."""
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read().decode()
    match = NODE_RE.search(body)
    if response.status != 200 or match is None:
        raise AssertionError(f"unexpected answer {response.status}: {body[:200]!r}")
    return match.group(1)


def seen_nodes(url: str, requests: int, host: str | None = None) -> tuple[set[str], list[str]]:
    seen: set[str] = set()
    errors: list[str] = []
    for _ in range(requests):
        try:
            seen.add(fetch(url, host=host))
        except (OSError, AssertionError) as exc:
            errors.append(repr(exc))
    return seen, errors


def wait_for_rotation(
    url: str, expected: set[str], timeout: float, logs: Callable[[], str], host: str | None = None
) -> None:
    """Until a run of requests (with `host` as their Host header) succeeds and reaches exactly `expected`."""
    last: list[tuple[set[str], list[str]]] = []

    def converged() -> bool:
        seen, errors = seen_nodes(url, 4 * len(expected) + 4, host)
        last[:] = [(seen, errors)]
        return seen == expected and not errors

    try:
        wait_for(f"rotation {sorted(expected)}", converged, timeout=timeout, interval=1)
    except AssertionError as exc:
        seen, errors = last[0] if last else (set(), [])
        raise AssertionError(f"{exc}; last saw {sorted(seen)}, errors {errors[:3]}\n{logs()}") from None


class Load(Background):
    """Sequential requests in a thread, each with a timeout, for a bounded time."""

    def __init__(self, url: str, max_seconds: float) -> None:
        super().__init__("load", join_timeout=max_seconds + 10)
        self.url = url
        self.max_seconds = max_seconds
        self.answers: list[tuple[float, str]] = []
        self.failures: list[tuple[float, str]] = []

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            now = time.monotonic()
            try:
                self.answers.append((now, fetch(self.url)))
            except (OSError, AssertionError) as exc:
                self.failures.append((now, repr(exc)))
            self._stop.wait(0.01)


# ---------------------------------------------------------------- Compose projects

# The host ports docker-compose.yml publishes on 127.0.0.1: each test project gets free ones.
HOST_PORTS = ("LB_HOST_PORT", "LB_STATS_HOST_PORT", "NGINX_LB_HOST_PORT")


@dataclass(frozen=True)
class Compose:
    """docker-compose.yml run as its own project: a unique project name (-p), an empty
    --env-file (a user's .env stays out), the given profiles, and `port`: the published
    port of the load balancer under test."""

    binary: str
    project: str
    env_file: Path
    env: dict[str, str]
    port: int
    profiles: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def __call__(self, *args: str, timeout: float = 180) -> str:
        argv = (
            self.binary, "--no-ansi", "--env-file", str(self.env_file), "-p", self.project,
            *(arg for profile in self.profiles for arg in ("--profile", profile)),
            "-f", str(REPO / "docker-compose.yml"), "--project-directory", str(REPO), *args,
        )  # fmt: skip
        return run(*argv, cwd=REPO, env=self.env, timeout=timeout).stdout

    def containers(self, service: str) -> list[str]:
        return self("ps", "-q", service).split()

    def hostnames(self, service: str) -> set[str]:
        """What each container's page names as its node (SERF_NODE defaults to the hostname)."""
        return {hostname(c) for c in self.containers(service)}

    def left_behind(self) -> tuple[list[str], list[str], list[str]]:
        """Containers, networks and volumes of the project."""
        label = f"label=com.docker.compose.project={self.project}"
        return (
            run("docker", "ps", "-aq", "--filter", label).stdout.split(),
            run("docker", "network", "ls", "-q", "--filter", label).stdout.split(),
            run("docker", "volume", "ls", "-q", "--filter", label).stdout.split(),
        )

    def logs(self) -> str:
        return container_logs(self.left_behind()[0])


def hostname(container: str) -> str:
    return run("docker", "inspect", "-f", "{{.Config.Hostname}}", container).stdout.strip()


@contextmanager
def compose_project(binary: str, project: str, scratch: Path, port: str,
                    profiles: tuple[str, ...] = ()) -> Iterator[Compose]:
    """A `Compose` whose load balancer under test is published on the host port variable
    `port` (one of HOST_PORTS). At the end it runs `down` and removes whatever carries the
    project's label, even when a step failed."""
    env_file = scratch / "empty.env"
    env_file.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    env.update({name: str(free_port()) for name in HOST_PORTS})
    env.update(SERF_ENCRYPT_KEY=base64.b64encode(os.urandom(32)).decode(), SERF_RPC_AUTH=secrets.token_urlsafe(16))
    c = Compose(binary, project, env_file, env, int(env[port]), profiles)
    try:
        yield c
    finally:
        containers, networks, _ = c.left_behind()
        if containers or networks:
            try:
                c("down", "--remove-orphans", "-v", "-t", "30", timeout=300)
            except (AssertionError, OSError) as exc:
                print(f"docker-compose down failed: {exc}")
        containers, networks, volumes = c.left_behind()
        for container in containers:
            run("docker", "rm", "-f", "-v", container, check=False, timeout=60)
        for network in networks:
            run("docker", "network", "rm", network, check=False, timeout=60)
        for volume in volumes:
            run("docker", "volume", "rm", "-f", volume, check=False, timeout=60)


def up_with_build(compose: Compose, images: tuple[str, ...], scale: str) -> float:
    """`up -d --build --scale SCALE`; an image the build replaced is removed unless something
    still uses it. Returns when it started (time.monotonic())."""
    before = {image: image_id(image) for image in images}
    started = time.monotonic()
    compose("up", "-d", "--build", "--scale", scale, timeout=900)
    print(f"docker-compose {' '.join(compose.profiles)} up -d --build --scale {scale} "
          f"took {time.monotonic() - started:.1f} s")
    for image, old in before.items():
        if old and image_id(image) != old:
            run("docker", "image", "rm", old, check=False)
    return started


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


class ScaleDown(NamedTuple):
    """What `scale_down_under_load` saw."""

    started: float
    scaled: float  # when `up --scale` returned
    answers: list[tuple[float, str]]  # (when, the node that answered)
    failures: list[tuple[float, str]]
    gone: set[str]  # the nodes removed
    after: set[str]  # the nodes left
    drains: dict[str, list[str]]  # each removed node's `serf-drain:` log lines

    @property
    def during(self) -> list[str]:
        return [node for t, node in self.answers if self.started <= t <= self.scaled]


def scale_down_under_load(compose: Compose, scratch: Path, scale: str, loaders: int, seconds: float) -> ScaleDown:
    """`up -d --scale SCALE` of the web nodes while `loaders` clients send requests through
    the load balancer (for at most `seconds`), following each web node's log."""
    before = compose.hostnames("web")
    logs: dict[str, Path] = {}
    with ExitStack() as stack:
        for container in compose.containers("web"):
            name = hostname(container)
            logs[name] = stack.enter_context(following(container, scratch / f"{name}.log"))
        loads = [stack.enter_context(Load(compose.url, max_seconds=seconds)) for _ in range(loaders)]
        time.sleep(2)
        started = time.monotonic()
        compose("up", "-d", "--no-build", "--no-recreate", "--scale", scale, timeout=120)
        scaled = time.monotonic()
        time.sleep(3)
    after = compose.hostnames("web")
    drains = {node: [line for line in logs[node].read_text(errors="replace").splitlines() if "serf-drain:" in line]
              for node in before - after}
    print("\n".join(f"{node}: {' | '.join(lines)}" for node, lines in sorted(drains.items())))
    return ScaleDown(started, scaled, [a for load in loads for a in load.answers],
                     [f for load in loads for f in load.failures], before - after, after, drains)
