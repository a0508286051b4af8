"""Issue 13: a web node's stop waits until every load balancer has drained it.

The real script of the web image, docker/common/serf-drain.sh, run as supervisord runs it
(idle until SIGTERM), with serf's RPC address pointed at the web node's own agent. Real serf
agents, HAProxy in runtime-API mode and nginx on loopback, under a light bounded load
(`support.load.Load`). What counts is HAProxy's live state (`show servers state`) and the
traffic: the script returns only after HAProxy shows the node drained, and the whole stop
sequence (drain, serf leaves, nginx quits gracefully) fails no request. A load balancer that
never answers (an agent with role=lb and no handler) makes it wait until its timeout and say
so. docker/common/serf-leave-grace.sh then skips its pause only when the drain was confirmed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support.background import Background
from support.load import Load
from support.processes import Agent, Processes, children, cluster_sees, free_port, require, start_nginx, wait_until
from support.site import Site
from tests.integration.test_haproxy_operating import admin_state

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DRAIN = REPO / "docker" / "common" / "serf-drain.sh"
LEAVE_GRACE = REPO / "docker" / "common" / "serf-leave-grace.sh"


@pytest.fixture
def procs(short_procs: Processes) -> Processes:
    return short_procs  # see conftest.py: every process stopped by PID afterwards


@dataclass
class Web:
    agent: Agent
    nginx: subprocess.Popen[bytes]
    body: str


@dataclass
class Cluster:
    procs: Processes
    lb: Site
    webs: dict[str, Web] = field(default_factory=dict)

    def add_web(self, name: str) -> Web:
        port = free_port()
        nginx = start_nginx(self.procs, f"body-{name}", port)
        assert self.lb.agent is not None
        agent = Agent(self.procs, name, {"role": "web", "port": str(port)}, join=self.lb.agent)
        self.webs[name] = Web(agent, nginx, f"body-{name}")
        return self.webs[name]


def start_cluster(procs: Processes, *webs: str) -> Cluster:
    """A load balancer `lb` (HAProxy through the runtime API, the haproxy handler run by its
    agent) serving `webs`, all ready and UP."""
    require("serf", "haproxy", "nginx", "bash", "python3")
    lb = Site(procs.workdir / "lb", log={"level": "info", "format": "json", "file": str(procs.workdir / "lb.jsonl")})
    lb.serve(procs, "runtime")
    lb.start_agent("lb")
    cluster = Cluster(procs, lb)
    for name in webs:
        cluster.add_web(name)
    wait_until(lambda: all(admin_state(lb, name) == "ready" for name in webs), timeout=20,
               what=f"HAProxy serving {webs}")
    return cluster


def start_script(procs: Processes, script: Path, name: str, **env: str) -> subprocess.Popen[bytes]:
    """One of the web image's supervisord programs, idle (its `sleep` started) and ready for SIGTERM."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SERF_")}
    proc = procs.start(name, ["bash", str(script)], env={**clean, **env})
    wait_until(lambda: children(proc.pid), timeout=10, interval=0.02, what=f"{name} idle")
    return proc


def start_drain(procs: Processes, web: Agent, timeout: float, status: Path) -> subprocess.Popen[bytes]:
    return start_script(procs, DRAIN, f"serf-drain-{web.name}", SERF_RPC_ADDR=web.rpc,
                        SERF_DRAIN_TIMEOUT=f"{timeout:g}", SERF_DRAIN_STATUS=str(status))


def stop(proc: subprocess.Popen[bytes], limit: float) -> float:
    """SIGTERM, as supervisord stops it; the seconds until it exited (0)."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(limit) == 0
    return time.monotonic() - started


def output(procs: Processes, name: str) -> str:
    return (procs.workdir / f"{name}.log").read_text(errors="replace")


class Watch(Background):
    """When HAProxy's live state first showed `name` drained (or gone), polled every 20 ms."""

    def __init__(self, lb: Site, name: str) -> None:
        super().__init__(f"watch-{name}", join_timeout=5)
        self.lb, self.name = lb, name
        self.drained_at: float | None = None

    def _run(self) -> None:
        while not self._stop.is_set() and self.drained_at is None:
            if admin_state(self.lb, self.name) in ("drain", "maint", "missing"):
                self.drained_at = time.monotonic()
            self._stop.wait(0.02)


def test_a_stopping_web_node_leaves_only_once_the_load_balancer_has_drained_it(
    procs: Processes, tmp_path: Path
) -> None:
    cluster = start_cluster(procs, "web1", "web2")
    lb, web2 = cluster.lb, cluster.webs["web2"]
    status = tmp_path / "drain.status"
    drain = start_drain(procs, web2.agent, timeout=20, status=status)
    with Load(lb.port, rate=50, seconds=120) as load:
        wait_until(lambda: load.seen[web2.body] > 0, timeout=10, what="web2 getting traffic")
        with Watch(lb, "web2") as watch:
            took = stop(drain, limit=40)
            exited = time.monotonic()
        at_exit = admin_state(lb, "web2")
        served_at_exit = load.seen[web2.body]
        time.sleep(1)
        after_drain = load.seen[web2.body] - served_at_exit
        # The rest of the web image's stop: serf leaves, then nginx quits gracefully.
        web2.agent.leave()
        wait_until(lambda: admin_state(lb, "web2") == "missing", timeout=20, what="web2 removed after its leave")
        procs.stop(web2.nginx, signal.SIGQUIT)
        time.sleep(1)
    said = output(procs, "serf-drain-web2")
    print(f"\nserf-drain: {said.strip()}; exited {took:.1f} s after SIGTERM; HAProxy showed web2 drained "
          f"{(watch.drained_at or exited) - (exited - took):.2f} s after it; {len(load.failures)} of "
          f"{load.requests} requests failed")
    assert "drained by 1 of 1 load balancer(s) after" in said, said
    assert status.read_text() == "drained\n"
    assert watch.drained_at is not None and watch.drained_at <= exited, "the script exited before HAProxy drained web2"
    assert at_exit == "drain", f"HAProxy had web2 {at_exit} when the script exited"
    assert web2.agent.proc.returncode is not None
    assert after_drain == 0, f"web2 got {after_drain} requests after the drain was confirmed"
    assert took < 10, f"the drain took {took:.1f} s"
    assert load.failures == [], f"{len(load.failures)} of {load.requests} requests failed: {load.failures[:5]}"
    assert admin_state(lb, "web1") == "ready"


def test_a_load_balancer_that_never_drains_makes_it_wait_until_its_timeout(procs: Processes, tmp_path: Path) -> None:
    cluster = start_cluster(procs, "web1", "web2")
    lb, web2 = cluster.lb, cluster.webs["web2"]
    assert lb.agent is not None
    Agent(procs, "lb-silent", {"role": "lb"}, join=lb.agent)  # an agent with the role and no handler
    wait_until(cluster_sees(web2.agent, {"lb", "lb-silent", "web1", "web2"}), timeout=20, what="web2 to see lb-silent")
    status = tmp_path / "drain.status"
    drain = start_drain(procs, web2.agent, timeout=5, status=status)
    took = stop(drain, limit=30)
    said = output(procs, "serf-drain-web2")
    print(f"\nserf-drain: {said.strip()}; exited {took:.1f} s after SIGTERM")
    assert "timed out after 5.0 s waiting for lb-silent (no answer): drained by 1 of 2 load balancer(s)" in said, said
    assert 5 <= took < 5 + 3, f"exited {took:.1f} s after SIGTERM, with a 5 s timeout"
    assert status.read_text() == "not-drained\n"
    assert admin_state(lb, "web2") == "drain", "the load balancer that answers drained web2 anyway"


def test_without_a_load_balancer_or_an_agent_it_does_not_wait(procs: Processes, tmp_path: Path) -> None:
    require("serf", "bash", "python3")
    alone = Agent(procs, "web-alone", {"role": "web"})
    status = tmp_path / "alone.status"
    took = stop(start_drain(procs, alone, timeout=10, status=status), limit=20)
    said = output(procs, "serf-drain-web-alone")
    assert "no alive load balancer (role=lb)" in said and status.read_text() == "drained\n", said
    assert took < 5
    assert alone.serf("members", "-format", "json").stdout.count('"state": "drain"') == 1  # it did set the tag

    nobody = tmp_path / "nobody.status"
    drain = start_script(procs, DRAIN, "serf-drain-nobody", SERF_RPC_ADDR=f"127.0.0.1:{free_port()}",
                         SERF_DRAIN_STATUS=str(nobody))
    took = stop(drain, limit=20)
    assert "the serf agent does not answer" in output(procs, "serf-drain-nobody")
    assert nobody.read_text() == "not-drained\n" and took < 5


@pytest.mark.parametrize(
    ("result", "waits"),
    [
        pytest.param("drained\n", False, id="drain confirmed: nginx stops at once"),
        pytest.param("not-drained\n", True, id="not confirmed: the grace pause"),
        pytest.param(None, True, id="no result: the grace pause"),
    ],
)
def test_leave_grace_pauses_only_when_the_drain_was_not_confirmed(
    procs: Processes, tmp_path: Path, result: str | None, waits: bool
) -> None:
    status = tmp_path / "drain.status"
    if result is not None:
        status.write_text(result)
    grace = start_script(procs, LEAVE_GRACE, "leave-grace", SERF_LEAVE_GRACE="2", SERF_DRAIN_STATUS=str(status))
    took = stop(grace, limit=10)
    assert (took >= 2) == waits, f"exited {took:.1f} s after SIGTERM"
    assert took < 4

