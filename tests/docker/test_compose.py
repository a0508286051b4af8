"""docker-compose.yml, run for real with Debian 12's Compose (`docker-compose`, 1.29):

    docker-compose up -d --build --scale web=3     # as the README gives it
    traffic reaches all three web nodes
    docker-compose up -d --scale web=1             # under load: 0 failed requests; each
                                                   # removed node logged that the load
                                                   # balancer had drained it before it left
    docker-compose --profile services up -d api    # a second service, reached by host name
    docker-compose down                            # nothing it created is left

The images build from the local debian:bookworm-slim (conftest.py makes it when there is
no registry). A unique project name (-p) keeps the test's containers and network apart,
an empty --env-file keeps a user's .env out, and the load balancer is published on
127.0.0.1 only (the compose file's ports). A finalizer runs `down` and removes whatever
carries the project's label, even when a step fails.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docker.helpers import (
    LB_IMAGE,
    WEB_IMAGE,
    Compose,
    compose_project,
    run,
    scale_down_under_load,
    up_with_build,
    wait_for_rotation,
)

pytestmark = pytest.mark.docker

PROJECT = f"shcompose{secrets.token_hex(4)}"
LOADERS = 4  # concurrent sequential clients during the scale-down
LOAD_SECONDS = 90  # the bound on the load, whatever happens


@pytest.fixture(scope="module")
def compose(docker_compose: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    with compose_project(docker_compose, PROJECT, tmp_path_factory.mktemp("compose"), "LB_HOST_PORT") as c:
        yield c


def test_up_with_three_web_nodes_serves_all_three(compose: Compose) -> None:
    started = up_with_build(compose, (LB_IMAGE, WEB_IMAGE), "web=3")
    assert len(compose.containers("lb")) == 1
    webs = compose.hostnames("web")
    assert len(webs) == 3
    wait_for_rotation(compose.url, webs, timeout=90, logs=compose.logs)
    print(f"all three web nodes in rotation {time.monotonic() - started:.1f} s after `up`")


def test_scaling_down_to_one_under_load_fails_no_request(compose: Compose, tmp_path: Path) -> None:
    assert len(compose.hostnames("web")) == 3
    seen = scale_down_under_load(compose, tmp_path, "web=1", LOADERS, LOAD_SECONDS)
    started, scaled, answers, failures, gone, after, _ = seen
    print(
        f"scale 3 -> 1 took {scaled - started:.1f} s; {len(answers)} requests, {len(failures)} failed, "
        f"{len(seen.during)} during the scale-down, from {LOADERS} clients"
    )
    assert failures == [], f"{len(failures)} failed requests, first: {failures[:3]}\n{compose.logs()}"
    assert len(after) == 1 and len(gone) == 2
    assert len(seen.during) >= 50, f"only {len(seen.during)} requests were made during the scale-down"
    assert gone <= set(seen.during), "the removed nodes served nothing while they were stopping"
    assert not [node for t, node in answers if t > scaled and node in gone]
    assert scaled - started < 30, f"the scale-down took {scaled - started:.1f} s"
    # Each removed node waited, before serf left, until the load balancer said it had drained it.
    for node, lines in seen.drains.items():
        assert any("drained by 1 of 1 load balancer(s) after" in line for line in lines), (node, lines)
    # They are gone from the cluster, and the load balancer serves the one that is left. Most
    # leave gracefully; on a loaded machine Serf may give up on a leave ("Shutdown without a
    # Leave") and report the node failed instead: no request may fail either way (above).
    lb = compose.containers("lb")[0]
    out = run("docker", "exec", lb, "serf", "members", "-format", "json").stdout
    status = {m["name"]: m["status"] for m in json.loads(out)["members"] or []}
    assert {status.get(node) for node in gone} <= {"left", "failed"}, status
    wait_for_rotation(compose.url, after, timeout=10, logs=compose.logs)


def test_a_second_service_is_reached_by_its_host_name(compose: Compose) -> None:
    """The `services` profile's `api` node tags itself backend=api,host=api.localhost: the load
    balancer routes that host to it (a route in HAProxy's host map), the rest to `web`."""
    started = time.monotonic()
    compose("--profile", "services", "up", "-d", "api", timeout=300)
    api = compose.hostnames("api")
    assert len(api) == 1
    wait_for_rotation(compose.url, api, timeout=60, logs=compose.logs, host="api.localhost")
    print(f"api.localhost routed to {sorted(api)} {time.monotonic() - started:.1f} s after `up`")
    wait_for_rotation(compose.url, compose.hostnames("web"), timeout=10, logs=compose.logs)
    lb = compose.containers("lb")[0]
    hosts_map = run("docker", "exec", lb, "cat", "/etc/haproxy/maps/hosts.map").stdout
    assert "api.localhost/ api" in hosts_map, hosts_map
    # `down` without the profile would leave its containers behind.
    compose("--profile", "services", "rm", "--stop", "--force", "api", timeout=120)


def test_down_removes_everything_it_created(compose: Compose) -> None:
    started = time.monotonic()
    compose("down", "--remove-orphans", "-v", timeout=300)
    print(f"docker-compose down took {time.monotonic() - started:.1f} s")
    assert compose.left_behind() == ([], [], [])
