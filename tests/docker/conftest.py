"""Fixtures of the Docker tests: a Docker daemon, the base image and both images.

They set themselves up on a fresh Debian 12 (as root, or with password-less sudo):
install docker.io and debootstrap when missing, start a dockerd when none answers (and
stop only that one, by its PID, at the end), and make debian:bookworm-slim with
scripts/docker-base-image.sh when there is no registry. The images keep their tags
(serf-handlers/haproxy, serf-handlers/nginx) so the next run reuses the layer cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.docker.helpers import (
    LB_IMAGE,
    REPO,
    WEB_IMAGE,
    apt_install,
    as_root,
    docker_answers,
    image_id,
    run,
    wait_for,
)


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


@pytest.fixture(scope="session")
def base_image(docker_daemon: None) -> None:
    """debian:bookworm-slim: debootstrap'ed and imported when there is no registry."""
    if run("docker", "image", "inspect", "debian:bookworm-slim", check=False).returncode != 0:
        if shutil.which("debootstrap") is None and not os.path.exists("/usr/sbin/debootstrap"):
            apt_install("debootstrap")
        run(*as_root(str(REPO / "scripts" / "docker-base-image.sh")), timeout=900)


@pytest.fixture(scope="session")
def images(base_image: None) -> None:
    """Both images, built with `docker build` from the repository."""
    for image, dockerfile in ((LB_IMAGE, "docker/haproxy/Dockerfile"), (WEB_IMAGE, "docker/nginx/Dockerfile")):
        before = image_id(image)
        run("docker", "build", "-q", "-f", dockerfile, "-t", image, ".", cwd=REPO, timeout=900)
        after = image_id(image)
        if before and before != after:
            # The previous build lost its tag; drop it unless something still uses it.
            run("docker", "image", "rm", before, check=False)


@pytest.fixture(scope="session")
def docker_compose(base_image: None) -> str:
    """Debian 12's Compose, the `docker-compose` command (1.29); installed when missing."""
    if shutil.which("docker-compose") is None:
        apt_install("docker-compose")
    path = shutil.which("docker-compose")
    assert path is not None, "docker-compose is not on PATH after installing Debian's package"
    return path
