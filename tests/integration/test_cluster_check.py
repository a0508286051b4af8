"""Several load balancers, one truth: real serf agents, HAProxy (runtime-API mode) and nginx on
loopback.

Three load balancers run the same handler config, with different event histories:
- `lb1` (HAProxy) sees everything from the start, including a web node that joins and leaves;
- `lb2` (HAProxy) joins late, then misses a join (its handler configured to run queries only),
  which `serf-handle reconcile` repairs;
- `lb3` runs only the handler (no HAProxy): a third voice, so a drifting one is outvoted.
They end with byte-identical haproxy.cfg apart from their own paths and listen address, and
`serf-handle cluster-check` (run on a web node) exits 0 listing all three. Then one stops
handling events and misses a weight change: exit 1 naming it. Then an agent with the load
balancers' role but no handler joins: it is listed as "no answer", exit 1.

The tests run in file order on one module-scoped cluster, stopped by PID in a finalizer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from serf_handlers.handlers.haproxy._servers import node_id
from support.admin import admin, server_rows
from support.processes import (
    SERF_HANDLE,
    Agent,
    Processes,
    cluster_sees,
    free_port,
    require,
    start_nginx,
    wait_until,
)
from support.site import Site, bodies

pytestmark = pytest.mark.integration

TIMEOUT = "5"  # seconds the load balancers have to answer (an agent runs one handler at a time)
JOINS, UPDATES = '{type="member-join"}', '{type="member-update"}'


@dataclass
class Cluster:
    procs: Processes
    lbs: dict[str, Site] = field(default_factory=dict)
    webs: dict[str, Agent] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)  # web node -> its nginx port
    empty_config: Path = Path()

    def add_web(self, name: str, **tags: str) -> Agent:
        port = self.ports[name] = free_port()
        start_nginx(self.procs, f"body-{name}", port)
        agent = Agent(self.procs, name, {"role": "web", "port": str(port), **tags}, join=self.lbs["lb1"].agent)
        self.webs[name] = agent
        return agent

    def check(self, agent: Agent | None = None) -> subprocess.CompletedProcess[str]:
        """`serf-handle cluster-check`, through `agent`'s RPC (default: web1's), with no
        handler config: as an operator runs it on any node."""
        rpc = (agent or self.webs["web1"]).rpc
        return subprocess.run(
            [SERF_HANDLE, "cluster-check", "--config", str(self.empty_config), "--rpc-addr", rpc, "--timeout", TIMEOUT],
            capture_output=True, text=True, timeout=60, check=False,
        )


def site(procs: Processes, name: str) -> Site:
    log = {"level": "info", "format": "json", "file": str(procs.workdir / f"{name}.jsonl")}
    lb = Site(procs.workdir / name, log=log)
    lb.metrics = lb.dir / "metrics.prom"  # events_total tells when an event has been handled (or ignored)
    lb.write_yml()
    return lb


def start_lb(cluster: Cluster, name: str, haproxy: bool = True) -> Site:
    lb = site(cluster.procs, name)
    join = cluster.lbs["lb1"].agent if cluster.lbs else None
    if haproxy:
        lb.serve(cluster.procs, "runtime")
    else:  # the handler alone: its config written, "reloads" only recorded
        lb.procs, lb.port = cluster.procs, free_port()
        lb.write_yml(vars={"bind": f"127.0.0.1:{lb.port}", "socket": str(lb.dir / "admin.sock")})
    lb.start_agent(name, join=join)
    cluster.lbs[name] = lb
    return lb


def events_seen(lb: Site, labels: str) -> float:
    """How many events of a type this load balancer's serf-handle has run for (from its metrics)."""
    if lb.metrics is None or not lb.metrics.exists():
        return 0.0
    prefix = f"serf_handlers_events_total{labels} "
    return next((float(line[len(prefix):]) for line in lb.metrics.read_text().splitlines()
                 if line.startswith(prefix)), 0.0)


def normalised(lb: Site) -> str:
    """Its haproxy.cfg without what is this load balancer's alone: its directory, its listen address."""
    return lb.config.read_text().replace(str(lb.dir), "<DIR>").replace(f"127.0.0.1:{lb.port}", "<BIND>")


def weight(lb: Site, port: int) -> str | None:
    """The weight on the server line of the server at 127.0.0.1:port in its haproxy.cfg."""
    for line in lb.server_lines():
        words = line.split()
        if f"127.0.0.1:{port}" in words and "weight" in words:
            return words[words.index("weight") + 1]
    return None


def lines_of(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """cluster-check's output: node -> the rest of its line (the summary line is under "")."""
    out = done.stdout.splitlines()
    rows = {line.split()[0]: line.split(None, 1)[1] for line in out[:-1]}
    return {**rows, "": out[-1] if out else ""}


@contextmanager
def missing_events(lb: Site, labels: str) -> Iterator[None]:
    """While this runs, `lb`'s serf-handle ignores member events (it answers queries only);
    it returns once one event of `labels` has reached it, and was ignored."""
    before = events_seen(lb, labels)
    lb.write_yml(events=["query:backends"])
    yield
    wait_until(lambda: events_seen(lb, labels) > before, timeout=20, what=f"{lb.dir.name} to ignore the event")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require("serf", "haproxy", "nginx")
    procs = Processes(tmp_path_factory.mktemp("cc"))  # short: HAProxy's admin socket paths
    try:
        c = Cluster(procs, empty_config=procs.workdir / "empty.yml")
        c.empty_config.write_text("handlers: []\n")
        yield c
    finally:
        procs.stop_all(together=True)


def test_different_histories_render_identical_configs(cluster: Cluster) -> None:
    lb1 = start_lb(cluster, "lb1")
    # History only lb1 has: a node that comes and goes before the others exist.
    gone = cluster.add_web("web0")
    wait_until(lambda: "web0" in lb1.servers(), timeout=20, what="lb1 serving web0")
    gone.leave()
    cluster.add_web("web1")
    cluster.add_web("web2", weight="3")
    wait_until(lambda: lb1.servers() == {"web1", "web2"}, timeout=20, what="lb1 serving web1, web2")
    # Late joiners: each learns everything in one join event.
    lb2 = start_lb(cluster, "lb2")
    lb3 = start_lb(cluster, "lb3", haproxy=False)
    for lb in (lb2, lb3):
        wait_until(lambda lb=lb: lb.servers() == {"web1", "web2"}, timeout=20, what=f"{lb.dir.name} caught up")
    # Every agent knows the late joiners before the next node joins: otherwise no one may
    # gossip that join to lb3 until a push/pull sync, 30 s later (seen once in CI).
    everyone = {"lb1", "lb2", "lb3", "web1", "web2"}
    for agent in (lb1.agent, lb2.agent, lb3.agent, cluster.webs["web1"], cluster.webs["web2"]):
        assert agent is not None
        wait_until(cluster_sees(agent, everyone), timeout=20, what="every agent seeing the whole cluster")
    # lb2 misses web3's join.
    with missing_events(lb2, JOINS):
        cluster.add_web("web3")
    wait_until(lambda: "web3" in lb1.servers() and "web3" in lb3.servers(), timeout=20, what="web3 on lb1, lb3")
    assert "web3" not in lb2.servers()
    drift = cluster.check()
    assert drift.returncode == 1, drift.stdout + drift.stderr
    assert lines_of(drift)["lb2"].endswith("DIFFERS") and "lb2 differ(s) from the majority" in drift.stdout
    lb2.write_yml(events=None)
    lb2.must("reconcile", "--rpc-addr", lb2.agent.rpc)
    assert lb2.servers() == lb1.servers() == lb3.servers() == {"web1", "web2", "web3"}
    configs = {name: normalised(lb) for name, lb in cluster.lbs.items()}
    assert configs["lb1"] == configs["lb2"] == configs["lb3"], configs
    assert all(f"127.0.0.1:{cluster.ports[w]}" in configs["lb1"] for w in ("web1", "web2", "web3"))
    for lb in (lb1, lb2):  # and both HAProxies serve them
        wait_until(lambda lb=lb: {"body-web1", "body-web2", "body-web3"} <= bodies(lb), timeout=10,
                   what=f"{lb.dir.name}'s HAProxy serving all three")
    # Each server has the same HAProxy id on both (added live, at different times, in
    # different orders), derived from its node, and keeps it over a reload.
    stable = {w: str(node_id(w)) for w in ("web1", "web2", "web3")}
    assert live_ids(lb1) == live_ids(lb2) == stable
    worker = admin(lb2.admin_socket, "show info").split("\nPid: ")[1].split()[0]
    os.kill(int(lb2.pidfile.read_text().split()[0]), signal.SIGUSR2)
    wait_until(lambda: f"\nPid: {worker}\n" not in admin(lb2.admin_socket, "show info"), timeout=10,
               what="lb2's new worker")
    assert live_ids(lb2) == stable


def live_ids(lb: Site) -> dict[str, str]:
    return {row["srv_name"]: row["srv_id"] for row in server_rows(lb.admin_socket, "web")}


def test_cluster_check_on_a_web_node_lists_every_load_balancer_and_exits_0(cluster: Cluster) -> None:
    done = cluster.check()
    assert done.returncode == 0, done.stdout + done.stderr
    rows = lines_of(done)
    assert set(rows) == {"lb1", "lb2", "lb3", ""}
    assert len({rows[name].split()[0] for name in ("lb1", "lb2", "lb3")}) == 1  # one digest=
    assert all(rows[name].endswith("servers=3 backends=1 kept_failed=0") for name in ("lb1", "lb2", "lb3"))
    assert rows[""].startswith("OK: 3 load balancer(s) (role=lb) serve the same 3 server(s)")
    # On a load balancer, with its own handler config, the answer is the same.
    lb1 = cluster.lbs["lb1"]
    own = subprocess.run([SERF_HANDLE, "cluster-check", "--config", str(lb1.yml), "--rpc-addr", lb1.agent.rpc],
                         capture_output=True, text=True, timeout=60, check=False)
    assert own.returncode == 0 and own.stdout == done.stdout, own.stdout + own.stderr


def test_a_load_balancer_that_stops_handling_events_is_named(cluster: Cluster) -> None:
    lb1 = cluster.lbs["lb1"]
    before = lines_of(cluster.check())["lb1"]
    with missing_events(lb1, UPDATES):
        cluster.webs["web1"].serf("tags", "-set", "weight=7")
    wait_until(lambda: all(weight(cluster.lbs[n], cluster.ports["web1"]) == "7" for n in ("lb2", "lb3")),
               timeout=20, what="the new weight on lb2, lb3")
    assert weight(lb1, cluster.ports["web1"]) == "1"
    started = time.monotonic()
    done = cluster.check()
    assert done.returncode == 1, done.stdout + done.stderr
    rows = lines_of(done)
    assert rows["lb1"] == f"{before}  DIFFERS"
    assert not rows["lb2"].endswith("DIFFERS") and not rows["lb3"].endswith("DIFFERS")
    assert rows[""].startswith("DISAGREE: 3 load balancer(s) (role=lb): lb1 differ(s) from the majority (")
    assert rows[""].endswith(" on lb2, lb3)")
    assert time.monotonic() - started < 30
    # Repaired: the handler back, and a reconcile.
    lb1.write_yml(events=None)
    lb1.must("reconcile", "--rpc-addr", lb1.agent.rpc)
    again = cluster.check()
    assert again.returncode == 0, again.stdout + again.stderr
    assert normalised(lb1) == normalised(cluster.lbs["lb2"]) == normalised(cluster.lbs["lb3"])


def test_a_load_balancer_without_the_handler_is_listed_as_no_answer(cluster: Cluster) -> None:
    mute = Agent(cluster.procs, "lb4", {"role": "lb"}, join=cluster.lbs["lb1"].agent)
    web1 = cluster.webs["web1"]
    wait_until(lambda: "lb4" in web1.alive_names(), timeout=15, what="web1 to see lb4")
    started = time.monotonic()
    done = cluster.check()
    took = time.monotonic() - started
    assert done.returncode == 1, done.stdout + done.stderr
    rows = lines_of(done)
    assert rows["lb4"] == "no answer (acked, but no reply in time: no handler, or it failed or was busy)"
    assert all("digest=" in rows[name] and "DIFFERS" not in rows[name] for name in ("lb1", "lb2", "lb3"))
    assert rows[""] == "DISAGREE: 4 load balancer(s) (role=lb): lb4: no valid answer"
    # It asked lb4 twice (all, then the silent ones by name) and waited no longer.
    assert 2 * float(TIMEOUT) - 0.5 < took < 2 * float(TIMEOUT) + 10
    mute.leave()
