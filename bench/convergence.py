"""Section 4: how long until traffic follows membership, against Serf's own delivery time.

A load balancer (runtime-API mode) with two steady web nodes, and a third node, `mover`,
that joins and leaves repeatedly. A poller thread sends back-to-back keep-alive requests
through HAProxy and stamps each `mover` answer with time.time(). Probes timestamp:
- `serf`: a shell -event-handler that Serf runs first: when Serf delivered the event;
- `start` / `end`: `type: probe:start|end` entries around the haproxy handler inside
  the same `serf-handle` process (bench/probe.py).
Join: agent start -> Serf delivery -> first request served by mover through HAProxy.
Leave: SIGINT to mover's agent (a graceful leave) -> Serf delivery -> last request it got.
"Added" is what the handler and HAProxy add after Serf delivered the event.
"""

from __future__ import annotations

import http.client
import statistics
import subprocess
import threading
import time
from functools import partial
from pathlib import Path

from support.processes import Agent, Processes, free_port, get, wait_until

from .procs import processes, start_web
from .site import BenchSite

REPS = 5
MOVER = "mover"


class Poller(threading.Thread):
    """Back-to-back requests through HAProxy; records when `mover` answered."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.hits: list[float] = []
        self.requests = 0
        self.errors = 0

    def run(self) -> None:
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read()
                now = time.time()
                self.requests += 1
                if response.status != 200:
                    self.errors += 1
                elif body.startswith(MOVER.encode()):
                    self.hits.append(now)
                if response.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.001)

    def first_after(self, t: float) -> float | None:
        return next((h for h in self.hits if h > t), None)

    def last_before(self, t: float) -> float | None:
        return max((h for h in self.hits if h <= t), default=None)


def _probe(lb: BenchSite, label: str, event: str, after: float) -> float | None:
    if not lb.probe_file.exists():
        return None
    for line in lb.probe_file.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0] == label and fields[1] == event and MOVER in fields[3:]:
            t = float(fields[2])
            if t > after:
                return t
    return None


def run(venv_bin: Path, workdir: Path, reps: int = REPS) -> dict[str, object]:
    with processes(workdir) as procs:
        return _run(procs, venv_bin, workdir, reps)


def _run(procs: Processes, venv_bin: Path, workdir: Path, reps: int) -> dict[str, object]:
    ports = {name: free_port() for name in ("web1", "web2", MOVER)}
    for name, port in ports.items():
        start_web(procs, name, port)
    lb = BenchSite(procs, venv_bin, workdir / "lb", "runtime", probes=True)
    lb_agent = lb.start_agent()
    for name in ("web1", "web2"):
        Agent(procs, name, {"role": "web", "port": str(ports[name])}, join=lb_agent)
    wait_until(lambda: lb.state_nodes() == {"web1", "web2"}, timeout=30, what="web1 and web2 in the state")
    wait_until(lambda: get(lb.port)[0] == 200, timeout=10, what="served through haproxy")

    poller = Poller(lb.port)
    poller.start()
    joins: list[dict[str, float]] = []
    leaves: list[dict[str, float]] = []
    try:
        for _ in range(reps):
            time.sleep(0.5)
            t0 = time.time()
            mover = Agent(procs, MOVER, {"role": "web", "port": str(ports[MOVER])}, join=lb_agent, wait=False)
            first = wait_until(partial(poller.first_after, t0), timeout=20, interval=0.01, what="mover served")
            end = wait_until(partial(_probe, lb, "end", "member-join", t0), timeout=10, what="join handler done")
            serf = _probe(lb, "serf", "member-join", t0)
            start = _probe(lb, "start", "member-join", t0)
            if first is None or end is None or serf is None or start is None:
                raise RuntimeError(f"join: a probe is missing: {first=} {serf=} {start=} {end=}")
            joins.append({"serf": serf - t0, "start": start - serf, "handler": end - start,
                          "served": first - end, "added": first - serf, "total": first - t0})

            time.sleep(1.0)
            t1 = time.time()
            mover.leave(wait=False)
            end = wait_until(partial(_probe, lb, "end", "member-leave", t1), timeout=20, interval=0.01,
                             what="leave handler done")
            time.sleep(0.5)  # requests in flight when it was removed
            last = poller.last_before(time.time())
            serf = _probe(lb, "serf", "member-leave", t1)
            start = _probe(lb, "start", "member-leave", t1)
            if last is None or end is None or serf is None or start is None:
                raise RuntimeError(f"leave: a probe is missing: {last=} {serf=} {start=} {end=}")
            leaves.append({"serf": serf - t1, "start": start - serf, "handler": end - start,
                           "last": last - serf, "added": max(0.0, last - serf), "total": last - t1})
            try:
                mover.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
    finally:
        poller.stop.set()
        poller.join(5)

    def med(rows: list[dict[str, float]]) -> dict[str, float]:
        return {key: statistics.median(r[key] for r in rows) * 1000 for key in rows[0]}

    def span(rows: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
        return {key: (min(r[key] for r in rows) * 1000, max(r[key] for r in rows) * 1000) for key in rows[0]}

    return {
        "reps": reps,
        "join": med(joins),
        "join_span": span(joins),
        "leave": med(leaves),
        "leave_span": span(leaves),
        "poller_requests": poller.requests,
        "poller_errors": poller.errors,
        "reloads": lb.reload_count(),
        "raw": {"join": joins, "leave": leaves},
    }
