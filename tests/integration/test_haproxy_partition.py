"""Issue 10, the partition: `member-failed` never empties a backend, nor takes it below the
handler's `min_alive` fraction of its servers (default 0.5); a single node that really dies
is still removed. Real serf agents, HAProxy (runtime-API mode) and nginx on loopback, under a
light bounded load (`support.load.Load`, 50 requests a second on fresh connections).

Every agent runs with `-profile=local` (serf's timing profile for loopback), which makes Serf
declare frozen members failed sooner than the default `lan` profile. Measured on a 2-core
machine with 4 frozen web agents: all four `failed` 40 s after the SIGSTOP with `local`,
60 s with `lan`. The partition test verifies through `serf members` that Serf really reported
every frozen member failed before it judges anything, so it takes about 50 s (the single-death
test about 10 s: the healthy members confirm the suspicion, web4 is failed after ~5 s).
The helpers of test_haproxy_convergence.py are reused.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from support.load import Load
from support.processes import Agent, Processes, cluster_sees, eventually, free_port, require, start_nginx, wait_until
from support.site import Site
from tests.integration.test_haproxy_convergence import brief, converged, live, nginx_on, status, web_tags

pytestmark = pytest.mark.integration

PROFILE = ("-profile=local",)
WEBS = ("web1", "web2", "web3", "web4")


@pytest.fixture
def procs(short_procs: Processes) -> Processes:
    return short_procs  # see conftest.py


def start_lb(procs: Processes) -> Site:
    """HAProxy (runtime API), the `lb` agent running serf-handle, and web1-web4, all served;
    every agent with PROFILE."""
    require("serf", "haproxy", "nginx")
    lb = Site(procs.workdir, log={"level": "info", "format": "json", "file": str(procs.workdir / "handler.jsonl")})
    lb.serve(procs, "runtime")
    lb.agent = Agent(procs, "lb", {"role": "lb"}, handlers=[lb.handler_command()],
                     env={"SERF_HANDLERS_CACHE_DIR": str(lb.cache)}, extra=PROFILE)
    for name in WEBS:
        port = free_port()
        start_nginx(procs, f"body-{name}", port)
        lb.webs[name] = Agent(procs, name, {"role": "web", "port": str(port)}, join=lb.agent, extra=PROFILE)
    wait_until(cluster_sees(lb.agent, {"lb", *WEBS}), timeout=20, what="every agent alive")
    wait_until(lambda: converged(lb), timeout=20, what="HAProxy serving web1-web4")
    return lb


def statuses(lb: Site) -> dict[str, str]:
    """Serf's view from the load balancer: member -> alive, failed, left, …"""
    assert lb.agent is not None
    out = lb.agent.serf("members", "-format", "json").stdout
    return {m["name"]: m["status"] for m in json.loads(out)["members"] or []}


def test_a_partition_of_every_web_agent_keeps_every_server_and_fails_no_request(procs: Processes) -> None:
    lb = start_lb(procs)
    with Load(lb.port, rate=50, seconds=240) as load:
        time.sleep(1)
        frozen_at = time.monotonic()
        for name in WEBS:  # the agents only: every nginx keeps serving
            lb.webs[name].proc.send_signal(signal.SIGSTOP)
        wait_until(lambda: all(statuses(lb).get(n) == "failed" for n in WEBS), timeout=150, interval=0.5,
                   what="serf members: every frozen member failed")
        all_failed = time.monotonic() - frozen_at
        time.sleep(3)  # the member-failed runs (Serf coalesces and delivers them within ~1-2 s)
        during = live(lb)
        failed_during = list(load.failures)
        requests_during = load.requests
        _, shown = status(lb)

        for name in WEBS:
            lb.webs[name].proc.send_signal(signal.SIGCONT)
        healed_at = time.monotonic()
        healed = eventually(lambda: cluster_sees(lb.agent, {"lb", *WEBS})() and converged(lb), timeout=60)  # type: ignore[arg-type]
        converge_s = time.monotonic() - healed_at
        time.sleep(1)
    print(
        f"\npartition: every member failed after {all_failed:.1f} s; {len(failed_during)} of {requests_during} "
        f"requests failed during it, {len(load.failures)} of {load.requests} in all; after SIGCONT converged="
        f"{healed} in {converge_s:.1f} s"
    )
    assert {n: r["srv_admin_state"] + "/" + r["srv_op_state"] for n, r in during.items()} == dict.fromkeys(
        WEBS, "0/2"
    ), f"with every web member failed, HAProxy has {brief(during)} (want all 4 ready and UP)"
    assert failed_during == [], (
        f"{len(failed_during)} of {requests_during} requests failed during the partition: {failed_during[:5]}"
    )
    kept = [line for line in shown.splitlines() if any(n in line for n in WEBS) and "failed" in line.lower()]
    assert len(kept) == len(WEBS), f"status does not show the 4 members kept as failed:\n{shown}"
    assert healed, f"after SIGCONT: serf {statuses(lb)}, HAProxy {brief(live(lb))}"
    assert lb.servers() == set(WEBS), lb.state_data()
    assert load.failures == [], load.failures[:5]


def test_a_single_node_that_really_dies_is_removed_without_a_failed_request(procs: Processes) -> None:
    lb = start_lb(procs)
    port = web_tags(lb.webs["web4"])["port"]
    with Load(lb.port, rate=50, seconds=120) as load:
        time.sleep(1)
        died_at = time.monotonic()
        procs.stop(nginx_on(procs, port))
        lb.webs["web4"].proc.send_signal(signal.SIGSTOP)
        wait_until(lambda: statuses(lb).get("web4") == "failed", timeout=60, interval=0.5,
                   what="serf members: web4 failed")
        failed_after = time.monotonic() - died_at
        removed = eventually(lambda: "web4" not in live(lb), timeout=10)
        rows = live(lb)
        time.sleep(1)
    print(f"\nsingle death: web4 failed after {failed_after:.1f} s; {len(load.failures)} of {load.requests} failed")
    assert removed, f"web4 failed (and its nginx is gone), yet HAProxy has {brief(rows)}"
    assert {n: r["srv_admin_state"] + "/" + r["srv_op_state"] for n, r in rows.items()} == dict.fromkeys(
        ("web1", "web2", "web3"), "0/2"
    ), brief(rows)
    assert lb.servers() == {"web1", "web2", "web3"}, lb.state_data()
    assert load.failures == [], f"{len(load.failures)} of {load.requests} requests failed: {load.failures[:5]}"
