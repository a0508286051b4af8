"""The 2014 commands, as the seed's README gave them, with today's images:

    docker run -d -t -p 8080:80 -p 7946 --name haproxy <lb image>
    docker run -d -t --link haproxy:serf <web image>      (twice)

No SERF_JOIN anywhere: the web nodes find the load balancer through the legacy link's
SERF_PORT_7946_TCP_ADDR/_PORT (docker/common/serf-agent.sh). Docker sets those only on
its default bridge network, so this test runs there, as the seed's readers did; it
publishes on 127.0.0.1 only, labels every container it starts and removes them all
(by that label) even when a step fails.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import pytest

from tests.docker.helpers import LB_IMAGE, WEB_IMAGE, container_logs, free_port, run, wait_for_rotation

pytestmark = pytest.mark.docker

SUFFIX = secrets.token_hex(4)
LABEL = f"serf-handlers-test=seed-{SUFFIX}"


def our_containers() -> list[str]:
    return run("docker", "ps", "-aq", "--no-trunc", "--filter", f"label={LABEL}").stdout.split()


@pytest.fixture
def cleanup(images: None) -> Iterator[None]:
    try:
        yield
    finally:
        for container in our_containers():
            run("docker", "rm", "-f", "-v", container, check=False, timeout=60)
        assert our_containers() == []


def test_the_2014_commands_put_both_web_nodes_in_rotation(cleanup: None) -> None:
    port = free_port()
    lb = f"haproxy-{SUFFIX}"  # the seed named it `haproxy`; the link alias is what matters
    started = time.monotonic()
    run(
        "docker", "run", "-d", "-t", "-p", f"127.0.0.1:{port}:80", "-p", "127.0.0.1::7946",
        "--label", LABEL, "--name", lb, LB_IMAGE,
    )  # fmt: skip
    webs = [
        run("docker", "run", "-d", "-t", "--label", LABEL, "--link", f"{lb}:serf", WEB_IMAGE).stdout.strip()
        for _ in range(2)
    ]

    def logs() -> str:
        return container_logs([lb, *webs])

    # Each web page names its node: the container's hostname, its short ID.
    expected = {web[:12] for web in webs}
    wait_for_rotation(f"http://127.0.0.1:{port}/", expected, timeout=60, logs=logs)
    print(f"both web nodes in rotation {time.monotonic() - started:.1f} s after the first docker run")

    lb_ip = run("docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", lb).stdout.strip()
    for web in webs:
        env = run("docker", "exec", web, "printenv", "SERF_PORT_7946_TCP_ADDR", "SERF_JOIN", check=False).stdout
        assert env.split() == [lb_ip], env  # joined through the link, SERF_JOIN unset
        result = run("docker", "logs", web)
        agent_log = result.stdout + result.stderr  # one stream with -t
        assert f"joining {lb_ip}:7946, the Docker link named serf" in agent_log
