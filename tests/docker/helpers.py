"""Helpers shared by the Docker tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

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


def wait_for_rotation(url: str, expected: set[str], timeout: float, logs: Callable[[], str]) -> None:
    """Until a run of requests succeeds and reaches exactly `expected`."""
    last: list[tuple[set[str], list[str]]] = []

    def converged() -> bool:
        seen, errors = seen_nodes(url, 4 * len(expected) + 4)
        last[:] = [(seen, errors)]
        return seen == expected and not errors

    try:
        wait_for(f"rotation {sorted(expected)}", converged, timeout=timeout, interval=1)
    except AssertionError as exc:
        seen, errors = last[0] if last else (set(), [])
        raise AssertionError(f"{exc}; last saw {sorted(seen)}, errors {errors[:3]}\n{logs()}") from None


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
