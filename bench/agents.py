"""Section 7: 50, 100 and 200 real serf agents on loopback, one load balancer.

Each web node is a real `serf agent` (role=web, its own port tag) on loopback; one nginx
answers on all their ports (one `listen` each, answering its port number), so every web
node is a real, healthy server. The load balancer is HAProxy in runtime-API mode
(master-worker, admin socket: `BenchSite(..., mode="runtime")`) and a serf agent `lb`
running `serf-handle`, with timestamp probes (bench/probe.py): `serf` when Serf delivered an
event, `start`/`end` around the haproxy handler inside serf-handle. Serf's default (LAN)
timing profile; every web agent is started with `-retry-join` to `lb` (so a join refused
under load is retried, not fatal). Per size N, a fresh cluster:
- start: all N agents started back to back; the time from the last start until HAProxy's
  live state (`show servers state`) has all N UP (srv_op_state 2);
- mass leave: half the agents leave gracefully at once (SIGINT) under a light load
  (support/load.py: RATE requests a second, each on a fresh connection): the time until
  HAProxy has exactly the other half, and the failed requests (target 0);
- churn: CHURN_RATE changes a second for CHURN_SECONDS (a random alive agent leaves, or a
  left one rejoins under the same name and port), under the same light load: for each
  change, the lag until Serf delivered it and until the haproxy handler had handled it;
- reconcile: `serf-handle reconcile` against the `lb` agent's RPC, timed, then checked:
  HAProxy's live servers must equal the alive web members (`serf members`).
Throughout: the haproxy handler's time per event (probes), the load average
(os.getloadavg), reloads (the site's counter; target 0), and Serf's own warnings in every
agent's log (queue depth, dropped messages, failed probes and suspicions, "Shutdown
without a Leave"): where Serf itself saturates on this machine. nginx keeps answering on a
departed node's port, so a failed request is the load balancer's doing, not a dead backend.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from support.load import Load
from support.processes import Agent, Processes, connects, free_port, nginx_conf, wait_until

from .procs import processes
from .replay import live_names, live_rows
from .site import BenchSite

SIZES = (50, 100, 200)
SMALL_SIZES = (10, 20)  # `python -m bench --small`: for developing on a shared machine
RATE = 50.0  # requests a second through HAProxy during the mass leave and the churn
CHURN_RATE = 5.0  # membership changes a second
CHURN_SECONDS = 20
UP_TIMEOUT = 120.0  # seconds for all N to be UP in HAProxy, from the last start
SETTLE_TIMEOUT = 60.0  # seconds for HAProxy to follow a mass leave, or the end of the churn
# What in a serf agent's log says Serf itself is struggling (WARN and ERR lines), by kind.
# The first pattern that matches names the kind.
SERF_TROUBLE = {
    "queue depth / dropped messages": re.compile(r"queue depth|dropping messages|Queue overflow|queue full", re.I),
    "Shutdown without a Leave": re.compile(r"Shutdown without a Leave"),
    "was suspected (refuted a suspect message)": re.compile(r"Refuting a suspect", re.I),
    "rejoined under its old name (refuted a dead message)": re.compile(r"Refuting a dead", re.I),
    "failed probes, suspicions raised": re.compile(r"Suspect|no acks received|Failed fallback ping|probe", re.I),
    "slow event handler (over 1 s)": re.compile(r"slow|exceed", re.I),
    "agent quit after Serf shut down": re.compile(r"Serf shutdown detected"),
    "join / push-pull failure": re.compile(r"join|push/pull|Failed to join", re.I),
}


# --- the probes: Serf's delivery and the haproxy handler's run, per event -------------------


def read_probes(path: Path) -> list[tuple[str, str, float, set[str]]]:
    """(label, event, time.time(), node names) per probe line, in file order."""
    found = []
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 3:
                found.append((parts[0], parts[1], float(parts[2]), set(parts[3:])))
    return found


def handler_runs(probes: Sequence[tuple[str, str, float, set[str]]], since: float = 0.0,
                 until: float = float("inf")) -> list[tuple[float, int]]:
    """(seconds in the haproxy handler, members) per event, `start` to the next `end`
    (serf-handle runs one event at a time), for events that started in [since, until)."""
    runs, start = [], None
    for label, _event, stamp, names in probes:
        if label == "start":
            start = (stamp, len(names))
        elif label == "end" and start is not None:
            if since <= start[0] < until:
                runs.append((stamp - start[0], start[1]))
            start = None
    return runs


def first_probe(probes: Sequence[tuple[str, str, float, set[str]]], label: str, events: set[str],
                name: str, after: float) -> float | None:
    return next((stamp for lab, event, stamp, names in probes
                 if lab == label and event in events and stamp >= after and name in names), None)


# --- nginx on many ports, Serf's logs --------------------------------------------------------


def start_nginx_ports(procs: Processes, ports: Sequence[int]) -> subprocess.Popen[bytes]:
    """One nginx (one worker) listening on every port of `ports` (127.0.0.1), answering each
    request with its port number."""
    root = procs.workdir / "nginx-agents"
    root.mkdir()
    listens = "".join(f"        listen 127.0.0.1:{port};\n" for port in ports)
    conf = root / "nginx.conf"
    answer = '        location / { default_type text/plain; return 200 "$server_port\\n"; }\n'
    conf.write_text(nginx_conf(root, listens + answer, worker_connections=4096, keepalive_requests=1000000))
    proc = procs.start("nginx-agents", ["nginx", "-p", str(root), "-c", str(conf)])
    wait_until(lambda: all(connects(p) for p in ports), timeout=20, what="nginx on every web port")
    return proc


def serf_trouble(workdir: Path) -> tuple[dict[str, int], dict[str, int], list[str]]:
    """From every serf agent's log: (WARN/ERR lines by kind, agents with each kind, a few examples)."""
    lines: Counter[str] = Counter()
    agents: Counter[str] = Counter()
    examples: list[str] = []
    for log in sorted(workdir.glob("serf-*.log")):
        kinds = set()
        for line in log.read_text(errors="replace").splitlines():
            if "[WARN]" not in line and "[ERR]" not in line:
                continue
            kind = next((k for k, pattern in SERF_TROUBLE.items() if pattern.search(line)), "other")
            lines[kind] += 1
            kinds.add(kind)
            if len(examples) < 6 and kind not in {e.split(":", 1)[0] for e in examples}:
                text = re.sub(r"(/[^\s/']+)+/", "", line.split("] ", 1)[-1])  # paths: file names only
                examples.append(f"{kind}: {log.stem}: {text[:140]}")
        agents.update(kinds)
    return dict(lines), dict(agents), examples


# --- one size ------------------------------------------------------------------------------


class WebAgent:
    """A web node's serf agent, started again (a rejoin) on the same gossip and RPC ports: a
    node that came back under its old name from another address would be a name conflict
    for Serf (which shuts one of the two down), not a rejoin."""

    def __init__(self, procs: Processes, name: str, port: int, lb_bind: int) -> None:
        self.procs = procs
        self.name = name
        self.bind, self.rpc = free_port(), free_port()
        self.argv = ["serf", "agent", "-node", name, "-bind", f"127.0.0.1:{self.bind}",
                     "-rpc-addr", f"127.0.0.1:{self.rpc}", "-log-level", "info",
                     "-tag", "role=web", "-tag", f"port={port}",
                     # retried (every second), not fatal, when the load balancer is slow to answer
                     "-retry-join", f"127.0.0.1:{lb_bind}", "-retry-interval", "1s"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.leaving = False

    def start(self) -> None:
        self.leaving = False
        self.proc = self.procs.start(f"serf-{self.name}", self.argv)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def leave(self) -> None:
        """Graceful (SIGINT): the others see member-leave. Does not wait."""
        self.leaving = True
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGINT)

    def reap(self, timeout: float = 15.0) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass


class Cluster:
    """N web agents and the load balancer, all in one `Processes` group."""

    def __init__(self, procs: Processes, venv_bin: Path, workdir: Path, n: int) -> None:
        self.procs = procs
        self.n = n
        self.ports: list[int] = []
        while len(self.ports) < n:  # free_port may hand out a port it gave before (it is free again)
            port = free_port()
            if port not in self.ports:
                self.ports.append(port)
        start_nginx_ports(procs, self.ports)
        self.lb = BenchSite(procs, venv_bin, workdir / "lb", "runtime", probes=True)
        self.lb_agent = self.lb.start_agent()
        self.names = [f"web{i:03d}" for i in range(n)]
        self.agents: dict[str, WebAgent] = {}

    def start(self, i: int) -> None:
        name = self.names[i]
        if name not in self.agents:
            self.agents[name] = WebAgent(self.procs, name, self.ports[i], self.lb_agent.bind)
        self.agents[name].start()

    def running(self, name: str) -> bool:
        agent = self.agents.get(name)
        return agent is not None and agent.running() and not agent.leaving

    def gone(self, name: str) -> bool:
        agent = self.agents.get(name)
        return agent is None or not agent.running()

    def up(self) -> set[str]:
        """Web servers HAProxy runs and finds UP now."""
        return {row["srv_name"] for row in live_rows(self.lb.admin_socket) if row["srv_op_state"] == "2"}

    def live(self) -> set[str]:
        """Web servers HAProxy has in rotation (a deletion deferred while connections were open
        leaves a server in maintenance until a later run deletes it)."""
        return live_names(self.lb.admin_socket)[0]

    def probes(self) -> list[tuple[str, str, float, set[str]]]:
        return read_probes(self.lb.probe_file)


def _one_size(cluster: Cluster, churn_seconds: float) -> dict[str, object]:
    n, lb = cluster.n, cluster.lb
    everyone = set(cluster.names)
    figures: dict[str, object] = {"n": n}

    # start: all N, back to back
    t_first = time.time()
    for i in range(n):
        cluster.start(i)
    t_last = time.time()
    figures["start_spread"] = t_last - t_first
    try:
        wait_until(lambda: cluster.up() >= everyone, timeout=UP_TIMEOUT, interval=0.1, what=f"{n} UP")
        figures["all_up"] = time.time() - t_last
    except AssertionError:
        figures["all_up"] = None
    figures["up_count"] = len(cluster.up() & everyone)
    figures["died_at_start"] = sorted(name for name in cluster.names if cluster.gone(name))
    figures["load_after_start"] = os.getloadavg()[0]
    time.sleep(1.0)  # the last handler runs
    figures["start_runs"] = handler_runs(cluster.probes(), since=t_first)

    # mass leave of half, under a light load
    rng = random.Random(n)
    alive = [name for name in cluster.names if cluster.running(name)]
    leaving = sorted(rng.sample(alive, len(alive) // 2))
    kept = set(alive) - set(leaving)
    with Load(lb.port, rate=RATE, seconds=SETTLE_TIMEOUT + 30) as load:
        time.sleep(1.0)
        t0 = time.time()
        for name in leaving:
            cluster.agents[name].leave()
        try:
            wait_until(lambda: cluster.live() == kept, timeout=SETTLE_TIMEOUT, interval=0.05, what="half left")
            figures["leave_live"] = time.time() - t0
        except AssertionError:
            figures["leave_live"] = None
        time.sleep(1.0)
    figures["leave"] = {"count": len(leaving), "requests": load.requests, "failed": len(load.failures),
                        "failures": [what for _t, what in load.failures[:3]]}
    deadline = time.monotonic() + 20
    for name in leaving:
        cluster.agents[name].reap(max(0.1, deadline - time.monotonic()))
    probes = cluster.probes()
    figures["leave_runs"] = handler_runs(probes, since=t0)
    # When `lb` got the leaves: (seconds after the SIGINTs, members) per delivered event.
    figures["leave_delivered"] = [(stamp - t0, len(names)) for label, event, stamp, names in probes
                                  if label == "serf" and stamp >= t0 and event in ("member-leave", "member-failed")]
    figures["load_after_leave"] = os.getloadavg()[0]

    # churn: CHURN_RATE changes a second, leaves and rejoins alternating
    changes: list[tuple[float, str, str]] = []
    steps = int(churn_seconds * CHURN_RATE)
    with Load(lb.port, rate=RATE, seconds=churn_seconds + SETTLE_TIMEOUT + 30) as churn_load:
        t_churn = time.time()
        for step in range(steps):
            delay = t_churn + step / CHURN_RATE - time.time()
            if delay > 0:
                time.sleep(delay)
            up_now = [name for name in cluster.names if cluster.running(name)]
            gone = [name for name in cluster.names if cluster.gone(name)]
            if (step % 2 == 1 and gone) or len(up_now) <= 1:
                name = rng.choice(gone)
                changes.append((time.time(), "join", name))
                cluster.start(cluster.names.index(name))
            else:
                name = rng.choice(up_now)
                changes.append((time.time(), "leave", name))
                cluster.agents[name].leave()
        t_end = time.time()
        alive_now = {name for name in cluster.names if cluster.running(name)}
        try:
            wait_until(lambda: cluster.up() == alive_now == cluster.live(), timeout=SETTLE_TIMEOUT, interval=0.1,
                       what="converged after churn")
            figures["churn_settled"] = time.time() - t_end
        except AssertionError:
            figures["churn_settled"] = None
    figures["churn"] = {"changes": len(changes), "seconds": t_end - t_churn, "requests": churn_load.requests,
                        "failed": len(churn_load.failures),
                        "failures": [what for _t, what in churn_load.failures[:3]]}
    figures["load_after_churn"] = os.getloadavg()[0]
    probes = cluster.probes()
    lags: dict[str, list[float]] = {"delivered": [], "handled": []}
    missed = superseded = 0
    for number, (stamp, action, name) in enumerate(changes):
        events = {"member-join"} if action == "join" else {"member-leave", "member-failed"}
        # Up to the same node's next change of the same kind: Serf's coalescer keeps only the
        # latest event of a node, so a join followed soon by its leave may never be delivered.
        until = next((t for t, a, nm in changes[number + 1:] if nm == name and a == action), float("inf"))
        delivered = first_probe(probes, "serf", events, name, stamp)
        handled = first_probe(probes, "end", events, name, stamp)
        if handled is None or delivered is None or handled >= until:
            # Superseded: the node changed again before Serf delivered this change (Serf
            # delivers only a node's latest state); else the change was never handled.
            following = next((t for t, _a, nm in changes[number + 1:] if nm == name), None)
            if following is not None and (delivered is None or delivered >= following):
                superseded += 1
            else:
                missed += 1
            continue
        lags["delivered"].append(delivered - stamp)
        lags["handled"].append(handled - stamp)
    figures["lags"] = lags
    figures["lag_missed"] = missed
    figures["lag_superseded"] = superseded
    figures["churn_runs"] = handler_runs(probes, since=t_churn)

    # reconcile against the real cluster
    start = time.perf_counter()
    done = lb.run(None, args=["reconcile"], env=lb.env(None, SERF_RPC_ADDR=cluster.lb_agent.rpc), timeout=120)
    figures["reconcile_s"] = time.perf_counter() - start
    figures["reconcile_exit"] = done.returncode
    members = cluster.lb_agent.alive_names() - {"lb"}
    live = cluster.live()
    figures["reconcile_correct"] = live == members
    figures["reconcile_diff"] = (len(live - members), len(members - live))
    figures["alive_at_end"] = len(members)

    figures["reloads"] = lb.reload_count()
    figures["handler_errors"] = len(lb.handler_errors())
    figures["deferred_deletions"] = sum(1 for line in lb.log_lines() if "deletion deferred" in line)
    # Members Serf reported failed (not a graceful leave): Serf's own trouble, seen by `lb`.
    figures["failed_members"] = sum(len(names) for label, event, _t, names in probes
                                    if label == "serf" and event == "member-failed")
    # Before the teardown, whose leaves would add their own noise.
    figures["serf_lines"], figures["serf_agents"], figures["serf_examples"] = serf_trouble(cluster.procs.workdir)
    return figures


def _reap(agent: Agent, timeout: float = 15.0) -> None:
    try:
        agent.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass


def run(venv_bin: Path, workdir: Path, sizes: Sequence[int] = SIZES,
        churn_seconds: float = CHURN_SECONDS) -> dict[str, object]:
    per_size: dict[int, dict[str, object]] = {}
    not_measured: dict[int, str] = {}  # a size the machine did not hold: why (larger ones are not tried)
    for n in sizes:
        sizedir = workdir / f"agents-{n}"
        sizedir.mkdir()
        try:
            with processes(sizedir) as procs:
                cluster = Cluster(procs, venv_bin, sizedir, n)
                try:
                    figures = _one_size(cluster, churn_seconds)
                finally:
                    # The load balancer first, so the web agents' leaves run no more handlers.
                    cluster.lb_agent.leave(wait=False)
                    _reap(cluster.lb_agent, 10)
        except (AssertionError, OSError, subprocess.SubprocessError) as exc:
            not_measured[n] = f"{type(exc).__name__}: {exc}"
            print(f"bench: agents {n} not measured: {not_measured[n]}", flush=True)
            break
        per_size[n] = figures
        print(f"bench: agents {n} done", flush=True)
    return {"sizes": list(per_size), "rate": RATE, "churn_rate": CHURN_RATE, "churn_seconds": churn_seconds,
            "per_size": per_size, "not_measured": not_measured}
