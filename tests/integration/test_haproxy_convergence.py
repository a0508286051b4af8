"""Issue 10: HAProxy's live servers always end equal to the alive Serf members: after a failed
run, a stale server-state file, a bad tag, a reconcile racing an event, drift behind the
handler's back and a truncated state file. (The partition: test_haproxy_partition.py.)

Real serf agents, HAProxy 2.6 in master-worker mode with its admin socket (runtime-API mode)
and nginx on loopback, under a light bounded load (`support.load.Load`). Each test gets a
fresh cluster: a load balancer `lb` and web nodes web1-web3, every process stopped by PID.
What counts is HAProxy's own live state (`show servers state` on the admin socket) and
traffic, never the handler's state file alone.

The load balancer's serf agent runs `serf-handle` through a small recording wrapper, so a
test can see each run Serf started: its event, exit code and stderr (`runs`).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from support.admin import admin, server_rows
from support.load import Load
from support.processes import Agent, Processes, cluster_sees, eventually, free_port, require, start_nginx, wait_until
from support.site import Site, bodies, member_line

pytestmark = pytest.mark.integration

WEBS = ("web1", "web2", "web3")

# Serf runs this with the event's stdin and SERF_* environment: one serf-handle run, recorded.
_RECORD_RUN = """#!/bin/sh
# usage: record-run SERF_HANDLE CONFIG RUNS_LOG
printf 'start %s %s\n' "$SERF_EVENT" "$(date +%s.%N)" >> "$3"
err=$(mktemp)
"$1" --config "$2" 2>"$err"
code=$?
# One append, ended by "end": a reader never takes a run whose stderr is still being written.
record=$(printf 'run %s exit %s\\n' "$SERF_EVENT" "$code"; sed 's/^/  | /' "$err"; printf 'end')
printf '%s\\n' "$record" >> "$3"
cat "$err" >&2
rm -f "$err"
exit "$code"
"""


class Run(NamedTuple):
    event: str
    code: int
    stderr: list[str]


# --- the cluster ---------------------------------------------------------------------------


@pytest.fixture
def procs(short_procs: Processes) -> Processes:
    return short_procs  # see conftest.py


def runs_log(lb: Site) -> Path:
    return lb.dir / "runs.log"


def runs(lb: Site) -> list[Run]:
    """Every serf-handle run the load balancer's agent finished, in order."""
    found: list[Run] = []
    run: Run | None = None
    path = runs_log(lb)
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.startswith("run "):
            _, event, _, code = line.split()
            run = Run(event, int(code), [])
        elif line.startswith("  | ") and run is not None:
            run.stderr.append(line[4:])
        elif line == "end" and run is not None:
            found.append(run)  # complete: its stderr is all there
            run = None
    return found


def idle(lb: Site) -> bool:
    """No run under way: every run started has finished (Serf runs one at a time)."""
    path = runs_log(lb)
    lines = path.read_text().splitlines() if path.exists() else []
    return sum(line.startswith("start ") for line in lines) == sum(line == "end" for line in lines)


def started_at(lb: Site, event: str, after: int = 0) -> float:
    """When Serf started the first run of `event` after the first `after` starts (Unix time)."""

    def found() -> float | None:
        starts = [line.split() for line in runs_log(lb).read_text().splitlines() if line.startswith("start ")]
        return next((float(s[2]) for s in starts[after:] if s[1] == event), None)

    return wait_until(found, timeout=20, what=f"the start of a {event} run")


def mark(lb: Site) -> int:
    """Where the next runs begin, for `next_run` (once the run under way, if any, finished)."""
    wait_until(lambda: idle(lb), timeout=20, what="the run under way")
    return len(runs(lb))


def next_run(lb: Site, after: int, event: str, timeout: float = 20) -> Run:
    """The first run of `event` among the runs after the first `after` ones."""
    return wait_until(
        lambda: next((r for r in runs(lb)[after:] if r.event == event), None), timeout=timeout, what=f"a {event} run"
    )


def start_lb(
    procs: Processes, webs: tuple[str, ...] = WEBS, handler: bool = True, serve_vars: dict[str, Any] | None = None,
    **options: Any,
) -> Site:
    """HAProxy (runtime-API mode, JSON log to handler.jsonl), the `lb` serf agent and `webs`,
    all served. With `handler=False` the agent runs no event handler: the servers come from
    one `serf-handle reconcile`, and nothing but the test changes them afterwards.
    `serve_vars`: more template variables."""
    require("serf", "haproxy", "nginx")
    lb = Site(procs.workdir, log={"level": "info", "format": "json", "file": str(procs.workdir / "handler.jsonl")},
              **options)
    lb.serve(procs, "runtime", serve_vars)
    wrapper = lb.dir / "record-run"
    wrapper.write_text(_RECORD_RUN)
    command = f"sh {wrapper} {lb.serf_handle} {lb.yml} {runs_log(lb)}"
    lb.agent = Agent(procs, "lb", {"role": "lb"}, handlers=[command] if handler else [],
                     env={"SERF_HANDLERS_CACHE_DIR": str(lb.cache)})
    for name in webs:
        lb.add_web(name, f"body-{name}")
    wait_until(cluster_sees(lb.agent, {"lb", *webs}), timeout=20, what="every agent alive")
    if not handler:
        reconcile(lb, check=True)
    wait_until(lambda: converged(lb), timeout=20, what=f"HAProxy serving {webs}")
    if handler:
        wait_until(lambda: runs(lb) and idle(lb), timeout=10, what="the joins' run to finish")
    return lb


def web_tags(agent: Agent) -> dict[str, str]:
    """The -tag values an agent was started with."""
    argv = [str(a) for a in agent.proc.args]  # type: ignore[union-attr]
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-tag")


def restart_web(lb: Site, name: str) -> Agent:
    """`name`'s serf agent comes back (same tags; its nginx never stopped)."""
    assert lb.procs is not None and lb.agent is not None
    agent = Agent(lb.procs, name, web_tags(lb.webs[name]), join=lb.agent)
    lb.webs[name] = agent
    return agent


def nginx_on(procs: Processes, port: int | str) -> subprocess.Popen[bytes]:
    """The nginx we started on `port` (start_nginx's root directory is named after it)."""
    return next(p for p in procs.started if p.args[0] == "nginx" and f"nginx-{port}" in str(p.args))  # type: ignore[index]


# --- what HAProxy really has ---------------------------------------------------------------


def live(lb: Site, backend: str | None = "web") -> dict[str, dict[str, str]]:
    """HAProxy's servers (of `backend`, else all of them as "backend/server"): every column."""
    rows = server_rows(lb.admin_socket, backend)
    return {(r["srv_name"] if backend else f"{r['be_name']}/{r['srv_name']}"): r for r in rows}


def brief(rows: dict[str, dict[str, str]]) -> dict[str, str]:
    """For messages: server -> addr:port admin=<admin state> op=<operational state> w=<weight>."""
    return {
        name: f"{r['srv_addr']}:{r['srv_port']} admin={r['srv_admin_state']} op={r['srv_op_state']} "
        f"w={r['srv_uweight']}"
        for name, r in sorted(rows.items())
    }


def alive_webs(lb: Site) -> dict[str, str]:
    """The alive web members, as Serf reports them: name -> port tag."""
    assert lb.agent is not None
    out = lb.agent.serf("members", "-status", "alive", "-tag", "role=web", "-format", "json").stdout
    return {m["name"]: m["tags"].get("port", "80") for m in json.loads(out)["members"] or []}


def converged(lb: Site, expect: dict[str, str] | None = None) -> bool:
    """HAProxy's servers are exactly the alive web members (or `expect`: name -> port), each
    on its member's port, ready (admin state 0) and UP (operational state 2)."""
    wanted = alive_webs(lb) if expect is None else expect
    rows = live(lb)
    return rows.keys() == wanted.keys() and all(
        r["srv_port"] == wanted[n] and r["srv_admin_state"] == "0" and r["srv_op_state"] == "2"
        for n, r in rows.items()
    )


# --- the commands --------------------------------------------------------------------------


def reconcile(lb: Site, check: bool = False) -> subprocess.CompletedProcess[bytes]:
    assert lb.agent is not None
    done = lb.run(None, args=["reconcile", "--rpc-addr", lb.agent.rpc])
    if check and done.returncode != 0:
        raise RuntimeError(f"reconcile: exit {done.returncode}: {done.stderr.decode(errors='replace')}")
    return done


def status(lb: Site) -> tuple[int, str]:
    done = lb.run(None, args=["status"])
    return done.returncode, (done.stdout + done.stderr).decode("utf-8", "replace")


def warnings_since(lb: Site, offset: int) -> list[dict[str, object]]:
    return [r for r in lb.records()[offset:] if r.get("level") == "warning"]


def reload_haproxy_by_hand(lb: Site) -> None:
    """The README's manual reload, `kill -USR2 <master pid>` (from the pid file); returns once
    the new worker answers on the admin socket."""
    before = worker_pid(lb)
    os.kill(int(lb.pidfile.read_text().split()[0]), signal.SIGUSR2)
    wait_until(lambda: worker_pid(lb) not in (before, ""), timeout=15, what="the new HAProxy worker")


def worker_pid(lb: Site) -> str:
    try:
        info = admin(lb.admin_socket, "show info")
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("Pid:")), "")


# --- 1. a failed run -----------------------------------------------------------------------


def test_a_run_failing_after_the_early_drain_leaves_no_server_drained(procs: Processes) -> None:
    from serf_handlers.handlers.haproxy._jinja import BUILTIN_TEMPLATE

    good = procs.workdir / "good.cfg.j2"
    good.write_text(Path(BUILTIN_TEMPLATE).read_text())
    # The bad template renders the current servers exactly as the good one does (any other
    # difference makes the handler reload instead, with no early drain), and a config that
    # `haproxy -c` rejects (an unknown keyword on every server line) once web2 is gone.
    bad = procs.workdir / "bad.cfg.j2"
    bad.write_text(
        good.read_text().replace(
            "{{ server.options }}",
            '{{ server.options }}{{ "" if "web2" in (servers | map(attribute="node") | list) else " frobnicate" }}',
        )
    )
    lb = start_lb(procs, template=str(good))
    with Load(lb.port, seconds=120) as load:
        lb.write_yml(template=str(bad))
        start = mark(lb)
        lb.webs["web2"].leave()
        failed = next_run(lb, start, "member-leave")
        assert failed.code == 1 and any("frobnicate" in line for line in failed.stderr), failed

        lb.write_yml(template=str(good))
        start = mark(lb)
        restart_web(lb, "web2")
        joined = next_run(lb, start, "member-join")
        ok = eventually(lambda: converged(lb), timeout=10)
        rows = live(lb)
        assert ok and rows.get("web2", {}).get("srv_admin_state") == "0", (
            f"web2 is not back, ready and UP in HAProxy (admin state 0 = ready, 8 = drain): {brief(rows)}; "
            f"the join run exited {joined.code}"
        )
        wait_until(lambda: "body-web2" in bodies(lb), timeout=10, what="web2 getting traffic")
    code, text = status(lb)
    assert code == 0 and "differ" not in text.lower(), text
    done = reconcile(lb)
    assert done.returncode == 0, done.stderr
    assert converged(lb), brief(live(lb))
    assert load.failures == [], load.failures[:5]


# --- 2. a stale server-state file ----------------------------------------------------------


def test_a_manual_reload_keeps_a_port_moved_through_the_runtime_api(procs: Processes) -> None:
    lb = start_lb(procs)
    state_file = Path(f"{lb.config}.state")
    with Load(lb.port, seconds=120) as load:
        # One handler reload (a new backend), which writes <config>.state.
        lb.webs["web3"].serf("tags", "-set", "backend=api")
        wait_until(lambda: "api/web3" in live(lb, None) and state_file.exists(), timeout=20,
                   what="the reload for backend api")
        assert lb.reload_count() == 1
        # web1 moves to a new port through the runtime API (no reload); its old nginx stops.
        old_port = web_tags(lb.webs["web1"])["port"]
        new_port = free_port()
        start_nginx(procs, "body-web1-moved", new_port)
        lb.webs["web1"].serf("tags", "-set", f"port={new_port}")
        wait_until(lambda: live(lb).get("web1", {}).get("srv_port") == str(new_port), timeout=15,
                   what="web1 on its new port in HAProxy")
        assert lb.reload_count() == 1
        procs.stop(nginx_on(procs, old_port))

        reload_haproxy_by_hand(lb)
        expect = {"web1": str(new_port), "web2": web_tags(lb.webs["web2"])["port"]}
        ok = eventually(lambda: converged(lb, expect), timeout=5)
        assert ok, f"after `kill -USR2 <master>`, HAProxy has {brief(live(lb))}; web1 belongs on port {new_port} " \
                   f"(its old port was {old_port}); {state_file.name}: {state_file.read_text()!r}"
        assert "body-web1-moved" in bodies(lb)
        time.sleep(1)
    assert load.failures == [], f"{len(load.failures)} of {load.requests} requests failed: {load.failures[:5]}"


# --- 3. a bad tag --------------------------------------------------------------------------


def test_a_tag_haproxy_rejects_skips_that_member_only(procs: Processes) -> None:
    lb = start_lb(procs)
    with Load(lb.port, seconds=120) as load:
        start = mark(lb)
        lb.webs["web3"].serf("tags", "-set", "backend=-x")  # passes today's validation; `haproxy -c` rejects it
        bad = next_run(lb, start, "member-update")
        errors = [line for line in bad.stderr if line.strip()]
        assert bad.code == 1, bad
        assert len(errors) == 1 and "web3" in errors[0] and "-x" in errors[0], errors

        # Everyone else is still applied, and their runs succeed.
        changes: list[tuple[str, Callable[[], object], Callable[[], bool]]] = [
            ("member-join", lambda: lb.add_web("web4", "body-web4"), lambda: "web4" in live(lb)),
            ("member-leave", lambda: lb.webs["web1"].leave(), lambda: "web1" not in live(lb)),
            ("member-update", lambda: lb.webs["web2"].serf("tags", "-set", "weight=5"),
             lambda: live(lb).get("web2", {}).get("srv_uweight") == "5"),
        ]
        for event, change, applied in changes:
            start = mark(lb)
            change()
            run = next_run(lb, start, event)
            ok = eventually(applied, timeout=5)
            assert run.code == 0 and ok, f"{event} of another member: exit {run.code} {run.stderr}; " \
                                         f"HAProxy has {brief(live(lb, None))}"

        # The bad tag was reported once, for its change: reconcile succeeds and changes nothing.
        before = (lb.config.read_bytes(), lb.state.read_bytes(), brief(live(lb, None)), lb.reload_count())
        done = reconcile(lb)
        assert done.returncode == 0, done.stderr
        assert (lb.config.read_bytes(), lb.state.read_bytes(), brief(live(lb, None)), lb.reload_count()) == before
    _, text = status(lb)
    assert any("web3" in line and "skip" in line.lower() for line in text.splitlines()), text
    assert load.failures == [], load.failures[:5]


# --- 4. reconcile racing a leave ---------------------------------------------------------


def test_reconcile_never_applies_a_snapshot_older_than_a_leave(procs: Processes) -> None:
    # The load balancer's agent runs no handler: only this reconcile can touch web2.
    lb = start_lb(procs, handler=False)
    lock_path = f"{lb.state}.lock"
    assert lb.agent is not None
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    reconciling = subprocess.Popen(
        [lb.serf_handle, "--config", str(lb.yml), "reconcile", "--rpc-addr", lb.agent.rpc],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=lb.env(None),
    )
    try:
        try:
            # It waits for the lock (today: with `serf members` already read).
            wait_until(lambda: holds_open(reconciling.pid, lock_path), timeout=10, what="reconcile at the lock")
            lb.webs["web2"].leave()
            wait_until(lambda: member_status(lb, "web2") == "left", timeout=15, what="serf members: web2 left")
        finally:
            os.close(fd)  # releases the lock
        _, err = reconciling.communicate(timeout=60)
    finally:
        if reconciling.poll() is None:
            reconciling.kill()
            reconciling.wait(5)
    assert reconciling.returncode == 0, err
    rows = live(lb)
    assert "web2" not in rows, f"web2 left before reconcile took the lock, yet HAProxy has it: {brief(rows)}"
    assert "web2" not in lb.servers(), lb.state_data()
    assert converged(lb, {n: web_tags(lb.webs[n])["port"] for n in ("web1", "web3")}), brief(rows)


def holds_open(pid: int, path: str) -> bool:
    """Whether process `pid` has `path` open."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                return True
        except OSError:
            continue
    return False


def member_status(lb: Site, name: str) -> str:
    assert lb.agent is not None
    out = lb.agent.serf("members", "-format", "json").stdout
    return next((m["status"] for m in json.loads(out)["members"] if m["name"] == name), "")


# --- 6. drift behind the handler's back --------------------------------------------------


def drift(lb: Site) -> int:
    """Drain web2 and move web3 to a port nothing listens on, on the admin socket; returns it."""
    wrong = free_port()
    assert admin(lb.admin_socket, "set server web/web2 state drain") == ""
    assert "changed from" in admin(lb.admin_socket, f"set server web/web3 addr 127.0.0.1 port {wrong}")
    rows = live(lb)
    assert rows["web2"]["srv_admin_state"] == "8" and rows["web3"]["srv_port"] == str(wrong), brief(rows)
    return wrong


def repeat_an_update(lb: Site) -> subprocess.CompletedProcess[bytes]:
    """web1's member-update delivered again, exactly as Serf sends it (nothing changed)."""
    return lb.run("member-update", member_line("web1", "127.0.0.1", port=web_tags(lb.webs["web1"])["port"]))


@pytest.mark.parametrize(
    "repair",
    [
        pytest.param(reconcile, id="reconcile"),
        pytest.param(repeat_an_update, id="repeated-member-update"),
    ],
)
def test_drift_on_the_admin_socket_is_repaired(
    procs: Processes, repair: Callable[[Site], subprocess.CompletedProcess[bytes]]
) -> None:
    lb = start_lb(procs)
    with Load(lb.port, seconds=60) as load:
        wrong = drift(lb)
        done = repair(lb)
        assert done.returncode == 0, done.stderr
        rows = live(lb)
        ok = eventually(lambda: converged(lb), timeout=3)
        assert ok, f"not repaired: HAProxy has {brief(live(lb))} (web3 was moved to {wrong}), " \
                   f"want {alive_webs(lb)} ready and UP; right after the repair: {brief(rows)}"
        wait_until(lambda: {"body-web1", "body-web2", "body-web3"} <= bodies(lb), timeout=5, what="all three served")
    print(f"drift repaired by {repair.__name__}: {len(load.failures)} of {load.requests} requests failed")


def test_status_flags_what_haproxy_has_until_it_is_repaired(procs: Processes) -> None:
    lb = start_lb(procs)
    code, text = status(lb)
    assert code == 0 and "differ" not in text.lower(), text
    drift(lb)
    code, text = status(lb)
    assert code == 1 and "differ" in text.lower(), f"status exit {code} with HAProxy drifted:\n{text}"
    assert "web2" in text and "web3" in text, text
    assert reconcile(lb).returncode == 0
    code, text = status(lb)
    assert code == 0 and "differ" not in text.lower(), f"status exit {code} after the repair:\n{text}"


# --- 7. a truncated state file -------------------------------------------------------------


def test_a_truncated_state_file_is_rebuilt_by_the_next_event(procs: Processes) -> None:
    lb = start_lb(procs)
    data = lb.state.read_bytes()
    lb.state.write_bytes(data[: len(data) // 2])
    offset = len(lb.records())
    start = mark(lb)
    with Load(lb.port, seconds=60) as load:
        lb.add_web("web4", "body-web4")
        run = next_run(lb, start, "member-join")
        assert run.code == 0, f"the first event after the truncation: exit {run.code} {run.stderr}"
        warnings = warnings_since(lb, offset)
        assert len(warnings) == 1 and "state" in json.dumps(warnings[0]).lower(), warnings
        assert lb.servers() == {"web1", "web2", "web3", "web4"}, lb.state_data()
        ok = eventually(lambda: converged(lb), timeout=5)
        assert ok, f"HAProxy has {brief(live(lb))}, the alive members are {alive_webs(lb)}"
    assert load.failures == [], load.failures[:5]
