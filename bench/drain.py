"""Section 5: drain, maintenance and back, from a node's own `state` tag, under load.

A load balancer in runtime-API mode (master-worker HAProxy with its admin socket, the `lb`
serf agent running `serf-handle`) and three web nodes (nginx + serf agent each). A bounded
load (`support.load.Load`: RATE requests a second, each on a fresh connection, so each is
balanced on its own) runs through HAProxy the whole time and counts failed requests.
Each round, on web3's own agent: `serf tags -set state=drain`, then `state=maint`, then
`serf tags -delete state` (ready). After each change: the time until HAProxy's live admin
state (`show servers state`) says so, then HOLD seconds counting the requests web3 answers
(after a short grace for requests balanced just before the change). Reloads come from the
site's reload counter.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from support.admin import server_rows
from support.load import Load
from support.processes import Agent, Processes, free_port, get, wait_until

from .procs import processes, start_web
from .site import BenchSite

ROUNDS = 5
RATE = 100.0  # requests a second through HAProxy
HOLD = 1.5  # seconds each state is held while web3's requests are counted
GRACE = 0.2  # seconds after the live change before counting (requests already balanced)
WEBS = ("web1", "web2", "web3")
TARGET = "web3"
# (state, the `serf tags` arguments that ask for it)
STEPS = (("drain", ("-set", "state=drain")), ("maint", ("-set", "state=maint")), ("ready", ("-delete", "state")))
ADMIN_MAINT = 0x23  # HAProxy's admin state bits (`enum srv_admin`): forced, inherited, unresolvable
ADMIN_DRAIN = 0x18  # forced or inherited


def live_state(lb: BenchSite, name: str) -> str:
    """HAProxy's admin state of web/`name` in `set server ... state` words, plus " UP" when
    its health checks pass ("" if HAProxy has no such server)."""
    row = next((r for r in server_rows(lb.admin_socket, "web") if r["srv_name"] == name), None)
    if row is None:
        return ""
    bits = int(row["srv_admin_state"])
    state = "maint" if bits & ADMIN_MAINT else "drain" if bits & ADMIN_DRAIN else "ready"
    return state + (" UP" if row["srv_op_state"] == "2" else "")


def run(venv_bin: Path, workdir: Path, rounds: int = ROUNDS) -> dict[str, object]:
    with processes(workdir) as procs:
        return _run(procs, venv_bin, workdir, rounds)


def _run(procs: Processes, venv_bin: Path, workdir: Path, rounds: int) -> dict[str, object]:
    ports = {name: free_port() for name in WEBS}
    for name, port in ports.items():
        start_web(procs, name, port)
    lb = BenchSite(procs, venv_bin, workdir / "lb", "runtime")
    lb_agent = lb.start_agent()
    agents = {name: Agent(procs, name, {"role": "web", "port": str(port)}, join=lb_agent, log_level="info")
              for name, port in ports.items()}
    wait_until(lambda: lb.live_servers() == set(WEBS), timeout=30, what="web1-web3 in HAProxy")
    wait_until(lambda: {get(lb.port)[1] for _ in range(9)} == set(WEBS), timeout=10, what="all three served")
    reloads_before = lb.reload_count()
    changes_before = lb.runtime_changes()

    seconds: dict[str, list[float]] = {state: [] for state, _ in STEPS}
    got: dict[str, list[int]] = {state: [] for state, _ in STEPS}
    bound = rounds * len(STEPS) * (HOLD + 20) + 30
    with Load(lb.port, rate=RATE, limit=int(bound * RATE), seconds=bound) as load:
        time.sleep(1)
        for _ in range(rounds):
            for state, args in STEPS:
                want = state + " UP" if state == "ready" else state
                started = time.monotonic()
                agents[TARGET].serf("tags", *args)

                def reached(want: str = want) -> bool:
                    return live_state(lb, TARGET).startswith(want)

                wait_until(reached, timeout=20, interval=0.02, what=f"{TARGET} {want} in HAProxy")
                seconds[state].append(time.monotonic() - started)
                time.sleep(GRACE)
                before = load.seen[TARGET]
                time.sleep(HOLD)
                got[state].append(load.seen[TARGET] - before)
        time.sleep(0.5)
    status = lb.run(None, args=["status"])
    return {
        "rounds": rounds,
        "rate": RATE,
        "hold": HOLD,
        "seconds": seconds,
        "got": got,
        "requests": load.requests,
        "failed": len(load.failures),
        "failures": load.failures[:5],
        "reloads": lb.reload_count() - reloads_before,
        "runtime_changes": lb.runtime_changes() - changes_before,
        "handler_errors": len(lb.handler_errors()),
        "status_exit": status.returncode,
        "median": {state: statistics.median(values) * 1000 for state, values in seconds.items()},
        "max": {state: max(values) * 1000 for state, values in seconds.items()},
    }
