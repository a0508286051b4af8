"""TCP services from member tags, for real: serf agents, HAProxy 2.6 in runtime-API mode and
nginx on loopback. A member tagged `backend=cache` serves the `cache` TCP service (here nginx
answers HTTP through it: HAProxy only forwards bytes); it joins, drains from its own `state`
tag and leaves with no reload and no failed request. Judged by HAProxy's live state and traffic."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.admin import server_rows
from support.processes import Processes, free_port, get, wait_until
from support.site import Site

pytestmark = pytest.mark.integration


@pytest.fixture
def procs(short_procs: Processes) -> Processes:
    return short_procs  # see conftest.py


def tcp_servers(lb: Site) -> dict[str, str]:
    """HAProxy's servers of the `cache` TCP service: name -> admin state."""
    return {r["srv_name"]: r["srv_admin_state"] for r in server_rows(lb.admin_socket, "cache")}


def test_a_tcp_service_follows_its_members_through_the_runtime_api(procs: Processes) -> None:
    tcp_port = free_port()
    lb = Site(Path(procs.workdir), tcp={"cache": f"127.0.0.1:{tcp_port}"})
    lb.serve(procs, "runtime")
    lb.start_agent()
    lb.add_web("web1", "web1")
    cache = lb.add_web("cache1", "cache1", backend="cache")
    wait_until(lambda: get(tcp_port)[1] == "cache1", timeout=20, what="the TCP service reaches cache1")
    assert {get(lb.port)[1] for _ in range(6)} == {"web1"}  # HTTP traffic never goes to a TCP server
    assert tcp_servers(lb) == {"cache1": "0"}

    failed = 0
    cache.serf("tags", "-set", "state=drain")
    wait_until(lambda: tcp_servers(lb) == {"cache1": "8"}, timeout=20, what="cache1 drained in HAProxy")
    cache.serf("tags", "-delete", "state")
    wait_until(lambda: tcp_servers(lb) == {"cache1": "0"}, timeout=20, what="cache1 ready again")
    for _ in range(20):
        failed += get(tcp_port)[1] != "cache1"
    assert failed == 0

    cache.leave()
    wait_until(lambda: tcp_servers(lb) == {}, timeout=20, what="cache1 removed from the TCP service")
    assert get(tcp_port)[0] != 200  # no server left behind it
    assert lb.reload_count() == 0
