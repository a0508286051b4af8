"""docker-compose.yml's `nginx-lb` profile, run for real with Debian 12's Compose (1.29):

    docker-compose --profile nginx-lb up -d --build --scale web=3
    traffic through nginx-lb (nginx, the `nginx` handler) reaches all three web nodes
    docker-compose --profile nginx-lb up -d --scale web=1    # under load through nginx-lb:
                                                   # 0 failed requests; each removed node
                                                   # logged that both load balancers (lb and
                                                   # nginx-lb) had drained it before it left
    docker-compose --profile nginx-lb down         # nothing it created is left

nginx-lb has role=lb, so a stopping web node asks it too whether it has drained the node
(docker/common/serf-drain.sh, the `backends` query); its `nginx` handler answers that query
from the servers nginx was last given. Without an answer every stop would wait SERF_DRAIN_TIMEOUT
(15 s) and then SERF_LEAVE_GRACE: the scale-down is bounded well below that here.
The load is one request per connection (urllib: Connection: close). Clients that keep a
connection alive are another matter: nginx's old workers close idle keep-alive connections at
each reload, and a request sent on one just then fails (HAProxy's runtime API needs no reload).

As test_compose.py: a unique project name (-p), an empty --env-file, ports on 127.0.0.1 only,
and a finalizer that runs `down` and removes whatever carries the project's label, even when
a step fails.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.processes import eventually
from tests.docker.helpers import (
    LB_IMAGE,
    WEB_IMAGE,
    Compose,
    compose_project,
    container_logs,
    hostname,
    run,
    scale_down_under_load,
    up_with_build,
    wait_for,
    wait_for_rotation,
)

pytestmark = pytest.mark.docker

NGINX_LB_IMAGE = "serf-handlers/nginx-lb"
PROFILE = "nginx-lb"
PROJECT = f"shnginxlb{secrets.token_hex(4)}"
LOADERS = 4  # concurrent sequential clients during the scale-down
LOAD_SECONDS = 90  # the bound on the load, whatever happens
# A load balancer that does not answer the drain query costs every stopping web node
# SERF_DRAIN_TIMEOUT (15 s) plus SERF_LEAVE_GRACE (3 s): about 23 s for the whole scale-down
# (measured with the drain query left unanswered). Answered, it takes about 7 s; Serf's
# coalescing (up to 5 s) and a busy machine can add several seconds.
MAX_SCALE_DOWN_SECONDS = 20
SERVER_LINE = re.compile(r"^\s*server \S+ .*;  # (.+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def compose(docker_compose: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    scratch = tmp_path_factory.mktemp("compose-nginx-lb")
    with compose_project(docker_compose, PROJECT, scratch, "NGINX_LB_HOST_PORT", (PROFILE,)) as c:
        yield c  # c.url: nginx-lb


def nginx_lb(compose: Compose) -> str:
    (container,) = compose.containers("nginx-lb")
    return container


def upstream_nodes(container: str) -> dict[str, bool]:
    """node -> True when `down`, from the nginx.conf the handler installed in `container`."""
    conf = run("docker", "exec", container, "cat", "/etc/nginx/nginx.conf").stdout
    return {m.group(1): " down;" in m.group(0) for m in SERVER_LINE.finditer(conf)}


def test_up_with_the_profile_serves_every_web_node_through_nginx(compose: Compose) -> None:
    started = up_with_build(compose, (LB_IMAGE, WEB_IMAGE, NGINX_LB_IMAGE), "web=3")
    assert len(compose.containers("nginx-lb")) == 1
    assert len(compose.containers("lb")) == 1  # a service without a profile starts too
    webs = compose.hostnames("web")
    assert len(webs) == 3
    wait_for_rotation(compose.url, webs, timeout=90, logs=compose.logs)
    print(f"all three web nodes in rotation through nginx-lb {time.monotonic() - started:.1f} s after `up`")

    lb = nginx_lb(compose)
    assert upstream_nodes(lb) == dict.fromkeys(webs, False)
    # The handler's file is as installed, current with the members, and no reload is owed.
    status = run("docker", "exec", lb, "serf-handle", "status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    # It answers a draining web node's question, as the HAProxy load balancer does.
    web = sorted(webs)[0]
    out = run("docker", "exec", lb, "serf", "query", "-format", "json", "-tag", "role=^lb$", "-timeout", "5s",
              "backends", f"drained {web}").stdout
    replies = {node: reply.strip() for node, reply in (json.loads(out)["Responses"] or {}).items()}
    assert replies.get(hostname(lb)) == "drained=no state=ready", replies
    assert len(replies) == 2 and set(replies.values()) == {"drained=no state=ready"}, replies
    # nginx-lb and the HAProxy `lb` serve the same web nodes: `cluster-check` finds one digest.
    checks: list[subprocess.CompletedProcess[str]] = []

    def agree() -> bool:
        checks.append(run("docker", "exec", lb, "serf-handle", "cluster-check", check=False))
        return checks[-1].returncode == 0

    assert eventually(agree, 30, interval=1), checks[-1].stdout + checks[-1].stderr
    verdict = checks[-1].stdout.splitlines()[-1]
    assert verdict.startswith("OK: 2 load balancer(s) (role=lb) serve the same 3 server(s)"), checks[-1].stdout


def test_scaling_down_to_one_under_load_fails_no_request(compose: Compose, tmp_path: Path) -> None:
    assert len(compose.hostnames("web")) == 3
    seen = scale_down_under_load(compose, tmp_path, "web=1", LOADERS, LOAD_SECONDS)
    started, scaled, answers, failures, gone, after, drains = seen
    last = {node: max((t for t, n in answers if n == node), default=started) - started for node in gone}
    print(
        f"scale 3 -> 1 through nginx-lb took {scaled - started:.1f} s; {len(answers)} requests, "
        f"{len(failures)} failed, {len(seen.during)} during the scale-down, from {LOADERS} clients; "
        "last answer from each removed node: "
        + ", ".join(f"{node} +{seconds:.1f} s" for node, seconds in sorted(last.items()))
    )
    assert failures == [], f"{len(failures)} failed requests, first: {failures[:3]}\n{compose.logs()}"
    assert len(after) == 1 and len(gone) == 2
    assert len(seen.during) >= 50, f"only {len(seen.during)} requests were made during the scale-down"
    assert not [node for t, node in answers if t > scaled and node in gone]
    # Each removed node waited, before serf left, until both load balancers (lb, HAProxy, and
    # nginx-lb) said they had drained it: none timed out waiting for nginx-lb.
    lb = nginx_lb(compose)
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
    assert compose.left_behind() == ([], [], [])
