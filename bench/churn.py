"""Section 3: failed requests while membership churns, for three ways of applying a change.

One Serf cluster on loopback: 4 web nodes (nginx + serf agent each) and three load
balancers, each a serf agent running `serf-handle` for its own HAProxy:
- runtime: master-worker HAProxy with the admin socket: the runtime API;
- reload: master-worker HAProxy, no socket: rewrite + `kill -USR2 <master>`;
- naive: daemonized HAProxy: rewrite + `haproxy -D -f cfg -p pid -sf $(cat pid)`.
All three see exactly the same membership changes at the same moments, and a bounded
`wrk -t2 -c50 -dNs` runs through each HAProxy at the same time (so the three share the
2 cores: compare failure counts, not request rates). Every second a web node leaves
gracefully (SIGINT to its agent: member-leave) or rejoins (a new agent, same name and
nginx). nginx itself keeps running: only the membership changes.
"""

from __future__ import annotations

import re
import subprocess
import time
from functools import partial
from pathlib import Path

from support.processes import Agent, Processes, free_port, get, wait_until

from .procs import ASSETS, processes, start_web
from .site import MODES, BenchSite

WEBS = 4
RUNS = 3
DURATION = 20
CONNECTIONS = 50
THREADS = 2
# One change a second: two leave, the same two rejoin, then the other two; 2 to 4 alive.
SCHEDULE = [("leave", 0), ("leave", 1), ("join", 0), ("join", 1), ("leave", 2), ("leave", 3), ("join", 2), ("join", 3)]


def run(venv_bin: Path, workdir: Path, runs: int = RUNS, duration: int = DURATION) -> dict[str, object]:
    results: dict[str, list[dict[str, object]]] = {mode: [] for mode in MODES}
    extra: list[dict[str, object]] = []
    with processes(workdir) as nginx:
        ports = [free_port() for _ in range(WEBS)]
        for i, port in enumerate(ports):
            start_web(nginx, f"web{i + 1}", port)
        for number in range(runs):
            one, info = _one_run(venv_bin, workdir / f"run{number + 1}", ports, duration)
            for mode, figures in one.items():
                results[mode].append(figures)
            extra.append(info)
    return {"runs": results, "info": extra, "duration": duration, "connections": CONNECTIONS, "threads": THREADS,
            "webs": WEBS}


def _in_state(lb: BenchSite, names: set[str]) -> bool:
    return lb.state_nodes() == names


def _served(lb: BenchSite, names: set[str]) -> bool:
    """`3 * WEBS` requests through `lb` reach exactly the web nodes `names`."""
    return {get(lb.port)[1] for _ in range(3 * WEBS)} == names


def _one_run(
    venv_bin: Path, workdir: Path, ports: list[int], duration: int
) -> tuple[dict[str, dict[str, object]], dict[str, object]]:
    workdir.mkdir(parents=True)
    procs = Processes(workdir)
    lb_agents: list[Agent] = []
    try:
        lbs = {mode: BenchSite(procs, venv_bin, workdir / mode, mode) for mode in MODES}
        first = None
        for mode, lb in lbs.items():
            agent = lb.start_agent(name=f"lb-{mode}", join=first)
            lb_agents.append(agent)
            first = first or agent
        assert first is not None
        names = [f"web{i + 1}" for i in range(WEBS)]

        def join_web(i: int) -> Agent:
            return Agent(procs, names[i], {"role": "web", "port": str(ports[i])}, join=first, wait=False)

        webs = [join_web(i) for i in range(WEBS)]
        everyone = set(names)
        for mode, lb in lbs.items():
            wait_until(partial(_in_state, lb, everyone), timeout=30, what=f"{mode}: all web nodes in the state")
            wait_until(partial(_served, lb, everyone), timeout=15, what=f"{mode}: every web node served")
        time.sleep(1.5)  # let the last handler runs finish before counting
        before = {mode: (lb.reload_count(), lb.runtime_changes(), len(lb.log_lines())) for mode, lb in lbs.items()}

        wrks = {
            mode: subprocess.Popen(
                ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{duration}s", "--timeout", "2s",
                 "-s", str(ASSETS / "wrk_status.lua"), f"http://127.0.0.1:{lb.port}/"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
            for mode, lb in lbs.items()
        }
        started = time.monotonic()
        changes = []
        try:
            for step in range(1, duration):
                delay = started + step - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                action, i = SCHEDULE[(step - 1) % len(SCHEDULE)]
                if action == "leave":
                    webs[i].leave(wait=False)
                else:
                    try:
                        webs[i].proc.wait(5)  # the old agent has finished leaving
                    except subprocess.TimeoutExpired:
                        pass
                    webs[i] = join_web(i)
                changes.append((round(time.monotonic() - started, 2), action, names[i]))
            outputs = {mode: wrk.communicate(timeout=duration + 30)[0].decode(errors="replace")
                       for mode, wrk in wrks.items()}
        finally:
            for wrk in wrks.values():
                if wrk.poll() is None:
                    wrk.kill()
                    wrk.wait(5)

        for web in webs:  # a node told to leave in the last second is still leaving
            if web.proc.returncode is None and web.proc.poll() is None and web.leaving:
                try:
                    web.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        alive = {names[i] for i, web in enumerate(webs) if web.proc.poll() is None}
        converged = {}
        for mode, lb in lbs.items():
            try:
                wait_until(partial(_in_state, lb, alive), timeout=15, what=f"{mode} converged")
                converged[mode] = True
            except AssertionError:  # wait_until timed out
                converged[mode] = False
        time.sleep(0.5)
        figures: dict[str, dict[str, object]] = {}
        for mode, lb in lbs.items():
            reloads0, changes0, _ = before[mode]
            lines = lb.log_lines()
            haproxy_log = workdir / f"haproxy-{mode}.log"
            haproxy_text = haproxy_log.read_text(errors="replace") if haproxy_log.exists() else ""
            figures[mode] = {
                **parse_wrk(outputs[mode]),
                # Health checks that failed (HAProxy logs them on stderr; not visible for -D).
                "checks_down": len(re.findall(r"Server \S+ is DOWN", haproxy_text)),
                "reloads": lb.reload_count() - reloads0,
                "runtime_changes": lb.runtime_changes() - changes0,
                "deferred_deletions": sum(1 for line in lines if "deletion deferred" in line),
                "handler_errors": len(lb.handler_errors()),
                "converged": converged[mode],
            }
        return figures, {"changes": changes, "alive_at_end": sorted(alive)}
    finally:
        # The load balancers' agents first, so the web nodes' leaves run no more handlers.
        for agent in lb_agents:
            agent.leave(wait=False)
        for agent in lb_agents:
            try:
                agent.proc.wait(10)
            except subprocess.TimeoutExpired:
                agent.proc.kill()
        procs.stop_all(together=True)


_WRK = {
    "requests": re.compile(r"^\s*(\d+) requests in ([\d.]+)(\w+)", re.M),
    "socket": re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"),
    "non2xx": re.compile(r"Non-2xx or 3xx responses: (\d+)"),
    "rps": re.compile(r"Requests/sec:\s+([\d.]+)"),
    "status": re.compile(r"^status (\d+): (\d+)$", re.M),
}


def parse_wrk(text: str) -> dict[str, object]:
    requests = _WRK["requests"].search(text)
    if requests is None:
        raise RuntimeError(f"cannot parse wrk's output: {text[-500:]}")
    sock = _WRK["socket"].search(text)
    connect, read, write, timeout = (int(x) for x in sock.groups()) if sock else (0, 0, 0, 0)
    non2xx = _WRK["non2xx"].search(text)
    rps = _WRK["rps"].search(text)
    return {
        "requests": int(requests[1]),
        "non2xx": int(non2xx[1]) if non2xx else 0,
        "connect": connect,
        "read": read,
        "write": write,
        "timeout": timeout,
        "failed": (int(non2xx[1]) if non2xx else 0) + connect + read + write + timeout,
        "rps": float(rps[1]) if rps else 0.0,
        "statuses": {int(code): int(count) for code, count in _WRK["status"].findall(text)},
    }
