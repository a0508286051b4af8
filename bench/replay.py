"""Section 8: replayed events of 200, 1,000 and 5,000 members against a real HAProxy.

No Serf: each event is fed to the real `serf-handle` exactly as Serf would (SERF_EVENT
and the other variables, one member line per member on stdin), one process per event, as
section 2 does; but here HAProxy runs, in runtime-API mode (master-worker, admin socket:
`BenchSite(..., mode="runtime")`), so every change really goes through its runtime API.
Every member is a real server: the N members point, in turn, at PORTS local nginx ports
(several servers share an address; HAProxy does not mind), so health checks succeed and
requests through HAProxy really reach them.

Per size N, ROUNDS rounds of:
- storm: one member-join of all N into an empty backend (wall time of the run, and its
  CPU: getrusage(RUSAGE_CHILDREN) around it, `haproxy -c` included, divided by N);
- then, under a light load (support/load.py: one request per fresh connection, RATE a
  second), counting failed requests: a mass leave of half the members, the same half
  joining again (a storm of N/2 into a busy backend), and SMALL_EVENTS small events (a
  join of 1 to 10 extra members, then their leave), each timed on its own;
- back to empty (a member-leave of everyone, untimed).
Each timed event is checked against HAProxy's live `show servers state` (read with a
generous timeout: at 5,000 servers HAProxy is slow to answer it). Then ROUNDS times each:
- fresh reconcile: state file deleted, HAProxy empty, `serf-handle reconcile` against a
  fake `serf` listing the N members (`Site.fake_serf`): must add all N;
- restart reconcile: state file deleted again, HAProxy already has the N: must change nothing.
Once per size, with all N servers and no traffic: the CPU of HAProxy's worker (its health
checks) and of nginx (answering them) over CPU_SECONDS, from /proc/<pid>/stat; and, as a
breakdown of the handler's time, `show servers state` and `haproxy -c` of the N-server
config timed alone. Reloads come from the site's reload counter: a change of more than
`reload_above` (250) servers is a reload by design (it costs less; each round also times
the storm through the runtime API only, to show by how much); the small events must cause
none (target 0).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from serf_handlers.handlers.haproxy._live import ADMIN_MAINT, rows
from serf_handlers.handlers.haproxy._runtime import Client, Unavailable
from serf_handlers.handlers.haproxy._servers import check_interval
from support.load import Load
from support.processes import Processes, children, free_port
from support.site import member_line

from .procs import processes, start_web
from .site import BenchSite

SIZES = (200, 1000, 5000)
SMALL_SIZES = (100, 500)  # `python -m bench --small`: for developing on a shared machine
ROUNDS = 3
PORTS = 4  # nginx ports the members point at, in turn
RATE = 50.0  # requests a second through HAProxy during the leave, the re-join and the small events
SMALL_EVENTS = (1, 2, 5, 10, 1, 3)  # members per small event: each joins, then leaves
CPU_SECONDS = 10.0
SETTLE = 3.0  # seconds after the storm before HAProxy's CPU is read (first checks spread out)
ADMIN_TIMEOUT = 60.0  # `show servers state` of 5,000 servers is slow
EVENT_TIMEOUT = 300.0
RUNTIME_ONLY = 1_000_000  # `reload_above` that no change reaches
EXPECT_SECONDS = 30.0  # for HAProxy's live state to show a change (at once, unless it reloaded)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- HAProxy's live state and CPU, read generously ------------------------------------------


def live_rows(socket: Path, backend: str = "web", timeout: float = ADMIN_TIMEOUT) -> list[dict[str, str]]:
    """`show servers state BACKEND`, one dict per server; raises `Unavailable` on no answer."""
    return [row for _line, row in rows(Client(str(socket), timeout)(f"show servers state {backend}"))[1]]


def live_names(socket: Path, backend: str = "web") -> tuple[set[str], set[str]]:
    """(the servers HAProxy has in rotation, those it keeps in maintenance): a removed server
    with connections still open stays in maintenance until a later run deletes it."""
    serving: set[str] = set()
    maint: set[str] = set()
    for row in live_rows(socket, backend):
        (maint if int(row["srv_admin_state"]) & ADMIN_MAINT else serving).add(row["srv_name"])
    return serving, maint


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of these processes, in seconds (0 for one that has gone)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
        except (OSError, IndexError, ValueError):
            continue
    return total / CLK_TCK


def cpu_percent(groups: dict[str, Callable[[], list[int]]], seconds: float) -> dict[str, float]:
    """% of one core each group of processes used over `seconds` (wall)."""
    pids = {name: find() for name, find in groups.items()}
    before = {name: cpu_seconds(p) for name, p in pids.items()}
    start = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - start
    return {name: (cpu_seconds(p) - before[name]) / wall * 100 for name, p in pids.items()}


def haproxy_workers(site: BenchSite) -> list[int]:
    return children(int(site.pidfile.read_text().split()[0]))


def nginx_pids(procs: Processes) -> list[int]:
    masters = [p.pid for p in procs.started if p.args[0] == "nginx" and p.poll() is None]  # type: ignore[index]
    return masters + [child for pid in masters for child in children(pid)]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- one size ------------------------------------------------------------------------------


class Replay:
    """One load balancer (runtime API) and the member lines of N members."""

    def __init__(self, procs: Processes, venv_bin: Path, workdir: Path, n: int, ports: Sequence[int]) -> None:
        self.n = n
        self.procs = procs
        self.site = BenchSite(procs, venv_bin, workdir / f"replay-{n}", "runtime")
        self.members = [(f"web{i:05d}", "127.0.0.1", {"role": "web", "port": str(ports[i % len(ports)])})
                        for i in range(n)]
        self.names = [name for name, _addr, _tags in self.members]
        self.lines = [member_line(name, addr, **tags) for name, addr, tags in self.members]
        self.deferred = 0  # the most servers left in maintenance after a removal, at any check
        self.extras = [member_line(f"extra{j:03d}", "127.0.0.1", role="web", port=str(ports[j % len(ports)]))
                       for j in range(max(SMALL_EVENTS))]

    def event(self, event: str, lines: Sequence[bytes]) -> float:
        """One `serf-handle` run as Serf starts it; its wall seconds."""
        start = time.perf_counter()
        done = self.site.run(event, b"".join(lines), timeout=EVENT_TIMEOUT)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{event} of {len(lines)} at {self.n:,}: exit {done.returncode}: "
                               f"{done.stderr.decode(errors='replace')[-500:]}")
        return elapsed

    def expect(self, names: Iterable[str], what: str) -> None:
        """HAProxy serves exactly `names` (a deletion deferred while connections were open leaves
        a server in maintenance: not served, so not counted; `deferred` counts them)."""
        wanted = set(names)
        deadline = time.monotonic() + EXPECT_SECONDS
        while True:  # after a reload (the fallback), the new worker takes a moment to answer
            live, maint = live_names(self.site.admin_socket)
            if live == wanted or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.deferred = max(self.deferred, len(maint - wanted))
        if live != wanted:
            raise RuntimeError(f"{what} at {self.n:,}: HAProxy has {len(live)} servers, expected {len(wanted)} "
                               f"({len(live - wanted)} extra, {len(wanted - live)} missing)")

    def reconcile(self) -> float:
        self.site.fake_serf(self.members)
        start = time.perf_counter()
        done = self.site.run(None, args=["reconcile"], timeout=EVENT_TIMEOUT)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"reconcile at {self.n:,}: exit {done.returncode}: "
                               f"{done.stderr.decode(errors='replace')[-500:]}")
        return elapsed

    def log_counts(self) -> tuple[int, list[str]]:
        """(runs that changed HAProxy through the runtime API, the distinct warnings and errors)."""
        lines = self.site.log_lines()
        worries = sorted({line.split(" ", 3)[-1][:160] for line in lines if " WARNING " in line or " ERROR " in line})
        return sum(1 for line in lines if "servers changed through the runtime API" in line), worries


def _one_size(replay: Replay, rounds: int, cpu_window: float) -> dict[str, object]:
    n, half = replay.n, replay.n // 2
    site = replay.site
    reloads_before = site.reload_count()
    times: dict[str, list[float]] = {"storm": [], "storm_runtime": [], "leave": [], "rejoin": [], "small": [],
                                     "fresh": [], "restart": []}
    cpu_per_member: list[float] = []
    requests = failed = 0
    failures: list[str] = []
    cpu: dict[str, float] = {}
    breakdown: dict[str, float] = {}
    kept = replay.names[:n - half]
    small_reloads = 0  # reloads during the small events: the runtime API's job (target 0)
    for number in range(rounds):
        cpu0 = children_cpu()
        times["storm"].append(replay.event("member-join", replay.lines))
        cpu_per_member.append((children_cpu() - cpu0) / n)
        replay.expect(replay.names, "storm")
        if number == 0:
            time.sleep(SETTLE)
            cpu = cpu_percent({"haproxy": lambda: haproxy_workers(site), "nginx": lambda: nginx_pids(replay.procs)},
                              cpu_window)
            breakdown = _breakdown(replay)
        with Load(site.port, rate=RATE, seconds=EVENT_TIMEOUT) as load:
            time.sleep(0.5)
            times["leave"].append(replay.event("member-leave", replay.lines[n - half:]))
            replay.expect(kept, "mass leave")
            times["rejoin"].append(replay.event("member-join", replay.lines[n - half:]))
            replay.expect(replay.names, "re-join")
            small_before = site.reload_count()
            for k in SMALL_EVENTS:
                extra = replay.extras[:k]
                times["small"].append(replay.event("member-join", extra))
                times["small"].append(replay.event("member-leave", extra))
            replay.expect(replay.names, "small events")
            small_reloads += site.reload_count() - small_before
            time.sleep(0.5)
        requests += load.requests
        failed += len(load.failures)
        failures += [what for _t, what in load.failures[:3]]
        replay.event("member-leave", replay.lines)
        replay.expect((), "back to empty")
        # The same storm through the runtime API only (no reload above `reload_above`): what
        # the reload saves.
        site.write_yml(reload_above=RUNTIME_ONLY)
        times["storm_runtime"].append(replay.event("member-join", replay.lines))
        replay.expect(replay.names, "storm through the runtime API")
        replay.event("member-leave", replay.lines)
        replay.expect((), "back to empty")
        site.write_yml(reload_above=None)  # the default again
    for _ in range(rounds):
        site.state.unlink(missing_ok=True)
        times["fresh"].append(replay.reconcile())
        replay.expect(replay.names, "fresh reconcile")
        site.state.unlink()
        times["restart"].append(replay.reconcile())
        replay.expect(replay.names, "restart reconcile")
        replay.event("member-leave", replay.lines)
        replay.expect((), "back to empty")
    changes, worries = replay.log_counts()
    return {
        "times": times,
        "cpu_per_member_us": statistics.median(cpu_per_member) * 1e6,
        "requests": requests,
        "failed": failed,
        "failures": failures[:5],
        "reloads": site.reload_count() - reloads_before,
        "small_reloads": small_reloads,
        "deferred": replay.deferred,
        "runtime_changes": changes,
        "worries": worries,
        "cpu": cpu,
        "check_inter_ms": check_interval(n),  # the handler's default for N servers
        "breakdown": breakdown,
    }


def _breakdown(replay: Replay) -> dict[str, float]:
    """`show servers state` and `haproxy -c` of the N-server config, each alone: median of 3, seconds."""
    show, check = [], []
    for _ in range(3):
        start = time.perf_counter()
        live_rows(replay.site.admin_socket)
        show.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run(["haproxy", "-c", "-q", "-f", str(replay.site.config)], check=True, timeout=120,
                       capture_output=True)
        check.append(time.perf_counter() - start)
    return {"show_servers_state": statistics.median(show), "haproxy_c": statistics.median(check)}


def run(venv_bin: Path, workdir: Path, rounds: int = ROUNDS, sizes: Sequence[int] = SIZES,
        cpu_window: float = CPU_SECONDS) -> dict[str, object]:
    per_size: dict[int, dict[str, object]] = {}
    with processes(workdir) as procs:
        ports = [free_port() for _ in range(PORTS)]
        for i, port in enumerate(ports):
            start_web(procs, f"web-port-{i + 1}", port)
        for n in sizes:
            replay = Replay(procs, venv_bin, workdir, n, ports)
            try:
                per_size[n] = _one_size(replay, rounds, cpu_window)
            except Unavailable as exc:
                raise RuntimeError(f"HAProxy's admin socket did not answer at {n:,} servers: {exc}") from exc
            finally:
                _stop_haproxy(procs, replay.site)
            print(f"bench: replay {n:,} done", flush=True)
    return {"sizes": list(sizes), "rounds": rounds, "ports": PORTS, "rate": RATE, "small_events": SMALL_EVENTS,
            "cpu_seconds": cpu_window, "per_size": per_size}


def _stop_haproxy(procs: Processes, site: BenchSite) -> None:
    """This size's HAProxy, by PID, so the next size's health checks are measured alone."""
    for proc in procs.started:
        if proc.args[0] == "haproxy" and str(site.config) in proc.args:  # type: ignore[index,operator]
            procs.stop(proc)
